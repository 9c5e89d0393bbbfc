"""Search at scale: the default index (auto: HNSW32 with the recall guard's efSearch) against exact search and
against bare FAISS HNSW on the same vectors, in one run.

    .venv/bin/python benchmarks/search_scale.py [--sizes 100000 1000000] [--queries 200] [--random] [--dir /tmp]

For each size: synthetic 384-d vectors. By default clustered with a low intrinsic dimension, as sentence
embeddings are: 1,000 centres in 32 latent dimensions, each vector its centre plus latent noise, projected to 384
dimensions, plus a little noise in each (a query's nearest neighbour at cosine ~0.85, its 10th at ~0.79).
--random: uniform on the sphere, where recall is at its worst, since no neighbour is much nearer than the rest.
16 chunks per document, 1 % of the documents in a source of their own ("rare"). The store is filled through FaissStore.write at the default settings but for
checkpoint_every_vectors = the size, so that it holds one segment, as after `store compact` (a store filled at
the default cadence holds segments of 500k and less, each searched in turn). Then, each in a process of its own on
one core (faiss.omp_set_num_threads(1)):
* the store, read-only: p50/p99 of FaissStore.search(k=10) over held-out queries, recall@10 against brute force,
  the same with a filter keeping 1 % of the vectors (hits returned, recall against brute force over those), peak
  RSS of the reader process;
* bare FAISS HNSW32 (IndexHNSWFlat, inner product) built on the same vectors: p50/p99 and recall@10 at the
  efSearch the store's recall guard chose, and at each efSearch of its ladder;
* exact search (IndexFlatIP, what index_factory "Flat" searches): p50/p99.
Build times (the store's fill and final checkpoint, HNSW graph and recall guard included; bare FAISS's add), disk
(the store folder; the keyword index's share of the catalog, from SQLite's dbstat), and a one-document change (open, write 16 vectors, checkpoint, close: wall time and bytes
written). Goals (issue 31): at 1M, p99 ≤ 20 ms at recall@10 ≥ 0.95, within 2× of bare FAISS HNSW at the same
recall; a one-document change ≤ 1 s.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from vectormill.embedding.precision import cpu_flags
from vectormill.stores.faiss_store import FaissStore
from vectormill.stores.records import ChunkRecord, DocumentUpsert
from vectormill.stores.settings import StoreSettings

DIMENSION = 384
CHUNKS_PER_DOCUMENT, DOCUMENTS_PER_WRITE = 16, 16
CENTRES, LATENT = 1_000, 32
TEXT = "Backups are tested every quarter by restoring a random sample of systems into an isolated network."
MiB = 2**20

# Searches in a process of its own, on one core: latency, recall and the reader's peak RSS.
READER = """
import json, resource, sys, time
import faiss, numpy as np
from vectormill.stores.catalog import faiss_id
from vectormill.stores.faiss_store import FaissStore
from vectormill.stores.filters import parse_filter
from vectormill.stores.settings import StoreSettings
faiss.omp_set_num_threads(1)
folder = sys.argv[1]
queries, truth, rare_truth = (np.load(f"{folder}/{name}.npy") for name in ("queries", "truth", "rare_truth"))

def run(store, where):
    times, found = [], []
    for query in queries:
        started = time.perf_counter()
        hits = store.search(query, 10, where)
        times.append(time.perf_counter() - started)
        found.append([faiss_id(hit.chunk_id) for hit in hits])
    return times, found

with FaissStore.open(StoreSettings(path=f"{folder}/store"), writable=False) as store:
    run(store, None)  # warm: the index mapped, the catalog's pages read once
    times, found = run(store, None)
    rare_times, rare_found = run(store, parse_filter({"source": "rare"}))
    segments = store.stats()["segment_indexes"]
recall = lambda found, truth: float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))
print(json.dumps({"p50": float(np.percentile(times, 50)), "p99": float(np.percentile(times, 99)),
                  "recall": recall(found, truth), "rare_p50": float(np.percentile(rare_times, 50)),
                  "rare_p99": float(np.percentile(rare_times, 99)), "rare_recall": recall(rare_found, rare_truth),
                  "rare_hits": min(len(f) for f in rare_found), "segments": segments,
                  "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

CHANGE = """
import json, sys, time
sys.path.insert(0, {benchmarks!r})
from search_scale import document, settings
from store_scale import written
from vectormill.stores.faiss_store import FaissStore

before, started = written(), time.perf_counter()
with FaissStore.open(settings({path!r}, {size})) as store:
    store.write([document({number}, {vectors!r}, version=2)])
    store.checkpoint()
print(json.dumps({{"seconds": time.perf_counter() - started, "written": written() - before}}))
"""


def vectors_for(size: int, random: bool, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if random:
        vectors = rng.standard_normal((size, DIMENSION), dtype=np.float32)
    else:  # a mixture in LATENT dimensions, spread over all 384, plus a little noise in each
        fixed = np.random.default_rng(0)
        centres = fixed.standard_normal((CENTRES, LATENT), dtype=np.float32)
        projection = fixed.standard_normal((LATENT, DIMENSION), dtype=np.float32)
        latent = centres[rng.integers(0, CENTRES, size)] + 0.6 * rng.standard_normal((size, LATENT), dtype=np.float32)
        vectors = latent @ projection + 0.5 * rng.standard_normal((size, DIMENSION), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors


def settings(path: str, size: int) -> StoreSettings:
    return StoreSettings(path=Path(path), checkpoint_every_seconds=None, checkpoint_every_vectors=size)


def source_of(number: int) -> str:
    return "rare" if number % 100 == 0 else "bench"


def document(number: int, vectors: np.ndarray | str, version: int = 1) -> DocumentUpsert:
    if isinstance(vectors, str):  # a changed document: new vectors (a path: the saved queries, any will do)
        vectors = np.load(vectors)[:CHUNKS_PER_DOCUMENT]
    else:
        vectors = vectors[number * CHUNKS_PER_DOCUMENT:(number + 1) * CHUNKS_PER_DOCUMENT]
    name = f"doc{number}"
    chunks = tuple(ChunkRecord(hashlib.sha256(f"{name}/{p}/v{version}".encode()).hexdigest()[:32], p,
                               f"{TEXT} {name} v{version} {p:03d}", f"{version}{p:063x}", 1, 1, 24)
                   for p in range(CHUNKS_PER_DOCUMENT))
    return DocumentUpsert(source_of(number), name, f"v{version}", name, f"{name}.pdf", None, chunks, vectors)


def ids_of(size: int) -> np.ndarray:
    return np.array([int(hashlib.sha256(f"doc{n // CHUNKS_PER_DOCUMENT}/{n % CHUNKS_PER_DOCUMENT}/v1".encode())
                         .hexdigest()[:16], 16) & 0x7FFF_FFFF_FFFF_FFFF for n in range(size)], dtype=np.int64)


def latency(index: faiss.Index, queries: np.ndarray, k: int = 10) -> tuple[float, float, np.ndarray]:
    """p50, p99 (seconds) of one query at a time, on one core; and the ids found."""
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    times, found = [], []
    try:
        index.search(queries[:20], k)  # warm
        for query in queries:
            started = time.perf_counter()
            found.append(index.search(query.reshape(1, -1), k)[1][0])
            times.append(time.perf_counter() - started)
    finally:
        faiss.omp_set_num_threads(threads)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99)), np.array(found)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(root: Path, size: int, queries_count: int, random: bool) -> dict:
    vectors = vectors_for(size, random, 1)
    queries = vectors_for(queries_count, random, 2)
    ids = ids_of(size)
    np.save(root / "queries.npy", queries)
    flat = faiss.IndexIDMap(faiss.IndexFlatIP(DIMENSION))
    flat.add_with_ids(vectors, ids)
    truth = flat.search(queries, 10)[1]
    flat_p50, flat_p99, _ = latency(flat, queries[:50])
    rare = np.array([source_of(n // CHUNKS_PER_DOCUMENT) == "rare" for n in range(size)])
    rare_flat = faiss.IndexIDMap(faiss.IndexFlatIP(DIMENSION))
    rare_flat.add_with_ids(vectors[rare], ids[rare])
    np.save(root / "truth.npy", truth)
    np.save(root / "rare_truth.npy", rare_flat.search(queries, 10)[1])
    del flat, rare_flat
    started = time.perf_counter()
    with FaissStore.open(settings(str(root / "store"), size), model="bench", dimension=DIMENSION) as store:
        for first in range(0, size // CHUNKS_PER_DOCUMENT, DOCUMENTS_PER_WRITE):
            store.write([document(n, vectors) for n in range(first, min(first + DOCUMENTS_PER_WRITE,
                                                                         size // CHUNKS_PER_DOCUMENT))])
        written = time.perf_counter()
        store.checkpoint()
    store_build = {"write_s": written - started, "checkpoint_s": time.perf_counter() - written}
    disk = folder_bytes(root / "store")
    catalog = sqlite3.connect(f"file:{root / 'store' / 'store.sqlite'}?mode=ro", uri=True)
    keyword_index = catalog.execute("SELECT sum(pgsize) FROM dbstat WHERE name LIKE 'chunks_fts%'").fetchone()[0]
    catalog.close()
    reader = json.loads(subprocess.run([sys.executable, "-c", READER, str(root)], capture_output=True, text=True,
                                       check=True).stdout)
    script = root / "change.py"
    script.write_text(CHANGE.format(benchmarks=str(Path(__file__).parent), path=str(root / "store"), size=size,
                                    number=size // CHUNKS_PER_DOCUMENT // 3, vectors=str(root / "queries.npy")))
    change = json.loads(subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                                       check=True).stdout)
    started = time.perf_counter()
    bare = faiss.IndexHNSWFlat(DIMENSION, 32, faiss.METRIC_INNER_PRODUCT)
    bare.add(vectors)
    bare_build = time.perf_counter() - started
    bare_ids = np.concatenate([ids, [-1]])
    efforts = {}
    for ef in (16, 32, 64, 128, 256):
        bare.hnsw.efSearch = ef
        p50, p99, found = latency(bare, queries)
        efforts[ef] = {"p50": p50, "p99": p99, "recall": recall(bare_ids[found], truth)}
    return {"store_build": store_build, "disk_mib": disk / MiB, "keyword_index_mib": keyword_index / MiB, "reader": reader, "change": change,
            "bare_build_s": bare_build, "bare": efforts, "flat_p50": flat_p50, "flat_p99": flat_p99,
            "raw_mib": vectors.nbytes / MiB}


def report(size: int, result: dict) -> None:
    reader = result["reader"]
    segment = reader["segments"][0] if reader["segments"] else {}
    ms = 1_000
    print(f"\n=== {size:,} vectors ({result['raw_mib']:,.0f} MiB raw) ===")
    print(f"store (default: {segment.get('index')}, {segment.get('effort')}, recall measured at the seal "
          f"{segment.get('recall')}): build {sum(result['store_build'].values()):.1f} s (writes, then the seal of one "
          f"segment: graph and recall guard); disk "
          f"{result['disk_mib']:,.0f} MiB (of which the keyword index {result['keyword_index_mib']:,.0f} MiB); reader "
          f"peak RSS {reader['rss_mib']:,.0f} MiB")
    print(f"  search k=10, one core: p50 {reader['p50'] * ms:.2f} ms, p99 {reader['p99'] * ms:.2f} ms, "
          f"recall@10 {reader['recall']:.3f}")
    print(f"  filter keeping 1 %: p50 {reader['rare_p50'] * ms:.2f} ms, p99 {reader['rare_p99'] * ms:.2f} ms, "
          f"recall@10 {reader['rare_recall']:.3f}, fewest hits {reader['rare_hits']} of 10")
    print(f"  one-document change (open, write 16 vectors, checkpoint, close): {result['change']['seconds']:.3f} s, "
          f"{result['change']['written'] / MiB:.2f} MiB written")
    print(f"exact (IndexFlatIP, as index_factory Flat searches): p50 {result['flat_p50'] * ms:.1f} ms, "
          f"p99 {result['flat_p99'] * ms:.1f} ms")
    print(f"bare FAISS HNSW32, same vectors: build {result['bare_build_s']:.1f} s")
    for ef, figures in result["bare"].items():
        print(f"  efSearch {ef:>4}: p50 {figures['p50'] * ms:.2f} ms, p99 {figures['p99'] * ms:.2f} ms, "
              f"recall@10 {figures['recall']:.3f}")
    same = [f for f in result["bare"].values() if f["recall"] >= reader["recall"] - 0.005]
    if same:
        reference = min(same, key=lambda f: f["p99"])
        print(f"  ratio store / bare HNSW at recall ≥ {reader['recall'] - 0.005:.3f}: p50 "
              f"{reader['p50'] / reference['p50']:.2f}×, p99 {reader['p99'] / reference['p99']:.2f}×")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--random", action="store_true", help="uniform random vectors (recall at its worst)")
    parser.add_argument("--dir", type=Path, default=None)
    args = parser.parse_args()
    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_int8"})
    print(f"CPU flags: {' '.join(flags) or 'none of avx2/avx512/amx'}; FAISS {faiss.__version__}, "
          f"{faiss.omp_get_max_threads()} threads for builds, 1 for searches; "
          f"{'uniform random' if args.random else 'clustered'} vectors")
    for size in args.sizes:
        root = Path(tempfile.mkdtemp(prefix=f"vectormill-search-{size}-", dir=args.dir))
        try:
            report(size, measure(root, size, args.queries, args.random))
        finally:
            shutil.rmtree(root, ignore_errors=True)
        sys.stdout.flush()


if __name__ == "__main__":
    main()
