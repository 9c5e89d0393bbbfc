"""Each source's retry queue, as runs use it and `vectormill failures` shows it.

A document that fails in a run is put on its source's queue (in the store, in the same write as
the cursor that moves past it); later runs fetch it again first, until it lands or its source says
it is gone. After `max_document_attempts` failed runs it is *stuck*: it stays queued and is
reported, and is fetched again only when the source reports it changed, or by a --full run.
A document is queued (its attempt counted) before it is processed, so one that kills the process
becomes stuck too instead of killing every later run.

Pure decisions over the store's `QueuedDocument`s, plus the read-only listing `failures` prints:
no Prefect, no model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vectormill.connectors.settings import SourceSettingsBase
from vectormill.stores.faiss_store import FaissStore
from vectormill.stores.records import QueuedDocument

from .config import VectormillConfig


# The reason a document is queued with before it is processed: its attempt counts even if the process
# dies on it (out of memory, a crash in a native parser, a kill). Replaced by the real reason if it
# fails; taken off the queue when it lands. Later runs process such suspects alone, after the rest.
INTERRUPTED = "interrupted: the process ended while handling it (killed, out of memory or crashed)"


def is_stuck(queued: QueuedDocument, max_attempts: int) -> bool:
    return queued.attempts >= max_attempts


@dataclass(frozen=True)
class QueueEntry:
    """A queued document as people and scripts see it."""

    source: str
    document: str
    reason: str
    attempts: int
    first_failed: str
    last_failed: str
    stuck: bool

    @classmethod
    def of(cls, queued: QueuedDocument, max_attempts: int) -> "QueueEntry":
        return cls(queued.source, queued.document, queued.reason, queued.attempts, queued.first_failed,
                   queued.last_failed, is_stuck(queued, max_attempts))

    def as_json(self) -> dict[str, Any]:
        """The contract of `failures --json` and of the summary's `stuck` entries."""
        return {"source": self.source, "document": self.document, "reason": self.reason, "attempts": self.attempts,
                "first_failed": self.first_failed, "last_failed": self.last_failed}


def max_attempts_of(config: VectormillConfig, source: str) -> int:
    """The source's max_document_attempts; the default for a source no longer configured."""
    for settings in config.sources:
        if settings.name == source:
            return settings.max_document_attempts
    return SourceSettingsBase.model_fields["max_document_attempts"].default


def list_failures(config: VectormillConfig, source: str | None = None) -> list[QueueEntry]:
    """The retry queue of every source, or of the one named (which must be configured), oldest failure first."""
    if source is not None:
        config.source(source)  # a ConfigError naming the configured sources
    with FaissStore.open(config.store, writable=False) as store:
        queued = store.retry_queue(source)
    return [QueueEntry.of(q, max_attempts_of(config, q.source)) for q in queued]
