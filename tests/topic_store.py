"""A store of the TOPICS corpus embedded with the real packaged model, written through the store API (no flow, no
Prefect): what the public API, the framework retrievers and the search service are tested on.

Each topic is one document of 3 chunks (its known sentence is chunk 1, on page 2) in one of two sources, under a
folder, with a modified time, so that every filter key has something to select.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vectormill.embedding.registry import build_embedder
from vectormill.embedding.settings import EmbeddingSettings
from vectormill.stores.faiss_store import FaissStore
from vectormill.stores.records import ChunkRecord, DocumentUpsert
from vectormill.stores.settings import StoreSettings

from .corpus import FILLER, TOPICS

# topic: (source, document id, modified)
PLACES = {
    "volcanoes": ("wiki", "Science/Volcanoes", "2025-11-02T08:00:00Z"),
    "baking": ("docs", "recipes/baking.pdf", "2026-01-15T12:00:00+00:00"),
    "chess": ("docs", "reports/chess.pdf", "2026-02-01"),
    "sailing": ("wiki", "Sport/Sailing", "2026-03-10T09:30:00Z"),
    "taxes": ("docs", "reports/taxes.pdf", "2025-12-31T23:00:00Z"),
    "astronomy": ("wiki", "Science/Astronomy", None),
}


def chunk_texts(topic: str) -> list[str]:
    return [f"Notes on {topic}, page 1. {FILLER}", TOPICS[topic], f"Notes on {topic}, page 3. {FILLER}"]


def topic_upsert(topic: str, embed: Callable[[list[str]], np.ndarray], document: str | None = None) -> DocumentUpsert:
    """The topic's document (under another id: a copy)."""
    source, place, modified = PLACES[topic]
    document = document or place
    texts = chunk_texts(topic)
    records = tuple(
        ChunkRecord(hashlib.sha256(f"{source}/{document}/{position}".encode()).hexdigest()[:32], position, text,
                    hashlib.sha256(text.encode()).hexdigest(), position + 1, position + 1 + (position == 2), 30)
        for position, text in enumerate(texts))
    return DocumentUpsert(source, document, "v1", topic.title(), f"https://example.org/{document}", modified, records,
                          embed(texts))


def write_topic_store(folder: Path, checkpoint: bool = True) -> Path:
    """The store and a config naming it in `folder`; returns the config file."""
    embedder = build_embedder(EmbeddingSettings(precision="fp32"))
    try:
        with FaissStore.open(StoreSettings(path=folder / "store"), model=embedder.model,
                             dimension=embedder.dimension) as store:
            store.write([topic_upsert(topic, embedder.embed) for topic in PLACES])
            if checkpoint:
                store.checkpoint()
    finally:
        embedder.close()
    config = folder / "vectormill.toml"
    config.write_text('[store]\npath = "store"\n')
    return config
