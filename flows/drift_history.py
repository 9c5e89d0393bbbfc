"""`vectormill drift`: the embedding baselines of each source over time, each compared with the one before.

Each run that embedded vectors for a source left a baseline in the store; each is compared with
the source's previous one by the same comparison, and the same [drift] thresholds, that the run
itself used. Runs no flow, so it never imports Prefect.
"""

from __future__ import annotations

from typing import Any

from vectormill.embedding.drift import compare
from vectormill.embedding.settings import DriftSettings
from vectormill.stores.faiss_store import FaissStore, StoreError

from .config import VectormillConfig


def history_rows(baselines: list[Any], settings: DriftSettings) -> list[dict[str, Any]]:
    """One row per baseline (oldest first per source), compared with the source's previous baseline."""
    rows, previous = [], {}
    for baseline in baselines:
        stats = baseline.stats
        row: dict[str, Any] = {
            "source": baseline.source, "run_id": baseline.run_id, "created_at": baseline.created_at,
            "vectors": stats["vectors"], "status": "first baseline", "centroid_cosine": None, "ks_statistic": None,
            "ks_pvalue": None, "similarity_mean": stats["similarity"]["mean"], "norm_mean": stats["norm"]["mean"],
            "tokens_mean": stats["tokens"]["mean"], "reasons": "",
        }
        before = previous.get(baseline.source)
        if before is not None:
            comparison = compare(stats, before.stats, settings)
            row.update(status=comparison.status, centroid_cosine=comparison.centroid_cosine,
                       ks_statistic=comparison.ks_statistic, ks_pvalue=comparison.ks_pvalue,
                       reasons="; ".join(comparison.reasons))
        previous[baseline.source] = baseline
        rows.append(row)
    return rows


def drift_history(config: VectormillConfig, source: str | None = None) -> list[dict[str, Any]]:
    """The rows of every source's baselines (or one source's); a named source without any is an error."""
    with FaissStore.open(config.store, writable=False) as store:
        baselines = store.baselines(source)
        known = sorted({b.source for b in store.baselines()}) if source and not baselines else []
    if source and not baselines:
        raise StoreError(f"no baselines for source {source!r} in the store (sources with baselines: "
                         f"{', '.join(known) or 'none'}); a run records one when it embeds vectors")
    return history_rows(baselines, config.drift)
