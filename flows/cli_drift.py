"""`vectormill drift [--source NAME] [--json]`: the embedding baselines of each source, over time.

Each run that embedded vectors for a source left a baseline in the store; each is shown with
its comparison against the one before it (the same comparison, and the same [drift]
thresholds, that the run itself used). Runs no flow, so it never imports Prefect.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from .cli_common import ConfigOption, JsonOption, UserError, console, fail, load

COLUMNS = ("source", "run_id", "created_at", "vectors", "status", "centroid_cosine", "ks_statistic", "ks_pvalue",
           "similarity_mean", "norm_mean", "tokens_mean")


def history_rows(baselines: list[Any], settings: Any) -> list[dict[str, Any]]:
    """One row per baseline (oldest first per source), compared with the source's previous baseline."""
    from vectormill.embedding.drift import compare

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


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-3 and value else f"{value:.3f}"
    return str(value)


def register(app: typer.Typer, store_app: typer.Typer) -> None:
    @app.command()
    def drift(
        source: Optional[str] = typer.Option(None, "--source", "-s", help="Only this source."),
        config: Optional[Path] = ConfigOption,
        as_json: bool = JsonOption,
    ) -> None:
        """Embedding baselines per source, each compared with the one before it ([drift] thresholds)."""
        from vectormill.stores.faiss_store import FaissStore

        settings = load(config)
        try:
            with FaissStore.open(settings.store, writable=False) as store:
                baselines = store.baselines(source)
                known = sorted({b.source for b in store.baselines()}) if source and not baselines else []
        except Exception as exc:  # noqa: BLE001 - fail() turns store errors into one line
            fail(exc)
        if source and not baselines:
            raise UserError([f"no baselines for source {source!r} in the store (sources with baselines: "
                             f"{', '.join(known) or 'none'}); a run records one when it embeds vectors"])
        rows = history_rows(baselines, settings.drift)
        if as_json:
            print(json.dumps(rows))
            return
        table = Table(title=f"embedding baselines in {settings.store.path}")
        for column in COLUMNS:
            table.add_column(column.replace("_", " "), justify="right" if column not in ("source", "run_id", "created_at", "status") else "left")
        for row in rows:
            status = row["status"]
            shown = f"[red]{status}[/red]" if status == "drift" else status
            table.add_row(*(shown if column == "status" else _cell(row[column]) for column in COLUMNS))
        console.print(table)
        for row in rows:
            if row["status"] == "drift":
                console.print(f"[red]drift[/red] {row['source']} run {row['run_id']}: {row['reasons']}",
                              highlight=False)
