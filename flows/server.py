"""The Prefect server a run talks to, and the global concurrency limits it holds slots of.

Shared at run time by the flow and the deployment commands; Prefect is imported inside each
function, so importing this module costs nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


def server_url() -> str | None:
    """The API URL of the Prefect server the user runs; None in ephemeral mode (no PREFECT_API_URL)
    and on the temporary server a `backfill` starts for itself, which holds no global limits."""
    from prefect.settings import get_current_settings

    from .temporary_server import is_temporary

    url = get_current_settings().api.url or None
    return None if is_temporary(url) else url


def ui_url() -> str | None:
    """Where people open the Prefect UI: PREFECT_UI_URL, else derived from the API URL."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.ui_url:
        return settings.ui_url.rstrip("/")
    api = settings.api.url
    return api.rstrip("/").removesuffix("/api") if api else None


@contextlib.contextmanager
def occupy(name: str | None) -> Iterator[None]:
    """Hold one slot of the global concurrency limit `name` (waiting for it); None: no limit."""
    if name is None:
        yield
        return
    from prefect.concurrency.sync import concurrency

    with concurrency(name, occupy=1):
        yield
