"""Retrievers for RAG frameworks over a vectormill store: `vectormill.integrations.langchain` (extra
`vectormill[langchain]`) and `vectormill.integrations.llamaindex` (extra `vectormill[llamaindex]`).

Each returns the framework's own types: the chunk's text as content, every other hit field as metadata.
"""

from __future__ import annotations

from typing import Any


def hit_metadata(hit: dict[str, Any]) -> dict[str, Any]:
    """A hit's fields but its text (document, source, pages, score, title, location, chunk_id, modified, ocr…)."""
    return {key: value for key, value in hit.items() if key != "text"}
