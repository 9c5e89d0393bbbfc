"""Search the store: a text query embedded with the store's model (or a vector), the nearest chunks as plain dicts
(the fields of `search --json`), optionally filtered. Runs no flow, so it never imports Prefect.

`Searcher` is the long-lived reader behind the `search` command, the Python API (`vectormill.open_store`), the
framework retrievers and the HTTP service: it loads the model once, at its first text query, and each search
reads the store's newest committed state (FaissStore readers follow the writer).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from vectormill.stores.faiss_store import FaissStore, StoreError
from vectormill.stores.filters import parse_filter
from vectormill.stores.fusion import SearchModeError, check_mode
from vectormill.stores.records import SearchHit

from .config import VectormillConfig
from .settings import SearchServiceSettings

API_KEY_ENV = "VECTORMILL_SEARCH_API_KEY"

# The fields of a hit, in `search --json` and everywhere else hits are given out.
HIT_FIELDS = ("document", "source", "page", "pages", "score", "text", "title", "location", "chunk_id", "modified",
              "ocr")
RANK_FIELDS = ("vector_rank", "keyword_rank")  # added to a hybrid search's hits


@dataclass
class SearchResult:
    hits: list[dict[str, Any]]  # best first: document, source, page, pages, score, text, title, location, chunk_id, ocr
    notes: list[str]  # the store's warnings (recovery, replicas), for the user
    generation: int = 0  # the checkpoint the hits come from
    lsn: int = 0  # the last write the hits include


def hit_dict(hit: SearchHit, mode: str = "vector") -> dict[str, Any]:
    """A hit's fields; a hybrid search's also carry its rank in each ranking it fused (None: not in that one)."""
    found = {"document": hit.document, "source": hit.source, "page": hit.page, "pages": list(hit.pages),
             "score": round(hit.score, 6 if mode == "hybrid" else 4), "text": hit.text, "title": hit.title,
             "location": hit.location, "chunk_id": hit.chunk_id, "modified": hit.modified, "ocr": hit.ocr}
    if mode == "hybrid":
        found |= dict(zip(RANK_FIELDS, (hit.vector_rank, hit.keyword_rank)))
    return found


class Searcher:
    """A reader of the store for many searches. Thread-safe: searches at once each get a store reader of their own
    (its catalog connection and view are not shared between threads), so FAISS searches run in parallel. Close it
    (or use it as a context manager)."""

    def __init__(self, config: VectormillConfig):
        self.config = config
        self._lock = threading.Lock()
        self._embedder = None
        self._embedder_lock = threading.Lock()
        first = self._open()
        self.dimension = first.dimension
        self._readers, self._idle = [first], [first]

    def _open(self) -> FaissStore:
        store = FaissStore.open(self.config.store, writable=False)
        if store.model != self.config.embedding.model:
            store.close()
            raise StoreError(f"store holds vectors of model {store.model!r}; the config names "
                             f"{self.config.embedding.model!r}: set [embedding] model to match")
        return store

    @contextmanager
    def _reader(self) -> Iterator[FaissStore]:
        """An idle reader (a new one when all are busy), reading one committed state for the block."""
        with self._lock:
            store = self._idle.pop() if self._idle else None
        if store is None:
            store = self._open()
            with self._lock:
                self._readers.append(store)
        try:
            with store.snapshot():
                yield store
        finally:
            with self._lock:
                self._idle.append(store)

    def embed(self, text: str) -> np.ndarray:
        with self._embedder_lock:
            if self._embedder is None:
                from vectormill.embedding.registry import build_embedder

                # Queries: fp32, with no precision probe to pay (vectors of any precision agree with it).
                self._embedder = build_embedder(self.config.embedding.model_copy(update={"precision": "fp32"}))
        return self._embedder.embed([text])[0]

    def query_vector(self, query: str | Sequence[float] | np.ndarray) -> np.ndarray:
        if isinstance(query, str):
            return self.embed(query)
        vector = np.asarray(query, dtype=np.float32).reshape(-1)
        if vector.shape != (self.dimension,) or not np.isfinite(vector).all():
            raise StoreError(f"a query vector must be {self.dimension} finite numbers, got shape {vector.shape}")
        return vector

    def search(self, query: str | Sequence[float] | np.ndarray, k: int = 5,
               filter: Mapping[str, Any] | None = None,  # noqa: A002 - the public name
               mode: str | None = None) -> SearchResult:
        """`mode`: vector, keyword or hybrid; None: [search] mode for a text, vector for a query vector (a vector has
        no keywords)."""
        if k < 1:
            raise StoreError(f"k must be at least 1, got {k}")
        text = query if isinstance(query, str) else None
        mode = check_mode(mode if mode is not None else self.config.search.mode if text is not None else "vector")
        if text is None and mode != "vector":
            raise SearchModeError(f"a query vector can only be searched in vector mode, not {mode}")
        where = parse_filter(filter)
        vector = self.query_vector(query) if mode != "keyword" else None
        with self._reader() as store:  # the hits and the generation they name: one committed state
            hits = store.search(vector, k, where, text=text, mode=mode, fusion=self.config.search.fusion)
            return SearchResult([hit_dict(hit, mode) for hit in hits], list(store.notes), store.generation, store.lsn)

    def get(self, document: str, source: str | None = None) -> dict[str, Any] | None:
        """A stored document (source, document, version, title, location, modified, text, chunks); None if absent.
        An id that several sources hold needs `source`."""
        with self._reader() as store:
            found = store.document(document, source)
        if len(found) > 1:
            raise StoreError(f"document {document!r} is held by sources {', '.join(d['source'] for d in found)}: "
                             "name one with source=")
        if not found:
            return None
        return found[0] | {"text": "\n".join(chunk["text"] for chunk in found[0]["chunks"])}

    def close(self) -> None:
        with self._lock:
            for store in self._readers:
                store.close()
            self._readers, self._idle = [], []
        if self._embedder is not None and hasattr(self._embedder, "close"):
            self._embedder.close()

    def __enter__(self) -> "Searcher":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def search_store(config: VectormillConfig, text: str, k: int, filter: Mapping[str, Any] | None = None,  # noqa: A002
                 mode: str | None = None) -> SearchResult:
    with Searcher(config) as searcher:
        return searcher.search(text, k, filter, mode)


def search_api_key(settings: SearchServiceSettings) -> str:
    """The search service's API key: $VECTORMILL_SEARCH_API_KEY, else the configured Prefect Secret block (only
    then is Prefect imported)."""
    from vectormill.connectors.secrets import resolve_secret

    if os.environ.get(API_KEY_ENV) or not settings.api_key_block:
        return resolve_secret(env=API_KEY_ENV, block=None, what="search service API key (or name a Prefect Secret "
                              "block in [search_service] api_key_block)")
    return resolve_secret(env=None, block=settings.api_key_block, what="search service API key")
