"""`vectormill failures [--source NAME] [--json]`: the documents on each source's retry queue.

Runs no flow, so it never imports Prefect.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from .common import ConfigOption, JsonOption, SourceOption, console, load, user_errors


def _when(moment: str) -> str:
    """An ISO 8601 UTC time to the second, for a table (the JSON keeps it whole)."""
    return moment[:19].replace("T", " ")


def register(app: typer.Typer, store_app: typer.Typer) -> None:
    @app.command()
    def failures(
        source: Optional[str] = SourceOption,
        config: Optional[Path] = ConfigOption,
        as_json: bool = JsonOption,
    ) -> None:
        """Documents that failed and wait on the retry queue: the next runs fetch them again until they land."""
        from vectormill.flows.retry_queue import list_failures

        settings = load(config)
        with user_errors():
            entries = list_failures(settings, source)
        if as_json:
            print(json.dumps([entry.as_json() for entry in entries]))
            return
        table = Table(title=f"retry queue in {settings.store.path}")
        for column in ("source", "document", "attempts", "first failed", "last failed", "reason"):
            table.add_column(column, justify="right" if column == "attempts" else "left", overflow="fold")
        for entry in entries:
            attempts = f"[red]{entry.attempts} stuck[/red]" if entry.stuck else str(entry.attempts)
            table.add_row(escape(entry.source), escape(entry.document), attempts, _when(entry.first_failed),
                          _when(entry.last_failed), escape(entry.reason))
        console.print(table)
        stuck = sum(entry.stuck for entry in entries)
        console.print(f"{len(entries)} queued for retry, {stuck} stuck (failed in max_document_attempts runs: "
                      "fetched again only when changed at the source, or by `vectormill backfill --full`)",
                      highlight=False)
