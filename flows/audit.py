"""`vectormill sources audit`: does the store mirror each source? Lists every source fully and compares.

For each source: documents listed but neither stored nor queued (*missing*), stored but no longer
listed (*extra*), stored at another version than listed (*stale*; with `deep`, documents whose
version matches are fetched and chunked again and their chunks' content hashes compared with the
stored ones, which finds a file rewritten with its size and mtime restored), and the documents on
its retry queue (*queued*) and past max_document_attempts (*stuck*). Missing, extra, stale or
stuck documents are divergences.

The comparison (`compare`) is pure; `audit_source` does the I/O through the same connectors a run
uses (rate limits honoured) and a read-only store. Runs no flow, imports no Prefect.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from vectormill.connectors.base import DocumentRef
from vectormill.connectors.errors import DocumentError
from vectormill.connectors.registry import build_source
from vectormill.embedding.chunking import chunk_document
from vectormill.embedding.tokenizer import ModelTokenizer
from vectormill.stores.faiss_store import FaissStore

from .config import VectormillConfig
from .retry_queue import is_stuck

LISTED_IDS = 100  # document ids listed per kind; the counts beside them are complete


@dataclass(frozen=True)
class SourceAudit:
    name: str
    listed: int
    stored: int
    missing: list[str]
    extra: list[str]
    stale: list[str]
    queued: int
    stuck: int
    repairs: tuple[str, ...] = ()  # the commands that repair what was found, each with what it repairs

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.stale or self.stuck)

    def as_json(self) -> dict[str, Any]:
        """The contract of `sources audit --json`'s per-source entries."""
        return {"name": self.name, "listed": self.listed, "stored": self.stored,
                "missing": self.missing[:LISTED_IDS], "missing_count": len(self.missing),
                "extra": self.extra[:LISTED_IDS], "extra_count": len(self.extra),
                "stale": self.stale[:LISTED_IDS], "stale_count": len(self.stale),
                "queued": self.queued, "stuck": self.stuck, "ok": self.ok}


def compare(name: str, listed: Mapping[str, str], stored: Mapping[str, str], queued: Iterable[str],
            stuck: Iterable[str], content_differs: Callable[[str], bool] | None = None,
            modified: Mapping[str, str | None] | None = None) -> SourceAudit:
    """The divergences of a source's listing (id → version) from the store's versions.

    Queued documents are the retry queue's business: neither missing nor stale (stuck ones count
    as stuck). `content_differs(id)` (a deep audit) is asked for the stored documents whose
    version matches the listing; `modified` (id → ISO time, as listed) dates those it finds.
    """
    queued, stuck = set(queued), set(stuck)
    missing = sorted(set(listed) - set(stored) - queued)
    extra = sorted(set(stored) - set(listed))
    kept = [document for document in listed if document in stored and document not in queued]
    by_version = {document for document in kept if stored[document] != listed[document]}
    by_content = {document for document in kept if document not in by_version
                  and content_differs is not None and content_differs(document)}
    return SourceAudit(name, len(listed), len(stored), missing, extra, sorted(by_version | by_content), len(queued),
                       len(stuck), repairs(name, bool(missing or extra or by_version or stuck),
                                           [(modified or {}).get(document) for document in by_content]))


def repairs(name: str, reconcile: bool, rewritten_modified: list[str | None]) -> tuple[str, ...]:
    """What repairs a source: a --full run re-lists it (missing, extra, stale by version, stuck); it does not
    fetch a document listed at its stored version, so one rewritten behind its version (found by --deep) is
    redone by a backfill window from its modification time, or after a `touch`."""
    found = []
    if reconcile:
        found.append(f"`vectormill backfill --full --source {name}` repairs its missing, extra, stale and stuck "
                     "documents")
    if rewritten_modified:
        known = [moment for moment in rewritten_modified if moment]
        if len(known) == len(rewritten_modified):
            since = min(known).replace("+00:00", "").replace("Z", "")[:19]
            found.append(f"`vectormill backfill --source {name} --since {since}` redoes the "
                         f"{len(rewritten_modified)} document(s) whose content changed behind an unchanged version")
        else:
            found.append(f"{len(rewritten_modified)} document(s) of {name!r} changed behind an unchanged version: "
                         "`touch` them (or edit them at the source), then run `vectormill backfill`")
    return tuple(found)


def audit(config: VectormillConfig, source: str | None = None, deep: bool = False) -> list[SourceAudit]:
    """Every configured source (or the one named), compared with the store."""
    selected = [config.source(source)] if source else list(config.sources)
    with FaissStore.open(config.store, writable=False) as store:
        return [audit_source(config, settings, store, deep) for settings in selected]


def audit_report(audits: list[SourceAudit]) -> dict[str, Any]:
    """The contract of `sources audit --json` (and of the weekly audit's artifact)."""
    return {"ok": all(entry.ok for entry in audits), "sources": [entry.as_json() for entry in audits]}


def audit_source(config: VectormillConfig, settings: Any, store: FaissStore, deep: bool) -> SourceAudit:
    connector = build_source(settings)
    try:
        refs = {ref.id: ref for ref in connector.list_documents()}  # a SourceError fails the audit
        queue = store.retry_queue(settings.name)
        differs = None
        if deep:
            tokenizer = ModelTokenizer.for_model(config.embedding.model)
            chunk_tokens = config.chunking.tokens or tokenizer.max_content_tokens

            def differs(document: str) -> bool:
                now = _chunk_hashes(connector, refs[document], tokenizer, chunk_tokens, config.chunking.overlap)
                return now != set(store.stored_vectors(settings.name, document))

        return compare(settings.name, {ref.id: ref.version for ref in refs.values()},
                       store.document_versions(settings.name), (q.document for q in queue),
                       (q.document for q in queue if is_stuck(q, settings.max_document_attempts)), differs,
                       {ref.id: ref.modified for ref in refs.values()})
    finally:
        close = getattr(connector, "close", None)
        if close is not None:
            close()


def _chunk_hashes(connector: Any, ref: DocumentRef, tokenizer: ModelTokenizer, chunk_tokens: int,
                  overlap: int) -> set[str] | None:
    """The content hashes of the document's chunks as a run would make them now (None: unreadable or gone)."""
    try:
        document = connector.fetch(ref)
    except DocumentError:  # gone, empty or unreadable since it was stored
        return None
    return {chunk.content_hash for chunk in chunk_document(document, tokenizer.tokens, chunk_tokens, overlap)}
