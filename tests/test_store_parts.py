"""A document written in parts: durable parts, invisible until their commit, which swaps versions in one write;
a writer SIGKILLed anywhere in between leaves the old version live, and the parts are dropped when it reopens."""

import hashlib
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vectormill.stores.faiss_store import FaissStore, StoreError, faiss_id
from vectormill.stores.records import (ChunkRecord, DocumentFailed, DocumentPart, DocumentPartsCommit,
                                       DocumentPartsDiscard)
from vectormill.stores.settings import StoreSettings

from .servers.store_batches import DIMENSION, SOURCE, upsert, vector_for

REPO = Path(__file__).resolve().parents[1]
LARGE = "large"


def version_chunks(version: int, count: int) -> list[tuple[ChunkRecord, np.ndarray]]:
    """Chunks of version `version` of the large document: odd positions keep their text across versions."""
    chunks = []
    for position in range(count):
        text = f"{LARGE} chunk {position} v{version if position % 2 == 0 else 1}"
        digest = hashlib.sha256(text.encode()).hexdigest()
        chunk_id = hashlib.sha256(f"{SOURCE}/{LARGE}/{position}/{digest}".encode()).hexdigest()[:32]
        chunks.append((ChunkRecord(chunk_id, position, text, digest, None, None, 4), vector_for(text)))
    return chunks


def chunk_count(version: int) -> int:
    return 12 - version % 4  # versions hold more or fewer chunks than the one before


def parts(version: int, size: int = 3) -> list:
    """The writes of one version of the large document: its parts, then their commit."""
    chunks = version_chunks(version, chunk_count(version))
    writes = [[DocumentPart(SOURCE, LARGE, tuple(c for c, _ in chunks[start:start + size]),
                            np.stack([v for _, v in chunks[start:start + size]]), first=start == 0)]
              for start in range(0, len(chunks), size)]
    writes.append([DocumentPartsCommit(SOURCE, LARGE, f"v{version}", "Large", "large.txt", None, len(chunks),
                                       {"kind": "log"})])
    return writes


def settings(root: Path) -> StoreSettings:
    return StoreSettings(path=root / "store", checkpoint_every_vectors=10_000, checkpoint_every_seconds=None,
                         keep_generations=1)


def open_store(root: Path, **kwargs) -> FaissStore:
    return FaissStore.open(settings(root), model="test-model", dimension=DIMENSION, **kwargs)


def assert_large_at(store: FaissStore, version: int, staged: int = 0) -> None:
    """The large document is exactly version `version`, next to the small one, each chunk once; `staged` rows of
    parts not yet committed."""
    expected = {record.chunk_id: vector for record, vector in version_chunks(version, chunk_count(version))}
    small = upsert("small", 1, 2)
    expected.update({record.chunk_id: vector for record, vector in zip(small.chunks, small.vectors)})
    assert store.document_versions(SOURCE) == {LARGE: f"v{version}", "small": "v1"}
    stored = store.chunk_vectors()
    assert sorted(stored) == sorted(expected)
    for chunk_id, vector in expected.items():
        np.testing.assert_array_equal(stored[chunk_id], vector)
    assert store.index_ids() == sorted(faiss_id(chunk_id) for chunk_id in expected)  # no vector twice
    assert store.vector_count() == len(expected) and store.document_count() == 2
    (document,) = store.document(LARGE, SOURCE)
    assert [chunk["position"] for chunk in document["chunks"]] == list(range(chunk_count(version)))
    assert store.db.execute("SELECT count(*) FROM staged_chunks").fetchone()[0] == staged


def first_versions(store: FaissStore) -> None:
    store.write([upsert("small", 1, 2)])
    for write in parts(1):
        store.write(write)
    store.checkpoint()  # the old version sealed: the commit of the next one leaves tombstones


def test_parts_are_invisible_until_their_commit_swaps_the_versions(tmp_path):
    with open_store(tmp_path) as store:
        first_versions(store)
        assert_large_at(store, 1)
        *part_writes, commit = parts(2)
        store.write([DocumentFailed(SOURCE, LARGE, "{}", "interrupted", "2026-12-03T00:00:00+00:00")])
        staged = 0
        for write in part_writes:
            store.write(write)
            staged += len(write[0].chunks)
            assert_large_at(store, 1, staged)  # parts are durable but neither searched nor counted
            assert f"{LARGE} chunk 0 v2" not in {hit.text for hit in store.search(vector_for(f"{LARGE} chunk 0 v2"), 5)}
        store.write(commit)
        assert_large_at(store, 2)
        assert store.retry_queue(SOURCE) == []  # landed
        assert store.search(vector_for(f"{LARGE} chunk 0 v2"), 1)[0].text == f"{LARGE} chunk 0 v2"
        # Odd positions kept their text and vector: they stay in the sealed segment, the others are tombstones.
        dead = store.db.execute("SELECT count(*) FROM dead").fetchone()[0]
        assert dead == len(range(0, chunk_count(1), 2)) + (chunk_count(1) - chunk_count(2)) // 2
        store.checkpoint()
        assert_large_at(store, 2)
    with open_store(tmp_path, writable=False) as reader:
        assert_large_at(reader, 2)


def test_a_commit_that_misses_parts_is_refused_and_a_discard_keeps_the_old_version(tmp_path):
    with open_store(tmp_path) as store:
        first_versions(store)
        *part_writes, commit = parts(2)
        for write in part_writes[:-1]:
            store.write(write)
        with pytest.raises(StoreError, match=f"{SOURCE}/{LARGE}: 9 chunks were written in parts, but its commit "
                                             f"names 10"):
            store.write(commit)
        store.write([DocumentPartsDiscard(SOURCE, LARGE)])
        assert_large_at(store, 1)
        for write in parts(3):  # a first part starts afresh, whatever was staged before
            store.write(write)
        assert_large_at(store, 3)


def test_parts_left_by_a_writer_that_stopped_are_dropped_when_the_store_is_next_opened(tmp_path):
    with open_store(tmp_path) as store:
        first_versions(store)
        for write in parts(2)[:-1]:
            store.write(write)
    with open_store(tmp_path) as store:
        assert any("discarded 10 chunk(s)" in note for note in store.notes), store.notes
        assert_large_at(store, 1)


def test_a_commit_of_more_vectors_than_a_checkpoint_interval_is_sealed_in_segments_of_that_interval(tmp_path):
    from vectormill.stores.generations import current_manifest
    from vectormill.stores.manifest import segments_of

    config = StoreSettings(path=tmp_path / "store", checkpoint_every_vectors=4, checkpoint_every_seconds=None)
    with FaissStore.open(config, model="test-model", dimension=DIMENSION) as store:
        store.write([upsert("small", 1, 2)])
        for write in parts(1):  # 11 chunks: the commit makes them pending at once, and a checkpoint due
            store.write(write)
        sizes = [segment.vectors for segment in segments_of(current_manifest(store.catalog))]
        assert sum(sizes) == 13 and max(sizes) <= 4, sizes
        assert_large_at(store, 1)


WRITER = """
import signal, os, sys
sys.path.insert(0, {repo!r})
from pathlib import Path
from tests.test_store_parts import open_store, parts, first_versions

target, last = int(sys.argv[1]), int(sys.argv[2])
seen = [0]


def statement(sql):
    if sql.startswith("--"):  # run inside the statement that fired it (the keyword index's triggers and FTS5's own)
        return
    seen[0] += 1
    if seen[0] == target:
        os.kill(os.getpid(), signal.SIGKILL)


store = open_store(Path({root!r}))
if not store.document_versions("s"):
    first_versions(store)
version = int(store.document_versions("s")["large"][1:]) + 1
store.db.set_trace_callback(statement)
with open({log!r}, "a") as log:
    for version in range(version, last + 1):
        log.write(f"begin {{version}}\\n")
        for write in parts(version):
            log.write(f"{{'commit' if hasattr(write[0], 'version') else 'part'}} {{version}}\\n")
            log.flush()  # in the page cache: survives SIGKILL
            store.write(write)
        log.write(f"ack {{version}}\\ncheckpoint {{version}}\\n")
        log.flush()
        store.checkpoint()
store.close()
print("done", flush=True)
"""


def logged(log: Path, kind: str) -> int:
    lines = [line.split() for line in log.read_text().splitlines()] if log.exists() else []
    return max((int(number) for word, number in lines if word == kind), default=1)


@pytest.mark.slow  # ~15 writer processes
def test_sigkill_while_writing_in_parts_leaves_one_whole_version_and_the_next_run_finishes(tmp_path):
    log = tmp_path / "log"
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(repo=str(REPO), root=str(tmp_path), log=str(log)))
    subprocess.run([sys.executable, str(script), "0", "1"], check=True, capture_output=True, timeout=120)
    stored, landed = 1, {}
    for target in (1, 2, 4, 7, 11, 16, 23, 31, 40, 52, 66, 83, 101):
        writer = subprocess.run([sys.executable, str(script), str(target), "1000"], capture_output=True, text=True,
                                timeout=120)
        assert writer.returncode == -signal.SIGKILL, writer.stderr[-3000:]
        where = log.read_text().splitlines()[-1].split()[0]  # the step the writer was in when killed
        landed[where] = landed.get(where, 0) + 1
        with open_store(tmp_path) as store:
            version = int(store.document_versions(SOURCE)[LARGE][1:])
            # Acknowledged commits are kept; nothing newer than the last one begun; one whole version.
            assert max(logged(log, "ack"), stored) <= version <= logged(log, "begin"), (target, version)
            assert_large_at(store, version)
        stored = version
    print(f"killed in: {landed}")
    assert landed.get("part", 0) >= 2 and landed.get("commit", 0) >= 1 and landed.get("checkpoint", 0) >= 1, landed
    done = subprocess.run([sys.executable, str(script), "0", str(stored + 2)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.split()[-1] == "done", done.stderr[-3000:]
    with open_store(tmp_path) as store:
        assert_large_at(store, stored + 2)
