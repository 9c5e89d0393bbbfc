"""What every `vectormill` command shares: consoles, options, config loading and one-line errors."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
# soft_wrap: an error line stays one line, however narrow the terminal.
errors = Console(stderr=True, soft_wrap=True)


def print_error(line: str) -> None:
    errors.print(f"[red]error:[/red] {escape(line)}", highlight=False)


def print_warning(line: str) -> None:
    errors.print(f"[yellow]warning:[/yellow] {escape(line)}", highlight=False)


ConfigOption = typer.Option(None, "--config", "-c", help="Config file (default: $VECTORMILL_CONFIG, else ./vectormill.toml).")
JsonOption = typer.Option(False, "--json", help="Print machine-readable JSON instead of tables.")
SourceOption = typer.Option(None, "--source", "-s", help="Only this source.")


class UserError(Exception):
    """An error the user can act on: printed as one line, exit code 1 (config problems: 2)."""

    def __init__(self, lines: list[str], code: int = 1):
        super().__init__("\n".join(lines))
        self.lines, self.code = lines, code


def fail(exc: Exception) -> NoReturn:
    """Raise `exc` as a UserError when the user can act on it; re-raise anything else (a bug)."""
    from vectormill.flows.errors import user_error

    known = user_error(exc)
    if known is None:
        raise exc
    raise UserError(*known) from exc  # the cause: its traceback shows under --debug


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Inside, an error the user can act on (config, source, store, server…) becomes one line."""
    try:
        yield
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - fail() re-raises what it does not know
        fail(exc)


DEBUG_ENV = "VECTORMILL_DEBUG"  # set (or `vectormill --debug`): errors show their traceback too


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def load(config_file: Optional[Path]):
    from vectormill.flows.config import load_config

    with user_errors():
        return load_config(config_file)


def config_file_path(config_file: Optional[Path]) -> str:
    """The config's absolute path: flow runs and deployments run elsewhere (another folder, a worker)."""
    from vectormill.flows.config import config_path

    return str(config_path(config_file).resolve())


def prefect_defaults() -> None:
    """Settings that make an ephemeral (serverless) run work on a fresh machine; the user's values win."""
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
