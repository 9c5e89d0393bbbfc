"""`vectormill drift [--source NAME] [--json]`: the embedding baselines of each source, over time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from .common import ConfigOption, JsonOption, SourceOption, console, load, user_errors

COLUMNS = ("source", "run_id", "created_at", "vectors", "status", "centroid_cosine", "ks_statistic", "ks_pvalue",
           "similarity_mean", "norm_mean", "tokens_mean")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1e-3 and value else f"{value:.3f}"
    return str(value)


def register(app: typer.Typer, store_app: typer.Typer) -> None:
    @app.command()
    def drift(
        source: Optional[str] = SourceOption,
        config: Optional[Path] = ConfigOption,
        as_json: bool = JsonOption,
    ) -> None:
        """Embedding baselines per source, each compared with the one before it ([drift] thresholds)."""
        from vectormill.flows.drift_history import drift_history

        settings = load(config)
        with user_errors():
            rows = drift_history(settings, source)
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
