"""`vectormill sources check`: can each configured source be reached with its credentials?

Each check lists the first document of the source (one page of an HTTP source; a filesystem
source's first folders, whose errors fail it as they fail a run), through the same connector
code a run uses. Runs no flow,
so it never imports Prefect (unless a source's token lives in a Prefect Secret block).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from vectormill.connectors.errors import DocumentError, SourceError
from vectormill.connectors.http import HttpStatusError
from vectormill.connectors.registry import build_source


@dataclass
class SourceCheck:
    name: str
    type: str
    ok: bool
    detail: str
    seconds: float


def check_source(settings: Any) -> SourceCheck:
    started = time.perf_counter()
    source = None
    settings, skipped = without_serverless_limit(settings)
    try:
        source = build_source(settings)
        first = next(iter(source.list_documents()), None)
        ok, detail = True, f"reachable; first document: {first.id}" if first else "reachable; no documents yet"
        detail += skipped
    except (SourceError, HttpStatusError, DocumentError) as exc:
        ok, detail = False, str(exc)
    except Exception as exc:  # noqa: BLE001 - one broken connector must not hide the other sources' status
        ok, detail = False, f"unexpected {type(exc).__name__}: {exc}"
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()
    return SourceCheck(settings.name, settings.type, ok, detail, round(time.perf_counter() - started, 3))


def without_serverless_limit(settings: Any) -> tuple[Any, str]:
    """(the settings the check uses, a note for its detail): without a Prefect server (PREFECT_API_URL) the
    source's `prefect_rate_limit` is left out. The check sends one request; holding a global limit would start
    Prefect's ephemeral server for it, which takes half a minute or more (minutes on a fresh PREFECT_HOME)."""
    name = getattr(settings, "prefect_rate_limit", None)
    if not name:
        return settings, ""
    from vectormill.flows.server import server_url

    if server_url() is not None:
        return settings, ""
    return (settings.model_copy(update={"prefect_rate_limit": None}),
            f" (prefect_rate_limit {name!r} not held: no Prefect server at PREFECT_API_URL)")
