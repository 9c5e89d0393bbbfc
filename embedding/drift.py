"""Embedding baselines: statistics of the vectors a run embedded, and their comparison with the last run's.

A run's `DriftProfile` sees every vector it embeds for a source and keeps, in bounded memory:
- the count, the exact centroid (running sum) and the mean and spread of the vector norms;
- the chunk-length distribution (a histogram of tokens per chunk);
- a sample of at most `sample_vectors` vectors: the chunks whose ids hash lowest ("bottom-k").
  Chunk ids are content hashes, so the sample is uniform, and the same chunks give the same
  sample whatever the order or grouping in which they were embedded (local or on Dask workers).

`stats()` turns that into plain JSON data: the centroid, norm and token figures, the mean and
spread of the pairwise cosine similarities within the sample, and a random sample of
`similarity_sample` of those similarities, kept so that a two-sample test can be run against
any later run.

`compare(current, baseline)` gives the cosine between the two centroids (a move of the whole
cloud: another topic or language) and the two-sample Kolmogorov–Smirnov test of the similarity
samples (a change of shape: a corpus more uniform or more varied than before). A run drifts
when the centroid cosine falls below `min_centroid_cosine` or the KS statistic exceeds
`max_ks_statistic`. The thresholds bound effect sizes, not p-values: with hundreds of similarities
even a harmless difference is "significant", so the p-value is reported but does not decide.

Pure numpy (scipy for the KS test); nothing here knows about stores or flows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .base import unit_rows
from .settings import DriftSettings

# Decimal places kept in stored statistics: float32 vectors carry about 7 significant digits.
DIGITS = 6
SIMILARITY_SEED = 20260101  # fixed: the same sample gives the same similarity sample


def _round(values: Any) -> Any:
    return np.round(np.asarray(values, dtype=np.float64), DIGITS).tolist()


class DriftProfile:
    """Running statistics of the vectors one run embeds for one source (bounded memory)."""

    def __init__(self, dimension: int, settings: DriftSettings):
        self.settings = settings
        self.dimension = dimension
        self.count = 0
        self._sum = np.zeros(dimension, dtype=np.float64)
        self._norm_sum = 0.0
        self._norm_squares = 0.0
        self._tokens = np.zeros(0, dtype=np.int64)  # histogram: index = tokens per chunk
        self._keys = np.zeros(0, dtype=np.uint64)
        self._sample = np.zeros((0, dimension), dtype=np.float32)

    def add(self, keys: Sequence[int], vectors: np.ndarray, tokens: Sequence[int]) -> None:
        """Vectors embedded in this run, each with its sampling key (from its chunk id) and token count."""
        vectors = np.asarray(vectors, dtype=np.float32).reshape(-1, self.dimension)
        if len(vectors) == 0:
            return
        if not len(keys) == len(tokens) == len(vectors):
            raise ValueError(f"{len(keys)} keys and {len(tokens)} token counts for {len(vectors)} vectors")
        self.count += len(vectors)
        self._sum += vectors.sum(axis=0, dtype=np.float64)
        norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
        self._norm_sum += float(norms.sum())
        self._norm_squares += float((norms ** 2).sum())
        counts = np.bincount(np.asarray(tokens, dtype=np.int64))
        if len(counts) > len(self._tokens):
            self._tokens = np.pad(self._tokens, (0, len(counts) - len(self._tokens)))
        self._tokens[: len(counts)] += counts
        self._keys = np.concatenate([self._keys, np.asarray(keys, dtype=np.uint64)])
        self._sample = np.concatenate([self._sample, vectors])
        if len(self._keys) > self.settings.sample_vectors:
            keep = np.argsort(self._keys, kind="stable")[: self.settings.sample_vectors]
            self._keys, self._sample = self._keys[keep], self._sample[keep]

    def stats(self) -> dict[str, Any]:
        """The run's statistics as plain JSON data (see the module docstring); needs at least one vector."""
        if self.count == 0:
            raise ValueError("no vectors were added")
        mean_norm = self._norm_sum / self.count
        similarities = pairwise_similarities(self._sample[np.argsort(self._keys, kind="stable")])
        rng = np.random.default_rng(SIMILARITY_SEED)
        kept = (similarities if len(similarities) <= self.settings.similarity_sample
                else rng.choice(similarities, self.settings.similarity_sample, replace=False))
        return {
            "vectors": self.count,
            "sample_vectors": len(self._sample),
            "centroid": _round(self._sum / self.count),
            "norm": {"mean": round(mean_norm, DIGITS),
                     "std": round(float(np.sqrt(max(0.0, self._norm_squares / self.count - mean_norm ** 2))), DIGITS)},
            "similarity": {
                "mean": round(float(similarities.mean()), DIGITS) if len(similarities) else None,
                "std": round(float(similarities.std()), DIGITS) if len(similarities) else None,
                "sample": _round(np.sort(kept)),
            },
            "tokens": token_summary(self._tokens),
        }


def pairwise_similarities(vectors: np.ndarray) -> np.ndarray:
    """Cosine similarity of every pair (i < j) of rows."""
    unit = unit_rows(np.asarray(vectors, dtype=np.float64))
    rows, columns = np.triu_indices(len(unit), k=1)
    return (unit @ unit.T)[rows, columns]


def token_summary(histogram: np.ndarray) -> dict[str, float]:
    """Mean, spread and quantiles of tokens per chunk from a histogram (index = tokens)."""
    total = int(histogram.sum())
    lengths = np.arange(len(histogram))
    mean = float((lengths * histogram).sum() / total)
    std = float(np.sqrt((((lengths - mean) ** 2) * histogram).sum() / total))
    cumulative = np.cumsum(histogram)

    def quantile(q: float) -> int:
        return int(np.searchsorted(cumulative, q * total))

    return {"mean": round(mean, 3), "std": round(std, 3), "p10": quantile(0.1), "p50": quantile(0.5),
            "p90": quantile(0.9), "max": int(np.flatnonzero(histogram)[-1])}


def sampling_key(chunk_id: str) -> int:
    """A chunk's sampling key: the first 64 bits of its (hex, content-derived) id."""
    return int(chunk_id[:16], 16)


@dataclass(frozen=True)
class DriftComparison:
    status: str  # "ok", "drift", or "not compared" (too few vectors on either side)
    vectors: int
    baseline_vectors: int
    centroid_cosine: float | None
    ks_statistic: float | None
    ks_pvalue: float | None
    similarity_mean: float | None
    baseline_similarity_mean: float | None
    tokens_mean: float
    baseline_tokens_mean: float
    reasons: tuple[str, ...]  # why it drifted (or why it was not compared), one phrase each

    @property
    def drifted(self) -> bool:
        return self.status == "drift"

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["reasons"] = "; ".join(self.reasons)
        return data


def compare(current: dict[str, Any], baseline: dict[str, Any], settings: DriftSettings) -> DriftComparison:
    """How the run's statistics (`DriftProfile.stats()`) moved from the baseline's."""
    figures: dict[str, Any] = {
        "vectors": current["vectors"], "baseline_vectors": baseline["vectors"],
        "similarity_mean": current["similarity"]["mean"], "baseline_similarity_mean": baseline["similarity"]["mean"],
        "tokens_mean": current["tokens"]["mean"], "baseline_tokens_mean": baseline["tokens"]["mean"],
    }
    fewest = min(current["vectors"], baseline["vectors"])
    if fewest < settings.min_vectors:
        return DriftComparison("not compared", centroid_cosine=None, ks_statistic=None, ks_pvalue=None, **figures,
                               reasons=(f"{fewest} vectors on one side, fewer than min_vectors = {settings.min_vectors}",))
    now, before = np.asarray(current["centroid"]), np.asarray(baseline["centroid"])
    scale = float(np.linalg.norm(now) * np.linalg.norm(before))
    cosine = round(float(now @ before) / scale, DIGITS) if scale else 0.0
    from scipy.stats import ks_2samp  # here: loading the config (which holds DriftSettings) must stay fast

    test = ks_2samp(current["similarity"]["sample"], baseline["similarity"]["sample"])
    statistic, pvalue = round(float(test.statistic), DIGITS), float(f"{float(test.pvalue):.3g}")
    reasons = []
    if cosine < settings.min_centroid_cosine:
        reasons.append(f"centroid cosine {cosine:.3f} < min_centroid_cosine {settings.min_centroid_cosine:g}")
    if statistic > settings.max_ks_statistic:
        reasons.append(f"KS statistic {statistic:.3f} > max_ks_statistic {settings.max_ks_statistic:g} "
                       f"(p = {pvalue:.2g}; pairwise similarity mean {figures['similarity_mean']:.3f}, "
                       f"was {figures['baseline_similarity_mean']:.3f})")
    return DriftComparison("drift" if reasons else "ok", centroid_cosine=cosine, ks_statistic=statistic,
                           ks_pvalue=pvalue, **figures, reasons=tuple(reasons))
