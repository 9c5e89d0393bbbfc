"""How a running ingest reports progress to whoever watches: the CLI's bars, Prefect artifacts.

The flow looks the listener up in a context variable, so flow parameters stay plain data
(deployments can run the flow) while the CLI still sees every step.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Protocol


class ProgressListener(Protocol):
    def source_started(self, source: str) -> None: ...

    def documents_found(self, source: str, to_process: int) -> None:
        """More documents need work (the total grows while listing streams)."""
        ...

    def documents_done(self, source: str, count: int, chunks: int) -> None: ...

    def source_finished(self, source: str, status: str) -> None: ...


class SilentListener:
    def source_started(self, source: str) -> None:
        pass

    def documents_found(self, source: str, to_process: int) -> None:
        pass

    def documents_done(self, source: str, count: int, chunks: int) -> None:
        pass

    def source_finished(self, source: str, status: str) -> None:
        pass


progress_listener: ContextVar[ProgressListener] = ContextVar("vectormill_progress", default=SilentListener())
