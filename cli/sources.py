"""`vectormill sources check`: can each configured source be reached with its credentials?"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .common import ConfigOption, JsonOption, UserError, console, load


def register(app: typer.Typer, store_app: typer.Typer) -> None:
    sources_app = typer.Typer(no_args_is_help=True, help="The configured sources.")
    app.add_typer(sources_app, name="sources")

    @sources_app.command("check")
    def check(config: Optional[Path] = ConfigOption, as_json: bool = JsonOption) -> None:
        """Test connectivity and credentials of each configured source (lists one page of each)."""
        from vectormill.flows.source_check import check_source

        settings = load(config)
        results = [check_source(source) for source in settings.sources]
        if as_json:
            print(json.dumps([asdict(result) for result in results]))
        else:
            table = Table(title="sources")
            for column in ("source", "type", "status", "detail"):
                table.add_column(column, overflow="fold")
            for result in results:
                status = "[green]ok[/green]" if result.ok else "[red]failed[/red]"
                table.add_row(result.name, result.type, status, result.detail)
            console.print(table)
        failed = [result.name for result in results if not result.ok]
        if failed:
            raise UserError([f"{len(failed)} of {len(results)} sources failed the check: {', '.join(failed)}"])
