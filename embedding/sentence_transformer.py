"""A sentence-transformers model on one device, with a hard check against silent truncation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .base import EmbeddingError
from .models import resolve_model
from .tokenizer import ModelTokenizer


def refuse_truncation(counts: Sequence[int], limit: int, model: str) -> None:
    """sentence-transformers truncates silently past max_seq_length; refuse instead."""
    for index, count in enumerate(counts):
        if count > limit:
            raise EmbeddingError(
                f"text {index} has {count} tokens, over model {model!r}'s limit of {limit}: "
                "it would be truncated; chunk it smaller"
            )


class SentenceTransformerEmbedder:
    def __init__(self, model: str, device: str = "cpu", batch_size: int = 64, tokenizer: ModelTokenizer | None = None):
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # weight-loading bars would break the CLI's own

        self.model = model
        self.device = device
        self.batch_size = batch_size
        self._model = SentenceTransformer(resolve_model(model), device=device)
        self.dimension = int(self._model.get_embedding_dimension())
        self.tokenizer = tokenizer or ModelTokenizer.for_model(model)

    def encode(self, texts: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """The bare model call (sentence-transformers sorts by length within it to cut padding)."""
        vectors = self._model.encode(
            list(texts),
            batch_size=batch_size or self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        refuse_truncation(self.tokenizer.count(texts), self.tokenizer.max_tokens, self.model)
        return self.encode(texts)
