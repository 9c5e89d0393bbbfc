"""Backups that cannot be fooled (issue 30): replica identity checked on every manifest, a replica confirms only what
it holds, the catalog checked index by index and row by row, a rolled-back catalog refused, replicas scrubbed."""

import json
import shutil
import sqlite3

import pytest

from vectormill.stores.drill import DrillProblems, drill
from vectormill.stores.faiss_store import FaissStore, StoreCorruptError
from vectormill.stores.restore import restore_store, scrub_replicas, verify_and_repair, verify_store

from .servers.store_batches import vector_for
from .test_replicas import run_cli
from .test_store import damage, open_store, settings, write_batches
from .test_store_integrity import store_written_before


def _replica(tmp_path, name="r", folder="replica"):
    return {"name": name, "url": str(tmp_path / folder)}


def _tree(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_torn_manifest_makes_the_replica_unknown_and_another_store_neither_writes_nor_prunes_there(tmp_path):
    shared = _replica(tmp_path)
    first = settings(tmp_path / "a", keep_generations=2, replicas=[shared])
    with open_store(first) as store:
        for n in range(2):
            write_batches(store, n * 10, n * 10 + 10)
            store.checkpoint()
        first_id, first_vectors = store.store_id, store.vector_count()
    replica = tmp_path / "replica"
    newest = max((replica / "manifests").iterdir())
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # torn
    before = _tree(replica)
    with open_store(settings(tmp_path / "b")):
        pass  # a second store, created apart, then pointed at the same replica
    second = settings(tmp_path / "b", keep_generations=2, replicas=[shared])
    with open_store(second) as store:
        for n in range(2):  # its generation 2 has the number of the torn one
            write_batches(store, 40 + n * 5, 45 + n * 5)
            store.checkpoint()
        status = store.replicator.statuses["r"]
        assert status.ok is False and "unknown" in status.error and "verify --repair" in status.error
    assert _tree(replica) == before  # nothing written, nothing of the first store pruned
    repaired = verify_and_repair(second)  # the other manifest names the first store: not rewritten from this one
    assert not repaired["ok"] and _tree(replica) == before

    with open_store(first) as store:  # the first store refuses to write there too, and says why
        write_batches(store, 20, 22)
        store.checkpoint()
        assert "unknown" in store.replicator.statuses["r"].error and store.replication_problem()
    report = verify_store(first)
    assert not report["ok"] and any(p["file"] == f"manifests/{newest.name}" for p in report["problems"])
    repaired = verify_and_repair(first)  # its other manifest proves the replica is this store's: rewritten
    assert repaired["ok"], repaired["problems"]
    with open_store(first) as store:
        assert store.checkpoint() is None and store.replication_problem() is None
    report = drill(first)
    assert report["ok"] and report["identity"]["store_id"] == first_id and report["problems"] == []

    # A replica holding another store's data fails the drill, whatever it restores.
    other = settings(tmp_path / "c", replicas=[_replica(tmp_path, folder="other-replica")])
    with open_store(other) as store:
        write_batches(store, 0, 7)
        store.checkpoint()
        store.write([])
    shutil.rmtree(replica)
    shutil.copytree(tmp_path / "other-replica", replica)
    with pytest.raises(DrillProblems, match="another store's data") as failed:
        drill(first)
    assert failed.value.report["ok"] is False and failed.value.report["identity"]["store_id"] != first_id
    assert failed.value.report["vectors"] != first_vectors
    result = run_cli(tmp_path, first, ["store", "drill", "--json"])
    assert result.exit_code == 1
    printed = json.loads(result.stdout.splitlines()[0])
    assert printed["ok"] is False and any("another store" in p for p in printed["problems"])


def test_a_replica_ahead_on_the_old_timeline_is_refused_not_counted(tmp_path):
    config = settings(tmp_path, keep_generations=3, max_dead_ratio=1.0, min_replicas_confirmed=2, replica_attempts=1,
                      replicas=[_replica(tmp_path, "near", "near"), _replica(tmp_path, "far", "far")])
    with open_store(config) as store:
        write_batches(store, 0, 5)
        store.checkpoint()  # generation 1 on both
        shutil.move(tmp_path / "near", tmp_path / "near-away")
        (tmp_path / "near").write_text("")  # out of reach: `far` alone gets 2 … 6
        for n in range(1, 6):
            write_batches(store, n * 5, n * 5 + 5)
            store.checkpoint()
        assert store.generation == 6
    shutil.rmtree(config.path)  # the primary is lost, `far` out of reach: restored from `near` (generation 1)
    shutil.move(tmp_path / "far", tmp_path / "far-away")
    (tmp_path / "far").write_text("")
    (tmp_path / "near").unlink()
    shutil.move(tmp_path / "near-away", tmp_path / "near")
    assert restore_store(config, source="near")["as_generation"] == 2
    (tmp_path / "far").unlink()
    shutil.move(tmp_path / "far-away", tmp_path / "far")  # back, holding 4 … 6 of timeline 1
    far = _tree(tmp_path / "far")
    with open_store(config) as store:
        write_batches(store, 50, 52)
        assert store.checkpoint() == 3
        status = store.replicator.statuses["far"]
        assert status.ok is False and "newer than this store's 3" in status.error
        assert "only 1 of 2 replica(s) confirmed" in store.replication_problem()
    assert _tree(tmp_path / "far") == far
    with pytest.raises(DrillProblems, match="timeline") as failed:  # its newest is the old timeline's
        drill(config, "far")
    assert failed.value.report["identity"]["timeline"] == 1
    with open_store(config) as store:
        write_batches(store, 52, 54)
        assert store.checkpoint() == 7  # numbered past what `far` holds: taken, and held after its pruning
        assert store.replication_problem() is None
    assert drill(config, "far")["identity"] == {"store_id": store.store_id, "timeline": 2, "generation": 7}


def _index_entry(config, document: bytes) -> int:
    """Where the database file holds the chunks_by_document entry ("s", document, rowid) of a small rowid: the offset
    of its rowid byte (record header: 4 bytes; serial types text("s"), text(document), int8)."""
    database = config.path / "store.sqlite"
    db = sqlite3.connect(database)
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    pages = [row[0] for row in db.execute("SELECT pageno FROM dbstat WHERE name = 'chunks_by_document'")]
    db.close()
    data = database.read_bytes()
    needle = bytes([4, 13 + 2, 13 + 2 * len(document), 1]) + b"s" + document
    found = [(page - 1) * page_size + at for page in pages
             for at in [data[(page - 1) * page_size : page * page_size].find(needle)] if at >= 0]
    assert len(found) == 1
    return found[0] + len(needle)


def test_verify_compares_every_index_with_its_table_and_checks_the_segment_and_document_columns(tmp_path):
    config = settings(tmp_path)
    with open_store(config) as store:
        write_batches(store, 0, 10)
        store.checkpoint()
    database = config.path / "store.sqlite"
    pristine = database.read_bytes()
    at = _index_entry(config, b"d3")
    data = bytearray(pristine)
    data[at] ^= 0x01  # d3's index entry now points at a neighbour's row
    database.write_bytes(bytes(data))
    report = verify_store(config)
    assert not report["ok"] and "chunks_by_document" in report["problems"][0]["detail"]

    database.write_bytes(pristine)
    db = sqlite3.connect(database)  # bytes SQLite accepts: a chunk's segment, a document's location and metadata
    db.execute("UPDATE chunks SET segment = segment + 1 WHERE document = 'd4'")
    db.execute("UPDATE documents SET location = 'https://evil.example/' WHERE document = 'd5'")
    db.execute("UPDATE documents SET metadata = '{\"team\":\"x\"}' WHERE document = 'd6'")
    db.commit()
    db.close()
    report = verify_store(config)
    details = " ".join(p["detail"] for p in report["problems"])
    assert not report["ok"] and "segment does not match" in details and "s/d4" in details
    assert "document rows whose checksum does not match" in details and "s/d5" in details and "s/d6" in details
    with FaissStore.open(config, writable=False) as store:  # a damaged document row is never served
        assert "d5" not in [hit.document for hit in store.search(vector_for("d5 chunk 0 v1"), k=3)]
        assert any("DAMAGED CHUNK ROW" in note and "s/d5" in note for note in store.notes)
    result = run_cli(tmp_path, config, ["store", "compact"])
    shown = result.output + str(result.exception or "")
    assert result.exit_code == 1 and "Traceback" not in shown and "fail their checksum" in shown, shown


def test_rows_written_before_document_and_segment_checksums_get_them_at_the_first_writable_open(tmp_path):
    config = store_written_before(tmp_path, "ALTER TABLE documents DROP COLUMN checksum",
                                  "ALTER TABLE chunks DROP COLUMN segment_checksum")
    with FaissStore.open(config, writable=False) as store:  # a reader of such a store still searches
        assert store.search(vector_for("d3 chunk 0 v1"), k=1)[0].document == "d3"
    assert verify_store(config)["ok"]
    with open_store(config) as store:
        assert store.db.execute("SELECT count(*) FROM documents WHERE checksum IS NULL").fetchone()[0] == 0
    assert verify_store(config)["ok"]


def _database(config):
    return config.path / json.loads((config.path / "identity.json").read_text())["database"]


def _roll_back(config, saved):
    database = _database(config)
    for leftover in config.path.glob(f"{database.name}-*"):
        leftover.unlink()
    database.write_bytes(saved)


def test_a_rolled_back_catalog_is_refused_and_restored_deleting_nothing(tmp_path):
    config = settings(tmp_path, keep_generations=3, replicas=[_replica(tmp_path)])
    with open_store(config) as store:
        write_batches(store, 0, 5)
        store.checkpoint()
    saved = _database(config).read_bytes()  # closed: everything is in the main file
    with open_store(config) as store:
        write_batches(store, 5, 10)
        store.checkpoint()
        committed, vectors = store.generation, store.vector_count()
    _roll_back(config, saved)  # as if its -wal were lost
    manifests = _tree(config.path / "manifests")
    for writable in (True, False):
        with pytest.raises(StoreCorruptError, match="rolled back.*store restore"):
            FaissStore.open(config, writable=writable)
    assert _tree(config.path / "manifests") == manifests  # nothing deleted
    report = verify_store(config)
    assert not report["ok"] and any("rolled back" in p["detail"] for p in report["problems"])
    result = restore_store(config)
    assert result["restored_generation"] == committed
    with open_store(config) as store:
        assert store.vector_count() == vectors

    # A store from before the record: the catalog rolled back goes on, and commits another generation under a number
    # the replica holds; verify compares them.
    with open_store(config) as store:
        write_batches(store, 10, 12)
        store.checkpoint()
    saved = _database(config).read_bytes()
    with open_store(config) as store:
        write_batches(store, 12, 15)
        store.checkpoint()
        newest = store.generation
    _roll_back(config, saved)
    (config.path / "COMMITTED").unlink()
    with open_store(config) as store:
        write_batches(store, 20, 21)
        assert store.checkpoint() == newest  # the same number, other content (the replica keeps its own)
    report = verify_store(config)
    assert any(p["where"] == "r" and f"differs from primary's generation {newest}" in p["detail"]
               for p in report["problems"]), report["problems"]


def test_a_replica_file_damaged_after_it_was_confirmed_is_found_by_the_scrub_and_sent_again(tmp_path):
    config = settings(tmp_path, keep_generations=2, replicas=[_replica(tmp_path)])
    with open_store(config) as store:
        write_batches(store, 0, 10)
        store.checkpoint()
    shared = max((tmp_path / "replica" / "segments").glob("*.faiss"), key=lambda p: p.stat().st_size)
    damage(shared, "bitflip")  # after its checkpoint confirmed it
    with open_store(config) as store:
        write_batches(store, 10, 12)
        store.checkpoint()
        assert store.replication_problem() is None  # what a checkpoint trusts is not read again
    scrub = scrub_replicas(config)
    assert not scrub["ok"] and scrub["forgotten"]
    assert [(p["where"], p["file"]) for p in scrub["problems"]] == [("r", f"segments/{shared.name}")]
    assert scrub["replicas"][0]["files"] >= 4 and scrub["replicas"][0]["bytes"] > 0
    with open_store(config) as store:
        assert store.checkpoint() is None  # the newest generation offered again: the damaged file is sent again
        assert store.replicator.statuses["r"].files_sent >= 1 and store.replication_problem() is None
    assert scrub_replicas(config)["ok"] and verify_store(config)["ok"]


def _sweep_store(tmp_path):
    """A catalog of 20 documents with every byte class: table rows and index entries, overflow pages (long chunks),
    free pages (a long document deleted), tombstones (documents changed after a checkpoint) and pending rows."""
    import numpy as np

    from vectormill.stores.records import ChunkRecord, DocumentDelete, DocumentUpsert

    def document(i, version, long=False):
        texts = [f"d{i} chunk {p} v{version} " + ("lorem ipsum " * 700 if long and p == 0 else "") for p in range(2)]
        chunks = tuple(ChunkRecord(f"{i:04d}{version:04d}{p:08d}{0:016d}", p, text, f"h{i}-{version}-{p}", 1, 2, 5)
                       for p, text in enumerate(texts))
        return DocumentUpsert("s", f"d{i}", f"v{version}", f"Title {i}", f"https://x.example/d{i}",
                              f"2026-01-{i + 1:02d}T00:00:00+00:00", chunks,
                              np.stack([vector_for(text) for text in texts]), {"team": f"t{i % 3}"})

    config = settings(tmp_path, checkpoint_every_vectors=10_000)
    with open_store(config) as store:
        store.write([document(i, 1, long=i in (3, 21)) for i in range(22)])
        store.checkpoint()
        store.write([document(i, 2) for i in (4, 5)] + [DocumentDelete("s", "d21"), DocumentDelete("s", "d20")])
        store.checkpoint()  # tombstones of 4 and 5's old chunks; the long d21's pages freed
        store.write([document(6, 3)])  # pending: searched from the catalog's own vectors
    return config


def _answers(config, probes, documents):
    """What a reader is told: the hits of every probe, every document, the counts; or the error it gets."""
    try:
        with FaissStore.open(config, writable=False) as store:
            hits = [[(h.chunk_id, h.document, h.title, h.location, h.text, h.page, h.modified, h.ocr)
                     for h in store.search(probe, k=3)] for probe in probes]
            found = [store.document(name, "s") for name in documents]
            counts = (store.vector_count(), store.document_count(), store.catalog.sources())
            return {"hits": hits, "documents": found, "counts": counts, "notes": list(store.notes)}
    except Exception as exc:  # noqa: BLE001 - refusing to answer is an answer: it must be named by verify too
        return {"error": f"{type(exc).__name__}: {exc}"}


def _byte_classes(database):
    """Offsets to flip, by class: table b-tree leaf cells, index b-tree leaf cells, overflow pages, free pages."""
    db = sqlite3.connect(database)
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    overflow = [row[0] for row in db.execute("SELECT pageno FROM dbstat WHERE pagetype = 'overflow'")]
    used = {row[0] for row in db.execute("SELECT pageno FROM dbstat")}
    db.close()
    data = database.read_bytes()
    classes = {"table row": [], "index entry": [], "overflow page": [], "free page": []}
    for page in range(1, pages + 1):
        start = (page - 1) * page_size
        header = start + (100 if page == 1 else 0)
        if page not in used:
            classes["free page"].append((start, start + page_size))
        elif page in overflow:
            classes["overflow page"].append((start + 4, start + page_size))
        elif data[header] in (0x0D, 0x0A):  # leaf pages of a table, of an index (or a table WITHOUT ROWID)
            content = start + (int.from_bytes(data[header + 5 : header + 7], "big") or 65536)
            classes["table row" if data[header] == 0x0D else "index entry"].append((content, start + page_size))
    offsets = {}
    for name, ranges in classes.items():
        chosen = ranges[:: max(1, len(ranges) // 6)][:6]  # up to 6 pages of each class, spread over the file
        offsets[name] = [low + (high - low) * k // 7 for low, high in chosen for k in range(7)]
    return offsets


@pytest.mark.slow  # ~150 flips, each read and verified: ~30 s
def test_a_flipped_byte_anywhere_in_the_catalog_is_named_by_verify_or_changes_no_answer(tmp_path):
    config = _sweep_store(tmp_path)
    database = config.path / "store.sqlite"
    pristine = database.read_bytes()
    with FaissStore.open(config, writable=False) as store:
        probes = [vector for _, vector in sorted(store.chunk_vectors().items())]
        documents = [row[0] for row in store.db.execute("SELECT document FROM documents ORDER BY document")]
    baseline = _answers(config, probes, documents)
    assert verify_store(config)["ok"] and "error" not in baseline and baseline["notes"] == []
    served = {hit[0]: hit for hits in baseline["hits"] for hit in hits}
    offsets = _byte_classes(database)
    assert all(offsets.values()), {name: len(found) for name, found in offsets.items()}
    outcomes = {}
    for name, found in offsets.items():
        for n, offset in enumerate(found):
            for leftover in config.path.glob("store.sqlite-*"):
                leftover.unlink()
            data = bytearray(pristine)
            data[offset] ^= 1 << (n % 8)
            database.write_bytes(bytes(data))
            answers = _answers(config, probes, documents)
            named = not verify_store(config)["ok"]
            changed = {key: answers.get(key) for key in ("hits", "documents", "counts", "error")} != {
                key: baseline.get(key) for key in ("hits", "documents", "counts", "error")}
            assert named or not changed, (name, offset, answers)  # never a changed answer that verify calls ok
            for hits in answers.get("hits", []):  # and never a changed row served, named or not
                assert all(served.get(hit[0]) == hit for hit in hits), (name, offset, hits)
            for result in answers.get("documents", []):
                assert all(doc in [d for docs in baseline["documents"] for d in docs] for doc in result), (name, offset)
            if changed:
                assert "error" in answers or answers["notes"], (name, offset)  # left out, and said so
            outcome = "named" if named else "no answer changed"
            outcomes.setdefault(name, {}).setdefault(outcome, 0)
            outcomes[name][outcome] += 1
    database.write_bytes(pristine)
    print(outcomes)
