"""The narrow interface of every embedder (local model, worker pool, external service)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


class EmbeddingError(RuntimeError):
    pass


@runtime_checkable
class Embedder(Protocol):
    model: str  # the configured model name, recorded in the store
    dimension: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalized float32 vectors, shape (len(texts), dimension), in input order."""
        ...
