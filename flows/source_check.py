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
    try:
        source = build_source(settings)
        first = next(iter(source.list_documents()), None)
        ok, detail = True, f"reachable; first document: {first.id}" if first else "reachable; no documents yet"
    except (SourceError, HttpStatusError, DocumentError) as exc:
        ok, detail = False, str(exc)
    except Exception as exc:  # noqa: BLE001 - one broken connector must not hide the other sources' status
        ok, detail = False, f"unexpected {type(exc).__name__}: {exc}"
    finally:
        close = getattr(source, "close", None)
        if close is not None:
            close()
    return SourceCheck(settings.name, settings.type, ok, detail, round(time.perf_counter() - started, 3))
