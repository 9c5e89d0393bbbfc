"""The `ingest` Prefect flow: every selected source through the pipeline, then a checkpoint.

Tasks run where `[execution]` says (flows/execution.py): in this process, or on Dask workers
with this process as the one store writer.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait
from prefect.states import Completed

from vectormill.connectors.ocr import INSTALL_HINT
from vectormill.embedding.chunking import validate_chunk_size
from vectormill.embedding.loader import loader_for
from vectormill.stores.faiss_store import FaissStore

from .artifacts import ArtifactProgress, publish, run_target
from .config import VectormillConfig, load_config
from .server import occupy, server_url
from .execution import open_execution
from .pipeline import SourceReport, embedding_dimension, ingest_source, tokenizer_for
from .plan import Window
from .precision import PrecisionFirst, record_precision, run_precision
from .progress import progress_listener
from .side_by_side import FairEmbedding, SharedStore, SuspectTurns

# One task per source, on the flow's thread pool: the sources of a run go side by side.
ingest_source_task = task(ingest_source, name="ingest-source", task_run_name="ingest-{settings.name}",
                          cache_policy=NO_CACHE)


class IngestFailed(RuntimeError):
    """The run finished its work but failed: a source was down, or too many documents failed."""

    def __init__(self, message: str, summary: dict[str, Any]):
        super().__init__(message)
        self.summary = summary


def summarize(reports: list[SourceReport], seconds: dict[str, float], store_stats: dict[str, Any]) -> dict[str, Any]:
    documents = dict.fromkeys(("seen", "new", "changed", "unchanged", "deleted", "failed"), 0)
    stage_seconds: dict[str, float] = {}
    for report in reports:
        for key, value in report.documents.items():
            documents[key] += value
        for stage, value in report.seconds.items():
            stage_seconds[stage] = round(stage_seconds.get(stage, 0.0) + value, 3)
    stage_seconds.update({stage: round(value, 3) for stage, value in seconds.items()})
    return {
        "documents": documents,
        "chunks_embedded": sum(r.chunks_embedded for r in reports),
        "chunks_reused": sum(r.chunks_reused for r in reports),
        "failures": [vars(f) for r in reports for f in r.failures],
        "seconds": stage_seconds,
        "sources": [r.as_dict() for r in reports],
        "store": {key: store_stats[key] for key in ("path", "vectors", "documents", "generation")},
        "generations": store_stats["generations"],
        "replicas": store_stats["replicas"],
        "retries": {r.name: r.http for r in reports if r.http},
        "drift": {r.name: r.drift for r in reports if r.drift},
        "retry_queue": {r.name: r.retry_queue for r in reports},
        "stuck": [entry for r in reports for entry in r.stuck],
        "removed": [{"source": r.name, **entry} for r in reports for entry in r.removed],
    }


def assess(config: VectormillConfig, reports: list[SourceReport],
           replication: str | None = None) -> tuple[str | None, list[str]]:
    """(why the run fails or None, warnings): a source that failed or whose failed documents exceed
    its max_failed_ratio (of the source's documents: stored before the run plus new) fails the run, and so do too few replicas confirming the checkpoint;
    failed documents within the ratio and embeddings that drifted from a source's baseline are
    warnings."""
    problems, warnings = [], []
    if replication:
        problems.append(replication)
    for report in reports:
        if report.drift and report.drift["status"] == "drift":
            warnings.append(f"source {report.name!r}: embeddings drifted from the baseline of run "
                            f"{report.drift['baseline_run']}: {report.drift['reasons']}; look at what changed "
                            "in the source (another language, topic or format?)")
        if report.stuck:
            warnings.append(f"source {report.name!r}: {len(report.stuck)} document(s) stuck, not fetched again until "
                            f"they change at the source (a version stored earlier still answers searches): "
                            f"{_named(entry['document'] + ' (' + entry['reason'] + ')' for entry in report.stuck)}; "
                            f"`vectormill failures --source {report.name}` lists them, "
                            f"`vectormill backfill --source {report.name} --full` tries them again")
        if report.kept:
            warnings.append(f"source {report.name!r}: {len(report.kept)} document(s) gone or empty at the source "
                            f"still answer searches, their deletion refused: "
                            f"{_named(k['document'] for k in report.kept)}; once the source is as it should be, "
                            f"`vectormill backfill --source {report.name} --allow-deletions` deletes them")
        if report.status == "failed":
            problems.append(f"source {report.name!r} failed: {report.error}")
            continue
        failed = report.documents["failed"]
        if not failed:
            continue
        total = max(report.known, report.documents["seen"], failed)
        limit = config.source(report.name).max_failed_ratio
        counts = f"{failed} of {total} documents failed ({failed / total:.0%})"
        if failed / total > limit:
            problems.append(f"source {report.name!r}: {counts}, above max_failed_ratio = {limit:g}; "
                            f"see the failures listed in the summary")
        else:
            warnings.append(f"source {report.name!r}: {counts}, within max_failed_ratio = {limit:g}; "
                            f"see the failures listed in the summary")
    return "; ".join(problems) or None, warnings


NAMED_IN_A_WARNING = 10  # documents named in one warning line; the rest are counted


def _named(documents: Iterator[str]) -> str:
    documents = list(documents)
    more = len(documents) - NAMED_IN_A_WARNING
    return ", ".join(documents[:NAMED_IN_A_WARNING]) + (f" and {more} more" if more > 0 else "")


@flow(name="ingest", log_prints=True)
def ingest(
    config_file: str | None = None,
    sources: list[str] | None = None,
    full: bool = False,
    since: datetime | None = None,
    until: datetime | None = None,
    allow_deletions: bool = False,
) -> dict[str, Any]:
    """Bring the store up to date with the configured sources (all, or those named).

    With `since`/`until`, backfill the documents modified in that window instead: done again even
    if unchanged, no deletions by reconciliation, cursors left where they are. `allow_deletions`
    lets the deletions past a source's max_delete_ratio go ahead (flows/deletions.py).
    """
    logger = get_run_logger()
    started = time.perf_counter()
    window = Window.between(since, until) if since or until else None
    config = load_config(config_file)
    selected = [config.source(name) for name in sources] if sources else list(config.sources)
    target = run_target(sources)
    # Global concurrency limits live on a server; an ephemeral run is alone and skips them.
    limits = config.deployments if server_url() else None
    if limits is None:
        logger.info("no Prefect server (PREFECT_API_URL unset): global concurrency limits not used")

    tokenizer = tokenizer_for(config.embedding.model)
    chunk_tokens = config.chunking.tokens or tokenizer.max_content_tokens
    validate_chunk_size(chunk_tokens, config.chunking.overlap, tokenizer.max_content_tokens, config.embedding.model)
    seconds: dict[str, float] = {}
    waiting = time.perf_counter()
    with _artifact_progress(target), occupy(limits.store_limit if limits else None):
        if limits:
            seconds["wait_store"] = time.perf_counter() - waiting
        outcome = _ingest_sources(config, selected, chunk_tokens, full, seconds,
                                  limits.embedding_limit if limits else None, window, allow_deletions)
    seconds["total"] = time.perf_counter() - started
    # This process's model load (overlapped with the run where it could be); Dask workers and the
    # task worker of `vectormill serve` load theirs.
    seconds.update(loader_for(config.embedding).take_times().as_dict())
    summary = summarize(outcome.reports, seconds, outcome.stats)
    summary["execution"] = outcome.execution
    summary["precision"] = outcome.precision
    if outcome.telemetry:
        summary["telemetry"] = outcome.telemetry
        logger.info("embedding telemetry: %s", outcome.telemetry)
    failure, summary["warnings"] = assess(config, outcome.reports, outcome.replication)
    if skipped := sum(report.ocr_skipped_pages for report in outcome.reports):
        # Once per run, however many sources and documents had scans.
        summary["warnings"].append(f"{skipped} pages without text were skipped: {INSTALL_HINT}")
        logger.warning(summary["warnings"][-1])
    if outcome.precision.get("fallback"):
        logger.warning("precision: %s", outcome.precision["fallback"])
    if outcome.precision_note:
        logger.warning(outcome.precision_note)
        summary["warnings"].append(outcome.precision_note)
    # Published before the final state, so a failed run still explains itself in the UI.
    publish(summary, target, failure)
    if failure:
        raise IngestFailed(failure, summary)
    logger.info("ingest finished: %s documents, %s chunks embedded", summary["documents"], summary["chunks_embedded"])
    if summary["warnings"]:
        return Completed(message="; ".join(summary["warnings"]), data=summary)
    return summary


@contextlib.contextmanager
def _artifact_progress(target: str) -> Iterator[None]:
    """Progress goes to the run's artifacts too while the block runs.

    (A function of its own: on Dask, prefect-dask ships this flow, with the globals its body
    names, to the workers, so the body must not name the unpicklable context variable.)
    """
    token = progress_listener.set(ArtifactProgress(progress_listener.get(), target))
    try:
        yield
    finally:
        progress_listener.reset(token)


def _embedding_telemetry(config: VectormillConfig) -> dict[str, Any] | None:
    """GPU/CPU use while this process embedded during the run (None when it loaded no model here)."""
    loader = loader_for(config.embedding)
    if not loader.loaded:
        return None
    embedder = loader.get()
    telemetry = getattr(embedder, "telemetry_summary", None)
    return telemetry(reset=True) if telemetry else None


@dataclass
class _Outcome:
    reports: list[SourceReport]
    stats: dict[str, Any]  # the store's
    replication: str | None  # too few replicas confirmed the checkpoint
    execution: dict[str, Any]  # where the tasks ran
    precision: dict[str, Any]  # what the model ran in
    precision_note: str | None  # said once when the store held vectors of another precision
    telemetry: dict[str, Any] | None  # GPU/CPU use while this process embedded


def _ingest_sources(config, selected, chunk_tokens, full, seconds, embedding_limit, window,
                    allow_deletions) -> _Outcome:
    """Open the execution and the store, run each source, record the precision, checkpoint and replicate."""
    logger = get_run_logger()
    with open_execution(config.execution, server_url(), logger) as execution:
        # The model loads when there is something to embed (an unchanged run never loads it); a new
        # store needs its dimension first.
        dimension = None
        existed = FaissStore.exists(config.store.path)
        if not existed:
            execution.warm_up(config.embedding)
            dimension = execution.run(embedding_dimension, {"settings": config.embedding})
        store = FaissStore.open(config.store, model=config.embedding.model, dimension=dimension)
        try:
            for note in store.notes:
                logger.warning(note)
            notes_shown = len(store.notes)  # later ones (a failed automatic checkpoint…) are logged at the end
            # Vectors stored without a recorded precision are fp32 (older stores); a store without vectors has none.
            held_vectors = existed and store.vector_count() > 0
            guarded = PrecisionFirst(store, config.embedding, execution, held_vectors)
            shared = SharedStore(guarded)
            # Side by side, always: the suspects of a process that died wait for every source's other work (SuspectTurns).
            turns = SuspectTurns(source.name for source in selected)
            with FairEmbedding(execution) as pool:
                futures = []
                for source in selected:
                    futures.append(ingest_source_task.submit(
                        source, shared, config.embedding, chunk_tokens, config.chunking.overlap, full,
                        embedding_limit=embedding_limit, execution=pool.for_source(source.name), drift=config.drift,
                        window=window, allow_deletions=allow_deletions, turns=turns))
                    # Whatever ends its task run (even before the source starts), no suspect waits for this source.
                    futures[-1].add_done_callback(lambda _, name=source.name: turns.other_work_done(name))
                wait(futures)  # every source done (or failed) before any error goes up: the store stays open till then
            reports = [future.result() for future in futures]
            embedded = any(report.chunks_embedded for report in reports)
            precision = run_precision(config.embedding, execution, embedded)
            precision_note = guarded.note or (record_precision(store, precision, held_vectors) if embedded else None)
            checkpointing = time.perf_counter()
            store.checkpoint()
            seconds["checkpoint"] = time.perf_counter() - checkpointing
            for note in store.notes[notes_shown:]:
                logger.warning(note)
            return _Outcome(reports, store.stats(), store.replication_problem(), execution.describe(), precision,
                            precision_note, _embedding_telemetry(config) if execution.models_here else None)
        finally:
            store.close()
