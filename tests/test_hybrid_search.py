"""Keyword (BM25) and hybrid search: the FTS5 index over the catalog's chunk text stays in step with the live chunks
through upserts, deletes, checkpoints, compaction, restores and its migration; user text never reaches FTS5's query
syntax; filters apply to both rankings before the top k; the fusion is reciprocal rank fusion."""

from __future__ import annotations

import hashlib
import random
import sqlite3

import numpy as np
import pytest

from vectormill.stores.errors import StoreError
from vectormill.stores.faiss_store import FaissStore
from vectormill.stores.filters import parse_filter
from vectormill.stores.fusion import Fusion, SearchModeError, reciprocal_rank_fusion
from vectormill.stores.keywords import any_term, every_term, named_terms
from vectormill.stores.records import ChunkRecord, DocumentDelete, DocumentUpsert
from vectormill.stores.restore import restore_store
from vectormill.stores.settings import StoreSettings

DIMENSION = 16
WORDS = ("ledger", "harbour", "quartz", "meadow", "lantern", "falcon", "copper", "orchard", "glacier", "velvet")


def invoice(number: int) -> str:
    return f"INV-2024-{number:05d}"


def document(source: str, number: int, version: int = 1, seed: int = 0) -> DocumentUpsert:
    """Two chunks: prose of common words with the document's invoice id in it, then prose only. Vectors are random:
    they know nothing of the ids, as a small embedding model knows little of them."""
    rng = random.Random(number * 1_000 + version * 10 + seed)
    texts = [f"{' '.join(rng.choices(WORDS, k=12))} invoice {invoice(number)} v{version} {' '.join(rng.choices(WORDS, k=6))}",
             " ".join(rng.choices(WORDS, k=20))]
    vectors = np.random.default_rng(number * 7 + version).standard_normal((2, DIMENSION)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    chunks = tuple(ChunkRecord(hashlib.sha256(f"{source}/{number}/{position}/{version}".encode()).hexdigest()[:32],
                               position, text, hashlib.sha256(text.encode()).hexdigest(), None, None, 30)
                   for position, text in enumerate(texts))
    return DocumentUpsert(source, f"doc{number}", f"v{version}", f"Doc {number}", f"loc/{number}", "2026-01-01",
                          chunks, vectors)


def keyword_top(store: FaissStore, text: str, k: int = 5, where=None) -> list[str]:
    return [hit.document for hit in store.search(None, k, where, text=text, mode="keyword")]


def fts_in_step(store: FaissStore) -> None:
    """FTS5's own check of an external-content index against its content table: raises if any entry is off."""
    store.db.execute("INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('integrity-check', 1)")
    indexed = store.db.execute("SELECT count(*) FROM chunks_fts_docsize").fetchone()[0]
    assert indexed == store.db.execute("SELECT count(*) FROM chunks").fetchone()[0]


@pytest.fixture()
def settings(tmp_path):
    return StoreSettings(path=tmp_path / "store", checkpoint_every_seconds=None, merge_factor=3)


def test_the_keyword_index_follows_every_change_of_the_chunks_in_their_transaction(settings):
    with FaissStore.open(settings, model="test", dimension=DIMENSION) as store:
        store.write([document("wiki", n) for n in range(40)])
        fts_in_step(store)
        assert keyword_top(store, invoice(17))[:1] == ["doc17"]
        store.checkpoint()
        store.write([document("wiki", 17, version=2)])  # replaced: its old text leaves the index with its row
        store.write([DocumentDelete("wiki", "doc18")])
        fts_in_step(store)
        assert [h.text for h in store.search(None, 1, text=f"{invoice(17)} v2", mode="keyword")][0].count("v2")
        assert "v1" not in " ".join(h.text for h in store.search(None, 10, text=invoice(17), mode="keyword"))
        assert "doc18" not in keyword_top(store, invoice(18), k=40)
        for _ in range(3):  # seals and merges move rows between segments: the index is untouched and still right
            store.write([document("docs", 100 + n) for n in range(5)])
            store.checkpoint()
        store.compact()
        fts_in_step(store)
        assert keyword_top(store, invoice(103))[:1] == ["doc103"]
        with pytest.raises(sqlite3.OperationalError):  # a write that fails leaves both as they were
            with store.catalog.transaction():
                store.catalog.apply([document("wiki", 999)], store.lsn + 1)
                raise sqlite3.OperationalError("disk I/O error")
        fts_in_step(store)
        assert "doc999" not in keyword_top(store, invoice(999))


@pytest.mark.parametrize("query", ['"', 'NEAR(', 'INV-2024-00417', 'a AND OR NOT b', '*', 'text:copper', '^ledger',
                                   '"unbalanced', "col:'x'", '(((', '-', 'ledger" OR "x', '\u00e9t\u00e9 NEAR/3'])
def test_user_text_never_reaches_the_fts_query_syntax(settings, query):
    with FaissStore.open(settings, model="test", dimension=DIMENSION) as store:
        store.write([document("wiki", n) for n in range(5)])
        store.search(None, 3, text=query, mode="keyword")  # no error, whatever the text
        store.search(np.ones(DIMENSION, dtype=np.float32), 3, text=query, mode="hybrid")


def test_fts_queries_quote_each_term():
    assert any_term('INV-2024-00417 "x" NEAR(') == '"INV-2024-00417" OR """x""" OR "NEAR("'
    assert every_term('refund policy refund') == '"refund" AND "policy"'
    assert any_term('" - (') is None and every_term("") is None
    assert named_terms("Orders of Marta Kowalczyk: what about INV-2024-00417? And E1234, SKU-BK or TLS then") == (
        '"Marta" AND "Kowalczyk:" AND "INV-2024-00417?" AND "E1234," AND "SKU-BK" AND "TLS"')
    assert named_terms("My coffee maker broke. Can I get my money back?") is None


def test_filters_apply_to_both_rankings_before_the_top_k(settings):
    with FaissStore.open(settings, model="test", dimension=DIMENSION) as store:
        store.write([document("wiki", n) for n in range(30)] + [document("docs", 1000 + n) for n in range(3)])
        store.checkpoint()
        where = parse_filter({"source": "docs"})
        # "ledger" is in nearly every chunk; only 6 chunks pass the filter: all of them, and only them
        assert {hit.source for hit in store.search(None, 10, where, text="ledger", mode="keyword")} == {"docs"}
        hybrid = store.search(np.ones(DIMENSION, dtype=np.float32), 6, where, text="ledger copper", mode="hybrid")
        assert len(hybrid) == 6 and {hit.source for hit in hybrid} == {"docs"}
        best = store.search(None, 3, where, text=f"{invoice(5)} ledger", mode="keyword")  # doc5 matches best, elsewhere
        assert len(best) == 3 and {hit.source for hit in best} == {"docs"}


def test_hybrid_finds_an_identifier_that_the_vectors_miss(settings):
    with FaissStore.open(settings, model="test", dimension=DIMENSION) as store:
        store.write([document("wiki", n) for n in range(200)])
        store.checkpoint()
        noise = np.random.default_rng(1).standard_normal(DIMENSION).astype(np.float32)
        hits = store.search(noise, 5, text=f"where is {invoice(123)}?", mode="hybrid")
        found = [hit for hit in hits if hit.document == "doc123"]  # ties the vectors' best: both rank 1 in one list
        assert found and found[0].keyword_rank == 1 and found[0].vector_rank is None
        assert all(hit.vector_rank is not None or hit.keyword_rank is not None for hit in hits)
        assert [hit.score for hit in hits] == sorted((hit.score for hit in hits), reverse=True)
        vector_only = store.search(noise, 5, mode="vector")
        assert [hit.chunk_id for hit in vector_only] == [
            hit.chunk_id for hit in store.search(noise, 5, text="zzz", mode="hybrid")]  # no keyword: vector order
        with pytest.raises(SearchModeError, match="needs the query's text"):
            store.search(noise, 5, mode="hybrid")
        with pytest.raises(SearchModeError, match="one of vector, keyword, hybrid"):
            store.search(noise, 5, text="x", mode="semantic")


def test_reciprocal_rank_fusion():
    fusion = Fusion(rrf_k=60)
    fused = reciprocal_rank_fusion([1, 2, 3], [3, 4], fusion, k=4)
    assert [hit.identifier for hit in fused] == [3, 1, 2, 4]  # in both lists first, then by rank, vector first on ties
    assert fused[0].score == pytest.approx(1 / 63 + 1 / 61) and (fused[0].vector_rank, fused[0].keyword_rank) == (3, 1)
    assert fused[3].vector_rank is None
    keyword_heavy = reciprocal_rank_fusion([1, 2], [2, 1], Fusion(vector_weight=0.5, keyword_weight=2), k=2)
    assert [hit.identifier for hit in keyword_heavy] == [2, 1]


def test_a_store_written_before_the_keyword_index_gets_it_at_its_next_writable_open(settings):
    with FaissStore.open(settings, model="test", dimension=DIMENSION) as store:
        store.write([document("wiki", n) for n in range(20)])
        store.checkpoint()
    database = sqlite3.connect(settings.path / "store.sqlite")
    database.executescript("DROP TABLE chunks_fts; DROP TRIGGER chunks_fts_insert; DROP TRIGGER chunks_fts_delete; "
                           "DROP TRIGGER chunks_fts_update")  # as vectormill wrote it before
    database.close()
    query = np.ones(DIMENSION, dtype=np.float32)
    with FaissStore.open(settings, writable=False) as reader:  # a reader cannot build it
        with pytest.raises(StoreError, match="no keyword index yet.*opens the store for writing"):
            reader.search(None, 3, text=invoice(4), mode="keyword")
        hits = reader.search(query, 3, text=invoice(4), mode="hybrid")
        assert [h.chunk_id for h in hits] == [h.chunk_id for h in reader.search(query, 3)]
        assert [h.vector_rank for h in hits] == [1, 2, 3]
        assert sum("no keyword index yet" in note for note in reader.notes) == 1
    with FaissStore.open(settings, model="test", dimension=DIMENSION) as store:
        fts_in_step(store)
        assert keyword_top(store, invoice(4))[:1] == ["doc4"]


def test_a_restored_store_has_a_working_keyword_index(settings):
    with FaissStore.open(settings, model="test", dimension=DIMENSION) as store:
        store.write([document("wiki", n) for n in range(30)])
        store.checkpoint()
        store.write([document("wiki", 7, version=2), DocumentDelete("wiki", "doc8")])
        newest = store.checkpoint()
    (settings.path / "store.sqlite").unlink()  # the catalog is lost: only the segments are left
    assert restore_store(settings)["restored_generation"] == newest
    with FaissStore.open(settings, writable=False) as reader:
        assert keyword_top(reader, f"{invoice(7)} v2")[:1] == ["doc7"]
        assert keyword_top(reader, invoice(8), k=60).count("doc8") == 0
        assert keyword_top(reader, invoice(21))[:1] == ["doc21"]
    with FaissStore.open(settings, model="test", dimension=DIMENSION) as store:
        fts_in_step(store)
