"""One source's ingest, top to bottom: list → compare → fetch/parse/chunk → embed → write → cursor.

Fetch/parse/chunk runs as Prefect tasks a few batches ahead of embedding, so parsing overlaps
with the model. Where the tasks run is the run's `Execution` (flows/execution.py): locally,
fetching runs on the flow's thread pool and embedding in the flow's thread (one model per
process); on Dask, both run on the workers and at most `embed_tasks_in_flight` embedding tasks
are outstanding. Either way the flow process is the one store writer: it takes the vectors back
in order and writes whole documents, so a crash leaves every document either fully stored at
its new version or untouched. A document too large to hold whole (a text file read in pieces) is
chunked, embedded and written by the flow process itself, a part at a time (`PART_CHUNKS`), its
parts made live by one commit: memory follows the part, not the document, and a crash still
leaves its old version whole.

Each source's run also records a baseline of the vectors it embedded (embedding/drift.py) and
compares it with the source's previous one. A document is put on the source's retry queue
(flows/retry_queue.py), its attempt counted, before it is fetched; it leaves the queue when it
lands, and one that fails gets its reason in the same write as the cursor that moves past it.
Deletions pass the safety valve (flows/deletions.py) first; any error of the source fails that
source alone.
"""

from __future__ import annotations

import copy
import functools
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any
from uuid import uuid4

import numpy as np
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext

from vectormill.connectors.base import DocumentRef, HttpBackedSource, Source
from vectormill.connectors.errors import DocumentEmpty, DocumentError, DocumentGone, SourceError
from vectormill.connectors.ocr import OcrUnavailableError
from vectormill.connectors.registry import build_source
from vectormill.connectors.settings import SourceSettingsBase
from vectormill.embedding.base import Embedder
from vectormill.embedding.capacity import CPU_TASK_CHUNKS
from vectormill.embedding.chunking import Chunk, chunk_document, stream_chunks
from vectormill.embedding.drift import DriftProfile, compare, sampling_key
from vectormill.embedding.loader import loader_for
from vectormill.embedding.settings import DriftSettings, EmbeddingSettings
from vectormill.embedding.tokenizer import ModelTokenizer
from vectormill.stores.base import VectorStore
from vectormill.stores.errors import StoreError
from vectormill.stores.records import (BaselineRecord, ChunkRecord, CursorUpdate, DocumentDelete, DocumentFailed,
                                       DocumentPart, DocumentPartsCommit, DocumentPartsDiscard, DocumentUpsert)

from .server import occupy, server_url
from .execution import LocalExecution, fetch_settings
from .deletions import deletion_refusal
from .plan import Plan, Window, plan_source
from .task_sizes import FetchBatchSize, embedding_task_full
from .retry_queue import INTERRUPTED, INTERRUPTED_ALONE, QueueEntry, RunLedger, settle_unfinished
from .side_by_side import SuspectTurns
from .progress import progress_listener

if TYPE_CHECKING:
    from .execution import Execution


# Chunks of a document too large to hold whole (its text is read in pieces) written at a time, as one part of its
# write: ~5 MB of texts, vectors and chunk objects, whatever the document's size.
PART_CHUNKS = 1024

_sources: dict[str, tuple[SourceSettingsBase, Source]] = {}
_sources_lock = threading.Lock()


def source_for(settings: SourceSettingsBase) -> Source:
    """One source object per process and source name, so its HTTP session and rate limiter are shared by
    all tasks; new settings for a name (an edited config) replace the old object, so a long-lived
    process keeps one per configured source."""
    with _sources_lock:
        cached = _sources.get(settings.name)
        if cached is None or cached[0] != settings:
            cached = _sources[settings.name] = (settings, build_source(settings))
        return cached[1]


def embedder_for(settings: EmbeddingSettings) -> Embedder:
    """One model per process: loading it costs seconds and memory, so a run starts it early
    (`Execution.warm_up`) and this waits for what is left."""
    return loader_for(settings).get()


@functools.lru_cache(maxsize=2)  # the models of the config in use and of the one before it
def tokenizer_for(model: str) -> ModelTokenizer:
    return ModelTokenizer.for_model(model)


@dataclass(frozen=True)
class ParsedDocument:
    source: str
    id: str
    version: str
    title: str
    location: str
    modified: str | None
    chunks: tuple[Chunk, ...]
    is_new: bool
    metadata: dict[str, str] = field(default_factory=dict)  # the source's own fields, kept for search filters


@dataclass(frozen=True)
class Failure:
    source: str
    document: str
    reason: str


@dataclass
class FetchResult:
    documents: list[ParsedDocument]
    failures: list[Failure]
    seconds: float  # OCR included
    failed_refs: dict[str, DocumentRef] = field(default_factory=dict)  # failed document → its ref, to retry it
    removed: dict[str, str] = field(default_factory=dict)  # document → why it goes: gone or empty at the source
    # Documents too large to hold whole (text read in pieces): the writer chunks, embeds and writes them in parts.
    in_parts: list[tuple[DocumentRef, bool]] = field(default_factory=list)
    ocr_seconds: float = 0.0
    ocr_skipped_pages: int = 0  # pages without text left unread: Tesseract is not installed


@dataclass
class SourceReport:
    name: str
    status: str = "completed"  # completed | failed
    error: str | None = None
    documents: dict[str, int] = field(
        default_factory=lambda: dict.fromkeys(("seen", "new", "changed", "unchanged", "deleted", "failed"), 0))
    chunks_embedded: int = 0
    chunks_reused: int = 0
    failures: list[Failure] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(
        ("list", "fetch_parse_chunk", "ocr", "embed", "write"), 0.0))
    http: dict[str, Any] | None = None  # requests, retries by reason, rate-limit and backoff waits
    drift: dict[str, Any] | None = None  # this run's embeddings against the source's baseline
    retry_queue: int = 0  # documents on the source's retry queue after the run
    stuck: list[dict[str, Any]] = field(default_factory=list)  # those queued past max_document_attempts
    ocr_skipped_pages: int = 0
    removed: list[dict[str, str]] = field(default_factory=list)  # documents gone or empty at the source: why
    known: int = 0  # the source's documents: stored before the run plus new ones (max_failed_ratio's base)
    kept: list[dict[str, str]] = field(default_factory=list)  # gone or empty at the source, not deleted: why

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "error": self.error,
            "documents": dict(self.documents),
            "chunks_embedded": self.chunks_embedded,
            "chunks_reused": self.chunks_reused,
            "failures": [vars(f) for f in self.failures],
            "seconds": {stage: round(value, 3) for stage, value in self.seconds.items()},
            "http": self.http,
            "drift": self.drift,
            "retry_queue": self.retry_queue,
            "stuck": list(self.stuck),
            "ocr_skipped_pages": self.ocr_skipped_pages,
            "removed": list(self.removed),
        }


@task(name="fetch-parse-chunk", cache_policy=NO_CACHE, retries=1, retry_delay_seconds=2)
def fetch_parse_chunk(
    settings: SourceSettingsBase,
    refs: list[tuple[DocumentRef, bool]],
    model: str,
    chunk_tokens: int,
    overlap: int,
) -> FetchResult:
    """Fetch, parse and chunk a batch of documents; a bad document becomes a Failure, and one the source
    says is gone, or empty, a deletion, not an error.

    Retried by Prefect only for unexpected errors (a bug or a lost worker); per-document errors
    and HTTP retries are handled inside.
    """
    started = time.perf_counter()
    source = source_for(settings)
    tokenizer = tokenizer_for(model)
    result = FetchResult([], [], 0.0)
    for ref, is_new in refs:
        with _outcome_of(ref, settings.name, result):
            document = source.fetch(ref)
            if document.text_pieces is not None:
                result.in_parts.append((ref, is_new))
                continue
            chunks = chunk_document(document, tokenizer.tokens, chunk_tokens, overlap)
            result.ocr_seconds += document.ocr_seconds
            result.ocr_skipped_pages += document.ocr_skipped_pages
            result.documents.append(ParsedDocument(document.source, document.id, document.version, document.title,
                                                   document.location, document.modified, tuple(chunks), is_new,
                                                   dict(document.metadata)))
    result.seconds = time.perf_counter() - started
    return result


@contextmanager
def _outcome_of(ref: DocumentRef, source: str, result: FetchResult) -> Iterator[None]:
    """A document's errors go in the result: gone or empty at the source, a removal; any other DocumentError, a
    failure to retry."""
    try:
        yield
    except DocumentGone:
        result.removed[ref.id] = "gone at source"
    except DocumentEmpty:
        result.removed[ref.id] = "empty at source"
    except DocumentError as exc:
        result.failures.append(Failure(source, ref.id, str(exc)))
        result.failed_refs[ref.id] = ref
        result.ocr_skipped_pages += exc.skipped_pages if isinstance(exc, OcrUnavailableError) else 0


@task(name="embed-chunks", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def embed_chunks(settings: EmbeddingSettings, texts: list[str], limit: str | None = None) -> np.ndarray:
    """Vectors of texts with this process's model, holding a slot of the global limit `limit` (None: none)."""
    with occupy(limit):
        return embedder_for(settings).embed(texts)


@task(name="embedding-dimension", cache_policy=NO_CACHE, retries=1)
def embedding_dimension(settings: EmbeddingSettings) -> int:
    """The model's dimension, from the model where embedding runs (loading it there once)."""
    return embedder_for(settings).dimension


@task(name="embedding-task-chunks", cache_policy=NO_CACHE, retries=1)
def embedding_task_chunks(settings: EmbeddingSettings) -> int:
    """Chunks per embedding task as planned where embedding runs (its devices), loading the model
    there once; an embedding service keeps CPU_TASK_CHUNKS."""
    plan = getattr(embedder_for(settings), "plan", None)
    return settings.task_chunks or (plan.planned_task_chunks if plan else CPU_TASK_CHUNKS)


class TaskChunks:
    """When one source's pending chunks make a whole embedding task (flows/task_sizes.py): [embedding]
    task_chunks set by hand, else the size asked once, when first needed, of where embedding runs
    (this process, a Dask worker, `serve`'s task worker), whose devices plan it.

    Never planned below CPU_TASK_CHUNKS full-length chunks, so the question waits until their tokens
    are pending: a run that embeds less (or nothing) never waits for the model to load to decide it."""

    def __init__(self, settings: EmbeddingSettings, execution: Any, chunk_tokens: int):
        self._settings, self._execution, self._chunk_tokens = settings, execution, chunk_tokens
        self._value = settings.task_chunks

    def call_full(self, chunks: int, tokens: int) -> bool:
        """Whether one embedding call carrying these chunks and tokens is full: a document holding more than a task
        (a long PDF, a part of a large text) takes several calls, as a call's working memory follows what it carries."""
        return embedding_task_full(chunks, tokens, self._value or CPU_TASK_CHUNKS, self._chunk_tokens,
                                   by_hand=self._settings.task_chunks is not None)

    def reached(self, pending_chunks: int, pending_tokens: int) -> bool:
        """Whether these pending chunks, holding these tokens, make a whole embedding task."""
        if self._value is None:
            if not embedding_task_full(pending_chunks, pending_tokens, CPU_TASK_CHUNKS, self._chunk_tokens,
                                       by_hand=False):
                return False
            # Sent the way embedding calls go (on Dask to a GPU worker; through the run's fair pool, whose
            # thread carries the flow's context, not this source task's, which Prefect could not serialize).
            self._value = self._execution.embed(embedding_task_chunks, {"settings": self._settings}).result()
        return embedding_task_full(pending_chunks, pending_tokens, self._value, self._chunk_tokens,
                                   by_hand=self._settings.task_chunks is not None)


def _batched(items: Iterable[Any], size: Callable[[], int]) -> Iterator[list[Any]]:
    """Batches of `size()` items, asked again for each batch."""
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size():
            yield batch
            batch = []
    if batch:
        yield batch


def ingest_source(
    settings: SourceSettingsBase,
    store: VectorStore,
    embedding: EmbeddingSettings,
    chunk_tokens: int,
    overlap: int,
    full: bool = False,
    embedding_limit: str | None = None,
    execution: Execution | None = None,
    drift: DriftSettings | None = None,
    window: Window | None = None,
    allow_deletions: bool = False,
    turns: SuspectTurns | None = None,
) -> SourceReport:
    """Run one source; `embedding_limit` names the Prefect global concurrency limit each
    embedding call holds a slot of (None: none, e.g. ephemeral runs). `execution` says where
    tasks run (default: locally); `drift` how this run's embeddings are profiled and compared.

    Whatever goes wrong with the source (SourceError, or any other exception: a bug in a
    connector, a malformed record) fails this source alone, with a one-line reason; deletions
    beyond its `max_delete_ratio` fail it too, deleting nothing, unless `allow_deletions`."""
    logger = get_run_logger()
    listener = progress_listener.get()
    execution = execution or LocalExecution()
    drift = drift or DriftSettings()
    report = SourceReport(settings.name)
    listener.source_started(settings.name)
    # Every process that fetches (the flow lists) gets the same, possibly divided, rate limit.
    settings = fetch_settings(settings, execution.fetch_processes, server_url() is not None)
    profile = DriftProfile(store.dimension, drift) if drift.enabled else None
    source: Source | None = None
    http_before = None
    ledger = RunLedger()
    queued_before = {queued.document: queued for queued in store.retry_queue(settings.name)}
    try:
        source = source_for(settings)
        # The source outlives the run in a long-lived process: count this run's requests only.
        http_before = copy.deepcopy(source.http_stats) if isinstance(source, HttpBackedSource) else None
        listed = time.perf_counter()
        plan = plan_source(source, store, report.documents, full, window, max_attempts=settings.max_document_attempts)
        report.seconds["list"] += time.perf_counter() - listed
        _embed_and_write(settings, store, embedding, chunk_tokens, overlap, plan, report, listener, embedding_limit,
                         execution, profile, ledger, turns)
        report.known = len(set(plan.stored).union(failure.document for failure in report.failures)) + \
            report.documents["new"]
        deleted = [DocumentDelete(settings.name, document)
                   for document in dict.fromkeys([*plan.deletions, *ledger.removed])]
        refusal = deletion_refusal(
            settings.name, sum(op.document in plan.stored for op in deleted), len(plan.stored),
            settings.max_delete_ratio, listed_nothing=plan.reconciled and not report.documents["seen"],
            allowed=allow_deletions, where=str(getattr(settings, "root", "")) or None)
        if refusal:
            report.kept = [{"document": document, "reason": reason} for document, reason in ledger.removed.items()
                           if document in plan.stored]
            raise SourceError(refusal)
        report.removed = [{"document": document, "reason": reason} for document, reason in ledger.removed.items()]
        if deleted:
            store.write(deleted)
            # Off the queue either way; deleted from the store only if it was there (an empty file never stored is not).
            report.documents["deleted"] = sum(op.document in plan.stored for op in deleted)
        if profile is not None and profile.count:
            # Before the cursor: a crash in between re-embeds nothing, so no baseline would follow.
            store.write([_baseline(settings.name, store, profile, drift, report)])
        # Last, after everything it covers is durable: a crash before this write re-reads the changes.
        # The failed documents go on the retry queue in the same write as the cursor that moves past them.
        failed_at = datetime.now(timezone.utc).isoformat()
        final: list[DocumentFailed | CursorUpdate] = [
            DocumentFailed(settings.name, failure.document, ledger.failed_refs[failure.document].to_json(), failure.reason,
                           failed_at, attempt=0) for failure in report.failures]  # counted before its fetch
        if plan.cursor is not None and plan.cursor != store.cursor(settings.name):
            final.append(CursorUpdate(settings.name, plan.cursor))
        if final:
            store.write(final)
    except SourceError as exc:
        report.status, report.error = "failed", str(exc)
        logger.error("source %s failed: %s", settings.name, exc)
    except (StoreError, sqlite3.Error):
        raise  # the store's trouble, not the source's: no other source could be written either
    except Exception as exc:  # noqa: BLE001 - one broken source must not stop the others
        first_line = (str(exc).strip().splitlines() or [""])[0]
        report.status, report.error = "failed", f"unexpected {type(exc).__name__}: {first_line}"
        logger.exception("source %s failed: %s", settings.name, report.error)
    finally:
        if turns is not None:
            turns.other_work_done(settings.name)  # also when the source failed: no source waits for it
        finish_run = getattr(source, "finish_run", None)  # what a source kept for this run only (HubSpot: listings)
        if finish_run is not None:
            finish_run()
    if report.status == "failed" and ledger.submitted:
        failures = {failure.document: failure.reason for failure in report.failures}
        settled = settle_unfinished(settings.name, ledger, failures, report.error or "", queued_before,
                                    store.retry_queue(settings.name))
        if settled:
            store.write(settled)
    _report_queue(settings, store, report)
    if http_before is not None:
        report.http = source.http_stats.since(http_before)
    listener.source_finished(settings.name, report.status)
    logger.info("source %s: %s", settings.name, report.documents)
    return report


def _report_queue(settings: SourceSettingsBase, store: VectorStore, report: SourceReport) -> None:
    """The source's retry queue after the run, in the report: its size and the stuck documents."""
    entries = [QueueEntry.of(q, settings.max_document_attempts) for q in store.retry_queue(settings.name)]
    report.retry_queue = len(entries)
    report.stuck = [entry.as_json() for entry in entries if entry.stuck]
    if entries:
        get_run_logger().info("source %s: %d document(s) queued for retry, %d stuck after max_document_attempts = %d "
                              "(`vectormill failures --source %s` lists them)", settings.name, len(entries),
                              len(report.stuck), settings.max_document_attempts, settings.name)


def _baseline(name: str, store: VectorStore, profile: DriftProfile, drift: DriftSettings,
              report: SourceReport) -> BaselineRecord:
    """This run's baseline record, after comparing it with the source's previous one (into the report)."""
    stats = profile.stats()
    previous = store.baselines(name)
    if previous:
        comparison = compare(stats, previous[-1].stats, drift)
        report.drift = {**comparison.as_dict(), "baseline_run": previous[-1].run_id,
                        "baseline_created_at": previous[-1].created_at}
        if comparison.drifted:
            get_run_logger().warning("source %s: embeddings drifted from the baseline of run %s (%s): %s",
                                     name, previous[-1].run_id, previous[-1].created_at, "; ".join(comparison.reasons))
    else:
        report.drift = {"status": "first baseline", "vectors": stats["vectors"]}
    context = FlowRunContext.get()
    run_id = str(context.flow_run.id) if context and context.flow_run else uuid4().hex
    return BaselineRecord(name, run_id, datetime.now(timezone.utc).isoformat(), stats)


@dataclass
class _EmbedBatch:
    """Documents whose new chunks are being embedded (`embedded`: futures of their vectors, one per call)."""

    documents: list[ParsedDocument]
    reused: dict[str, np.ndarray]  # chunk id → stored vector of the same text
    to_embed: list[Chunk]
    embedded: Any


def _embed_and_write(settings, store, embedding, chunk_tokens, overlap, plan: Plan, report, listener,
                     embedding_limit, execution, profile, ledger: RunLedger, turns: SuspectTurns | None) -> None:
    """Fetch, embed and write the plan's documents; the `ledger` gets what was queued, what failed and what is gone
    or empty at the source.

    Each batch's documents are queued, their attempt counted, before the batch is fetched: a
    process that dies on one has counted it (flows/retry_queue.py). The suspects of an earlier
    such death come last, once every source's other work is done (`turns`), one at a time with
    nothing else in flight in the run: one that kills the process again is quarantined by that
    death alone, and the others land.
    """
    fetches: deque = deque()
    failed_refs, removed = ledger.failed_refs, ledger.removed
    embeds: deque[_EmbedBatch] = deque()
    pending: list[ParsedDocument] = []
    in_parts: list[tuple[DocumentRef, bool]] = []
    pending_chunks = pending_tokens = 0
    task_chunks = TaskChunks(embedding, execution, chunk_tokens)
    fetch_batch = FetchBatchSize(settings.fetch_batch_size, chunk_tokens)

    def collect(result: FetchResult) -> None:
        nonlocal pending_chunks, pending_tokens
        report.seconds["fetch_parse_chunk"] += result.seconds - result.ocr_seconds
        report.seconds["ocr"] += result.ocr_seconds
        report.ocr_skipped_pages += result.ocr_skipped_pages
        for failure in result.failures:
            report.failures.append(failure)
            report.documents["failed"] += 1
            get_run_logger().warning("%s: %s: %s", failure.source, failure.document, failure.reason)
        failed_refs.update(result.failed_refs)
        for document, reason in result.removed.items():
            get_run_logger().info("%s: %s is %s: removed", settings.name, document, reason)
        removed.update(result.removed)
        if result.failures or result.removed:
            listener.documents_done(settings.name, len(result.failures) + len(result.removed), 0)
        if result.documents or result.in_parts:
            execution.warm_up(embedding)  # something may need embedding: the model loads while more is fetched
        pending.extend(result.documents)
        pending_chunks += sum(len(d.chunks) for d in result.documents)
        tokens = sum(chunk.tokens for d in result.documents for chunk in d.chunks)
        pending_tokens += tokens
        fetch_batch.observe(len(result.documents) + len(result.failures) + len(result.removed), tokens)
        in_parts.extend(result.in_parts)

    def flush() -> None:
        nonlocal pending_chunks, pending_tokens
        if pending:
            embeds.append(_start_embedding(list(pending), store, embedding, report, embedding_limit, execution,
                                           task_chunks.call_full))
            pending.clear()
            pending_chunks = pending_tokens = 0
        # The writer takes the oldest batch once more are in flight than allowed: memory stays bounded.
        while len(embeds) > execution.embed_tasks_in_flight:
            _write_documents(embeds.popleft(), store, report, listener, profile)

    def submit(batch: list[tuple[DocumentRef, bool]], reason: str = INTERRUPTED) -> None:
        listener.documents_found(settings.name, len(batch))
        started = datetime.now(timezone.utc).isoformat()
        store.write([DocumentFailed(settings.name, ref.id, ref.to_json(), reason, started) for ref, _ in batch])
        ledger.submitted.update((ref.id, ref) for ref, _ in batch)
        fetches.append(execution.submit_fetch(fetch_parse_chunk, {
            "settings": settings, "refs": batch, "model": embedding.model, "chunk_tokens": chunk_tokens,
            "overlap": overlap}))

    def drain() -> None:
        while fetches:
            collect(fetches.popleft().result())
            if task_chunks.reached(pending_chunks, pending_tokens):
                flush()
        flush()
        while embeds:
            _write_documents(embeds.popleft(), store, report, listener, profile)
        while in_parts:  # one at a time, nothing else in flight: memory follows one part of one document
            ref, is_new = in_parts.pop(0)
            collect(_write_in_parts(settings, ref, is_new, store, embedding, chunk_tokens, overlap, report, listener,
                                    embedding_limit, execution, profile, task_chunks.call_full))

    suspects: list[tuple[DocumentRef, bool]] = []
    listing = time.perf_counter()
    for batch in _batched(_set_aside(plan.refs, plan.suspects, suspects), fetch_batch.next):
        report.seconds["list"] += time.perf_counter() - listing
        submit(batch)
        while len(fetches) > execution.fetch_ahead:
            collect(fetches.popleft().result())
            if task_chunks.reached(pending_chunks, pending_tokens):
                flush()
        listing = time.perf_counter()
    report.seconds["list"] += time.perf_counter() - listing
    drain()
    if turns is not None and suspects:
        # Its other work is written; a source without suspects says so once its cursor moved (ingest_source).
        turns.other_work_done(settings.name)
    for suspect in suspects:
        with turns.alone() if turns is not None else nullcontext():
            submit([suspect], INTERRUPTED_ALONE)
            drain()


def _set_aside(refs: Iterable[tuple[DocumentRef, bool]], suspects: frozenset[str],
               aside: list[tuple[DocumentRef, bool]]) -> Iterator[tuple[DocumentRef, bool]]:
    """The refs that are not suspects; the suspects go to `aside`."""
    for item in refs:
        if item[0].id in suspects:
            aside.append(item)
        else:
            yield item


def _start_embedding(documents, store, embedding, report, embedding_limit, execution,
                     call_full: Callable[[int, int], bool]) -> _EmbedBatch:
    """Look up the chunks whose text is stored already, and start embedding the others in calls that `call_full`
    (chunks, tokens) ends: a call's working memory follows what it carries, so a large document is not embedded in
    one call."""
    reused: dict[str, np.ndarray] = {}
    to_embed: list[Chunk] = []
    for document in documents:
        reusable = {} if document.is_new else store.stored_vectors(
            document.source, document.id, [chunk.content_hash for chunk in document.chunks])
        for chunk in document.chunks:
            if chunk.content_hash in reusable:
                reused[chunk.id] = reusable[chunk.content_hash]
            else:
                to_embed.append(chunk)
    started = time.perf_counter()
    calls: list[list[str]] = [[]]
    tokens = 0
    for chunk in to_embed:
        if calls[-1] and call_full(len(calls[-1]), tokens):
            calls.append([])
            tokens = 0
        calls[-1].append(chunk.text)
        tokens += chunk.tokens
    embedded = [execution.embed(embed_chunks, {"settings": embedding, "texts": texts, "limit": embedding_limit})
                for texts in calls if texts]
    report.seconds["embed"] += time.perf_counter() - started
    return _EmbedBatch(documents, reused, to_embed, embedded)


def _vectors(batch: _EmbedBatch, report, profile) -> dict[str, np.ndarray]:
    """The batch's vectors by chunk id, once embedded (counted in the report and the drift profile)."""
    started = time.perf_counter()
    vectors_by_chunk = dict(batch.reused)
    if batch.to_embed:
        embedded = np.concatenate([call.result() for call in batch.embedded])
        vectors_by_chunk.update(zip((chunk.id for chunk in batch.to_embed), embedded))
        if profile is not None:
            profile.add([sampling_key(chunk.id) for chunk in batch.to_embed], embedded,
                        [chunk.tokens for chunk in batch.to_embed])
    report.seconds["embed"] += time.perf_counter() - started
    report.chunks_embedded += len(batch.to_embed)
    report.chunks_reused += len(batch.reused)
    return vectors_by_chunk


def _rows(chunks: Iterable[Chunk], vectors_by_chunk: dict[str, np.ndarray],
          dimension: int) -> tuple[tuple[ChunkRecord, ...], np.ndarray]:
    """The chunks as the store takes them: their records, and their vectors in the same order."""
    chunks = tuple(chunks)
    records = tuple(ChunkRecord(c.id, c.position, c.text, c.content_hash, c.page, c.last_page, c.tokens, c.ocr)
                    for c in chunks)
    vectors = (np.stack([vectors_by_chunk[c.id] for c in chunks]) if chunks
               else np.zeros((0, dimension), dtype=np.float32))
    return records, vectors


def _write_documents(batch: _EmbedBatch, store, report, listener, profile) -> None:
    """Take the batch's vectors, then write its documents in one durable record."""
    vectors_by_chunk = _vectors(batch, report, profile)
    started = time.perf_counter()
    operations = []
    for document in batch.documents:
        records, vectors = _rows(document.chunks, vectors_by_chunk, store.dimension)
        operations.append(DocumentUpsert(document.source, document.id, document.version, document.title,
                                         document.location, document.modified, records, vectors,
                                         document.metadata))
    store.write(operations)
    report.seconds["write"] += time.perf_counter() - started
    for document in batch.documents:
        report.documents["new" if document.is_new else "changed"] += 1
    listener.documents_done(batch.documents[0].source, len(batch.documents),
                            sum(len(d.chunks) for d in batch.documents))


def _write_in_parts(settings, ref: DocumentRef, is_new: bool, store, embedding, chunk_tokens, overlap, report,
                    listener, embedding_limit, execution, profile,
                    call_full: Callable[[int, int], bool]) -> FetchResult:
    """A document too large to hold whole (its text is read in pieces), fetched again here, by the writer: chunked
    PART_CHUNKS chunks at a time, each part embedded and written as a part of the document (durable, not live), and
    then committed, which makes the new version live and retires the old one in one write. A crash before the
    commit leaves the old version live (the store drops the parts when next opened) and the document queued."""
    result = FetchResult([], [], 0.0)
    started = time.perf_counter()
    spent = report.seconds["embed"] + report.seconds["write"]
    written = 0
    with _outcome_of(ref, settings.name, result):
        document = source_for(settings).fetch(ref)
        parsed = ParsedDocument(document.source, document.id, document.version, document.title, document.location,
                                document.modified, (), is_new, dict(document.metadata))
        try:
            chunks = stream_chunks(document, tokenizer_for(embedding.model).tokens, chunk_tokens, overlap)
            for part in _batched(chunks, lambda: PART_CHUNKS):
                batch = _start_embedding([replace(parsed, chunks=tuple(part))], store, embedding, report,
                                         embedding_limit, execution, call_full)
                records, vectors = _rows(part, _vectors(batch, report, profile), store.dimension)
                writing = time.perf_counter()
                store.write([DocumentPart(parsed.source, parsed.id, records, vectors, first=not written)])
                report.seconds["write"] += time.perf_counter() - writing
                written += len(part)
                listener.documents_done(parsed.source, 0, len(part))
        except DocumentError:
            if written:
                store.write([DocumentPartsDiscard(parsed.source, parsed.id)])
            raise
        store.write([DocumentPartsCommit(parsed.source, parsed.id, parsed.version, parsed.title, parsed.location,
                                         parsed.modified, written, parsed.metadata)])
        report.documents["new" if is_new else "changed"] += 1
        listener.documents_done(parsed.source, 1, 0)
    result.seconds = time.perf_counter() - started - (report.seconds["embed"] + report.seconds["write"] - spent)
    return result
