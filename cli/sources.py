"""`vectormill sources check` (can each source be reached?) and `sources audit` (does the store mirror it?)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .common import ConfigOption, JsonOption, UserError, console, load, user_errors


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

    @sources_app.command("audit")
    def audit_command(source: Optional[str] = typer.Option(None, "--source", "-s", help="Only this source."),
                      deep: bool = typer.Option(False, "--deep", help="Also fetch and chunk the documents whose "
                                                "version matches, comparing content hashes (finds a file rewritten "
                                                "with its size and mtime restored)."),
                      config: Optional[Path] = ConfigOption, as_json: bool = JsonOption) -> None:
        """List each source fully and compare it with the store: missing, extra, stale, queued and stuck
        documents; exits 1 on any divergence."""
        from vectormill.flows.audit import audit, audit_report

        settings = load(config)
        with user_errors():
            results = audit(settings, source, deep)
            report = audit_report(results)
        if as_json:
            print(json.dumps(report))
        else:
            table = Table(title="sources audit" + (" (deep)" if deep else ""))
            for column in ("source", "listed", "stored", "missing", "extra", "stale", "queued", "stuck", "status"):
                table.add_column(column, justify="left" if column in ("source", "status") else "right")
            for entry in report["sources"]:
                status = "[green]ok[/green]" if entry["ok"] else "[red]diverges[/red]"
                table.add_row(entry["name"], *(str(entry[key]) for key in (
                    "listed", "stored", "missing_count", "extra_count", "stale_count", "queued", "stuck")), status)
            console.print(table)
            for entry in report["sources"]:
                for kind in ("missing", "extra", "stale"):
                    if entry[kind]:
                        more = entry[f"{kind}_count"] - len(entry[kind])
                        console.print(f"{entry['name']} {kind}: {', '.join(entry[kind])}"
                                      + (f" and {more} more" if more else ""), highlight=False, markup=False)
        diverging = [result for result in results if not result.ok]
        if diverging:
            raise UserError([f"{len(diverging)} of {len(results)} sources diverge from the store: "
                             f"{', '.join(result.name for result in diverging)}; "
                             + "; ".join(repair for result in diverging for repair in result.repairs)])
