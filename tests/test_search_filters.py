"""Search filters are applied inside the index search, before the top k: with exact (Flat) segments, a filtered
search equals brute force over the live vectors that pass the filter, across sealed segments, tombstones and the
vectors not yet checkpointed."""

from __future__ import annotations

import dataclasses
import hashlib
import random
import sqlite3

import numpy as np
import pytest

from vectormill.stores.faiss_store import FaissStore
from vectormill.stores.filters import FilterError, epoch, parse_filter
from vectormill.stores.records import ChunkRecord, DocumentDelete, DocumentUpsert
from vectormill.stores.restore import restore_store
from vectormill.stores.settings import StoreSettings

DIMENSION = 16
SOURCES = ("wiki", "docs", "crm")
FOLDERS = ("reports/", "reports/2026/", "notes/", "Talk:")
DATES = ("2025-06-01", "2025-12-31T23:59:00Z", "2026-01-01T00:00:00+00:00", "2026-02-15T10:00:00+02:00", None)
# The source's own metadata, as connectors give it (a wiki page's namespace, a CRM record's object type); some
# documents have none of it, some only part.
METADATA = {"namespace": ("0", "12"), "object_type": ("companies", "contacts")}


def source_metadata(rng: random.Random) -> dict[str, str]:
    return {key: rng.choice(values) for key, values in METADATA.items() if rng.random() < 0.6}


def make_document(rng: random.Random, source: str, name: str, version: int) -> DocumentUpsert:
    chunks = rng.randint(1, 4)
    vectors = np.random.default_rng(rng.getrandbits(32)).standard_normal((chunks, DIMENSION)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    records = tuple(ChunkRecord(hashlib.sha256(f"{source}/{name}/{position}/{version}".encode()).hexdigest()[:32],
                                position, f"{name} {position} v{version}", f"h{version}{position}", 1, 1, 3)
                    for position in range(chunks))
    return DocumentUpsert(source, name, f"v{version}", rng.choice(("Alpha", "Beta")), f"loc-{rng.randint(0, 2)}",
                          rng.choice(DATES), records, vectors, source_metadata(rng))


def passes(document: DocumentUpsert, raw: dict) -> bool:
    """The filter's meaning, written out plainly (the reference for the store's SQL)."""
    sources = raw.get("source")
    if sources is not None and document.source not in ([sources] if isinstance(sources, str) else sources):
        return False
    if "document_prefix" in raw and not document.document.startswith(raw["document_prefix"]):
        return False
    modified = epoch(document.modified)
    if "modified_after" in raw and (modified is None or modified <= epoch(raw["modified_after"])):
        return False
    if "modified_before" in raw and (modified is None or modified >= epoch(raw["modified_before"])):
        return False
    fields = document.metadata | {"title": document.title, "location": document.location, "version": document.version}
    return all(fields.get(key) == value for key, value in raw.get("metadata", {}).items())


def random_filter(rng: random.Random) -> dict:
    raw: dict = {}
    if rng.random() < 0.5:
        raw["source"] = rng.choice(SOURCES) if rng.random() < 0.5 else rng.sample(SOURCES, 2)
    if rng.random() < 0.5:
        raw["document_prefix"] = rng.choice(FOLDERS)
    if rng.random() < 0.4:
        raw["modified_after"] = rng.choice(("2025-12-31", "2026-01-01T00:00:00Z", "2025-01-01"))
    if rng.random() < 0.3:
        raw["modified_before"] = rng.choice(("2026-02-01", "2026-01-01T00:00:00Z"))
    if rng.random() < 0.5:
        fields = {"title": ("Alpha", "Beta"), "location": ("loc-0", "loc-1")} | METADATA
        raw["metadata"] = {key: rng.choice(fields[key]) for key in rng.sample(sorted(fields), rng.randint(1, 2))}
    return raw


@pytest.fixture(scope="module")
def store_and_live(tmp_path_factory):
    """A Flat store with two sealed checkpoints, tombstones (replaced and deleted documents, a chunk id that is
    dead in a segment and live again) and pending writes; with the live documents as the test wrote them."""
    rng = random.Random(21)
    settings = StoreSettings(path=tmp_path_factory.mktemp("filters") / "store", checkpoint_every_vectors=10**6,
                             checkpoint_every_seconds=None, merge_factor=100, max_dead_ratio=1)
    live: dict[tuple[str, str], DocumentUpsert] = {}

    def write(documents):
        store.write(documents)
        live.update({(d.source, d.document): d for d in documents})

    with FaissStore.open(settings, model="test", dimension=DIMENSION) as store:
        names = [(rng.choice(SOURCES), f"{rng.choice(FOLDERS)}doc{n}") for n in range(120)]
        write([make_document(rng, source, name, 1) for source, name in names[:80]])
        store.checkpoint()
        write([make_document(rng, source, name, 2) for source, name in names[:20]])  # replaced: tombstones
        gone = names[20:30]
        store.write([DocumentDelete(source, name) for source, name in gone])
        for key in gone:
            del live[key]
        store.checkpoint()
        back = names[20:25]  # the same chunk ids as their sealed, now dead, copies
        write([make_document(rng, source, name, 1) for source, name in back])
        write([make_document(rng, source, name, 1) for source, name in names[80:]])  # pending, not sealed
        assert store.catalog.counter("dead") > 0 and store.catalog.pending_vectors() > 0
    return settings, live


def test_filtered_search_equals_brute_force_over_the_filtered_live_vectors(store_and_live):
    settings, live = store_and_live
    rng = random.Random(7)
    checked = 0
    with FaissStore.open(settings, writable=False) as reader:
        for _ in range(150):
            raw = random_filter(rng)
            query = np.random.default_rng(rng.getrandbits(32)).standard_normal(DIMENSION).astype(np.float32)
            k = rng.choice((1, 3, 10, 50))
            chosen = [d for d in live.values() if passes(d, raw)]
            ids = [c.chunk_id for d in chosen for c in d.chunks]
            scores = np.concatenate([d.vectors @ query for d in chosen]) if chosen else np.empty(0)
            expected = [ids[i] for i in np.argsort(-scores, kind="stable")[:k]]
            hits = reader.search(query, k, parse_filter(raw))
            assert [hit.chunk_id for hit in hits] == expected, raw
            assert [hit.score for hit in hits] == pytest.approx(sorted(scores, reverse=True)[:k], abs=1e-5)
            checked += bool(expected) and len(chosen) < len(live)
    assert checked > 50  # most filters chose some, not all


@pytest.mark.parametrize("factory", ["IVF4,Flat", "HNSW8"])
def test_approximate_indexes_return_only_chunks_that_pass(tmp_path, factory):
    rng = random.Random(3)
    settings = StoreSettings(path=tmp_path / "store", index_factory=factory, train_vectors=50)
    with FaissStore.open(settings, model="test", dimension=DIMENSION) as store:
        documents = [make_document(rng, rng.choice(SOURCES), f"{rng.choice(FOLDERS)}doc{n}", 1) for n in range(80)]
        store.write(documents)
        store.checkpoint()
        raw = {"source": "wiki", "document_prefix": "reports/"}
        chosen = {c.chunk_id for d in documents if passes(d, raw) for c in d.chunks}
        hits = store.search(documents[0].vectors[0], 5, parse_filter(raw))
        assert hits and {hit.chunk_id for hit in hits} <= chosen


@pytest.mark.parametrize("raw, message", [
    ({"sorce": "wiki"}, "unknown filter key(s) 'sorce'"),
    ({"source": []}, "filter 'source' must be"),
    ({"source": 3}, "filter 'source' must be"),
    ({"modified_after": "last tuesday"}, "ISO 8601"),
    ({"metadata": {"namespace": 0}}, "filter 'metadata.namespace' must be a non-empty string"),
    ({"metadata": "title"}, "filter 'metadata' must be"),
    (["source"], "a filter is a JSON object"),
])
def test_bad_filters_are_refused_with_a_message_naming_the_key(raw, message):
    with pytest.raises(FilterError, match=None) as caught:
        parse_filter(raw)
    assert message in str(caught.value)


def test_a_metadata_key_no_document_has_is_refused_naming_the_keys_there_are(store_and_live):
    settings, _ = store_and_live
    with FaissStore.open(settings, writable=False) as reader:
        with pytest.raises(FilterError) as caught:
            reader.search(np.ones(DIMENSION, dtype=np.float32), 3, parse_filter({"metadata": {"author": "x"}}))
        assert str(caught.value) == ("unknown metadata key(s) 'author': the store's documents have title, location, "
                                     "version, namespace, object_type")
        # a key the documents have, with a value none has: no hits, not an error
        assert reader.search(np.ones(DIMENSION, dtype=np.float32), 3, parse_filter({"metadata": {"namespace": "9"}})) == []


def test_source_metadata_is_kept_through_a_restore_from_segments_and_given_by_get(tmp_path):
    rng = random.Random(5)
    settings = StoreSettings(path=tmp_path / "store", checkpoint_every_seconds=None)
    with FaissStore.open(settings, model="test", dimension=DIMENSION) as store:
        documents = [make_document(rng, "wiki", f"Talk:doc{n}", 1) for n in range(30)]
        store.write(documents)
        newest = store.checkpoint()
    assert restore_store(settings, generation=newest)["restored_generation"] == newest  # a catalog rebuilt from segments
    raw = {"metadata": {"namespace": "12"}}
    with FaissStore.open(settings, writable=False) as reader:
        hits = reader.search(documents[0].vectors[0], 100, parse_filter(raw))
        assert sorted(hit.chunk_id for hit in hits) == sorted(c.chunk_id for d in documents if passes(d, raw)
                                                               for c in d.chunks)
        assert [reader.document(d.document)[0]["metadata"] for d in documents] == [d.metadata for d in documents]


def test_a_catalog_written_before_metadata_is_read_then_upgraded_by_the_writer(tmp_path):
    rng = random.Random(8)
    settings = StoreSettings(path=tmp_path / "store", checkpoint_every_seconds=None)
    with FaissStore.open(settings, model="test", dimension=DIMENSION) as store:
        old = [make_document(rng, "wiki", f"old{n}", 1) for n in range(10)]
        store.write(old)
    database = sqlite3.connect(settings.path / "store.sqlite")
    database.execute("ALTER TABLE documents DROP COLUMN metadata")  # as vectormill wrote it before
    database.execute("ALTER TABLE documents DROP COLUMN checksum")  # (which had no document checksums either)
    database.close()
    query = old[0].vectors[0]
    with FaissStore.open(settings, writable=False) as reader:  # not upgraded yet: no document has metadata
        assert reader.document("old0")[0]["metadata"] == {}
        assert len(reader.search(query, 100, parse_filter({"metadata": {"title": "Alpha"}}))) == sum(
            len(d.chunks) for d in old if d.title == "Alpha")
        with pytest.raises(FilterError, match="the store's documents have title, location, version$"):
            reader.search(query, 3, parse_filter({"metadata": {"namespace": "0"}}))
    with FaissStore.open(settings, model="test", dimension=DIMENSION) as store:  # the writer adds the column
        new = dataclasses.replace(make_document(rng, "wiki", "new", 1), metadata={"namespace": "12"})
        store.write([new])
        found = store.search(new.vectors[0], 100, parse_filter({"metadata": {"namespace": "12"}}))
        assert {hit.document for hit in found} == {"new"}
        assert store.document("old0")[0]["metadata"] == {}


def test_no_filter_and_an_empty_filter_are_the_same():
    assert parse_filter(None) is None and parse_filter({}) is None


def test_a_scope_narrows_a_request_and_is_never_widened():
    from vectormill.stores.filters import NOTHING, narrow

    scope = parse_filter({"source": ["wiki", "docs"], "document_prefix": "reports/", "modified_after": "2026-01-01"})
    assert narrow(scope, None) == scope and narrow(None, scope) == scope and narrow(None, None) is None
    both = narrow(scope, parse_filter({"source": ["crm", "docs"], "document_prefix": "reports/2026/",
                                       "modified_after": "2025-01-01", "metadata": {"title": "Alpha"}}))
    assert both == dataclasses.replace(scope, sources=("docs",), document_prefix="reports/2026/",
                                       metadata={"title": "Alpha"})
    assert narrow(scope, parse_filter({"document_prefix": "rep"})).document_prefix == "reports/"  # not widened
    for outside in ({"source": "crm"}, {"document_prefix": "notes/"}):
        assert narrow(scope, parse_filter(outside)) is NOTHING
    assert narrow(parse_filter({"metadata": {"title": "A"}}), parse_filter({"metadata": {"title": "B"}})) is NOTHING
    with pytest.raises(FilterError, match="over the limit of 1024"):
        parse_filter({"document_prefix": "x" * 1025})
