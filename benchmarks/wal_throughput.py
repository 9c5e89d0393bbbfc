"""Write throughput of the durable store against a plain in-memory FAISS add, and what a checkpoint and its copy cost.

    .venv/bin/python benchmarks/wal_throughput.py [--vectors 100000] [--batch 256] [--dimension 384]

Three ways to take the same vectors (batches of `--batch`, 16 chunks per document, ~200 characters
of text per chunk): a bare `IndexIDMap2(Flat).add_with_ids`; `FaissStore.write` with the catalog's
fsync turned off (the same SQLite work, not durable: isolates what durability costs); and
`FaissStore.write` as it runs (each write one SQLite transaction, fsync'd to SQLite's write-ahead
log before it returns). Then one checkpoint sealing everything as a segment, and its copy to a
local-folder replica (read back and hashed).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from vectormill.stores.faiss_store import FaissStore, faiss_id
from vectormill.stores.records import ChunkRecord, DocumentUpsert
from vectormill.stores.settings import StoreSettings

CHUNKS_PER_DOCUMENT = 16
TEXT = ("Backups are tested every quarter by restoring a random sample of systems into an isolated "
        "network; the restore time and any data loss are written to the incident log. ")[:200]


def batches(count: int, batch: int, dimension: int, seed: int = 7):
    rng = np.random.default_rng(seed)
    documents = 0
    for start in range(0, count, batch):
        size = min(batch, count - start)
        vectors = rng.standard_normal((size, dimension)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        operations = []
        for offset in range(0, size, CHUNKS_PER_DOCUMENT):
            name = f"doc{documents}"
            documents += 1
            part = vectors[offset : offset + CHUNKS_PER_DOCUMENT]
            chunks = tuple(
                ChunkRecord(hashlib.sha256(f"{name}/{p}".encode()).hexdigest()[:32], p, TEXT, f"{p:064x}", 1, 1, 48)
                for p in range(len(part)))
            operations.append(DocumentUpsert("bench", name, "v1", name, f"{name}.pdf", None, chunks, part))
        yield operations, vectors


def plain_add(data, dimension: int) -> float:
    index = faiss.index_factory(dimension, "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)
    ids = [np.array([faiss_id(c.chunk_id) for op in operations for c in op.chunks], dtype=np.int64)
           for operations, _ in data]
    started = time.perf_counter()
    for (_, vectors), batch_ids in zip(data, ids):
        index.add_with_ids(vectors, batch_ids)
    return time.perf_counter() - started


def store_writes(data, settings: StoreSettings, dimension: int, durable: bool) -> tuple[float, FaissStore]:
    store = FaissStore.open(settings, model="bench", dimension=dimension)
    if not durable:
        store.db.execute("PRAGMA synchronous=OFF")  # the same work without the fsync at each commit
    started = time.perf_counter()
    for operations, _ in data:
        store.write(operations)
    return time.perf_counter() - started, store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--dimension", type=int, default=384)
    parser.add_argument("--dir", type=Path, default=None, help="Where to put the stores (default: a temp folder).")
    args = parser.parse_args()
    data = list(batches(args.vectors, args.batch, args.dimension))
    root = Path(tempfile.mkdtemp(prefix="vectormill-bench-", dir=args.dir))
    try:
        plain = plain_add(data, args.dimension)
        common = dict(checkpoint_every_vectors=10**9, checkpoint_every_seconds=None, keep_generations=2)
        unsynced, store = store_writes(data, StoreSettings(path=root / "unsynced", **common), args.dimension, False)
        store.close()
        settings = StoreSettings(path=root / "durable", replicas=[{"name": "disk", "url": str(root / "replica")}],
                                 **common)
        durable, store = store_writes(data, settings, args.dimension, True)
        started = time.perf_counter()
        store.checkpoint()
        checkpoint_and_copy = time.perf_counter() - started
        replica = store.stats()["replicas"][0]
        size = store.stats()["generation_bytes"]
        store.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    per_100k = 100_000 / args.vectors
    n = args.vectors
    print(f"{n} vectors, {args.dimension} dims, batches of {args.batch}")
    print(f"plain FAISS add (IDMap2,Flat), in memory : {n / plain:12,.0f} vectors/s")
    print(f"store write, catalog without fsync       : {n / unsynced:12,.0f} vectors/s")
    print(f"store write, durable (fsync per write)   : {n / durable:12,.0f} vectors/s")
    print(f"fsync's share of a durable write         : {1 - unsynced / durable:12.1%}")
    print(f"store write vs plain FAISS add           : {durable / plain:12.1f}x the time")
    print(f"checkpoint ({size / 2**20:.0f} MiB)                  : "
          f"{(checkpoint_and_copy - replica['seconds']) * per_100k:8.2f} s per 100k vectors")
    print(f"replication to a local folder (verified) : {replica['seconds'] * per_100k:8.2f} s per 100k vectors "
          f"(ok={replica['ok']})")


if __name__ == "__main__":
    main()
