"""The `vectormill` command line: one module per command group, registered here in help order.

Commands parse, call a function of `flows` or `stores`, and render. Commands that run no flow
(search, store, capacity, drift, failures, init) never import Prefect.
"""

from __future__ import annotations

import inspect
import sys

import typer
from rich.markup import escape

from . import backfill, capacity, drift, failures, init, ops, search, sources, store
from .common import UserError, errors, print_error

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Batch embedding ingestion: sources → chunks → vectors → FAISS.")
store_app = typer.Typer(no_args_is_help=True, help="Inspect the vector store.")
app.add_typer(store_app, name="store")

for module in (init, backfill, search, sources, store, failures, capacity, ops, drift):
    module.register(app, store_app)


def literal_help(typer_app: typer.Typer) -> None:
    """Commands' help is plain text: rich would read "[drift]" in a docstring as markup and drop it."""
    for command in typer_app.registered_commands:
        command.help = escape(command.help or inspect.getdoc(command.callback) or "")
    for group in typer_app.registered_groups:
        literal_help(group.typer_instance)


literal_help(app)


def main() -> None:
    try:
        # Outside standalone mode click returns, not raises, the code of a `typer.Exit`.
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except UserError as exc:
        for line in exc.lines:
            print_error(line)
        sys.exit(exc.code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        errors.print("aborted")
        sys.exit(130)
    except Exception as exc:
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
