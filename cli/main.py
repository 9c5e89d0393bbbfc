"""The `vectormill` command line: one module per command group, registered here in help order.

Commands parse, call a function of `flows` or `stores`, and render. Commands that run no flow
(search, store, capacity, drift, failures, init) never import Prefect.

The error rule, for every command (tests/test_cli_errors.py drives them all): an error the user can
act on is one line on stderr and exit code 2 (config) or 1 (run), however deep it was raised;
a traceback only with `--debug` (or VECTORMILL_DEBUG=1). Anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import inspect
import os
import sys
import traceback

import typer
import typer.main
from rich.markup import escape

from . import backfill, capacity, drift, failures, init, ops, search, sources, store
from .common import DEBUG_ENV, UserError, debugging, errors, print_error

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Batch embedding ingestion: sources → chunks → vectors → FAISS.")
store_app = typer.Typer(no_args_is_help=True, help="Inspect the vector store.")
app.add_typer(store_app, name="store")

@app.callback()
def options(debug: bool = typer.Option(False, "--debug", help="Show the traceback of an error, not just its line "
                                       "(also: VECTORMILL_DEBUG=1).")) -> None:
    if debug:
        os.environ[DEBUG_ENV] = "1"  # the flow runs this process starts report the same way


for module in (init, backfill, search, sources, store, failures, capacity, ops, drift):
    module.register(app, store_app)


def literal_help(typer_app: typer.Typer) -> None:
    """Commands' help is plain text: rich would read "[drift]" in a docstring as markup and drop it."""
    for command in typer_app.registered_commands:
        command.help = escape(command.help or inspect.getdoc(command.callback) or "")
    for group in typer_app.registered_groups:
        literal_help(group.typer_instance)


literal_help(app)


def walk(command, path: tuple[str, ...] = ()):
    """(path, command) of every command, groups and their subcommands included."""
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from walk(sub, (*path, name))


def plain_flags(command):
    """A flag's help shows no value type: `--json`, not `--json <bool>` (typer labels every option with one)."""
    for _, sub in walk(command):
        for param in [*sub.params, sub.get_help_option(typer.Context(sub))]:
            if getattr(param, "is_flag", False):
                param.metavar = ""
    return command


def cli():
    """The command line as click runs it (tests enumerate and invoke its commands)."""
    return plain_flags(typer.main.get_command(app))


def report(exc: BaseException) -> int:
    """Print an error the user can act on as its line(s) (its traceback too under --debug); its exit code.

    Anything else is a bug: re-raised, so its traceback shows.
    """
    if isinstance(exc, UserError):
        lines, code = exc.lines, exc.code
    else:
        from vectormill.flows.errors import user_error

        known = user_error(exc)
        if known is None:
            raise exc
        lines, code = known
    if debugging():
        traceback.print_exception(exc, file=sys.stderr)
    for line in lines:
        print_error(line)
    return code


def main() -> None:
    try:
        # Outside standalone mode click returns, not raises, the code of a `typer.Exit`.
        code = cli().main(standalone_mode=False, prog_name="vectormill")
        if isinstance(code, int) and code:
            sys.exit(code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        errors.print("aborted")
        sys.exit(130)
    except typer.TyperException as exc:  # bad usage: click's message and exit code 2
        exc.show()
        sys.exit(exc.exit_code)
    except Exception as exc:  # noqa: BLE001 - report() re-raises what the user cannot act on
        sys.exit(report(exc))
