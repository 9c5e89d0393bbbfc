"""Backups that restore (issue 19): every generation a checkpoint commits can be restored exactly, and `store verify`
says so only when it can."""

import sqlite3

import numpy as np
import pytest

from vectormill.stores.faiss_store import FaissStore, faiss_id
from vectormill.stores.records import DocumentDelete
from vectormill.stores.restore import restore_store, verify_store

from .servers.store_batches import SOURCE, upsert
from .test_store import current_segments, open_store, settings


def _split_checkpoint_with_a_chunk_deleted_and_written_again(tmp_path):
    """A sealed store of one segment; then documents deleted and written again (same chunks, same ids) among enough
    new ones that the next checkpoint splits into several segments. Returns the config, the ids written again, the
    state's chunk vectors and the seqs of the new parts."""
    with open_store(settings(tmp_path)) as store:
        store.write([upsert(f"old{i}", 1, 2) for i in range(6)])
        store.checkpoint()
    config = settings(tmp_path, max_segment_vectors=4, max_dead_ratio=1.0)
    with open_store(config) as store:
        store.write([DocumentDelete(SOURCE, f"old{i}") for i in range(3)])
        store.write([upsert(f"old{i}", 1, 2) for i in range(3)] + [upsert(f"new{i}", 1, 2) for i in range(10)])
        assert store.checkpoint() == 2
        back = {faiss_id(chunk.chunk_id) for i in range(3) for chunk in upsert(f"old{i}", 1, 2).chunks}
        parts = [segment.seq for segment in current_segments(store)[1:]]
        assert len(parts) > 2
        return config, back, store.chunk_vectors(), parts


def _all_in_the_last_part(tombstones, highs):  # the layout of stores written before issue 19
    return [[] for _ in highs[:-1]] + [list(tombstones)]


@pytest.mark.parametrize("layout", ["per part", "all in the last part"])
def test_a_checkpoint_split_into_several_segments_restores_exactly(tmp_path, monkeypatch, layout):
    from vectormill.stores import generations

    if layout != "per part":
        monkeypatch.setattr(generations, "tombstones_by_part", _all_in_the_last_part)
    config, back, vectors, parts = _split_checkpoint_with_a_chunk_deleted_and_written_again(tmp_path)
    with FaissStore.open(config, writable=False) as store:  # the ids written again sit in early parts too
        held = {seq: set(ids) for seq, ids in store.db.execute("SELECT segment, group_concat(faiss_id) FROM chunks "
                                                              "GROUP BY segment").fetchall() for ids in [ids.split(",")]}
        assert any(back & {int(i) for i in held[seq]} for seq in parts[:-1])
        if layout == "per part":  # the catalog knows which part carries each tombstone (a later merge carries it on)
            carried = {}
            for segment in current_segments(store):
                rows = sqlite3.connect(config.path / "segments" / segment.rows.name)
                carried.update({tombstone: segment.seq for tombstone in rows.execute("SELECT * FROM tombstones")})
                rows.close()
            recorded = {(target, identifier): seq for target, identifier, seq in store.db.execute("SELECT * FROM dead")}
            assert recorded == carried and len(set(recorded.values())) > 1
    assert verify_store(config)["ok"]
    result = restore_store(config, generation=2)
    assert result["restored_generation"] == 2 and result["as_generation"] == 3
    with FaissStore.open(config, writable=False) as store:
        restored = store.chunk_vectors()
        assert sorted(restored) == sorted(vectors)
        assert store.index_ids() == sorted(faiss_id(chunk_id) for chunk_id in vectors)
        assert store.document_count() == 16 and store.vector_count() == 32
    assert verify_store(config)["ok"]


def test_verify_names_a_generation_that_would_not_restore(tmp_path, monkeypatch):
    from vectormill.stores import generations

    monkeypatch.setattr(generations, "tombstones_by_part", lambda tombstones, highs: [[] for _ in highs])
    config, *_ = _split_checkpoint_with_a_chunk_deleted_and_written_again(tmp_path)  # written without its tombstones
    report = verify_store(config)
    assert not report["ok"]
    assert [(p["where"], p["file"]) for p in report["problems"]] == [("primary", "manifests/00000002.json")]
    assert "live in two segments" in report["problems"][0]["detail"]


def _replica(tmp_path, url=None, **options):
    return {"name": "r", "url": url or str(tmp_path / "replica"), "storage_options": options}


def _segment_names(folder):
    return sorted(p.name for p in (folder / "segments").iterdir()) if (folder / "segments").is_dir() else []


def test_a_copy_that_fails_its_read_back_never_appears_under_its_name_and_is_sent_again(tmp_path):
    from .servers.faulty_fs import register
    from .test_store import write_batches

    register()
    bad = settings(tmp_path, replica_attempts=2, replica_backoff_seconds=0.01,
                   replicas=[_replica(tmp_path, f"faulty://{tmp_path / 'replica'}", every=1, faults=["corrupt"])])
    with open_store(bad) as store:  # every upload is corrupted on its way
        write_batches(store, 0, 10)
        store.checkpoint()
        assert store.replication_problem() is not None
    replica = tmp_path / "replica"
    assert [n for n in _segment_names(replica) if not n.startswith(".")] == []  # nothing under a final name
    assert not list((replica / "manifests").glob("0*.json"))
    good = settings(tmp_path, replicas=[_replica(tmp_path)])
    with open_store(good) as store:
        assert store.checkpoint() is None and store.replication_problem() is None  # the newest offered again
    report = verify_store(good)
    assert report["ok"], report["problems"]
    assert [n for n in _segment_names(replica) if n.startswith(".")] == []  # leftovers of failed copies pruned


def test_a_same_size_file_a_replica_already_holds_is_read_back_before_it_is_trusted(tmp_path):
    import shutil

    from .test_store import write_batches

    config = settings(tmp_path)
    with open_store(config) as store:
        write_batches(store, 0, 10)
        store.checkpoint()
    replica = tmp_path / "replica"
    shutil.copytree(config.path / "segments", replica / "segments")  # e.g. a copy from before, never checked
    victim = max((replica / "segments").iterdir(), key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x20
    victim.write_bytes(bytes(data))  # same name, same size, another sha256
    replicated = settings(tmp_path, replicas=[_replica(tmp_path)])
    with open_store(replicated) as store:
        write_batches(store, 10, 12)
        store.checkpoint()
        assert store.replication_problem() is None
        assert store.replicator.statuses["r"].files_sent >= 2  # the damaged file again, and the new ones
    report = verify_store(replicated)
    assert report["ok"], report["problems"]


def test_verify_repair_copies_back_what_a_replica_lacks_or_holds_damaged_and_the_primary_s_damaged_files(tmp_path):
    import json

    from .test_replicas import run_cli
    from .test_store import damage, write_batches

    config = settings(tmp_path, replicas=[_replica(tmp_path)])
    with open_store(config) as store:
        for n in range(3):
            write_batches(store, n * 5, n * 5 + 5)
            store.checkpoint()
        files = sorted({entry.name for segment in current_segments(store) for entry in segment.files})
    primary_victim, replica_victim, replica_lost = files[0], files[1], files[2]
    damage(config.path / "segments" / primary_victim, "bitflip")
    damage(tmp_path / "replica" / "segments" / replica_victim, "bitflip")
    (tmp_path / "replica" / "segments" / replica_lost).unlink()
    result = run_cli(tmp_path, config, ["store", "verify", "--repair", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ok"] and report["problems"] == []
    assert sorted((item["where"], item["file"]) for item in report["repaired"]) == sorted([
        ("primary", f"segments/{primary_victim}"), ("r", f"segments/{replica_victim}"),
        ("r", f"segments/{replica_lost}")])
    assert verify_store(config)["ok"]
    with FaissStore.open(config, writable=False) as store:
        assert store.vector_count() and store.notes == []


def test_two_stores_pointed_at_one_replica_are_told_apart(tmp_path):
    from .test_store import write_batches

    shared = _replica(tmp_path)
    first = settings(tmp_path / "a", replicas=[shared])
    second = settings(tmp_path / "b", replicas=[shared])
    with open_store(first) as store:
        write_batches(store, 0, 5)
        store.checkpoint()
        first_id = store.store_id
    before = sorted(p.read_bytes() for p in (tmp_path / "replica" / "manifests").iterdir())
    with open_store(settings(tmp_path / "b")):
        pass  # created on its own: a new store never starts over a replica that holds generations
    with open_store(second) as store:
        write_batches(store, 10, 20)
        store.checkpoint()
        problem = store.replication_problem()
        second_id = store.store_id
    assert first_id != second_id and problem and first_id in problem and second_id in problem
    assert sorted(p.read_bytes() for p in (tmp_path / "replica" / "manifests").iterdir()) == before  # untouched
    report = verify_store(second)
    assert not report["ok"]
    assert any(first_id in p["detail"] and second_id in p["detail"] for p in report["problems"])
    assert verify_store(first)["ok"]


def test_after_a_restore_a_replica_that_was_out_of_reach_keeps_its_generations(tmp_path):
    import shutil

    from .test_store import write_batches

    config = settings(tmp_path, keep_generations=3, max_dead_ratio=1.0,
                      replicas=[_replica(tmp_path, str(tmp_path / "near")), {"name": "far", "url": str(tmp_path / "far")}])
    with open_store(config) as store:
        write_batches(store, 0, 5)
        store.checkpoint()  # generation 1 on both
        shutil.move(tmp_path / "near", tmp_path / "near-away")
        (tmp_path / "near").write_text("")  # out of reach: its folder cannot be made
        write_batches(store, 5, 10)
        store.checkpoint()
        write_batches(store, 10, 15)
        assert store.checkpoint() == 3  # 2 and 3 on `far` only
    shutil.rmtree(config.path)  # the primary is lost, and `far` is out of reach now
    shutil.move(tmp_path / "far", tmp_path / "far-away")
    (tmp_path / "far").write_text("")
    (tmp_path / "near").unlink()
    shutil.move(tmp_path / "near-away", tmp_path / "near")
    result = restore_store(config, source="r")
    assert (result["restored_generation"], result["as_generation"]) == (1, 2)  # 2: past what was reachable
    (tmp_path / "far").unlink()
    shutil.move(tmp_path / "far-away", tmp_path / "far")
    far = {p.name: p.read_bytes() for p in (tmp_path / "far" / "manifests").iterdir()}
    with open_store(config) as store:
        assert store.identity["timeline"] == 2
        write_batches(store, 20, 22)
        store.checkpoint()  # generation 3 here: `far` holds a 3 of timeline 1, never overwritten
        far_status = store.replicator.statuses["far"]
        assert far_status.ok is False and "timeline 1" in far_status.error and store.generation == 3
        write_batches(store, 22, 24)
        assert store.checkpoint() == 4  # numbered past what `far` holds: copied everywhere
        assert all(status.ok for status in store.replicator.statuses.values())
    assert all((tmp_path / "far" / "manifests" / name).read_bytes() == data
               for name, data in far.items() if (tmp_path / "far" / "manifests" / name).exists())


def _flip_in_database(config, needle: bytes) -> None:
    """Flip one byte of `needle` where the database file holds it (same length: SQLite's structure stays valid)."""
    database = config.path / "store.sqlite"
    data = bytearray(database.read_bytes())
    at = data.find(needle)
    assert at >= 0 and not (config.path / "store.sqlite-wal").exists()
    data[at + len(needle) - 1] ^= 0x01
    database.write_bytes(bytes(data))


def test_a_flipped_byte_in_a_chunk_row_is_named_by_verify_and_never_served(tmp_path):
    from .servers.store_batches import vector_for
    from .test_store import write_batches

    config = settings(tmp_path)
    with open_store(config) as store:
        write_batches(store, 0, 10)
        store.checkpoint()
    _flip_in_database(config, b"d3 chunk 0 v1")  # d3's text now reads "d3 chunk 0 v0"
    report = verify_store(config)
    assert not report["ok"]
    assert [p["file"] for p in report["problems"]] == ["store.sqlite"] and "s/d3 (1 row(s))" in report["problems"][0]["detail"]
    with FaissStore.open(config, writable=False) as store:
        hits = store.search(vector_for("d3 chunk 0 v1"), k=3)
        assert "d3" not in [hit.document for hit in hits] and len(hits) == 2
        assert any("DAMAGED CHUNK ROW" in note and "s/d3" in note for note in store.notes)
    restore_store(config, generation=1)  # an intact generation brings the row back
    assert verify_store(config)["ok"]
    with FaissStore.open(config, writable=False) as store:
        assert store.search(vector_for("d3 chunk 0 v1"), k=1)[0].text == "d3 chunk 0 v1"


def store_written_before(tmp_path, *statements):
    """A sealed store of 10 batches, then changed by `statements` into one written before a column was added."""
    import sqlite3 as sqlite

    from .test_store import write_batches

    config = settings(tmp_path)
    with open_store(config) as store:
        write_batches(store, 0, 10)
        store.checkpoint()
    db = sqlite.connect(config.path / "store.sqlite")
    for statement in statements:
        db.execute(statement)
    db.commit()
    db.close()
    return config


def test_rows_written_before_checksums_get_one_at_the_first_writable_open(tmp_path):
    config = store_written_before(tmp_path, "ALTER TABLE chunks DROP COLUMN checksum")
    with FaissStore.open(config, writable=False) as store:  # a reader of such a store still searches
        assert store.search(np.ones(8, dtype=np.float32), k=1)
    with open_store(config) as store:
        assert store.db.execute("SELECT count(*) FROM chunks WHERE checksum IS NULL").fetchone()[0] == 0
    assert verify_store(config)["ok"]
