"""What a source's run will do, decided from its listing (or its changes) and the store's versions.

Pure decisions over the `Source` and `VectorStore` interfaces: no Prefect, no model, so it is
tested with a real source and store alone.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Iterator, MutableMapping
from dataclasses import dataclass
from datetime import datetime, timezone

from vectormill.connectors.base import Changes, DocumentRef, IncrementalSource, Source
from vectormill.stores.base import VectorStore

from .retry_queue import SUSPECT_REASONS, is_stuck


def as_utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment.astimezone(timezone.utc)


@dataclass
class Plan:
    """What a source's run will do: documents to fetch, deletions, and the cursor to store after."""

    refs: Iterator[tuple[DocumentRef, bool]]  # (ref, is_new) for new or changed documents
    deletions: list[str]  # filled once `refs` is exhausted for a full listing
    cursor: str | None
    incremental: bool
    stored: Collection[str] = ()  # the source's documents in the store before the run
    reconciled: bool = False  # a full listing: the stored documents it does not list are deleted
    suspects: frozenset[str] = frozenset()  # queued because a process ended while it handled them


@dataclass(frozen=True)
class Window:
    """A backfill of the documents modified in [since, until] (either end open)."""

    since: datetime | None = None
    until: datetime | None = None

    @classmethod
    def between(cls, since: datetime | None, until: datetime | None) -> "Window":
        """Both ends as aware UTC times, so they compare: a time without a zone means UTC."""
        return cls(as_utc(since), as_utc(until))

    def holds(self, ref: DocumentRef) -> bool:
        if ref.modified is None:
            return True  # the source does not say: look at the document
        modified = datetime.fromisoformat(ref.modified.replace("Z", "+00:00"))
        return (self.since is None or modified >= self.since) and (self.until is None or modified <= self.until)


def plan_source(source: Source, store: VectorStore, counts: MutableMapping[str, int], full: bool,
                window: Window | None = None, *, max_attempts: int) -> Plan:
    """What to do for a source: its changes since the stored cursor (incremental sources), else a
    full listing reconciled with the store; with a window, the documents modified in it are done
    again even if unchanged (their unchanged chunk texts reuse stored vectors), nothing is deleted
    by reconciliation and the cursor stays where it is. `counts` gets "seen" and "unchanged" as
    the listing is read.

    The source's retry queue comes first: after reading changes, its queued documents are fetched
    by their refs whatever the cursor says (unless the changes delete them). A full listing instead
    fetches each queued document it lists, changed or not, and drops the queued ones it no longer
    lists. Stuck documents (`max_attempts` failed runs) are fetched only when listed as changed
    since they failed, or by a `full` run."""
    stored = store.document_versions(source.name)
    cursor = store.cursor(source.name)
    queue = store.retry_queue(source.name)
    queued = {queued.document: (DocumentRef.from_json(queued.ref), is_stuck(queued, max_attempts))
              for queued in queue}
    deletions: list[str] = []
    suspects = frozenset(q.document for q in queue if q.reason in SUSPECT_REASONS)

    def wanted(ref: DocumentRef) -> bool:
        """A listed document to fetch: a queued one (unless stuck and unchanged since), or a changed one."""
        if ref.id in queued:
            failed_ref, stuck = queued[ref.id]
            return full or not stuck or ref.version != failed_ref.version
        return window is not None or stored.get(ref.id) != ref.version

    def classify(refs: Iterable[DocumentRef], reconcile: bool, seen: set[str]) -> Iterator[tuple[DocumentRef, bool]]:
        listed: set[str] = set()
        for ref in refs:
            if ref.id in seen or ref.id in listed:
                continue
            listed.add(ref.id)
            if window is not None and ref.id not in queued and not window.holds(ref):
                continue
            counts["seen"] += 1
            if not wanted(ref):
                counts["unchanged"] += ref.id not in queued
                continue
            yield ref, ref.id not in stored
        if reconcile:
            deletions.extend(sorted((set(stored) | set(queued)) - listed))

    def queue_then_changes(changes: Changes, cursor: str | None) -> Plan:
        gone = list(changes.deletions)
        deletions.extend(d for d in gone if d in stored or d in queued)
        removed = set(gone)
        retries = [ref for document, (ref, stuck) in queued.items() if not stuck and document not in removed]

        def refs() -> Iterator[tuple[DocumentRef, bool]]:
            for ref in retries:
                counts["seen"] += 1
                yield ref, ref.id not in stored
            yield from classify(changes.upserts, reconcile=False, seen={ref.id for ref in retries})

        return Plan(refs(), deletions, cursor, incremental=True, stored=stored.keys(), suspects=suspects)

    if window is not None:
        if isinstance(source, IncrementalSource) and window.since is not None and not full:
            return queue_then_changes(source.changes_since(window.since.strftime("%Y-%m-%dT%H:%M:%SZ")), None)
        return Plan(classify(source.list_documents(), reconcile=False, seen=set()), deletions, None, incremental=False,
                    stored=stored.keys(), suspects=suspects)
    if isinstance(source, IncrementalSource) and cursor and not full:
        changes = source.changes_since(cursor)
        return queue_then_changes(changes, changes.cursor)
    # Taken before listing: a change made while we list is seen again next time, never skipped.
    new_cursor = source.current_cursor() if isinstance(source, IncrementalSource) else None
    return Plan(classify(source.list_documents(), reconcile=True, seen=set()), deletions, new_cursor, incremental=False,
                stored=stored.keys(), reconciled=True, suspects=suspects)
