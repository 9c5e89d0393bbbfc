"""The FAISS store on real files: WAL replay, checkpoints, corrupt checkpoints, the writer lock, index factories."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from .servers.store_batches import DIMENSION, SOURCE, batch, chunk_text, expected_after, upsert, vector_for
from vectormill.stores.faiss_store import FaissStore, StoreCorruptError, StoreError, faiss_id
from vectormill.stores.lock import StoreLockedError
from vectormill.stores.records import CursorUpdate, DocumentDelete, DocumentFailed, DocumentUpsert, PropertyUpdate
from vectormill.stores.settings import StoreSettings


def settings(tmp_path, **overrides):
    values = dict(path=tmp_path / "store", checkpoint_every_vectors=10_000, checkpoint_every_seconds=None,
                  keep_generations=2)
    values.update(overrides)
    return StoreSettings(**values)


def open_store(config, **kwargs):
    return FaissStore.open(config, model="test-model", dimension=DIMENSION, **kwargs)


def write_batches(store, start, stop):
    for i in range(start, stop):
        store.write(batch(i))


def assert_holds(store, count):
    """The store holds exactly batches 0 … count-1: versions, vectors, and the same ids in FAISS."""
    versions, vectors = expected_after(count)
    assert store.document_versions(SOURCE) == versions
    stored = store.chunk_vectors()
    assert sorted(stored) == sorted(vectors)
    for chunk_id, vector in vectors.items():
        np.testing.assert_array_equal(stored[chunk_id], vector)
    assert store.index_ids() == sorted(faiss_id(c) for c in vectors)
    assert store.cursor(SOURCE) == (str(count - 1) if count else None)


def test_writes_replay_from_the_log_without_a_checkpoint(tmp_path):
    config = settings(tmp_path)
    with open_store(config) as store:
        write_batches(store, 0, 30)
        assert_holds(store, 30)
    with FaissStore.open(config, writable=False) as store:
        assert store.generation == 0 and store.lsn == 30
        assert_holds(store, 30)
        hit = store.search(vector_for("d29 chunk 0 v1"), k=1)[0]
        assert (hit.document, hit.text) == ("d29", "d29 chunk 0 v1")


def test_checkpoints_keep_k_generations_and_the_log_back_to_the_oldest(tmp_path):
    config = settings(tmp_path, checkpoint_every_vectors=15)
    with open_store(config) as store:
        write_batches(store, 0, 40)
        store.checkpoint()
        stats = store.stats()
    assert [g["generation"] for g in stats["generations"]] == [stats["generation"], stats["generation"] - 1]
    assert stats["generation"] >= 4
    oldest_lsn = stats["generations"][-1]["lsn"]
    segments = sorted((tmp_path / "store" / "wal").glob("*.wal"))
    assert int(segments[0].stem) <= oldest_lsn + 1  # the log still reaches the oldest kept generation
    with open_store(config) as store:
        assert_holds(store, 40)
        assert store.notes == []


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncate", "bitflip"])
@pytest.mark.parametrize("file", ["index.faiss", "meta.sqlite", "manifest.json"])
def test_corrupt_newest_checkpoint_falls_back_to_an_older_one_plus_the_log(tmp_path, how, file):
    config = settings(tmp_path)
    with open_store(config) as store:
        write_batches(store, 0, 10)
        store.checkpoint()
        write_batches(store, 10, 20)
        newest = store.checkpoint()
        write_batches(store, 20, 25)
    damage(tmp_path / "store" / "generations" / f"{newest:08d}" / file, how)
    with FaissStore.open(config, writable=False) as store:  # a reader recovers too, and moves nothing
        assert_holds(store, 25)
        assert "CORRUPT CHECKPOINT" in store.notes[0] and file in store.notes[0]
    with open_store(config) as store:
        assert_holds(store, 25)
        assert "CORRUPT CHECKPOINT" in store.notes[0] and "quarantine" in store.notes[0]
        assert store.generation == newest - 1
        assert store.checkpoint() == newest + 1  # never reuses the damaged number
    assert list((tmp_path / "store" / "quarantine").glob(f"{newest:08d}-*"))
    with open_store(config) as store:
        assert store.notes == []
        assert_holds(store, 25)


def test_corrupt_checkpoint_without_a_fallback_is_refused_with_a_clear_message(tmp_path):
    config = settings(tmp_path, keep_generations=1)
    with open_store(config) as store:
        write_batches(store, 0, 10)
        store.checkpoint()
        write_batches(store, 10, 12)
        newest = store.checkpoint()
    damage(tmp_path / "store" / "generations" / f"{newest:08d}" / "index.faiss", "bitflip")
    with pytest.raises(StoreCorruptError) as error:
        FaissStore.open(config, writable=False)
    message = str(error.value)
    assert f"{newest:08d}/index.faiss: sha256 mismatch" in message and "store verify" in message


def test_a_second_writer_is_refused_in_this_process_and_from_another(tmp_path):
    config = settings(tmp_path)
    with open_store(config):
        with pytest.raises(StoreLockedError, match="already open for writing"):
            open_store(config)
        script = ("import sys\nfrom vectormill.stores.faiss_store import FaissStore\n"
                  "from vectormill.stores.settings import StoreSettings\n"
                  f"FaissStore.open(StoreSettings(path={str(config.path)!r}), model='test-model', dimension=8)\n")
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
        assert result.returncode != 0 and "already open for writing by another process" in result.stderr
        with FaissStore.open(config, writable=False) as reader:  # readers are not locked out
            assert reader.lsn == 0
    with open_store(config) as store:  # released on close
        store.write(batch(0))


def test_bad_input_is_refused_before_it_reaches_the_log(tmp_path):
    config = settings(tmp_path)
    with open_store(config) as store:
        store.write(batch(0))
        good = upsert("dup", 1, 2)
        twins = type(good)(**{**good.__dict__, "chunks": (good.chunks[0], good.chunks[0])})
        with pytest.raises(StoreError, match="share a chunk id"):
            store.write([twins])
        stolen = type(good)(**{**good.__dict__, "chunks": batch(0)[0].chunks, "vectors": batch(0)[0].vectors})
        with pytest.raises(StoreError, match="already stored for s/d0"):
            store.write([stolen])
        nan = type(good)(**{**good.__dict__, "vectors": np.full((2, DIMENSION), np.nan, dtype=np.float32)})
        with pytest.raises(StoreError, match="NaN"):
            store.write([nan])
        assert store.lsn == 1
    with open_store(config) as store:
        assert_holds(store, 1)


def test_model_mismatch_and_bad_factory_are_refused(tmp_path):
    with open_store(settings(tmp_path)):
        pass
    with pytest.raises(StoreError, match="holds vectors of model 'test-model'"):
        FaissStore.open(settings(tmp_path), model="other", dimension=DIMENSION)
    with pytest.raises(StoreError, match="not a valid FAISS index factory"):
        open_store(settings(tmp_path / "b", index_factory="NoSuchIndex42"))


def test_ivf_trains_at_the_first_checkpoint_with_enough_vectors(tmp_path):
    config = settings(tmp_path, index_factory="IVF4,Flat", train_vectors=60, search_parameters="nprobe=4")
    with open_store(config) as store:
        write_batches(store, 0, 10)
        store.checkpoint()
        assert store.index_kind == "staging"  # too few vectors to train on: exact flat search meanwhile
        write_batches(store, 10, 60)
        store.checkpoint()
        assert store.index_kind == "final" and store.index.is_trained
        write_batches(store, 60, 70)  # updates and deletes go to the trained index
        assert_holds(store, 70)
    with FaissStore.open(config, writable=False) as store:
        assert store.index_kind == "final" and store.stats()["generations"][0]["vectors"] > 60
        assert_holds(store, 70)
        assert store.search(vector_for("d66 chunk 0 v1"), k=1)[0].document == "d66"


def test_hnsw_handles_deletes_and_updates_without_remove_ids(tmp_path):
    config = settings(tmp_path, index_factory="HNSW16")
    with open_store(config) as store:
        write_batches(store, 0, 30)  # batches 4, 9, … change documents; 6, 13, … delete them
        assert_holds(store, 30)
        deleted = upsert("d2", 1, 1 + 2 % 3)  # deleted by batch 6
        for hit in store.search(deleted.vectors[0], k=50):
            assert hit.document != "d2"
        assert store.stats()["vectors"] == len(expected_after(30)[1])
        store.checkpoint()  # rebuilds without the stale ids
        assert store.index.ntotal == len(expected_after(30)[1])
        store.write([DocumentDelete(SOURCE, "d29")])
        assert all(hit.document != "d29" for hit in store.search(vector_for("d29 chunk 0 v1"), k=5))
    with FaissStore.open(config, writable=False) as store:
        assert "d29" not in store.document_versions(SOURCE)


def test_stats_show_generations_sizes_and_replicas(tmp_path):
    config = settings(tmp_path, replicas=[{"name": "disk", "url": str(tmp_path / "replica")}])
    with open_store(config) as store:
        write_batches(store, 0, 5)
        store.checkpoint()
        stats = store.stats()
    assert stats["vectors"] == len(expected_after(5)[1]) and stats["documents"] == 5
    assert stats["generations"][0]["generation"] == 1 and stats["generations"][0]["bytes"] > 0
    assert stats["replicas"][0]["name"] == "disk" and stats["replicas"][0]["ok"] is True
    with FaissStore.open(config, writable=False) as store:  # a reader looks at what the replica holds
        replica = store.stats()["replicas"][0]
        assert (replica["ok"], replica["generation"]) == (True, 1)


def test_replica_policy_is_validated():
    with pytest.raises(ValidationError, match="only 1 replica"):
        StoreSettings(min_replicas_confirmed=2, replicas=[{"name": "a", "url": "/tmp/a"}])
    with pytest.raises(ValidationError, match="unique"):
        StoreSettings(replicas=[{"name": "a", "url": "/tmp/a"}, {"name": "a", "url": "/tmp/b"}])
    assert StoreSettings().replicas_required == 0  # no replicas: replication is off
    secret = StoreSettings(replicas=[{"name": "a", "url": "s3://b/p", "storage_options": {"secret": "hunter2"}}])
    assert "hunter2" not in repr(secret)


def test_the_retry_queue_counts_failures_and_empties_as_documents_land(tmp_path):
    config = settings(tmp_path)
    first, later = "2026-01-01T00:00:00+00:00", "2026-01-02T00:00:00+00:00"
    with open_store(config) as store:
        store.write([DocumentFailed(SOURCE, "d0", '{"id": "d0"}', "503 from the server", first),
                     DocumentFailed(SOURCE, "gone", '{"id": "gone"}', "timed out", first),
                     DocumentFailed("other", "x", "{}", "unreadable", first), CursorUpdate(SOURCE, "past them")])
        store.write([DocumentFailed(SOURCE, "d0", '{"id": "d0", "v": 2}', "reset by peer", later)])
        store.checkpoint()
        queued = store.retry_queue(SOURCE)
        assert [(q.document, q.attempts, q.reason, q.first_failed, q.last_failed, q.ref) for q in queued] == [
            ("d0", 2, "reset by peer", first, later, '{"id": "d0", "v": 2}'),
            ("gone", 1, "timed out", first, first, '{"id": "gone"}')]
        store.write([upsert("d0", 1, 2), DocumentDelete(SOURCE, "gone")])  # landed; deleted at the source
    for writable in (True, False):  # from the checkpoint plus the log, by the writer and by a reader
        with FaissStore.open(config, writable=writable) as store:
            assert store.retry_queue(SOURCE) == []
            assert [q.document for q in store.retry_queue()] == ["x"]
            assert store.cursor(SOURCE) == "past them"


def test_properties_and_the_ocr_flag_survive_reopening(tmp_path):
    config = settings(tmp_path)
    scanned = upsert("scan", 1, 1)
    scanned = DocumentUpsert(SOURCE, "scan", "v1", "scan", "scan.pdf", None,
                             (dataclasses.replace(scanned.chunks[0], ocr=True),), scanned.vectors)
    with open_store(config) as store:
        store.write([scanned, PropertyUpdate("precision", "bf16")])
        store.checkpoint()
        store.write([upsert("text", 1, 1), PropertyUpdate("note", "x"), PropertyUpdate("note", None)])
    with FaissStore.open(config, writable=False) as store:
        assert store.properties() == {"precision": "bf16"}
        assert store.search(scanned.vectors[0], k=1)[0].ocr is True
        assert store.search(vector_for(chunk_text("text", 0, 1)), k=1)[0].ocr is False
