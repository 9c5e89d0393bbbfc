"""What tombstones cost a search: one segment of N vectors searched with D of its ids dead, against the same segment
with none dead (issue 19, defect 7: the filter was rebuilt per query, ~290 ms at 500k dead ids).

    .venv/bin/python benchmarks/tombstone_search.py [--vectors 2000000] [--dead 500000] [--dimension 64]
                                                    [--factory IDMap,Flat] [--queries 50]

Prints the time to build the part's filter (once per segment view) and the median time of one k=5 query with
and without tombstones; the goal is a difference of at most 5 ms at 500k dead ids in a 2M segment.
"""

from __future__ import annotations

import argparse
import statistics
import time

import faiss
import numpy as np

from vectormill.stores.search import Part, search_parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=2_000_000)
    parser.add_argument("--dead", type=int, default=500_000)
    parser.add_argument("--dimension", type=int, default=64)
    parser.add_argument("--factory", default="IDMap,Flat")
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((args.vectors, args.dimension)).astype(np.float32)
    ids = rng.choice(2**62, size=args.vectors, replace=False).astype(np.int64)
    index = faiss.index_factory(args.dimension, args.factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        index.train(vectors[:100_000])
    index.add_with_ids(vectors, ids)
    started = time.perf_counter()
    with_dead = Part(index, ids[rng.choice(args.vectors, size=args.dead, replace=False)], args.vectors - args.dead)
    built = time.perf_counter() - started
    without = Part(index, np.empty(0, dtype=np.int64), args.vectors)
    queries = rng.standard_normal((args.queries, args.dimension)).astype(np.float32)

    def seconds(part: Part, query: np.ndarray) -> float:
        started = time.perf_counter()
        search_parts([part], query, 5)
        return time.perf_counter() - started

    seconds(without, queries[0])  # warm the caches
    times = [(seconds(without, query), seconds(with_dead, query)) for query in queries]  # interleaved: same load
    plain, filtered = (statistics.median(column) * 1000 for column in zip(*times))
    print(f"{args.factory}: {args.vectors} vectors of {args.dimension} dims, {args.dead} dead")
    print(f"  the part (its mask of live positions) built once per view: {built * 1000:.1f} ms")
    print(f"  one query, no tombstones: {plain:.2f} ms; with tombstones: {filtered:.2f} ms; "
          f"difference {filtered - plain:+.2f} ms (goal: <= 5 ms)")


if __name__ == "__main__":
    main()
