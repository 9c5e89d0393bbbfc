"""Search the store for a text: embed the query with the store's model, return the nearest chunks.

Runs no flow, so it never imports Prefect.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vectormill.stores.faiss_store import FaissStore, StoreError

from .config import VectormillConfig


@dataclass
class SearchResult:
    hits: list[dict[str, Any]]  # best first: document, source, page, pages, score, text, title, location, chunk_id, ocr
    notes: list[str]  # the store's warnings (recovery, replicas), for the user


def search_store(config: VectormillConfig, text: str, k: int) -> SearchResult:
    from vectormill.embedding.registry import build_embedder

    with FaissStore.open(config.store, writable=False) as store:
        if store.model != config.embedding.model:
            raise StoreError(f"store holds vectors of model {store.model!r}; the config names "
                             f"{config.embedding.model!r}: set [embedding] model to match")
        # One query: fp32, with no precision probe to pay (vectors of any precision agree with it).
        embedder = build_embedder(config.embedding.model_copy(update={"precision": "fp32"}))
        hits = store.search(embedder.embed([text])[0], k)
        notes = list(store.notes)
    return SearchResult([{"document": h.document, "source": h.source, "page": h.page, "pages": list(h.pages),
                          "score": round(h.score, 4),
                          "text": h.text, "title": h.title, "location": h.location, "chunk_id": h.chunk_id,
                          "ocr": h.ocr}
                         for h in hits], notes)
