"""The narrow interface the flow writes through; `FaissStore` implements it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from .records import BaselineRecord, Operation, QueuedDocument, SearchHit


class VectorStore(Protocol):
    model: str
    dimension: int
    notes: list[str]

    def document_versions(self, source: str) -> dict[str, str]: ...

    def stored_vectors(self, source: str, document: str,
                       content_hashes: Sequence[str] | None = None) -> dict[str, np.ndarray]: ...

    def cursor(self, source: str) -> str | None: ...

    def baselines(self, source: str | None = None) -> list[BaselineRecord]: ...

    def retry_queue(self, source: str | None = None) -> list[QueuedDocument]:
        """Documents that failed and have not landed since, oldest first failure first."""
        ...

    def properties(self) -> dict[str, str]: ...

    def write(self, operations: Sequence[Operation]) -> int:
        """Durable once it returns (the write is acknowledged)."""
        ...

    def checkpoint(self) -> int | None: ...

    def search(self, vector: np.ndarray, k: int = 5) -> list[SearchHit]: ...

    def stats(self) -> dict[str, Any]: ...

    def close(self) -> None: ...
