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

from . import hit_metadata


def to_document(hit: dict[str, Any]) -> Document:
    return Document(page_content=hit["text"], metadata=hit_metadata(hit), id=hit["chunk_id"])


class VectormillRetriever(BaseRetriever):
    """The k chunks nearest to the query, as LangChain Documents (metadata: the hit's fields, score included)."""

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

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                mode: str | None = None) -> list[Document]:
        """`mode` (retriever.invoke(query, mode="keyword")): this search's, instead of the retriever's."""
        return [to_document(hit) for hit in self.store.search(query, k=self.k, filter=self.filter,
                                                               mode=mode or self.mode)]


class VectormillVectorStore(VectorStore):
    """A vectormill store as a read-only LangChain VectorStore: vectormill's ingestion writes it, not LangChain."""

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
        hits = self.store.search(query, k=k, filter=filter if filter is not None else self.filter, mode="vector")
        return [(to_document(hit), hit["score"]) for hit in hits]

    def similarity_search(self, query: str, k: int = 4, **kwargs: Any) -> list[Document]:
        return [document for document, _ in self.similarity_search_with_score(query, k, **kwargs)]

    def similarity_search_by_vector(self, embedding: list[float], k: int = 4, filter: dict[str, Any] | None = None,
                                    **kwargs: Any) -> list[Document]:  # noqa: A002
        hits = self.store.search(embedding, k=k, filter=filter if filter is not None else self.filter)
        return [to_document(hit) for hit in hits]

    def _select_relevance_score_fn(self):
        return lambda score: (1.0 + score) / 2.0  # cosine similarity in [-1, 1] -> relevance in [0, 1]

    def add_texts(self, texts: Iterable[str], metadatas: list[dict] | None = None, **kwargs: Any) -> list[str]:
        raise NotImplementedError("a vectormill store is written by its ingestion (`vectormill backfill`), "
                                  "not through LangChain")

    @classmethod
    def from_texts(cls, texts: list[str], embedding: Any, metadatas: list[dict] | None = None,
                   **kwargs: Any) -> "VectormillVectorStore":
        raise NotImplementedError("open an existing store with VectormillVectorStore.from_config(config_file)")
