"""`vectormill search`: the nearest chunks to a text. Runs no flow, so it never imports Prefect."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .common import ConfigOption, JsonOption, console, load, print_warning, user_errors


def show_search(text: str, k: int, config_file: Optional[Path], as_json: bool) -> None:
    from vectormill.flows.search import search_store

    config = load(config_file)
    with user_errors():
        result = search_store(config, text, k)
    for note in result.notes:
        print_warning(note)
    if as_json:
        print(json.dumps(result.hits))
        return
    table = Table(title=f"search: {text}")
    for column in ("score", "source", "document", "page", "text"):
        table.add_column(column, overflow="fold")
    for hit in result.hits:
        snippet = " ".join(hit["text"].split())
        table.add_row(f"{hit['score']:.3f}", hit["source"], hit["document"], _pages(hit["pages"]),
                      snippet[:200] + ("…" if len(snippet) > 200 else ""))
    console.print(table)


def _pages(pages: list[int]) -> str:
    """'3', '3–5' (a chunk across pages), or '' (a text without pages)."""
    return f"{pages[0]}–{pages[-1]}" if len(pages) > 1 else "".join(str(page) for page in pages)


def register(app: typer.Typer, store_app: typer.Typer) -> None:
    @app.command()
    def search(
        text: str = typer.Argument(..., help="What to look for."),
        k: int = typer.Option(5, "-k", min=1, help="How many hits."),
        config: Optional[Path] = ConfigOption,
        as_json: bool = JsonOption,
    ) -> None:
        """Nearest chunks to TEXT, best first."""
        show_search(text, k, config, as_json)
