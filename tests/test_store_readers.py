"""Readers see one consistent generation, always, while a writer writes, checkpoints, compacts and prunes."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vectormill.stores.faiss_store import FaissStore
from vectormill.stores.settings import StoreSettings

from vectormill.stores.records import DocumentDelete

from .servers.store_batches import DIMENSION, SOURCE, batch, chunk_text, upsert, vector_for
from .test_store import assert_holds

REPO = Path(__file__).resolve().parents[1]

# The writer prunes exactly when the reader first opens a file of the store's generations: an audit hook
# (in a subprocess, so that it does not stay in pytest's) runs the writer at that moment.
PRUNED_UNDER_A_READER = """
import json, os, sys
sys.path.insert(0, {repo!r})
from tests.servers.store_batches import batch, vector_for
from tests.test_store import assert_holds
from vectormill.stores.faiss_store import FaissStore
from vectormill.stores.settings import StoreSettings

config = StoreSettings(path={path!r}, checkpoint_every_seconds=None, keep_generations=1)
writer = FaissStore.open(config, model="test-model", dimension=8)
for i in range(20):
    writer.write(batch(i))
writer.checkpoint()
state = {{"armed": False, "fired": 0}}

def writer_moves_on(event, args):
    if not state["armed"] or event != "open" or not isinstance(args[0], (str, os.PathLike)):
        return
    path = os.fspath(args[0])
    if not path.startswith({path!r}) or not any(part in path for part in ("segments", "generations")):
        return
    state["armed"] = False
    state["fired"] += 1
    for i in range(20, 24):
        writer.write(batch(i))
        writer.checkpoint()  # keep_generations = 1: what the reader was about to open goes
    if hasattr(writer, "compact"):
        writer.compact()  # every segment rewritten: none the reader's generation named is left

sys.addaudithook(writer_moves_on)
state["armed"] = True
reader = FaissStore.open(config, writable=False)
hit = reader.search(vector_for("d3 chunk 0 v1"), k=1)[0]
assert_holds(reader, reader.lsn)
print(json.dumps({{"fired": state["fired"], "document": hit.document, "lsn": reader.lsn, "notes": reader.notes}}))
"""


def test_a_reader_whose_generation_is_pruned_while_it_opens_moves_to_the_newer_one(tmp_path):
    script = tmp_path / "reader.py"
    script.write_text(PRUNED_UNDER_A_READER.format(repo=str(REPO), path=str(tmp_path / "store")))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.splitlines()[-1])
    assert seen["fired"] == 1  # the writer did prune under the reader
    assert seen["document"] == "d3" and seen["lsn"] == 24 and seen["notes"] == []


WRITER = """
import sys
sys.path.insert(0, {repo!r})
from tests.servers.store_batches import batch
from vectormill.stores.faiss_store import FaissStore
from vectormill.stores.settings import StoreSettings

config = StoreSettings(path={path!r}, checkpoint_every_seconds=None, keep_generations=1, merge_factor=2)
with FaissStore.open(config, model="test-model", dimension=8) as store:
    for i in range({batches}):
        store.write(batch(i))
        if i % 4 == 3:
            store.checkpoint()
        if i % 15 == 14:
            store.compact()
print("done", flush=True)
"""


@pytest.mark.slow
def test_readers_in_a_loop_never_fail_while_the_writer_checkpoints_compacts_and_prunes(tmp_path):
    config = StoreSettings(path=tmp_path / "store", checkpoint_every_seconds=None)
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(repo=str(REPO), path=str(config.path), batches=150))
    with FaissStore.open(config, model="test-model", dimension=DIMENSION):
        pass  # the store exists before the first reader looks
    writer = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    reads, seen = 0, set()
    long_lived = FaissStore.open(config, writable=False)  # follows the writer while everything it saw is pruned
    try:
        while writer.poll() is None or reads < 3:
            with FaissStore.open(config, writable=False) as reader, reader.snapshot():
                lsn = reader.lsn
                assert_holds(reader, lsn)  # one consistent state: rows, segment ids, cursor
                if lsn:
                    hit = reader.search(vector_for(f"d{lsn - 1} chunk 0 v1"), k=1)[0]
                    assert hit.document == f"d{lsn - 1}"
                assert not any("CORRUPT" in note for note in reader.notes), reader.notes
            with long_lived.snapshot():
                assert_holds(long_lived, long_lived.lsn)
                seen.add(long_lived.lsn)
            assert not long_lived.db.in_transaction  # no read transaction held between calls
            reads += 1
        out, err = writer.communicate(timeout=120)
    except BaseException:
        writer.kill()
        long_lived.close()
        raise
    assert writer.returncode == 0 and out.split() == ["done"], err[-3000:]
    print(f"{reads} reads while the writer ran")
    with FaissStore.open(config, writable=False) as reader:
        assert_holds(reader, 150)
    with long_lived.snapshot():
        assert_holds(long_lived, 150)  # the long-lived reader sees the last write too
    assert len(seen) > 1 and not any("CORRUPT" in note for note in long_lived.notes)
    long_lived.close()


def _store_with_tombstones(tmp_path, **overrides):
    """A store of 120 sealed documents, every other one deleted since (its chunks are tombstones of the segment)."""
    from .test_store import open_store, settings

    config = settings(tmp_path, **overrides)
    with open_store(config) as store:
        store.write([upsert(f"d{i}", 1, 2) for i in range(120)])
        store.checkpoint()
        store.write([DocumentDelete(SOURCE, f"d{i}") for i in range(0, 120, 2)])
    return config


@pytest.mark.parametrize("factory", ["Flat", "IVF4,Flat", "HNSW8"])
def test_the_tombstone_filter_is_built_once_per_segment_not_per_query(tmp_path, monkeypatch, factory):
    import faiss

    config = _store_with_tombstones(tmp_path, index_factory=factory, train_vectors=100)
    built = []
    for name in ("IDSelectorBatch", "IDSelectorBitmap", "IDSelectorArray"):
        original = getattr(faiss, name)
        monkeypatch.setattr(faiss, name, lambda *args, _original=original, _name=name: built.append(_name)
                            or _original(*args))
    with FaissStore.open(config, writable=False) as reader:
        for i in range(0, 120, 7):  # a deleted document's own vector never comes back, a live one comes first
            hits = reader.search(vector_for(chunk_text(f"d{i}", 0, 1)), k=3)
            assert all(int(hit.document[1:]) % 2 for hit in hits)
            if i % 2:
                assert hits[0].document == f"d{i}"
    assert len(built) <= 1  # one segment with tombstones: at most one filter, for all 18 queries


@pytest.mark.parametrize("factory", ["IDMap,Flat", "IDMap,HNSW16", "IVF2,Flat", "IDMap,PQ2x4"])
def test_a_part_whose_nearest_vectors_are_all_dead_searches_with_one_filter_built_once(monkeypatch, factory):
    import faiss

    from vectormill.stores.search import Part, search_parts

    rng = np.random.default_rng(7)
    query = rng.standard_normal(8).astype(np.float32)
    near = 5 * query + 0.01 * rng.standard_normal((300, 8)).astype(np.float32)  # the 300 nearest: all dead
    far = rng.standard_normal((700, 8)).astype(np.float32)
    vectors, ids = np.vstack([near, far]), rng.choice(2**62, size=1000, replace=False).astype(np.int64)
    index = faiss.index_factory(8, factory, faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.add_with_ids(vectors, ids)
    if "HNSW" in factory:  # a wide search: the nearest it finds are the dead ones
        faiss.ParameterSpace().set_index_parameters(index, "efSearch=1000")
    if "IVF" in factory:
        faiss.ParameterSpace().set_index_parameters(index, "nprobe=2")
    built = []
    for name in ("IDSelectorBatch", "IDSelectorBitmap"):
        original = getattr(faiss, name)
        monkeypatch.setattr(faiss, name, lambda *args, _original=original: built.append(1) or _original(*args))
    part = Part(index, ids[:300], 700)
    exact = Part(faiss.index_factory(8, "IDMap,Flat", faiss.METRIC_INNER_PRODUCT), np.empty(0, dtype=np.int64), 700)
    exact.index.add_with_ids(vectors[300:], ids[300:])
    for _ in range(5):
        found = [identifier for _, identifier in search_parts([part], query, 10)]
        assert len(found) == 10 and not set(found) & set(ids[:300].tolist())
        if "Flat" in factory:  # exact indexes: exactly the best live ones (graph and PQ searches are approximate)
            assert found == [identifier for _, identifier in search_parts([exact], query, 10)]
    assert len(built) == 1


def test_a_long_lived_reader_sees_new_writes_and_does_not_hold_the_write_ahead_log(tmp_path):
    from .test_store import open_store, settings

    config = settings(tmp_path)
    wal = config.path / "store.sqlite-wal"
    with open_store(config) as writer:
        writer.write(batch(0))
        writer.checkpoint()
        with FaissStore.open(config, writable=False) as reader:
            assert reader.search(vector_for("d0 chunk 0 v1"), k=1)[0].document == "d0"
            largest = 0
            for i in range(1, 400):
                writer.write([upsert(f"d{i}", 1, 3), *batch(i)[1:]])
                if i % 100 == 0:
                    writer.checkpoint()  # a new generation: the reader moves to it
                largest = max(largest, wal.stat().st_size)
                if i % 50 == 0:  # the reader follows: new writes and new generations without reopening
                    assert reader.search(vector_for(f"d{i} chunk 2 v1"), k=1)[0].document == f"d{i}"
                    assert reader.lsn == i + 1 and not reader.db.in_transaction
    # SQLite resets the log at each automatic checkpoint (1000 pages) once no reader holds an older state
    page = 4096
    assert largest < 2 * 1000 * page, largest


def test_a_read_only_open_after_a_chmod_hashes_the_generation_once(tmp_path, monkeypatch):
    from vectormill.stores import generations

    from .test_store import open_store, settings

    config = settings(tmp_path)
    with open_store(config) as store:
        for i in range(30):
            store.write(batch(i))
        store.checkpoint()
    for file in (config.path / "segments").iterdir():
        file.chmod(0o444)  # a new ctime: the recorded fingerprints no longer match
    hashed = []
    original = generations.file_sha256
    monkeypatch.setattr(generations, "file_sha256", lambda path: hashed.append(path) or original(path))
    for _ in range(3):
        with FaissStore.open(config, writable=False) as reader:
            assert reader.search(vector_for("d3 chunk 0 v1"), k=1)[0].document == "d3"
            assert reader.notes == []
    files = len(list((config.path / "segments").iterdir()))
    assert len(hashed) == files  # the first reader hashed each file once and recorded it; the others hashed nothing
