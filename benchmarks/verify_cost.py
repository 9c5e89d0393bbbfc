"""What `store verify` costs as the store grows, part by part, and the scrub of a replica (issue 30).

    .venv/bin/python benchmarks/verify_cost.py [--vectors 100000 400000] [--dir /tmp]

For each size: fills a new store with random 384-d vectors (store_scale.py's documents: 16 chunks of ~200
characters each), checkpointed once and copied to a directory replica; then, in a fresh child process each (so that
its peak RSS is verify's own): `verify_store` as `store verify` runs it (wall seconds, peak RSS), and its parts
timed alone: SQLite's `PRAGMA integrity_check` (every index against its table) beside `quick_check` (what verify ran
before: the ratio is taken in one run), every chunk row's checksum, the document and segment checksums, the
placement check (each segment's ids against the rows placed in it), and `scrub_replicas` (hashing every file the
replica holds). Prints the ratios between sizes, so that a larger store can be estimated honestly, and the CPU's
model and the flags that matter here (sha_ni: hardware sha256; avx2/avx512f). The files are in the page cache (just
written): a cold verify adds the disk's read time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from store_scale import (  # noqa: E402
    CHUNKS_PER_DOCUMENT, DIMENSION, DOCUMENTS_PER_WRITE, MODEL, document, folder_bytes, measured, settings,
)

from vectormill.embedding.precision import cpu_flags  # noqa: E402
from vectormill.stores.faiss_store import FaissStore  # noqa: E402

CHILD = """
import json, sys, time
from pathlib import Path
from vectormill.stores.catalog import Catalog
from vectormill.stores.restore import _placement_problems, row_check_problems, scrub_replicas, verify_store
from vectormill.stores.settings import StoreSettings

config = StoreSettings.model_validate_json(sys.argv[1])
part = sys.argv[2]
started = time.perf_counter()
if part == "verify":
    report = verify_store(config)
    assert report["ok"], report["problems"]
elif part == "scrub":
    assert scrub_replicas(config)["ok"]
else:
    catalog = Catalog.open(Path(config.path) / "store.sqlite", 384, writable=False)
    catalog.begin_snapshot()
    if part in ("integrity_check", "quick_check"):
        assert catalog.db.execute(f"PRAGMA {part}").fetchall() == [("ok",)]
    elif part == "chunk checksums":
        assert not catalog.damaged_rows()
    elif part == "document and segment checksums":
        assert not row_check_problems(catalog.db)
    elif part == "placement":
        assert not _placement_problems(Path(config.path), catalog)
    catalog.close()
print(json.dumps({"seconds": time.perf_counter() - started}))
"""
PARTS = ("verify", "integrity_check", "quick_check", "chunk checksums", "document and segment checksums", "placement",
         "scrub")


def measure(config_json: str, part: str, cwd: Path) -> dict[str, float]:
    """Seconds of the part alone (imports excluded), and the peak RSS of its whole process (measured from a small
    process of its own: a child's peak RSS counts the process it was forked from)."""
    _, rss_mib, out = measured([sys.executable, "-c", CHILD, config_json, part], cwd)
    return {"seconds": json.loads(out.strip().splitlines()[-1])["seconds"], "rss_mib": rss_mib}


def run(vectors: int, folder: str) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory(dir=folder, prefix="verify-cost-") as root:
        config = settings(str(Path(root) / "store"), str(Path(root) / "replica"))
        documents = vectors // CHUNKS_PER_DOCUMENT
        started = time.perf_counter()
        with FaissStore.open(config, model=MODEL, dimension=DIMENSION) as store:
            for first in range(0, documents, DOCUMENTS_PER_WRITE):
                store.write([document(n) for n in range(first, min(first + DOCUMENTS_PER_WRITE, documents))])
            store.checkpoint()
            assert store.replication_problem() is None, store.replication_problem()
        built = time.perf_counter() - started
        database = (Path(root) / "store" / "store.sqlite").stat().st_size
        read = folder_bytes(Path(root) / "store") + folder_bytes(Path(root) / "replica")
        figures = {part: measure(config.model_dump_json(), part, Path(root)) for part in PARTS}
    print(f"{vectors:,} vectors: built in {built:.0f} s; database {database / 2**20:,.0f} MiB, primary + replica "
          f"{read / 2**20:,.0f} MiB", flush=True)
    for part, found in figures.items():
        print(f"  {part:32s} {found['seconds']:8.2f} s  peak RSS {found['rss_mib']:7.0f} MiB", flush=True)
    ratio = figures["integrity_check"]["seconds"] / figures["quick_check"]["seconds"]
    print(f"  integrity_check / quick_check: {ratio:.2f}x", flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, nargs="+", default=[100_000, 400_000])
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the stores and their replicas are written")
    args = parser.parse_args()
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "?")
    wanted = ("sha_ni", "avx2", "avx512f")
    flags = cpu_flags()
    print(f"CPU: {model}; flags: {', '.join(f'{flag}={flag in flags}' for flag in wanted)}")
    results = {vectors: run(vectors, args.dir) for vectors in args.vectors}
    sizes = sorted(results)
    for small, large in zip(sizes, sizes[1:]):
        growth = [f"{part} {results[large][part]['seconds'] / results[small][part]['seconds']:.2f}x time, "
                  f"{results[large][part]['rss_mib'] / results[small][part]['rss_mib']:.2f}x RSS"
                  for part in ("verify", "integrity_check")]
        print(f"{small:,} -> {large:,} vectors ({large / small:.1f}x): {', '.join(growth)}")

if __name__ == "__main__":
    main()
