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
    ocr: bool = False  # its text was read by OCR from page images


@dataclass(frozen=True)
class DocumentVersion:
    """What the store records of a document's version when its chunks land (by upsert or a commit of parts)."""

    source: str
    document: str
    version: str
    title: str
    location: str
    modified: str | None


@dataclass(frozen=True)
class DocumentUpsert(DocumentVersion):
    """Replace everything stored for (source, document) by these chunks and vectors.

    It also takes the document off its source's retry queue: it has landed.
    """

    chunks: tuple[ChunkRecord, ...]
    vectors: np.ndarray = field(repr=False)  # (len(chunks), dim) float32
    metadata: dict[str, str] = field(default_factory=dict)  # the source's own fields (search filters match them)


@dataclass(frozen=True)
class DocumentPart:
    """Chunks and vectors of a document too large to hold whole, written in parts: each part is durable once
    written but invisible (not searched, not counted) until a `DocumentPartsCommit` makes them the document's
    chunks. `first` starts the document afresh (parts staged before for it are dropped). Parts left when a
    writer stops before the commit are discarded when the store is next opened for writing."""

    source: str
    document: str
    chunks: tuple[ChunkRecord, ...]
    vectors: np.ndarray = field(repr=False)  # (len(chunks), dim) float32
    first: bool = False


@dataclass(frozen=True)
class DocumentPartsCommit(DocumentVersion):
    """Replace everything stored for (source, document) by its parts written so far, `chunks` of them in all, in
    one write: its old version stays live until this commits. Takes it off the retry queue, as an upsert does."""

    chunks: int
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DocumentPartsDiscard:
    """Drop the parts written for (source, document) (its writing failed); what is stored of it stays."""

    source: str
    document: str


@dataclass(frozen=True)
class DocumentDelete:
    """Remove (source, document) and take it off the retry queue (gone at the source)."""

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


@dataclass(frozen=True)
class DocumentFailed:
    """A document of a source failed in a run: put it on (or keep it on) the source's retry queue.

    `ref` is what the source needs to fetch it again (opaque to the store, e.g. JSON). A document
    already queued keeps its first failure; its attempts count up and its reason and last failure
    are replaced. Written in the same `write` as the cursor that moves past it.

    `attempt` is added to its attempts: 1 counts one more; 0 records the reason of an attempt already
    counted (a document is queued, its attempt counted, before it is processed, so that a process that
    dies on it has counted it); -1 takes back one counted for a document its run did not process.
    """

    source: str
    document: str
    ref: str
    reason: str
    failed_at: str  # ISO 8601, UTC
    attempt: int = 1  # added to its attempts


@dataclass(frozen=True)
class QueuedDocument:
    """A document on a source's retry queue, as `VectorStore.retry_queue` returns it."""

    source: str
    document: str
    ref: str
    reason: str
    attempts: int
    first_failed: str
    last_failed: str


@dataclass(frozen=True)
class PropertyUpdate:
    """Set a store-wide property (e.g. the precision its vectors were embedded in); None removes it."""

    key: str
    value: str | None


Operation = (DocumentUpsert | DocumentDelete | CursorUpdate | BaselineRecord | DocumentFailed | PropertyUpdate
             | DocumentPart | DocumentPartsCommit | DocumentPartsDiscard)


def page_span(page: int | None, last_page: int | None) -> tuple[int, ...]:
    """The pages a chunk stored with its first and last page holds (a chunk is one stretch of text)."""
    if page is None:
        return ()
    return tuple(range(page, (last_page if last_page is not None else page) + 1))


@dataclass(frozen=True)
class SearchHit:
    score: float
    chunk_id: str
    source: str
    document: str
    title: str
    location: str
    page: int | None  # the first page its chunk holds
    text: str
    ocr: bool = False
    pages: tuple[int, ...] = ()  # every page its chunk holds, in order (none for texts without pages)
    modified: str | None = None  # the document's, as its source reported it (ISO 8601)
    # In a hybrid search, the hit's rank (from 1) in the vector and keyword rankings fused; None: not among them.
    vector_rank: int | None = None
    keyword_rank: int | None = None
