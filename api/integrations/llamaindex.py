"""LlamaIndex over a vectormill store (extra `vectormill[llamaindex]`): a retriever of NodeWithScore.

    from vectormill.integrations.llamaindex import VectormillRetriever
    retriever = VectormillRetriever.from_config("vectormill.toml", k=4, filter={"document_prefix": "reports/"})
    nodes = retriever.retrieve("quarterly VAT deadline")
"""

from __future__ import annotations

import os
from typing import Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

import vectormill
from vectormill.reader import Store

from . import hit_metadata


# Shown to the retriever's caller, not to the LLM: the score (the node's own), an id and the server's path or URL.
HIDDEN_FROM_LLM = ["score", "chunk_id", "location"]


class VectormillRetriever(BaseRetriever):
    """The k chunks nearest to the query (its embedding, when the bundle carries one), as NodeWithScore. The LLM
    sees each node's text with its document, source, pages, title and time (HIDDEN_FROM_LLM left out)."""

    def __init__(self, store: Store, k: int = 4, filter: dict[str, Any] | None = None,  # noqa: A002
                 mode: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        # mode: vector, keyword or hybrid (None: the config's [search] mode); set it between retrievals at will
        self.store, self.k, self.filter, self.mode = store, k, filter, mode

    @classmethod
    def from_config(cls, config_file: str | os.PathLike[str] | None = None, k: int = 4,
                    filter: dict[str, Any] | None = None, mode: str | None = None,  # noqa: A002
                    **kwargs: Any) -> "VectormillRetriever":
        return cls(vectormill.open_store(config_file), k, filter, mode, **kwargs)

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        # a bundle's embedding is searched by vector (unless a mode that needs the text was asked for)
        embedding = query_bundle.embedding if self.mode in (None, "vector") else None
        query = embedding or query_bundle.query_str
        return [NodeWithScore(node=TextNode(id_=hit["chunk_id"], text=hit["text"], metadata=hit_metadata(hit),
                                            excluded_llm_metadata_keys=HIDDEN_FROM_LLM),
                              score=hit["score"])
                for hit in self.store.search(query, k=self.k, filter=self.filter, mode=self.mode)]
