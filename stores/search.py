"""Search across segments: each index searched with its dead ids excluded, and the top k of all of them merged.

With exact (flat) segments the result equals one exact index over the same live vectors.

Dead ids are left out by structures built once per part (once per segment and tombstone count in a store's
view), never per query: for an index wrapped in an IDMap, a mask of its live positions, and at need a bitmap
of them searched on the inner index (a bit test per vector, whatever the number of dead ids); for an IVF
index, which holds our ids itself, the sorted dead ids, and at need FAISS's batch selector over them.
"""

from __future__ import annotations

from collections.abc import Iterable

import faiss
import numpy as np

EMPTY = np.empty(0, dtype=np.int64)


def _parameters(index: faiss.Index, selector: faiss.IDSelector) -> faiss.SearchParameters:
    """Search parameters carrying the selector and the index's own settings (nprobe, efSearch): a parameters
    object replaces, not adds to, what the index was set to."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        parameters = faiss.SearchParametersIVF()
        parameters.nprobe, parameters.max_codes = ivf.nprobe, ivf.max_codes
    else:
        inner = faiss.downcast_index(index)
        if isinstance(inner, faiss.IndexHNSW):
            parameters = faiss.SearchParametersHNSW()
            parameters.efSearch = inner.hnsw.efSearch
        else:
            parameters = faiss.SearchParameters()
    parameters.sel = selector
    return parameters


class Part:
    """One searchable piece of a generation: a segment's index, or the vectors written since the last checkpoint,
    with the ids it holds that are no longer live (`dead`) left out of every result."""

    def __init__(self, index: faiss.Index, dead: np.ndarray, live: int):
        self.index = index
        self.dead = np.sort(np.asarray(dead, dtype=np.int64))
        self.live = live
        self._searched = index  # what a query runs on: the index, or the inner index of an IDMap
        self._ids: np.ndarray | None = None  # position -> id, when `_searched` is an IDMap's inner index
        self._live_positions: np.ndarray | None = None
        self._parameters: faiss.SearchParameters | None = None  # the filter, built at its first use
        self._keep: list[object] = []  # what the filter points into, kept alive with it
        self._graph: Graph | None = None  # an HNSW index: how a filtered search keeps its recall
        outer = faiss.downcast_index(index)
        if self.dead.size and isinstance(outer, (faiss.IndexIDMap, faiss.IndexIDMap2)):
            self._searched = faiss.downcast_index(outer.index)
            self._ids = faiss.vector_to_array(outer.id_map)
            self._live_positions = ~np.isin(self._ids, self.dead, assume_unique=True)
        if isinstance(outer, (faiss.IndexIDMap, faiss.IndexIDMap2)) and isinstance(
                faiss.downcast_index(outer.index), faiss.IndexHNSW):
            self._graph = Graph(outer, self._live_positions)

    def _filter(self) -> faiss.SearchParameters:
        if self._parameters is None:
            if self._live_positions is not None:
                bits = np.packbits(self._live_positions, bitorder="little")
                selector = faiss.IDSelectorBitmap(len(self._live_positions), faiss.swig_ptr(bits))
                self._keep = [bits, selector]
            else:
                batch = faiss.IDSelectorBatch(self.dead)
                selector = faiss.IDSelectorNot(batch)
                self._keep = [batch, selector]
            self._parameters = _parameters(self._searched, selector)
        return self._parameters

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The part's best k live (scores, ids) for one query vector; with `allowed`, among those ids only.

        Most queries meet few dead ids among their nearest: a plain search for a few more, the dead dropped, costs
        what a search without tombstones does. Only when too many of those are dead does the filter run.
        """
        wanted = min(k, self.live)
        if wanted <= 0:
            return np.empty(0, dtype=np.float32), EMPTY
        if allowed is not None and self._graph is not None:
            return self._graph.search_among(query, wanted, allowed)
        if allowed is not None:
            scores, found = self._search_among(query, wanted, allowed)
        elif not self.dead.size:
            scores, ids = self.index.search(query, wanted)
            return scores[0], ids[0]
        else:
            scores, found, complete = self._dropping_dead(query, wanted, wanted * 4 + 16)
            if len(found) < wanted and not complete:
                try:
                    scores, found = self._searched.search(query, wanted, params=self._filter())
                    scores, found = scores[0], found[0]
                except RuntimeError:  # an index that takes no search parameters (IndexPQ): ask for enough
                    scores, found, _ = self._dropping_dead(query, wanted, wanted + self.dead.size)
        if self._ids is not None:
            found = np.where(found >= 0, self._ids[np.maximum(found, 0)], -1)
        return scores, found

    def _search_among(self, query: np.ndarray, wanted: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The best live vectors among the `allowed` ids, chosen inside the index search by a selector of both (a
        search filter: never by asking for more and dropping), so the result is exact on an exact index."""
        keep: list[object] = []  # what the selector points into, alive until the search is done
        if self._live_positions is not None:  # an IDMap's inner index, searched by position
            bits = np.packbits(self._live_positions & np.isin(self._ids, allowed), bitorder="little")
            selector = faiss.IDSelectorBitmap(len(self._live_positions), faiss.swig_ptr(bits))
            keep.append(bits)
        else:
            selector = faiss.IDSelectorBatch(allowed)
            if self.dead.size:
                keep += [selector, faiss.IDSelectorBatch(self.dead)]
                keep.append(faiss.IDSelectorNot(keep[-1]))
                selector = faiss.IDSelectorAnd(keep[0], keep[-1])
        try:
            parameters = _parameters(self._searched, selector)
            scores, found = self._searched.search(query, wanted, params=parameters)
            ivf = faiss.try_extract_index_ivf(self._searched)
            if ivf is not None and np.count_nonzero(found >= 0) < wanted and parameters.nprobe < ivf.nlist:
                parameters.nprobe = ivf.nlist  # the probed lists held too few that pass: every list (exact, for Flat)
                scores, found = self._searched.search(query, wanted, params=parameters)
            return scores[0], found[0]
        except RuntimeError:  # an index that takes no search parameters (IndexPQ): rank all, keep the chosen
            scores, found = self._searched.search(query, int(self._searched.ntotal))
            chosen = found[0] >= 0
            chosen[chosen] = ~self._is_dead(found[0][chosen]) if self.dead.size else True
            ids = self._ids[np.maximum(found[0], 0)] if self._ids is not None else found[0]
            chosen &= np.isin(ids, allowed)
            return scores[0][chosen][:wanted], found[0][chosen][:wanted]

    def _dropping_dead(self, query: np.ndarray, wanted: int, asked: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """A plain search for `asked` results, the dead dropped: (scores, found, whether it saw every vector)."""
        asked = min(asked, int(self._searched.ntotal))
        scores, found = self._searched.search(query, asked)
        scores, found = scores[0], found[0]
        keep = found >= 0
        keep[keep] = ~self._is_dead(found[keep])
        return scores[keep][:wanted], found[keep][:wanted], asked >= self._searched.ntotal

    def _is_dead(self, found: np.ndarray) -> np.ndarray:
        if self._live_positions is not None:  # positions in an IDMap's inner index
            return ~self._live_positions[found]
        at = np.minimum(np.searchsorted(self.dead, found), self.dead.size - 1)
        return self.dead[at] == found

    def live_ids(self) -> np.ndarray:
        """Every live id the part holds."""
        from .segments import index_ids

        held = index_ids(self.index)
        return held[~np.isin(held, self.dead)] if self.dead.size else held


class Graph:
    """A filtered search of an HNSW index (in an IDMap) that keeps its recall. A graph search skips the vectors a
    filter leaves out but still walks through them: under a filter keeping few vectors its candidates hold fewer than
    k that pass. So a filter keeping at most EXACT_SHARE of the vectors is searched exactly, over the graph's own
    flat storage with a bitmap of the chosen positions (a bit test per vector, a product per chosen one); a wider one
    through the graph, at an efSearch of at least k, and again exactly should that return fewer than k."""

    EXACT_SHARE = 0.05

    def __init__(self, outer: faiss.IndexIDMap, live_positions: np.ndarray | None):
        self.graph = faiss.downcast_index(outer.index)
        self.storage = faiss.downcast_index(self.graph.storage)
        self.ids = faiss.vector_to_array(outer.id_map)
        self.order = np.argsort(self.ids, kind="stable")  # id -> position, by binary search: built once per part
        self.sorted_ids = self.ids[self.order]
        self.live_positions = live_positions

    def search_among(self, query: np.ndarray, wanted: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        at = np.minimum(np.searchsorted(self.sorted_ids, allowed), len(self.sorted_ids) - 1)
        chosen = np.zeros(len(self.ids), dtype=bool)
        chosen[self.order[at[self.sorted_ids[at] == allowed]]] = True
        if self.live_positions is not None:
            chosen &= self.live_positions
        members = int(np.count_nonzero(chosen))
        if not members:
            return np.empty(0, dtype=np.float32), EMPTY
        bits = np.packbits(chosen, bitorder="little")
        selector = faiss.IDSelectorBitmap(len(chosen), faiss.swig_ptr(bits))
        wanted = min(wanted, members)
        found = EMPTY
        if members > self.EXACT_SHARE * len(chosen):
            parameters = faiss.SearchParametersHNSW()
            parameters.efSearch, parameters.sel = max(self.graph.hnsw.efSearch, wanted), selector
            scores, found = self.graph.search(query, wanted, params=parameters)
        if np.count_nonzero(found >= 0) < wanted:
            parameters = faiss.SearchParameters()
            parameters.sel = selector
            scores, found = self.storage.search(query, wanted, params=parameters)
        scores, found = scores[0], found[0]
        return scores, np.where(found >= 0, self.ids[np.maximum(found, 0)], -1)


def exact_part(ids: np.ndarray, vectors: np.ndarray) -> Part:
    """An in-memory exact index (pending vectors, or a segment whose file is damaged, rebuilt from the catalog)."""
    index = faiss.index_factory(vectors.shape[1], "IDMap,Flat", faiss.METRIC_INNER_PRODUCT)
    if len(ids):
        index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
    return Part(index, EMPTY, len(ids))


def merge_top_k(results: Iterable[tuple[np.ndarray, np.ndarray]], k: int) -> list[tuple[float, int]]:
    """The k best (score, id) of several (scores, ids) results, best first; -1 ids (no result) are dropped."""
    hits = [(float(score), int(identifier)) for scores, ids in results
            for score, identifier in zip(scores, ids) if identifier >= 0]
    return sorted(hits, key=lambda hit: (-hit[0], hit[1]))[:k]


def search_parts(parts: Iterable[Part], vector: np.ndarray, k: int, allowed: np.ndarray | None = None
                 ) -> list[tuple[float, int]]:
    query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, -1)
    return merge_top_k((part.search(query, k, allowed) for part in parts), k)
