"""Search across segments: each index searched with its dead ids excluded, and the top k of all of them merged.

With exact (flat) segments the result equals one exact index over the same live vectors.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import faiss
import numpy as np


@dataclass
class Part:
    """One searchable piece of a generation: a segment's index, or the vectors written since the last checkpoint."""

    index: faiss.Index
    dead: np.ndarray  # ids the index holds that are no longer live
    live: int


def exact_part(ids: np.ndarray, vectors: np.ndarray) -> Part:
    """An in-memory exact index (pending vectors, or a segment whose file is damaged, rebuilt from the catalog)."""
    index = faiss.index_factory(vectors.shape[1], "IDMap,Flat", faiss.METRIC_INNER_PRODUCT)
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
    return Part(index, np.empty(0, dtype=np.int64), len(ids))


def merge_top_k(results: Iterable[tuple[np.ndarray, np.ndarray]], k: int) -> list[tuple[float, int]]:
    """The k best (score, id) of several (scores, ids) results, best first; -1 ids (no result) are dropped."""
    hits = [(float(score), int(identifier)) for scores, ids in results
            for score, identifier in zip(scores, ids) if identifier >= 0]
    return sorted(hits, key=lambda hit: (-hit[0], hit[1]))[:k]


def _parameters(index: faiss.Index, selector: faiss.IDSelector) -> faiss.SearchParameters:
    """Search parameters carrying the selector and the index's own settings (nprobe, efSearch): a parameters
    object replaces, not adds to, what the index was set to."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        parameters = faiss.SearchParametersIVF()
        parameters.nprobe, parameters.max_codes = ivf.nprobe, ivf.max_codes
    else:
        outer = faiss.downcast_index(index)
        inner = faiss.downcast_index(outer.index) if isinstance(outer, (faiss.IndexIDMap, faiss.IndexIDMap2)) else outer
        if isinstance(inner, faiss.IndexHNSW):
            parameters = faiss.SearchParametersHNSW()
            parameters.efSearch = inner.hnsw.efSearch
        else:
            parameters = faiss.SearchParameters()
    parameters.sel = selector
    return parameters


def search_part(part: Part, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The part's best k live (scores, ids) for one query vector."""
    wanted = min(k, part.live)
    if wanted <= 0:
        return np.empty(0, dtype=np.float32), np.empty(0, dtype=np.int64)
    if not part.dead.size:
        scores, ids = part.index.search(query, wanted)
        return scores[0], ids[0]
    dead = faiss.IDSelectorBatch(part.dead)
    selector = faiss.IDSelectorNot(dead)
    try:
        scores, ids = part.index.search(query, wanted, params=_parameters(part.index, selector))
        return scores[0], ids[0]
    except RuntimeError:  # an index that takes no search parameters (IndexPQ): ask for more and drop the dead
        scores, ids = part.index.search(query, min(wanted + part.dead.size, int(part.index.ntotal)))
        keep = ~np.isin(ids[0], part.dead)
        return scores[0][keep][:wanted], ids[0][keep][:wanted]


def search_parts(parts: Iterable[Part], vector: np.ndarray, k: int) -> list[tuple[float, int]]:
    query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, -1)
    return merge_top_k((search_part(part, query, k) for part in parts), k)
