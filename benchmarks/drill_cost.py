"""What checking the backups costs: `store verify` per GB it reads, and `store drill`'s restore (the recovery time).

    .venv/bin/python benchmarks/drill_cost.py [--vectors 20000] [--dir /tmp]

Fills a new store with random 384-d vectors (store_scale.py's documents: 16 chunks of ~200 characters each),
checkpointed once and copied to a directory replica; then runs, in this process, `verify_store` (what `store
verify` runs: it hashes every file of every generation on the primary and on the replica, checks every chunk
row's checksum and replays the generation) and `drill` (what `store drill` runs: restore the replica's newest
generation into a temporary folder, verify it, search it with 20 of its chunks). Prints the bytes verify reads
(primary + replica), its seconds and seconds per GB, and the drill's restore seconds, total seconds and the
recovery point it reports. The files are in the OS page cache (just written): a cold scrub is bounded by the
disk's read rate instead.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from store_scale import (  # noqa: E402
    CHUNKS_PER_DOCUMENT, DIMENSION, DOCUMENTS_PER_WRITE, MODEL, document, folder_bytes, settings,
)

from vectormill.stores.drill import drill  # noqa: E402
from vectormill.stores.faiss_store import FaissStore  # noqa: E402
from vectormill.stores.restore import verify_store  # noqa: E402

GB = 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=20_000)
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where the store and its replica are written")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir, prefix="drill-cost-") as root:
        config = settings(str(Path(root) / "store"), str(Path(root) / "replica"))
        documents = args.vectors // CHUNKS_PER_DOCUMENT
        with FaissStore.open(config, model=MODEL, dimension=DIMENSION) as store:
            for first in range(0, documents, DOCUMENTS_PER_WRITE):
                store.write([document(n) for n in range(first, min(first + DOCUMENTS_PER_WRITE, documents))])
            store.checkpoint()
            assert store.replication_problem() is None, store.replication_problem()
        read = folder_bytes(config.path) + folder_bytes(Path(root) / "replica")

        started = time.perf_counter()
        report = verify_store(config)
        verify_seconds = time.perf_counter() - started
        assert report["ok"], report["problems"]

        started = time.perf_counter()
        result = drill(config)
        drill_seconds = time.perf_counter() - started

    print(f"store of {result['vectors']} vectors ({DIMENSION} dims), {result['documents']} documents, "
          f"one directory replica")
    print(f"  store verify: read {read / 2**20:.1f} MiB (primary + replica) in {verify_seconds:.2f} s: "
          f"{verify_seconds / (read / GB):.1f} s per GB")
    print(f"  store drill: restore (recovery time) {result['restore_seconds']:.2f} s, "
          f"whole drill {drill_seconds:.2f} s "
          f"({result['queries']} queries, agreement {result['agreement']:.2f}); recovery point: the newest generation "
          f"was {result['age_seconds']:.1f} s old")


if __name__ == "__main__":
    main()
