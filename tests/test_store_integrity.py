"""Backups that restore (issue 19): every generation a checkpoint commits can be restored exactly, and `store verify`
says so only when it can."""

import sqlite3

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
