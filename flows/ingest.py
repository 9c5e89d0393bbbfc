"""The `ingest` Prefect flow: every selected source through the pipeline, then a checkpoint."""

from __future__ import annotations

import time
from typing import Any

from prefect import flow, get_run_logger

from vectormill.embedding.chunking import validate_chunk_size
from vectormill.stores.faiss_store import FaissStore

from .config import VectormillConfig, load_config
from .pipeline import SourceReport, embedder_for, ingest_source, tokenizer_for


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
    }


def failure_message(config: VectormillConfig, reports: list[SourceReport]) -> str | None:
    problems = []
    for report in reports:
        if report.status == "failed":
            problems.append(f"source {report.name!r} failed: {report.error}")
            continue
        seen, failed = report.documents["seen"], report.documents["failed"]
        limit = config.source(report.name).max_failed_ratio
        if seen and failed / seen > limit:
            problems.append(
                f"source {report.name!r}: {failed} of {seen} documents failed ({failed / seen:.0%}), "
                f"above max_failed_ratio = {limit:g}; see the failures listed in the summary")
    return "; ".join(problems) or None


@flow(name="ingest", log_prints=True)
def ingest(config_file: str | None = None, sources: list[str] | None = None, full: bool = False) -> dict[str, Any]:
    """Bring the store up to date with the configured sources (all, or those named)."""
    logger = get_run_logger()
    started = time.perf_counter()
    config = load_config(config_file)
    selected = [config.source(name) for name in sources] if sources else list(config.sources)

    tokenizer = tokenizer_for(config.embedding.model)
    chunk_tokens = config.chunking.tokens or tokenizer.max_content_tokens
    validate_chunk_size(chunk_tokens, config.chunking.overlap, tokenizer.max_content_tokens, config.embedding.model)
    seconds: dict[str, float] = {}
    # The model loads lazily (first chunk to embed) for an existing store: an unchanged run skips it.
    dimension = None
    if not FaissStore.exists(config.store.path):
        loading = time.perf_counter()
        dimension = embedder_for(config.embedding).dimension
        seconds["load_model"] = time.perf_counter() - loading
    store = FaissStore.open(config.store, model=config.embedding.model, dimension=dimension)
    try:
        for note in store.notes:
            logger.warning(note)
        reports = [
            ingest_source(source, store, config.embedding, chunk_tokens, config.chunking.overlap, full)
            for source in selected
        ]
        checkpointing = time.perf_counter()
        store.checkpoint()
        seconds["checkpoint"] = time.perf_counter() - checkpointing
        stats = store.stats()
    finally:
        store.close()
    seconds["total"] = time.perf_counter() - started
    summary = summarize(reports, seconds, stats)
    message = failure_message(config, reports)
    if message:
        raise IngestFailed(message, summary)
    logger.info("ingest finished: %s documents, %s chunks embedded", summary["documents"], summary["chunks_embedded"])
    return summary
