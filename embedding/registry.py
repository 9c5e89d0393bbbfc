"""Builds the `Embedder` that the embedding settings ask for."""

from __future__ import annotations

from .base import Embedder
from .settings import EmbeddingSettings


def build_embedder(settings: EmbeddingSettings) -> Embedder:
    from .sentence_transformer import SentenceTransformerEmbedder

    device = settings.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    return SentenceTransformerEmbedder(settings.model, device=device, batch_size=settings.batch_size)
