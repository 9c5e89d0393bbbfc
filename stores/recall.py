"""The recall guard: what an approximate segment index gives up, measured when the segment is written.

Queries are sampled from the segment's own vectors (ids are hashes of the chunks, so its first rows are a
well-mixed sample). Their exact 10 nearest neighbours are found by brute force while the segment's vectors are
added (one pass: no vector is read twice); then the index answers the same queries at growing search effort
(HNSW efSearch, IVF nprobe) until its recall@10 reaches the target. The segment keeps the next effort above the
least that does (MARGIN: queries that are not stored vectors find less), written into its index file and recorded
in the manifest with the recall measured at it (`store stats` shows both); when none does, it stays exact.

Recall counts ties as found: a returned vector as similar as the 10th exact neighbour is a right answer (copies of
one text share a vector). Each query's own vector is left out of both lists.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

TOP = 10  # recall@10
QUERIES = 200  # sampled queries per segment: a recall of 0.95 is measured within about ±0.01
TIE = 1e-4  # similarity within this of the 10th neighbour's counts as a tie
# Steps of effort kept above the least that reaches the target: a stored vector finds its neighbours more easily
# than a query that is none of them (benchmarks/search_scale.py, 100k full-dimensional clustered vectors: 0.978
# on the segment's own vectors, 0.940 on held-out queries at the same efSearch; one doubling more: 0.984).
MARGIN = 1
EFFORTS = {"efSearch": (16, 32, 64, 128, 256, 512, 1024), "nprobe": (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)}


@dataclass(frozen=True)
class Measured:
    recall: float  # recall@10 at `effort`
    effort: str | None  # the search parameters it holds with ("efSearch=64"), None for an index without any


class ExactNeighbours:
    """The exact nearest neighbours of a fixed set of queries, over vectors seen in batches."""

    def __init__(self, ids: np.ndarray, queries: np.ndarray, top: int = TOP + 1):
        self.ids, self.queries, self.top = ids, np.ascontiguousarray(queries, dtype=np.float32), top
        self.scores = np.full((len(ids), 0), -np.inf, dtype=np.float32)
        self.found = np.empty((len(ids), 0), dtype=np.int64)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        scores = np.concatenate([self.scores, self.queries @ vectors.T], axis=1)
        found = np.concatenate([self.found, np.broadcast_to(ids, (len(self.ids), len(ids)))], axis=1)
        if scores.shape[1] > self.top:
            keep = np.argpartition(-scores, self.top - 1, axis=1)[:, : self.top]
            scores, found = np.take_along_axis(scores, keep, 1), np.take_along_axis(found, keep, 1)
        self.scores, self.found = scores, found


def recall_at(exact: ExactNeighbours, scores: np.ndarray, found: np.ndarray) -> float:
    """Recall@10 of (scores, ids) an index returned for `exact`'s queries, each query's own id left out."""
    total = 0.0
    for row, own in enumerate(exact.ids):
        expected = np.sort(exact.scores[row][exact.found[row] != own])[::-1][:TOP]
        if not expected.size:
            continue
        threshold = expected[-1] - TIE
        returned = [score for score, identifier in zip(scores[row], found[row]) if identifier >= 0 and identifier != own]
        total += sum(score >= threshold for score in returned[: len(expected)]) / len(expected)
    return total / len(exact.ids)


def effort_knob(index: faiss.Index) -> str | None:
    """The search-effort parameter of an index (through IDMap and transforms), or None when it has none."""
    if faiss.try_extract_index_ivf(index) is not None:
        return "nprobe"
    inner = faiss.downcast_index(index)
    while isinstance(inner, (faiss.IndexIDMap, faiss.IndexIDMap2, faiss.IndexPreTransform)):
        inner = faiss.downcast_index(inner.index)
    return "efSearch" if isinstance(inner, faiss.IndexHNSW) else None


def tune(index: faiss.Index, exact: ExactNeighbours, target: float) -> tuple[Measured, bool]:
    """Set the least effort at which the index's recall@10 reaches `target`; (what was measured, whether it holds).
    When no effort does, the index is left at its highest and the caller keeps the segment exact."""
    knob = effort_knob(index)
    space = faiss.ParameterSpace()
    efforts = EFFORTS.get(knob, (None,)) if knob else (None,)
    if knob == "nprobe":
        efforts = tuple(e for e in efforts if e < faiss.try_extract_index_ivf(index).nlist) + (
            faiss.try_extract_index_ivf(index).nlist,)
    measured = Measured(0.0, None)
    for step, effort in enumerate(efforts):
        measured = _measure(index, exact, space, knob, effort)
        if measured.recall >= target:
            if step + MARGIN < len(efforts):
                return _measure(index, exact, space, knob, efforts[step + MARGIN]), True
            return measured, True
    return measured, False


def _measure(index: faiss.Index, exact: ExactNeighbours, space: faiss.ParameterSpace, knob: str | None,
             effort: int | None) -> Measured:
    if effort is not None:
        space.set_index_parameter(index, knob, effort)
    scores, found = index.search(exact.queries, exact.top)
    return Measured(round(recall_at(exact, scores, found), 4), f"{knob}={effort}" if knob else None)
