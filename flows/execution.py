"""Where the ingest flow's tasks run: in the flow process ("local") or on a Dask cluster ("dask").

`[execution] task_runner = "dask"` runs fetch/parse/chunk and embedding as Prefect tasks on Dask
workers through prefect-dask's `DaskTaskRunner`: on the scheduler at `dask_address` (an
existing cluster: Kubernetes, HPC, cloud), else on a `distributed.LocalCluster` of
`dask_workers` processes × `dask_threads_per_worker` threads. Each worker process loads its own
model once (`pipeline.embedder_for` is cached per process) with the capacity plan of the
machine it runs on. The store writer stays one: the flow process, which takes the vectors back
in bounded batches (`embed_tasks_in_flight`) and writes them, so the store's WAL and crash
safety are the same as in a local run.

The runner is entered as a context manager inside the `ingest` flow rather than given to a
subflow: one cluster (and one model load per worker) serves every source of the run, the
store object never has to pass through a flow's parameters, and the local path keeps the
flow's own thread-pool runner unchanged.

A worker that dies loses nothing: Dask runs its tasks again on another worker (tasks are
pure: a document's chunks and vectors do not depend on where they were made), Prefect's task
retries cover other errors, and the flow writes each task's result exactly once.

Rate limits of HTTP sources across processes. Every process that fetches has its own token
bucket, so N processes would together send N times a source's limit. Two ways out:
- the source sets `prefect_rate_limit` and a Prefect server is present: the server's global
  rate limit is shared by every process (workers included), so each process keeps the full
  limit in its own bucket and the server enforces the total;
- otherwise (no such limit, or an ephemeral run where Prefect skips it) the limit is divided:
  each of the N processes that send requests (the Dask workers, plus the flow process, which
  lists) gets `requests_per_second / N` and `burst // N` (at least 1). Over any window of T s
  they then send at most `burst + requests_per_second × T` requests together, the single
  process bound (when burst < N the combined burst is N). We chose the split over a home-made
  distributed bucket because it needs no coordination at all: it is exact for a fixed set of
  workers and errs on the safe side when workers are lost. A cluster that grows during a run
  (adaptive scaling) would exceed it: use `prefect_rate_limit` with a server there.

This module imports Prefect and Dask only inside functions: the config, which holds
`ExecutionSettings`, is loaded by commands that must not import them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vectormill.connectors.settings import HttpSourceSettings, SourceSettingsBase

from .task_records import STALE_AFTER, delete_records, records_folder, with_records_storage

# Fetch batches in flight ahead of the embedder in a local run: enough to keep it fed, few
# enough to bound memory. Dask runs keep two per worker.
FETCH_AHEAD = 3
GPU = "GPU"  # the Dask worker resource that embedding tasks ask for with gpu_resources


class ExecutionSettings(BaseModel):
    """The [execution] table: which task runner runs the tasks of the ingest flow."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task_runner: Literal["local", "dask"] = "local"
    # Scheduler of an existing Dask cluster, e.g. "tcp://scheduler:8786"; unset: a LocalCluster.
    dask_address: str | None = None
    # Size of the LocalCluster (processes × threads); not used with dask_address.
    dask_workers: int = Field(default=2, ge=1)
    dask_threads_per_worker: int = Field(default=1, ge=1)
    # Embedding tasks ask Dask for one unit of the worker resource "GPU" (start GPU workers with
    # `--resources GPU=1`); a LocalCluster gives each of its workers one.
    gpu_resources: bool = False
    # Embedding tasks whose vectors the store writer has not taken yet; default: 2 per worker.
    embed_tasks_in_flight: int | None = Field(default=None, ge=1)
    # Embedding runs as background tasks on the Prefect task worker of `vectormill serve`, which
    # keeps the model loaded between runs. `serve` sets it for the runs it starts; not for Dask.
    embedding_task_worker: bool = False

    @model_validator(mode="after")
    def _dask_options_need_dask(self) -> "ExecutionSettings":
        if self.task_runner == "local" and (self.dask_address or self.gpu_resources):
            raise ValueError('dask_address and gpu_resources need task_runner = "dask"')
        if self.task_runner == "dask" and self.embedding_task_worker:
            raise ValueError('embedding_task_worker needs task_runner = "local" (Dask workers keep their models)')
        return self


def divided_rate(requests_per_second: float, burst: int, processes: int) -> tuple[float, int]:
    """Each process's share of a source's rate limit when `processes` send requests independently."""
    return requests_per_second / processes, max(1, burst // processes)


def fetch_settings(settings: SourceSettingsBase, processes: int, server_present: bool) -> SourceSettingsBase:
    """The source settings every process of the run uses (see the module docstring for the choice)."""
    if processes <= 1 or not isinstance(settings, HttpSourceSettings):
        return settings
    if settings.prefect_rate_limit and server_present:
        return settings
    rate, burst = divided_rate(settings.requests_per_second, settings.burst, processes)
    return settings.model_copy(update={"requests_per_second": rate, "burst": burst})


class _Done:
    """The result of a call that already ran, with the interface of a future."""

    def __init__(self, value: Any):
        self.value = value

    def result(self) -> Any:
        return self.value


@dataclass
class LocalExecution:
    """Fetch tasks on the flow's thread-pool runner; embedding in the flow's thread, one call at a time
    (one model per process: parallel model calls on a few CPU cores only compete)."""

    fetch_ahead: int = FETCH_AHEAD
    embed_tasks_in_flight: int = 0  # each embedding is written before the next one starts
    fetch_processes: int = 1
    models_here: bool = True  # the model is loaded in this process

    def describe(self) -> dict[str, Any]:
        return {"task_runner": "local"}

    def submit_fetch(self, task: Any, parameters: dict[str, Any]) -> Any:
        return task.submit(**parameters)

    def embed(self, task: Any, parameters: dict[str, Any]) -> _Done:
        return _Done(task(**parameters))

    def run(self, task: Any, parameters: dict[str, Any]) -> Any:
        """The task's function, here (no task run: it is part of the flow's own work)."""
        return task.fn(**parameters)

    def warm_up(self, settings: Any) -> None:
        """Start loading this process's model in the background (the run will embed here)."""
        from vectormill.embedding.loader import loader_for

        loader_for(settings).start()


# Prefect's distributed future reads the task run once and raises this if the server shows no state
# yet: on a loaded server the worker's first state can land a moment after the run is read, though
# the task was created Scheduled and is already running. Not a failure of the task: read it again.
NOT_STARTED = "has no state which means it hasn't started yet"
NOT_STARTED_PATIENCE_S = 60.0


def _await_started(future: Any, patience_s: float = NOT_STARTED_PATIENCE_S) -> Any:
    """`future.result()`, read again while Prefect says the task run has no state yet."""
    from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

    retrying = Retrying(retry=retry_if_exception(lambda exc: isinstance(exc, RuntimeError) and NOT_STARTED in str(exc)),
                        stop=stop_after_delay(patience_s), wait=wait_exponential(multiplier=0.1, max=2.0), reraise=True)
    return retrying(future.result)


@dataclass
class _BackgroundResult:
    """The result of a background task, with the interface of a future; taking it (vectors or error)
    deletes Prefect's records of the task (flows/task_records.py)."""

    future: Any  # prefect.futures.PrefectDistributedFuture
    records: Path
    logger: logging.Logger | Any

    def result(self) -> Any:
        try:
            return _await_started(self.future)
        finally:
            self._delete_records()

    def _delete_records(self) -> None:
        import httpx
        from prefect.exceptions import PrefectException

        try:
            delete_records(self.future, self.records)
        except (PrefectException, httpx.HTTPError, OSError) as exc:  # housekeeping: the run goes on
            self.logger.warning("could not delete the records of background task run %s in %s (%s); `vectormill "
                                "serve` deletes them once older than %s", self.future.task_run_id, self.records,
                                exc, STALE_AFTER)


@dataclass
class TaskWorkerExecution(LocalExecution):
    """Fetch tasks here; embedding as background tasks (`Task.delay`) on the Prefect task worker that
    `vectormill serve` runs beside its deployments, whose model stays loaded between flow runs.
    Two embedding tasks in flight hide each task's round trip through the server. The tasks keep their
    parameters and results in `records` (flows/task_records.py), deleted once the run has taken them."""

    embed_tasks_in_flight: int = 2
    models_here: bool = False
    records: Path = field(default_factory=records_folder)
    logger: logging.Logger | Any = logging.getLogger(__name__)

    def describe(self) -> dict[str, Any]:
        return {"task_runner": "local", "embedding": "task worker of vectormill serve"}

    def embed(self, task: Any, parameters: dict[str, Any]) -> _BackgroundResult:
        return _BackgroundResult(with_records_storage(task, self.records).delay(**parameters), self.records,
                                 self.logger)

    def run(self, task: Any, parameters: dict[str, Any]) -> Any:
        return self.embed(task, parameters).result()

    def warm_up(self, settings: Any) -> None:
        """Nothing: the task worker's model is loaded already."""


@dataclass
class DaskExecution:
    """Both kinds of task on the Dask workers through a DaskTaskRunner that the caller has entered."""

    runner: Any  # prefect_dask.DaskTaskRunner
    scheduler: str
    workers: int
    embed_tasks_in_flight: int
    gpu_resources: bool
    models_here: bool = False

    def describe(self) -> dict[str, Any]:
        return {"task_runner": "dask", "scheduler": self.scheduler, "workers": self.workers,
                "embed_tasks_in_flight": self.embed_tasks_in_flight, "gpu_resources": self.gpu_resources}

    @property
    def fetch_ahead(self) -> int:
        return 2 * self.workers

    @property
    def fetch_processes(self) -> int:
        return self.workers + 1  # the flow process lists

    def submit_fetch(self, task: Any, parameters: dict[str, Any]) -> Any:
        return self.runner.submit(task, parameters)

    def embed(self, task: Any, parameters: dict[str, Any]) -> Any:
        if not self.gpu_resources:
            return self.runner.submit(task, parameters)
        import dask

        with dask.annotate(resources={GPU: 1}):
            return self.runner.submit(task, parameters)

    def run(self, task: Any, parameters: dict[str, Any]) -> Any:
        return self.embed(task, parameters).result()

    def warm_up(self, settings: Any) -> None:
        """Nothing: each worker loads its model with its first embedding task."""


Execution = LocalExecution | TaskWorkerExecution | DaskExecution


def cluster_kwargs(settings: ExecutionSettings) -> dict[str, Any]:
    """Arguments of the LocalCluster built when no dask_address is given."""
    kwargs: dict[str, Any] = {"n_workers": settings.dask_workers, "threads_per_worker": settings.dask_threads_per_worker,
                              "processes": True}
    if settings.gpu_resources:
        kwargs["resources"] = {GPU: 1}
    return kwargs


@contextlib.contextmanager
def open_execution(settings: ExecutionSettings, server: str | None, logger: logging.Logger | Any) -> Iterator[Execution]:
    """The execution of one flow run; a Dask cluster (or the connection to one) lives as long as the block."""
    if settings.task_runner == "local":
        yield TaskWorkerExecution(logger=logger) if settings.embedding_task_worker else LocalExecution()
        return
    from prefect_dask import DaskTaskRunner

    if server is None:
        logger.warning(
            "task_runner = dask without a Prefect server (PREFECT_API_URL unset): every Dask worker process "
            "starts a temporary Prefect server of its own, which costs tens of seconds per worker; start one "
            "with `prefect server start` and set PREFECT_API_URL (e.g. http://127.0.0.1:4200/api)")
    runner = (DaskTaskRunner(address=settings.dask_address) if settings.dask_address
              else DaskTaskRunner(cluster_kwargs=cluster_kwargs(settings)))
    with runner:
        workers = runner.client.scheduler_info(n_workers=-1)["workers"]
        where = settings.dask_address or "a LocalCluster"
        if not workers:
            raise RuntimeError(f"the Dask cluster at {where} has no workers: start some (`dask worker {where}`)")
        if settings.gpu_resources and not any(w.get("resources", {}).get(GPU) for w in workers.values()):
            raise RuntimeError(f"gpu_resources = true but no worker of the Dask cluster at {where} offers the "
                               f"resource {GPU!r}: start the GPU workers with `dask worker --resources {GPU}=1`")
        logger.info("running tasks on %d Dask workers at %s (dashboard: %s)", len(workers), where,
                    runner.client.dashboard_link)
        yield DaskExecution(runner, runner.client.scheduler.address, len(workers),
                            settings.embed_tasks_in_flight or 2 * len(workers), settings.gpu_resources)
