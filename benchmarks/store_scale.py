"""How the store's costs grow with its size: fill, disk, `store stats`, `search`, a one-document change, its replica copy.

    .venv/bin/python benchmarks/store_scale.py [--sizes 100000 400000] [--dir /tmp] [--keep]

For each size: `FaissStore.write` fills a new store with random 384-d vectors (16 chunks per
document, ~200 characters of text each, 16 documents per write, checkpoints at the default
cadence); then, each in a process of its own as a user runs them: `vectormill store stats --json`
and `vectormill search TEXT -k 5 --json` (wall time and peak RSS); a one-document change (open +
write 16 new vectors + checkpoint + close: wall time inside the process, bytes its write calls
wrote; the median of three) with a directory replica that already holds the store, and the bytes
that replica received. On disk: one generation (the database and the files the newest generation
names), and the whole folder (older kept generations still name the segments a merge replaced).
Then the growth of each figure from the first size to each later one, and the goals of issue 10:
one-document change ≤ 1 s at 400k and growing ≤ 1.2× from 100k to 400k; ≤ 5 MiB written and
replicated for it; `store stats` ≤ 0.5 s and ≤ 200 MiB RSS at every size; one generation on disk
≤ 1.3× (raw vectors + texts + index). All figures come from one run on one machine.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from vectormill.stores.faiss_store import FaissStore
from vectormill.stores.records import ChunkRecord, DocumentUpsert
from vectormill.stores.settings import StoreSettings

MODEL, DIMENSION = "all-MiniLM-L6-v2", 384  # the packaged model, so that `vectormill search` runs on the store
CHUNKS_PER_DOCUMENT = 16
DOCUMENTS_PER_WRITE = 16
TEXT = ("Backups are tested every quarter by restoring a random sample of systems into an isolated "
        "network; the restore time and any data loss are written to the incident log. ")[:190]
VECTORMILL = str(Path(sys.executable).parent / "vectormill")
MiB = 2**20
CHANGES = 3

CHANGE = """
import json, sys, time
sys.path.insert(0, {benchmarks!r})
from store_scale import document, settings, written
from vectormill.stores.faiss_store import FaissStore

before, started = written(), time.perf_counter()
store = FaissStore.open(settings({path!r}, {replica!r}))
opened = time.perf_counter()
store.write([document({number}, version=2)])
wrote = time.perf_counter()
store.checkpoint()
store.close()
done = time.perf_counter()
status = store.replicator.statuses["disk"]
print(json.dumps({{"open_s": opened - started, "write_s": wrote - opened, "checkpoint_s": done - wrote,
                  "total_s": done - started, "written": written() - before, "replicated": status.bytes_sent,
                  "replica_ok": status.ok}}))
"""


def written() -> int:
    """Bytes this process's write calls wrote so far (Linux)."""
    fields = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
    return int(fields["wchar"])


# `store stats` without the command line: what the store itself costs to open and count.
BARE_STATS = """
import json, sys
from vectormill.stores.faiss_store import FaissStore
from vectormill.stores.settings import StoreSettings
with FaissStore.open(StoreSettings(path=sys.argv[1]), writable=False) as store:
    print(json.dumps(store.stats()))
"""


def settings(path: str, replica: str | None = None) -> StoreSettings:
    replicas = [{"name": "disk", "url": replica}] if replica else []
    return StoreSettings(path=Path(path), checkpoint_every_seconds=None, replicas=replicas)


def document(number: int, version: int = 1) -> DocumentUpsert:
    rng = np.random.default_rng(number * 7 + version)
    vectors = rng.standard_normal((CHUNKS_PER_DOCUMENT, DIMENSION)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    name = f"doc{number}"
    chunks = tuple(ChunkRecord(hashlib.sha256(f"{name}/{p}/v{version}".encode()).hexdigest()[:32], p,
                               f"{TEXT} {name} v{version} {p:03d}", f"{version}{p:063x}", 1, 1, 48)
                   for p in range(CHUNKS_PER_DOCUMENT))
    return DocumentUpsert("bench", name, f"v{version}", name, f"{name}.pdf", None, chunks, vectors)


def fill(path: Path, vectors: int) -> float:
    """Vectors written per second, final checkpoint included."""
    documents = vectors // CHUNKS_PER_DOCUMENT
    started = time.perf_counter()
    with FaissStore.open(settings(str(path)), model=MODEL, dimension=DIMENSION) as store:
        for first in range(0, documents, DOCUMENTS_PER_WRITE):
            store.write([document(n) for n in range(first, min(first + DOCUMENTS_PER_WRITE, documents))])
        store.checkpoint()
    return documents * CHUNKS_PER_DOCUMENT / (time.perf_counter() - started)


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# Runs a command and reports its wall time and peak RSS. A small process of its own: the peak RSS of a child
# counts the memory of the process it was forked from, and this benchmark's own is large.
TRAMPOLINE = """
import json, resource, subprocess, sys, time
started = time.perf_counter()
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(json.dumps({"wall": time.perf_counter() - started, "rss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
                  "code": done.returncode, "out": done.stdout, "err": done.stderr[-2000:]}))
"""


def measured(command: list[str], cwd: Path) -> tuple[float, float, str]:
    """Wall seconds, peak RSS in MiB and stdout of a process."""
    result = json.loads(subprocess.run([sys.executable, "-c", TRAMPOLINE, *command], cwd=cwd, capture_output=True,
                                       text=True, check=True).stdout)
    if result["code"]:
        raise RuntimeError(f"{' '.join(command)} failed: {result['err']}")
    return result["wall"], result["rss_kib"] / 1024, result["out"]


def measure(root: Path, vectors: int) -> dict[str, float]:
    path, replica = root / "store", root / "replica"
    rate = fill(path, vectors)
    disk = folder_bytes(path)
    with FaissStore.open(settings(str(path)), writable=False) as store:
        stats = store.stats()
    generation = stats["database_bytes"] + stats["generation_bytes"]  # what one generation needs: no older ones
    raw = vectors * DIMENSION * 4
    texts = vectors * (len(TEXT) + 20)
    index = vectors * (DIMENSION * 4 + 8)  # one exact index over every vector, with its ids
    config = root / "vectormill.toml"
    config.write_text(f'[store]\npath = "{path}"\ncheckpoint_every_seconds = 600\n\n'
                      f'[[sources]]\nname = "bench"\ntype = "filesystem"\nroot = "{root}"\n')
    stats_wall, stats_rss, out = measured([VECTORMILL, "store", "stats", "--json", "--config", str(config)], root)
    stats = json.loads(out)
    assert stats["vectors"] == vectors, stats
    bare_wall, bare_rss, out = measured([sys.executable, "-c", BARE_STATS, str(path)], root)
    assert json.loads(out)["vectors"] == vectors
    search_wall, search_rss, out = measured(
        [VECTORMILL, "search", "how are backups tested", "-k", "5", "--json", "--config", str(config)], root)
    assert len(json.loads(out)) == 5
    with FaissStore.open(settings(str(path), str(replica))) as store:
        store.checkpoint()  # nothing new: the replica receives the whole store once, before the measured change
        assert store.replication_problem() is None
    changes = []
    for attempt in range(CHANGES):  # the median of a few: a fsync's latency varies from one to the next
        script = root / "change.py"
        script.write_text(CHANGE.format(benchmarks=str(Path(__file__).parent), path=str(path), replica=str(replica),
                                        number=vectors // CHUNKS_PER_DOCUMENT // (attempt + 2)))
        replica_before = folder_bytes(replica)
        wall, _, out = measured([sys.executable, str(script)], root)
        changes.append(dict(json.loads(out), process_s=wall, replica_grew=folder_bytes(replica) - replica_before))
        assert changes[-1]["replica_ok"]
    change = {key: statistics.median(c[key] for c in changes)
              for key in ("open_s", "write_s", "checkpoint_s", "total_s", "written", "replicated", "process_s",
                          "replica_grew")}
    return {"fill_rate": rate, "generation_mib": generation / MiB, "generation_per_raw": generation / raw,
            "generation_per_goal_base": generation / (raw + texts + index), "disk_mib": disk / MiB,
            "disk_per_goal_base": disk / (raw + texts + index), "stats_s": stats_wall, "stats_rss": stats_rss,
            "bare_stats_s": bare_wall, "bare_stats_rss": bare_rss,
            "search_s": search_wall, "search_rss": search_rss, "change_s": change["total_s"],
            "change_open_s": change["open_s"], "change_checkpoint_s": change["checkpoint_s"],
            "change_process_s": change["process_s"], "change_written_mib": change["written"] / MiB,
            "change_replicated_mib": change["replicated"] / MiB,
            "replica_grew_mib": change["replica_grew"] / MiB}


ROWS = [("fill rate (vectors/s)", "fill_rate", "{:,.0f}"),
        ("one generation on disk (MiB)", "generation_mib", "{:,.0f}"),
        ("  ÷ raw vectors", "generation_per_raw", "{:.2f}×"),
        ("  ÷ (raw vectors + texts + index)", "generation_per_goal_base", "{:.2f}×"),
        ("store folder, kept generations too (MiB)", "disk_mib", "{:,.0f}"),
        ("  ÷ (raw vectors + texts + index)", "disk_per_goal_base", "{:.2f}×"),
        ("store stats: wall (s)", "stats_s", "{:.2f}"), ("store stats: peak RSS (MiB)", "stats_rss", "{:.0f}"),
        ("  the store alone, no CLI or config: wall (s)", "bare_stats_s", "{:.2f}"),
        ("  the store alone: peak RSS (MiB)", "bare_stats_rss", "{:.0f}"),
        ("search: wall (s)", "search_s", "{:.2f}"), ("search: peak RSS (MiB)", "search_rss", "{:.0f}"),
        ("1-doc change: open+write+checkpoint (s)", "change_s", "{:.3f}"),
        ("  of which open (s)", "change_open_s", "{:.3f}"), ("  of which checkpoint (s)", "change_checkpoint_s", "{:.3f}"),
        ("  whole process, imports included (s)", "change_process_s", "{:.2f}"),
        ("1-doc change: bytes written (MiB)", "change_written_mib", "{:.3f}"),
        ("1-doc change: bytes sent to replica (MiB)", "change_replicated_mib", "{:.3f}"),
        ("  replica folder grew (MiB)", "replica_grew_mib", "{:.3f}")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 400_000])
    parser.add_argument("--dir", type=Path, default=None, help="Where to put the stores (default: a temp folder).")
    parser.add_argument("--keep", action="store_true", help="Keep the stores afterwards.")
    args = parser.parse_args()
    results = {}
    for size in args.sizes:
        root = Path(tempfile.mkdtemp(prefix=f"vectormill-scale-{size}-", dir=args.dir))
        try:
            results[size] = measure(root, size)
        finally:
            if not args.keep:
                shutil.rmtree(root, ignore_errors=True)
        print(f"measured {size:,} vectors", file=sys.stderr, flush=True)
    sizes = list(results)
    first, last = sizes[0], sizes[-1]
    later = sizes[1:]
    print(f"{'':46}" + "".join(f"{size:>14,}" for size in sizes)
          + "".join(f"{f'{first // 1000}k→{size // 1000}k':>14}" for size in later))
    for label, key, shape in ROWS:
        cells = "".join(f"{shape.format(results[size][key]):>14}" for size in sizes)
        growth = "".join(f"{results[size][key] / results[first][key]:>13.2f}×" if results[first][key] else f"{'':>14}"
                         for size in later)
        print(f"{label:46}{cells}{growth}")
    at = next((size for size in sizes if size >= 400_000), last)
    change_growth = results[at]["change_s"] / results[first]["change_s"]
    goals = [
        (f"one-document change ≤ 1 s at {at:,}", results[at]["change_s"] <= 1.0),
        (f"its growth ≤ 1.2× from {first:,} to {at:,} ({change_growth:.2f}×)", change_growth <= 1.2),
        ("bytes written for it ≤ 5 MiB at every size", all(r["change_written_mib"] <= 5 for r in results.values())),
        ("bytes replicated for it ≤ 5 MiB at every size",
         all(r["change_replicated_mib"] <= 5 for r in results.values())),
        ("store stats ≤ 0.5 s at every size", all(r["stats_s"] <= 0.5 for r in results.values())),
        ("store stats ≤ 200 MiB RSS at every size", all(r["stats_rss"] <= 200 for r in results.values())),
        ("one generation on disk ≤ 1.3× (raw vectors + texts + index)",
         all(r["generation_per_goal_base"] <= 1.3 for r in results.values())),
    ]
    print()
    for goal, met in goals:
        print(f"{'met    ' if met else 'NOT MET'}  {goal}")


if __name__ == "__main__":
    main()
