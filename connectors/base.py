"""The narrow interface every source implements, and the documents it yields.

A source lists lightweight `DocumentRef`s (id + version) so the flow can compare them with
what the store already holds, and fetches a full `Document` only for new or changed ones.
Sources that can report changes since a cursor (wikis, CRMs) also implement
`IncrementalSource`; the cursor is stored with the vectors and advanced only after the
changes it covers are durable. The errors sources raise live in `errors.py`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class DocumentRef:
    """A document as listed: its id within the source and a version that changes with its content.

    `modified` (ISO 8601, when the source reports it) lets a backfill select a time window.
    """

    id: str
    version: str
    modified: str | None = None


@dataclass(frozen=True)
class Page:
    """Text of one page; `number` is 1-based, None for sources without pages."""

    number: int | None
    text: str
    ocr: bool = False  # the text was read by OCR from the page's image


@dataclass(frozen=True)
class Document:
    source: str
    id: str
    version: str
    title: str
    pages: tuple[Page, ...]
    location: str  # URL or path, for people following a search hit back
    modified: str | None = None  # ISO 8601, as the source reports it
    metadata: dict[str, str] = field(default_factory=dict)
    ocr_seconds: float = 0.0  # spent reading page images while fetching (a stage of its own in run summaries)
    ocr_skipped_pages: int = 0  # pages without a text layer left unread: Tesseract is not installed

    @property
    def text(self) -> str:
        return "\n\n".join(page.text for page in self.pages)


@dataclass(frozen=True)
class Changes:
    """What changed in a source since a cursor.

    `upserts` are new or changed documents, `deletions` ids that are gone (deleted, moved away,
    archived), `cursor` the high-water mark to store once all of it is written.
    """

    upserts: Iterable[DocumentRef]
    deletions: Iterable[str]
    cursor: str | None


@runtime_checkable
class Source(Protocol):
    name: str

    def list_documents(self) -> Iterator[DocumentRef]:
        """Every document currently in the source (a full listing)."""
        ...

    def fetch(self, ref: DocumentRef) -> Document:
        """The document's text and metadata; raises DocumentError for a bad document."""
        ...


@runtime_checkable
class HttpBackedSource(Source, Protocol):
    """A source that reads through the shared HTTP layer; its request counters go in run summaries."""

    @property
    def http_stats(self) -> Any:  # connectors.http.HttpStats
        ...


@runtime_checkable
class IncrementalSource(Source, Protocol):
    def current_cursor(self) -> str | None:
        """A cursor for 'now', taken before a full listing so no change during it is missed."""
        ...

    def changes_since(self, cursor: str) -> Changes:
        """New, changed and deleted documents since `cursor`."""
        ...
