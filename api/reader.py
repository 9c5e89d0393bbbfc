"""The store as the public API gives it out: `search` and `get` over a long-lived reader (flows.search.Searcher)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from vectormill.flows.config import load_config
from vectormill.flows.search import HIT_FIELDS, Searcher


class Store:
    """A read-only handle on a vectormill store. Thread-safe; close it, or use it as a context manager."""

    hit_fields = HIT_FIELDS

    def __init__(self, searcher: Searcher):
        self._searcher = searcher

    @classmethod
    def open(cls, config_file: str | os.PathLike[str] | None = None) -> "Store":
        return cls(Searcher(load_config(config_file)))

    def search(self, query: str | Sequence[float] | np.ndarray, k: int = 5,
               filter: Mapping[str, Any] | None = None,  # noqa: A002 - the public name
               mode: str | None = None) -> list[dict[str, Any]]:
        """The k best chunks for a text (embedded with the store's model) or a vector, best first.

        `filter`: {"source", "document_prefix", "modified_after", "modified_before", "metadata"} (README).
        `mode`: "vector", "keyword" (BM25 over the chunks' text) or "hybrid" (both fused; each hit also carries its
        `vector_rank` and `keyword_rank`); None: the config's [search] mode for a text, "vector" for a vector.
        """
        return self._searcher.search(query, k, filter, mode).hits

    def get(self, document: str, source: str | None = None) -> dict[str, Any] | None:
        """A stored document by id: source, document, version, title, location, modified, text, chunks."""
        return self._searcher.get(document, source)

    @property
    def searcher(self) -> Searcher:
        return self._searcher

    def close(self) -> None:
        self._searcher.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
