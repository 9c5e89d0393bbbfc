"""Search the store: a text query embedded with the store's model (or a vector), the nearest chunks as plain dicts
(the fields of `search --json`), optionally filtered. Runs no flow, so it never imports Prefect.

`Searcher` is the long-lived reader behind the `search` command, the Python API (`vectormill.open_store`), the
framework retrievers and the HTTP service: it loads the model once, at its first text query, and each search
reads the store's newest committed state (FaissStore readers follow the writer).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from vectormill.embedding.base import TextTooLongError
from vectormill.stores.faiss_store import FaissStore, StoreError
from vectormill.stores.filters import SearchFilter, narrow, parse_filter
from vectormill.stores.fusion import SearchModeError, check_mode
from vectormill.stores.records import SearchHit

from .config import VectormillConfig

# The fields of a hit, in `search --json` and everywhere else hits are given out.
HIT_FIELDS = ("document", "source", "page", "pages", "score", "text", "title", "location", "chunk_id", "modified",
              "ocr")
RANK_FIELDS = ("vector_rank", "keyword_rank")  # added to a hybrid search's hits


class QueryError(StoreError):
    """A query the store cannot be searched with (an empty text, a text over the model's window, a vector of the
    wrong shape): the caller's to fix, unlike the store's own errors."""


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
        try:
            return self._embedder.embed([text])[0]
        except TextTooLongError as exc:  # refused, never truncated: a cut query would find what it did not ask
            raise QueryError(f"the query has {exc.tokens} tokens, over the model's limit of {exc.limit} tokens: "
                             "shorten it") from None

    def query_vector(self, query: str | Sequence[float] | np.ndarray) -> np.ndarray:
        if isinstance(query, str):
            if not query.strip():
                raise QueryError("the query is empty: give a text to look for (or a vector)")
            if any("\ud800" <= char <= "\udfff" for char in query):  # JSON's \ud800 escapes allow them
                raise QueryError("the query holds a lone surrogate (U+D800-U+DFFF), which is not text: send UTF-8")
            return self.embed(query)
        try:
            vector = np.asarray(query, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError):
            vector = np.zeros(0, dtype=np.float32)  # not numbers: refused below like a wrong shape
        if vector.shape != (self.dimension,) or not np.isfinite(vector).all():
            raise QueryError(f"a query vector must be {self.dimension} finite numbers, got shape {vector.shape}")
        return vector

    def search(self, query: str | Sequence[float] | np.ndarray, k: int = 5,
               filter: Mapping[str, Any] | None = None,  # noqa: A002 - the public name
               mode: str | None = None, *, scope: SearchFilter | None = None) -> SearchResult:
        """The k best chunks passing `filter`, and `scope` too when given (a service key's: whatever `filter` asks, no
        hit outside the scope). `mode`: vector, keyword or hybrid; None: [search] mode for a text, vector for a query
        vector (a vector has no keywords)."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise QueryError(f"k must be a whole number of at least 1, got {k!r}")
        text = query if isinstance(query, str) else None
        mode = check_mode(mode if mode is not None else self.config.search.mode if text is not None else "vector")
        if text is None and mode != "vector":
            raise SearchModeError(f"a query vector can only be searched in vector mode, not {mode}")
        where = narrow(scope, parse_filter(filter))
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

