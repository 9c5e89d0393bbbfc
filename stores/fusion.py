"""Search modes and the fusion of rankings (pure functions over ranked ids).

`vector`: the nearest chunks by cosine similarity. `keyword`: the chunks whose text best matches the query's
terms (BM25). `hybrid`: both rankings fused by reciprocal rank fusion (Cormack et al. 2009, as Elasticsearch,
OpenSearch and Qdrant do): a chunk's score is the sum over the rankings that hold it of weight / (rrf_k + rank),
rank from 1, so a chunk near the top of either list rises, and one found by both rises most. Scores of the two
sides (cosine, BM25) are never compared, only ranks, so neither needs calibrating.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .errors import StoreError

MODES = ("vector", "keyword", "hybrid")


class SearchModeError(StoreError):
    """An unknown mode, or a mode the query cannot be searched in (keywords of a vector)."""


@dataclass(frozen=True)
class Fusion:
    vector_weight: float = 1.0
    keyword_weight: float = 1.0
    rrf_k: int = 60  # the constant of the RRF paper: damps the difference between the first few ranks
    depth: int = 50  # how many hits each side ranks for the fusion (at least k)


@dataclass(frozen=True)
class FusedHit:
    score: float
    identifier: int
    vector_rank: int | None  # 1 = its best; None: not among that side's `depth` best
    keyword_rank: int | None


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise SearchModeError(f"search mode must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


def reciprocal_rank_fusion(vector: Sequence[int], keyword: Sequence[int], fusion: Fusion, k: int) -> list[FusedHit]:
    """The k best ids of two rankings (each best first), by weighted reciprocal rank; ties by vector rank, then id."""
    vector_ranks = {identifier: rank for rank, identifier in enumerate(vector, 1)}
    keyword_ranks = {identifier: rank for rank, identifier in enumerate(keyword, 1)}
    fused = []
    for identifier in vector_ranks.keys() | keyword_ranks.keys():
        by_vector, by_keyword = vector_ranks.get(identifier), keyword_ranks.get(identifier)
        score = sum(weight / (fusion.rrf_k + rank) for weight, rank in
                    ((fusion.vector_weight, by_vector), (fusion.keyword_weight, by_keyword)) if rank is not None)
        fused.append(FusedHit(score, identifier, by_vector, by_keyword))
    fused.sort(key=lambda hit: (-hit.score, hit.vector_rank or len(vector) + 1, hit.identifier))
    return fused[:k]
