"""What the store takes and gives back; plain data, independent of the other packages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ChunkRecord:
    chunk_id: str  # 32 hex digits; the FAISS id is derived from it
    position: int
    text: str
    content_hash: str
    page: int | None
    last_page: int | None
    tokens: int


@dataclass(frozen=True)
class DocumentUpsert:
    """Replace everything stored for (source, document) by these chunks and vectors."""

    source: str
    document: str
    version: str
    title: str
    location: str
    modified: str | None
    chunks: tuple[ChunkRecord, ...]
    vectors: np.ndarray = field(repr=False)  # (len(chunks), dim) float32


@dataclass(frozen=True)
class DocumentDelete:
    source: str
    document: str


@dataclass(frozen=True)
class CursorUpdate:
    source: str
    cursor: str | None


@dataclass(frozen=True)
class BaselineRecord:
    """Statistics of the vectors one run embedded for a source, kept as that source's baseline.

    `stats` is plain JSON data (numbers, lists, dicts); the store keeps it as it is given.
    One record per (source, run_id): a run written again replaces its record.
    """

    source: str
    run_id: str
    created_at: str  # ISO 8601, UTC
    stats: dict[str, Any] = field(repr=False)


Operation = DocumentUpsert | DocumentDelete | CursorUpdate | BaselineRecord


@dataclass(frozen=True)
class SearchHit:
    score: float
    chunk_id: str
    source: str
    document: str
    title: str
    location: str
    page: int | None
    text: str
