"""`vectormill search` (the nearest chunks to a text) and `serve-search` (the same over HTTP). They run no flow,
so they never import Prefect (serve-search: unless its API key is in a Prefect Secret block)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .common import ConfigOption, JsonOption, UserError, console, errors, load, print_warning, user_errors


class SearchMode(str, Enum):  # stores.fusion.MODES, spelled out: the CLI imports no store module to start
    vector = "vector"
    keyword = "keyword"
    hybrid = "hybrid"


def parse_filter_option(raw: Optional[str]) -> object:
    """--filter's JSON (checked by the store: anything but an object, or an unknown key, is refused there)."""
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UserError([f"--filter is not JSON ({exc}): give an object like '{{\"source\": \"docs\"}}'"], 2) from None
    return value


def show_search(text: str, k: int, config_file: Optional[Path], as_json: bool, filter_json: Optional[str] = None,
                mode: Optional[str] = None) -> None:
    from vectormill.flows.search import search_store

    if not text.strip():  # its vector is the model's for no words: hits, but arbitrary ones
        raise UserError(['the search text is empty: give the words to look for, e.g. `vectormill search '
                         '"backup schedule"`'], 2)
    where = parse_filter_option(filter_json)
    config = load(config_file)
    with user_errors():
        result = search_store(config, text, k, where, mode)
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
        # 4 significant digits: hybrid's fused scores (about 1/61, 1/62, …) all read 0.016 at 3 decimals
        table.add_row(f"{hit['score']:.4g}", hit["source"], hit["document"], _pages(hit["pages"]),
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
        filter_json: Optional[str] = typer.Option(
            None, "--filter", help='Only chunks of documents passing this JSON filter, e.g. \'{"source": "wiki", '
            '"document_prefix": "reports/", "modified_after": "2026-01-01"}\' (README: filters).'),
        mode: Optional[SearchMode] = typer.Option(
            None, "--mode", help="vector: by meaning; keyword: by the query's words (BM25); hybrid: both rankings "
            "fused. Default: [search] mode (hybrid)."),
    ) -> None:
        """Best chunks for TEXT, best first."""
        show_search(text, k, config, as_json, filter_json, mode.value if mode else None)

    @app.command("serve-search")
    def serve_search(
        host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on."),
        port: int = typer.Option(8765, "--port", min=1, max=65535, help="Port to listen on."),
        config: Optional[Path] = ConfigOption,
    ) -> None:
        """Serve the store's search over HTTP: POST /search, GET /health, OpenAPI page at /docs (README)."""
        from vectormill.flows.search import Searcher
        from vectormill.flows.search_keys import service_keys
        from vectormill.service import listen, serve

        settings = load(config)
        with user_errors():
            keys = service_keys(settings.search_service)
        try:
            sock = listen(host, port)
        except OSError as exc:
            raise UserError([f"cannot listen on {host}:{port} ({exc.strerror or exc}): choose another --port, or stop "
                             "what uses it"]) from None
        with user_errors():
            searcher = Searcher(settings)
            searcher.embed("warm-up")  # the model loads now, not in the first search's time
        shedding = settings.search_service
        errors.print(f"searching {settings.store.path} on http://{host}:{port} (OpenAPI page: /docs); "
                     f"{shedding.searches_at_once} searches at once, {shedding.searches_waiting} waiting, the next "
                     "answered 429", highlight=False)
        try:
            serve(searcher, keys, settings.search_service, sock)
        finally:
            searcher.close()
