"""Each source's retry queue, as runs use it and `vectormill failures` shows it.

A document that fails in a run is put on its source's queue (in the store, in the same write as
the cursor that moves past it); later runs fetch it again first, until it lands or its source says
it is gone. After `max_document_attempts` failed runs it is *stuck*: it stays queued and is
reported (the run warns, naming it), and is fetched again only when the source reports it changed
(its version differs from the one that failed), or by a --full run.

A document is queued (its attempt counted) before it is processed, as INTERRUPTED: only a process
that dies leaves that reason. A run that ends settles every document it queued: it lands (off the
queue), fails with its real reason, or — its source failed or was refused — gets its real reason or
"not reached", the attempt taken back (`settle_unfinished`). The documents a dead process was
handling are *suspects*: the next run handles them after every source's other work, one at a time;
one that kills that run too (INTERRUPTED_ALONE) is quarantined, as stuck, from the next run on.

Pure decisions over the store's `QueuedDocument`s, plus the read-only listing `failures` prints:
no Prefect, no model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from vectormill.connectors.base import DocumentRef
from vectormill.connectors.settings import SourceSettingsBase
from vectormill.stores.faiss_store import FaissStore
from vectormill.stores.records import DocumentFailed, QueuedDocument

from .config import VectormillConfig


# The reason a document is queued with before it is processed: its attempt counts even if the process
# dies on it (out of memory, a crash in a native parser, a kill). Replaced by what happened when the run
# ends; only a process that died leaves it. Later runs process such suspects alone, after the rest.
INTERRUPTED = "interrupted: the process ended while handling it (killed, out of memory or crashed)"
# A suspect is queued with this before it is processed alone: left by a death, it quarantines the document.
INTERRUPTED_ALONE = ("quarantined: the process ended while handling it alone (killed, out of memory or crashed); "
                     "fetched again when it changes at the source, or by backfill --full")
SUSPECT_REASONS = frozenset({INTERRUPTED, INTERRUPTED_ALONE})
ERROR_CHARS = 300  # of a source's error, in the reason of a document it did not reach


@dataclass
class RunLedger:
    """What a source's run did with the documents it queued: each lands (and leaves the queue), fails
    (`failed_refs`), or is gone or empty at the source (`removed`); the others were not reached."""

    submitted: dict[str, DocumentRef] = field(default_factory=dict)
    failed_refs: dict[str, DocumentRef] = field(default_factory=dict)
    removed: dict[str, str] = field(default_factory=dict)  # document → why it goes


def settle_unfinished(source: str, ledger: RunLedger, failures: dict[str, str], error: str,
                      queued_before: dict[str, QueuedDocument], queue_now: list[QueuedDocument],
                      now: datetime | None = None) -> list[DocumentFailed]:
    """After the source failed (`error`): what the store records for each document this run queued that
    still reads INTERRUPTED. A failed one keeps its real reason (`failures`), its attempt counted; one gone
    or empty at the source says it was not deleted; one not reached gets back its earlier entry, or
    "not reached" — neither counts an attempt, so no source failure makes a document stuck."""
    at = (now or datetime.now(timezone.utc)).isoformat()
    first_line = (error.strip().splitlines() or [""])[0][:ERROR_CHARS]
    settled = []
    for queued in queue_now:
        document = queued.document
        if queued.reason not in SUSPECT_REASONS or document not in ledger.submitted:
            continue
        ref = ledger.submitted[document].to_json()
        if document in ledger.failed_refs:
            settled.append(DocumentFailed(source, document, ref, failures[document], at, attempt=0))
        elif document in ledger.removed:
            settled.append(DocumentFailed(source, document, ref, f"{ledger.removed[document]}, not deleted: "
                                          f"the source failed: {first_line}", at, attempt=-1))
        elif document in queued_before:
            earlier = queued_before[document]
            settled.append(DocumentFailed(source, document, earlier.ref, earlier.reason, earlier.last_failed,
                                          attempt=-1))
        else:
            settled.append(DocumentFailed(source, document, ref, f"not reached: the source failed: {first_line}", at,
                                          attempt=-1))
    return settled


def is_stuck(queued: QueuedDocument, max_attempts: int) -> bool:
    """Past max_document_attempts, or quarantined: fetched again only once it changes at the source."""
    return queued.attempts >= max_attempts or queued.reason == INTERRUPTED_ALONE


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
