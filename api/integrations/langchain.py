"""LangChain over a vectormill store (extra `vectormill[langchain]`): a retriever, and the read side of a
VectorStore (similarity_search, similarity_search_with_score, as_retriever).

    from vectormill.integrations.langchain import VectormillRetriever
    retriever = VectormillRetriever.from_config("vectormill.toml", k=4, filter={"source": "wiki"})
    docs = retriever.invoke("how do I rotate the API keys?")   # langchain_core Documents
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from langchain_core.vectorstores import VectorStore
from pydantic import ConfigDict

import vectormill
from vectormill.reader import Store
from vectormill.stores.filters import parse_filter

from . import hit_metadata


def to_document(hit: dict[str, Any]) -> Document:
    return Document(page_content=hit["text"], metadata=hit_metadata(hit), id=hit["chunk_id"])


def search(store: Store, query: str | list[float], k: int, own: dict[str, Any] | None,
           given: dict[str, Any] | None, mode: str | None) -> list[Document]:
    """The hits for a call's filter `given` within the object's own filter `own` (both hold: a call narrows what
    the retriever or store was made for, never widens it)."""
    scope = parse_filter(own)
    return [to_document(hit) for hit in store.searcher.search(query, k, given, mode, scope=scope).hits]


class VectormillRetriever(BaseRetriever):
    """The k chunks nearest to the query, as LangChain Documents (metadata: the hit's fields, score included).
    `invoke(query, k=…, filter=…)` overrides k and narrows the retriever's filter for that call."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    store: Store
    k: int = 4
    filter: dict[str, Any] | None = None
    mode: str | None = None  # vector, keyword or hybrid; None: the config's [search] mode

    @classmethod
    def from_config(cls, config_file: str | os.PathLike[str] | None = None, k: int = 4,
                    filter: dict[str, Any] | None = None, mode: str | None = None  # noqa: A002
                    ) -> "VectormillRetriever":
        return cls(store=vectormill.open_store(config_file), k=k, filter=filter, mode=mode)

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None,
                                filter: dict[str, Any] | None = None,  # noqa: A002
                                mode: str | None = None) -> list[Document]:
        """`mode` (retriever.invoke(query, mode="keyword")): this search's, instead of the retriever's."""
        return search(self.store, query, self.k if k is None else k, self.filter, filter, mode or self.mode)


class VectormillVectorStore(VectorStore):
    """A vectormill store as a read-only LangChain VectorStore: vectormill's ingestion writes it, not LangChain.
    A search's `filter` narrows the store's own."""

    def __init__(self, store: Store, filter: dict[str, Any] | None = None):  # noqa: A002
        self.store = store
        self.filter = filter

    @classmethod
    def from_config(cls, config_file: str | os.PathLike[str] | None = None,
                    filter: dict[str, Any] | None = None) -> "VectormillVectorStore":  # noqa: A002
        return cls(vectormill.open_store(config_file), filter)

    def similarity_search_with_score(self, query: str, k: int = 4, filter: dict[str, Any] | None = None,
                                     **kwargs: Any) -> list[tuple[Document, float]]:  # noqa: A002
        """(Document, cosine similarity), best first: a similarity search, so by vector whatever [search] mode says."""
        documents = search(self.store, query, k, self.filter, filter, "vector")
        return [(document, document.metadata["score"]) for document in documents]

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [document for document, _ in self.similarity_search_with_score(query, k, **kwargs)]

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4, filter: dict[str, Any] | None = None,
                                    **kwargs: Any) -> list[Document]:  # noqa: A002
        return search(self.store, embedding, k, self.filter, filter, "vector")

    def _select_relevance_score_fn(self):
        return lambda score: (1.0 + score) / 2.0  # cosine similarity in [-1, 1] -> relevance in [0, 1]

    def add_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None, **kwargs: Any) -> list[str]:
        raise NotImplementedError("a vectormill store is written by its ingestion (`vectormill backfill`), "
                                  "not through LangChain")

    @classmethod
    def from_texts(cls, texts: list[str], embedding: Any, metadatas: list[dict] | None = None,
                   **kwargs: Any) -> "VectormillVectorStore":
        raise NotImplementedError("open an existing store with VectormillVectorStore.from_config(config_file)")
