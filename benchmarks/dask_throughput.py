"""The same corpus ingested with the local runner and on a 2-worker Dask LocalCluster, in one run,
and the throughput of the one store writer that both feed.

    .venv/bin/python benchmarks/dask_throughput.py [--documents 60] [--workers 2] [--writer-vectors 50000]

Prints chunks/s of each runner (flow time, models already loaded: the flow process's for the
local run, each worker's for the cluster), their ratio, the vectors/s the store writer sustained
in each run (its share of the run: building records + one fsync'd SQLite transaction per write), and what the
writer alone takes when nothing else limits it (`FaissStore.write` of ready vectors in the
same shape: 256 chunks per write, 3 chunks per document). That last figure is where a cluster
stops scaling: once the workers together embed faster than it, adding workers adds nothing.

Both runs talk to one temporary Prefect server (Prefect's test harness), as Dask runs should:
without one every worker starts a server of its own.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from throughput import make_corpus  # noqa: E402 - the corpus of the local throughput benchmark

TASK_CHUNKS = 256
CHUNKS_PER_DOCUMENT = 3


def write_config(folder: Path, store: str, execution: str = "") -> Path:
    config = folder / f"{store}.toml"
    config.write_text(f'[store]\npath = "{store}"\n\n[embedding]\ntask_chunks = {TASK_CHUNKS}\n\n{execution}\n'
                      '[[sources]]\nname = "bench"\ntype = "filesystem"\nroot = "pdfs"\n')
    return config


def flow_rates(summary: dict) -> tuple[float, float, float]:
    """(chunks/s of the run without model loading, writer vectors/s, flow seconds)."""
    seconds = summary["seconds"]
    flow_seconds = seconds["total"] - seconds.get("load_model", 0.0)
    chunks = summary["chunks_embedded"]
    return chunks / flow_seconds, chunks / seconds["write"], flow_seconds


def writer_alone(folder: Path, vectors: int, dimension: int) -> float:
    """Vectors/s of `FaissStore.write` given ready vectors in the pipeline's write shape."""
    from vectormill.stores.faiss_store import FaissStore
    from vectormill.stores.records import ChunkRecord, DocumentUpsert
    from vectormill.stores.settings import StoreSettings

    rng = np.random.default_rng(7)
    text = "word " * 200
    batches = []
    for start in range(0, vectors, TASK_CHUNKS):
        block = rng.standard_normal((min(TASK_CHUNKS, vectors - start), dimension)).astype(np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        operations = []
        for offset in range(0, len(block), CHUNKS_PER_DOCUMENT):
            name = f"doc{start + offset}"
            part = block[offset:offset + CHUNKS_PER_DOCUMENT]
            chunks = tuple(ChunkRecord(hashlib.sha256(f"{name}/{p}".encode()).hexdigest()[:32], p, text,
                                       f"{p:064x}", 1, 1, 200) for p in range(len(part)))
            operations.append(DocumentUpsert("bench", name, "v1", name, f"{name}.pdf", None, chunks, part))
        batches.append(operations)
    settings = StoreSettings(path=folder / "writer-store", checkpoint_every_vectors=10 * vectors)
    with FaissStore.open(settings, model="bench", dimension=dimension) as store:
        started = time.perf_counter()
        for operations in batches:
            store.write(operations)
        return vectors / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=60, help="3-page PDFs, about one chunk per page")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--writer-vectors", type=int, default=50_000)
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="vectormill-bench-prefect-"))

    from distributed import Client, LocalCluster
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from vectormill.flows.config import load_config
    from vectormill.flows.ingest import ingest
    from vectormill.flows.pipeline import embedder_for

    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=120):
        os.environ["PREFECT_API_URL"] = PREFECT_API_URL.value()  # inherited by the worker processes
        folder = Path(tmp)
        make_corpus(folder / "pdfs", args.documents)
        local_config = write_config(folder, "store-local")
        embedding = load_config(local_config).embedding
        embedder_for(embedding).embed(["warm up the model"] * 8)
        local = ingest(config_file=str(local_config))

        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster, set_as_default=False) as client:
            # Each worker loads its model before the timing, as the flow process did.
            client.run(lambda: __import__("vectormill.flows.pipeline", fromlist=["embedder_for"])
                       .embedder_for(embedding).embed(["warm up the model"] * 8).shape)
            dask_config = write_config(folder, "store-dask", f'[execution]\ntask_runner = "dask"\n'
                                                             f'dask_address = "{cluster.scheduler_address}"\n')
            distributed_run = ingest(config_file=str(dask_config))
        writer = writer_alone(folder, args.writer_vectors, embedder_for(embedding).dimension)

    local_rate, local_writer, local_seconds = flow_rates(local)
    dask_rate, dask_writer, dask_seconds = flow_rates(distributed_run)
    print(f"corpus: {args.documents} PDFs, {local['chunks_embedded']} chunks; {os.cpu_count()} CPU cores")
    print(f"local runner        : {local_rate:7.2f} chunks/s ({local_seconds:.1f} s in the flow); "
          f"writer {local_writer:8.0f} vectors/s of its share")
    print(f"dask, {args.workers} workers     : {dask_rate:7.2f} chunks/s ({dask_seconds:.1f} s in the flow); "
          f"writer {dask_writer:8.0f} vectors/s of its share")
    print(f"ratio dask/local    : {dask_rate / local_rate:7.3f}")
    print(f"store writer alone  : {writer:8.0f} vectors/s ({args.writer_vectors} vectors, {TASK_CHUNKS} per write, "
          f"one fsync'd SQLite transaction each): the most a cluster of any size can ingest into one store")
    print(f"stage seconds local : {local['seconds']}")
    print(f"stage seconds dask  : {distributed_run['seconds']}")


if __name__ == "__main__":
    main()
