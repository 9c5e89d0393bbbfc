"""The narrow interface of every embedder (local model, worker pool, external service)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np


class EmbeddingError(RuntimeError):
    pass


class TextTooLongError(EmbeddingError):
    """A text over the model's window (it would be truncated): `tokens` of the model's `limit`."""

    def __init__(self, message: str, tokens: int, limit: int):
        super().__init__(message)
        self.tokens, self.limit = tokens, limit


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1, in the rows' dtype; a zero row stays zero."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


@runtime_checkable
class Embedder(Protocol):
    model: str  # the configured model name, recorded in the store
    dimension: int

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """L2-normalized float32 vectors, shape (len(texts), dimension), in input order."""
        ...
