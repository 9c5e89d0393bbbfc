"""The errors of sources and of the HTTP layer: plain types that every layer above may render."""

from __future__ import annotations


class DocumentError(Exception):
    """One document cannot be read (corrupt, encrypted, empty, too large…): recorded, the run goes on."""


class DocumentGone(DocumentError):
    """The document no longer exists at the source (deleted, archived, moved away): it is removed from the store."""


class SourceError(Exception):
    """The whole source is unusable (bad credentials, listing failed, circuit open): its run stops."""


class DocumentEmpty(DocumentError):
    """The document exists but holds no text at its source (a blanked page, a record whose properties were
    cleared, a file truncated to nothing): it is removed from the store, reported as "empty at source"."""
