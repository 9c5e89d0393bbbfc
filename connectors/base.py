"""The narrow interface every source implements, and the documents it yields.

A source lists lightweight `DocumentRef`s (id + version) so the flow can compare them with
what the store already holds, and fetches a full `Document` only for new or changed ones.
Sources that can report changes since a cursor (wikis, CRMs) also implement
`IncrementalSource`; the cursor is stored with the vectors and advanced only after the
changes it covers are durable. The errors sources raise live in `errors.py`.

A document that fails is kept on its source's retry queue with its ref (`DocumentRef.to_json`),
and later runs fetch it again by that ref: every source's `fetch` takes a ref it did not just
list, and raises `DocumentGone` when the document no longer exists.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
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

    def to_json(self) -> str:
        """The ref as the retry queue keeps it (what `fetch` needs to read the document again)."""
        return json.dumps({"id": self.id, "version": self.version, "modified": self.modified}, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "DocumentRef":
        return cls(**json.loads(text))


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
    # A large text without pages is read in pieces when it is chunked, never held whole; `pages` is then
    # empty. Each call reads it again from the start (and raises DocumentError if it changed since `fetch`).
    text_pieces: Callable[[], Iterator[str]] | None = field(default=None, compare=False, repr=False)

    @property
    def text(self) -> str:
        if self.text_pieces is not None:
            return "".join(self.text_pieces())
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
        """The document's text and metadata; raises DocumentError for a bad document, DocumentGone
        (a DocumentError) for one that no longer exists. `ref` may come from an earlier run's listing."""
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
