"""What a source's run will do, decided from its listing (or its changes) and the store's versions.

Pure decisions over the `Source` and `VectorStore` interfaces: no Prefect, no model, so it is
tested with a real source and store alone.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass
from datetime import datetime

from vectormill.connectors.base import Changes, DocumentRef, IncrementalSource, Source
from vectormill.stores.base import VectorStore


@dataclass
class Plan:
    """What a source's run will do: documents to fetch, deletions, and the cursor to store after."""

    refs: Iterator[tuple[DocumentRef, bool]]  # (ref, is_new) for new or changed documents
    deletions: list[str]  # filled once `refs` is exhausted for a full listing
    cursor: str | None
    incremental: bool


@dataclass(frozen=True)
class Window:
    """A backfill of the documents modified in [since, until] (either end open)."""

    since: datetime | None = None
    until: datetime | None = None

    def holds(self, ref: DocumentRef) -> bool:
        if ref.modified is None:
            return True  # the source does not say: look at the document
        modified = datetime.fromisoformat(ref.modified.replace("Z", "+00:00"))
        return (self.since is None or modified >= self.since) and (self.until is None or modified <= self.until)


def plan_source(source: Source, store: VectorStore, counts: MutableMapping[str, int], full: bool,
                window: Window | None = None) -> Plan:
    """What to do for a source: its changes since the stored cursor (incremental sources), else a
    full listing reconciled with the store; with a window, the documents modified in it are done
    again even if unchanged (their unchanged chunk texts reuse stored vectors), nothing is deleted
    by reconciliation and the cursor stays where it is. `counts` gets "seen" and "unchanged" as
    the listing is read."""
    stored = store.document_versions(source.name)
    cursor = store.cursor(source.name)
    deletions: list[str] = []

    def classify(refs: Iterable[DocumentRef], reconcile: bool) -> Iterator[tuple[DocumentRef, bool]]:
        seen: set[str] = set()
        for ref in refs:
            if ref.id in seen or (window is not None and not window.holds(ref)):
                continue
            seen.add(ref.id)
            counts["seen"] += 1
            version = stored.get(ref.id)
            if version == ref.version and window is None:
                counts["unchanged"] += 1
                continue
            yield ref, version is None
        if reconcile:
            deletions.extend(sorted(set(stored) - seen))

    if window is not None:
        if isinstance(source, IncrementalSource) and window.since is not None and not full:
            changes = source.changes_since(window.since.strftime("%Y-%m-%dT%H:%M:%SZ"))
            deletions.extend(d for d in changes.deletions if d in stored)
            return Plan(classify(changes.upserts, reconcile=False), deletions, None, incremental=True)
        return Plan(classify(source.list_documents(), reconcile=False), deletions, None, incremental=False)
    if isinstance(source, IncrementalSource) and cursor and not full:
        changes: Changes = source.changes_since(cursor)
        deletions.extend(d for d in changes.deletions if d in stored)
        return Plan(classify(changes.upserts, reconcile=False), deletions, changes.cursor, incremental=True)
    # Taken before listing: a change made while we list is seen again next time, never skipped.
    new_cursor = source.current_cursor() if isinstance(source, IncrementalSource) else None
    return Plan(classify(source.list_documents(), reconcile=True), deletions, new_cursor, incremental=False)
