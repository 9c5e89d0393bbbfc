"""The precision a run embedded in: reported in its summary and recorded in the store.

The store keeps the set of precisions of its vectors in its "precision" property, in the order they
arrived ("fp32", or "fp32+bf16" once a bf16 run added vectors to an fp32 store), each once. A run whose
precision is not recorded yet adds it and says so once, in its warnings — before its first vectors are
written (`PrecisionFirst`), so a run killed after it wrote some has recorded their precision too.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE

from vectormill.embedding.loader import loader_for
from vectormill.embedding.settings import EmbeddingSettings
from vectormill.stores.base import VectorStore
from vectormill.stores.records import DocumentPart, DocumentUpsert, PropertyUpdate

PROPERTY = "precision"
# Stores written before precisions were recorded hold fp32 vectors: nothing else existed then.
UNRECORDED = "fp32"


@task(name="embedding-precision", cache_policy=NO_CACHE, retries=1)
def embedding_precision(settings: EmbeddingSettings) -> dict[str, Any] | None:
    """The precision report of the model where embedding runs (None: an embedding service)."""
    report = getattr(loader_for(settings).get(), "precision_report", None)
    return report.as_dict() if report else None


def run_precision(settings: EmbeddingSettings, execution: Any, embedded: bool) -> dict[str, Any]:
    """The summary's "precision": what the model ran in and why; "used" is None when no model ran."""
    unused = {"requested": settings.precision, "used": None}
    if settings.service is not None:
        return {**unused, "reason": "an embedding service embeds, in its own precision"}
    if execution.models_here and not loader_for(settings).loaded:
        return {**unused, "reason": "no model loaded: nothing to embed"}
    if not execution.models_here and not embedded:
        return {**unused, "reason": "nothing embedded"}
    # Where the model is: this process, a Dask worker or the task worker of `vectormill serve`.
    return execution.run(embedding_precision, {"settings": settings}) or {**unused, "reason": "unknown"}


def record_precision(store: VectorStore, precision: dict[str, Any], held_vectors: bool) -> str | None:
    """Add the precisions of the vectors this run wrote to the store's record (call it only when the
    run embedded something); a note when the store held vectors of another precision.

    The record is a set, kept in arrival order: a pool whose workers ran in several precisions reports
    them all ("bf16+fp32"), and a precision already recorded is not added again.
    """
    used = precision.get("used")
    if not used:
        return None
    stored = store.properties().get(PROPERTY)
    before = _kinds(stored or (UNRECORDED if held_vectors else ""))
    kinds = _kinds("+".join([*before, *used.split("+")]))
    if "+".join(kinds) != stored:
        store.write([PropertyUpdate(PROPERTY, "+".join(kinds))])
    added = [kind for kind in kinds if kind not in before]
    if not before or not added:
        return None
    probe = precision.get("probe_min_cosine")
    agree = f" (its probe vectors agree with fp32 to cosine {probe:.5f})" if probe else ""
    return (f"the store's vectors so far were embedded in {'+'.join(before)}; this run embeds in {used}{agree}: "
            f"search works across both; for one precision throughout set [embedding] precision = \"{before[0]}\", "
            "or rebuild the store")


def _kinds(record: str) -> list[str]:
    """The precisions of a record ("fp32+bf16"), each once, in order (a record that grew repeats is mended)."""
    return list(dict.fromkeys(kind for kind in record.split("+") if kind))


class PrecisionFirst:
    """The run's store, recording the run's precision just before the first write that carries vectors.

    `note` is what `record_precision` said then (vectors of another precision stored before); the run
    records once more at its end, which adds nothing when this recorded already. Only where the model is in
    this process: asking a Dask worker or the task worker from a source's thread would ship that thread's
    task context; there the run records at its end, as before."""

    def __init__(self, store: VectorStore, settings: EmbeddingSettings, execution: Any, held_vectors: bool):
        self._store, self._settings, self._execution, self._held_vectors = store, settings, execution, held_vectors
        self._lock = threading.Lock()
        self._recorded = False
        self.note: str | None = None

    def write(self, operations: Sequence[Any]) -> Any:
        if not self._recorded and self._execution.models_here and any(
                isinstance(op, (DocumentUpsert, DocumentPart)) and len(op.vectors) for op in operations):
            with self._lock:
                if not self._recorded:
                    precision = run_precision(self._settings, self._execution, embedded=True)
                    self.note = record_precision(self._store, precision, self._held_vectors)
                    self._recorded = True
        return self._store.write(operations)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)
