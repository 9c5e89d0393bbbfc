"""`EmbeddingPool`: model replicas in worker threads, sized by the capacity plan.

The caller's texts are counted with the model's own tokenizer, sorted longest first and cut
into batches whose padded size (rows × longest chunk) fits a worker's token budget. A window of
two batches per worker is in flight at a time (one running, one queued), so memory stays flat
however many texts one call brings. Results land in input order.

Failures, each handled without losing or duplicating a chunk:
- CUDA out of memory on a batch: that worker halves its budget, splits the batch and retries the
  pieces; a single chunk that does not fit alone is an error naming it.
- Any other exception kills the worker: its whole batch is re-queued (up to MAX_BATCH_ATTEMPTS
  workers per batch) and a fresh replica takes the dead one's place on the same device.

Tokenizing ahead (on GPU by default): while a worker's model runs one batch, a thread of its own
tokenizes the next batch queued for it (`prepare`; the Rust tokenizer releases the GIL) into
pinned memory, so host work, the copy to the device and the forward pass overlap. On CPU the
model and the tokenizer would share the same cores, so each batch is tokenized in turn there.

Every replica runs in the plan's precision; each checks it against fp32 on the probe set as it
loads (the agreement guard, embedding/precision.py) and falls back to fp32 on its own if needed.

Threads suffice: torch releases the GIL inside its kernels.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

from .base import EmbeddingError
from .capacity import BATCHES_IN_FLIGHT_PER_WORKER, CapacityPlan
from .precision import PrecisionChoice, PrecisionReport
from .sentence_transformer import SentenceTransformerEmbedder, refuse_truncation
from .telemetry import CpuSampler, GpuSampler, Telemetry
from .tokenizer import ModelTokenizer

logger = logging.getLogger(__name__)

MAX_BATCH_ATTEMPTS = 2  # a batch that kills this many workers is the batch's fault, not theirs
EVENT_WAIT_S = 1.0  # how often the caller checks that some worker is still alive


class Replica(Protocol):
    dimension: int
    precision_report: PrecisionReport | None  # what it runs in and why (None: not decided by the guard)

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        """Normalized float32 vectors of texts, in order, as one model batch of batch_size."""
        ...


class PreparingReplica(Replica, Protocol):
    """A replica whose `encode` splits into host and device halves: encode(texts) == run(prepare(texts))."""

    def prepare(self, texts: Sequence[str]) -> Any:
        ...

    def run(self, prepared: Any) -> np.ndarray:
        ...


ReplicaFactory = Callable[[str], Replica]  # device ("cpu", "cuda:1") → a replica loaded there


class StreamReplica:
    """A replica on a GPU that runs its batches on its own CUDA stream, so replicas overlap."""

    def __init__(self, inner: Replica, device: str):
        self.inner = inner
        self.dimension = inner.dimension
        self.precision_report = inner.precision_report
        self.stream = torch.cuda.Stream(device)

    def encode(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        with torch.cuda.stream(self.stream):
            return self.inner.encode(texts, batch_size=batch_size)

    def prepare(self, texts: Sequence[str]) -> Any:
        return self.inner.prepare(texts)

    def run(self, prepared: Any) -> np.ndarray:
        with torch.cuda.stream(self.stream):
            return self.inner.run(prepared)


def sentence_transformer_replicas(model: str, tokenizer: ModelTokenizer, precision: PrecisionChoice,
                                  requested: str, min_cosine: float) -> ReplicaFactory:
    def load(device: str) -> Replica:
        replica = SentenceTransformerEmbedder(model, device=device, tokenizer=tokenizer)
        report = replica.guard_precision(precision, requested, min_cosine)
        if report.fallback:
            logger.warning("embedding worker on %s: %s", device, report.fallback)
        return StreamReplica(replica, device) if device.startswith("cuda") else replica

    return load


def split_by_budget(counts: Sequence[int], positions: Sequence[int], budget: int,
                    max_rows: int | None) -> list[list[int]]:
    """Consecutive groups of positions (longest first) whose rows × longest ≤ budget; never empty."""
    groups: list[list[int]] = []
    for position in positions:
        if groups:
            group = groups[-1]
            rows = len(group) + 1
            if rows * counts[group[0]] <= budget and (max_rows is None or rows <= max_rows):
                group.append(position)
                continue
        groups.append([position])
    return groups


@dataclass
class _Job:
    call: int  # the embed() call it belongs to; results of an abandoned call are dropped
    indices: list[int]  # positions in the caller's texts, longest first
    texts: list[str]
    counts: list[int]
    attempts: int = 0


@dataclass
class _Worker:
    device: str
    batch_tokens: int
    max_rows: int | None
    thread: threading.Thread | None = None
    batches: int = 0  # model calls (one per batch the budget cut)
    chunks: int = 0
    tokens: int = 0  # the chunks' own tokens (special tokens included)
    padded_tokens: int = 0  # what the model ran: rows × longest, per batch
    oom_splits: int = 0
    tokenized_ahead: int = 0  # batches whose tokens were ready when the model took them
    precision: PrecisionReport | None = None  # set once its replica is ready

    def count(self, counts: Sequence[int]) -> None:
        """A batch of chunks with these token counts (longest first) ran."""
        self.batches += 1
        self.chunks += len(counts)
        self.tokens += sum(counts)
        self.padded_tokens += len(counts) * counts[0]

    def state(self) -> dict[str, Any]:
        padding = 1 - self.tokens / self.padded_tokens if self.padded_tokens else 0.0
        return {"device": self.device, "batch_tokens": self.batch_tokens, "batches": self.batches,
                "chunks": self.chunks, "padded_share": round(padding, 3), "oom_splits": self.oom_splits,
                "tokenized_ahead": self.tokenized_ahead, "precision": self.precision.used if self.precision else None}


class _ChunkTooLarge(Exception):
    pass


NO_JOB_QUEUED = object()  # what _queued_job returns when no job (nor the closing None) waits


class EmbeddingPool:
    def __init__(
        self,
        model: str,
        plan: CapacityPlan,
        replica_factory: ReplicaFactory | None = None,
        tokenizer: ModelTokenizer | None = None,
        telemetry: Telemetry | None = None,
        requested_precision: str = "auto",
        min_cosine: float = 0.999,
        tokenize_ahead: bool | None = None,
    ):
        """`requested_precision` and `min_cosine` are the [embedding] settings the precision guard reports;
        `tokenize_ahead` (default: on GPU) tokenizes each worker's next batch while its model runs one."""
        self.model = model
        self.plan = plan
        self.tokenize_ahead = plan.device == "cuda" if tokenize_ahead is None else tokenize_ahead
        self.tokenizer = tokenizer or ModelTokenizer.for_model(model)
        self._factory = replica_factory or sentence_transformer_replicas(
            model, self.tokenizer, PrecisionChoice(plan.precision, plan.precision_reason), requested_precision,
            min_cosine)
        self.telemetry = telemetry or Telemetry(
            CpuSampler(plan.threads or 1) if plan.device == "cpu"
            else GpuSampler([d.index for d in plan.devices if d.workers]))
        self._window = BATCHES_IN_FLIGHT_PER_WORKER * plan.workers
        self._tasks: queue.Queue[_Job | None] = queue.Queue(maxsize=self._window)
        self._events: queue.Queue[tuple[Any, ...]] = queue.Queue()
        self._lock = threading.Lock()
        self._waiting = 0  # workers blocked waiting for a job
        self._waiting_lock = threading.Lock()
        self._call = 0
        self.replaced = 0
        self._workers: list[_Worker] = []
        if plan.device == "cpu":
            slots = [("cpu", plan.batch_tokens)]
            torch.set_num_threads(plan.threads or 1)
        else:
            slots = [(f"cuda:{d.cuda_index}", d.batch_tokens) for d in plan.devices for _ in range(d.workers)]
        for device, budget in slots:
            self._start(_Worker(device, budget, plan.max_batch_rows))
        self.dimension = self._await_ready(len(slots))
        logger.info("embedding pool: %s worker(s) on %s, %s tokens per batch (%s)", plan.workers,
                    ", ".join(sorted({w.device for w in self._workers})), plan.batch_tokens, plan.reason)

    # ---- workers ---------------------------------------------------------------------------------
    def _start(self, worker: _Worker) -> None:
        worker.thread = threading.Thread(target=self._work, args=(worker,), name=f"embed-{worker.device}", daemon=True)
        self._workers.append(worker)
        worker.thread.start()

    def _await_ready(self, count: int) -> int:
        dimension, failures = None, []
        for _ in range(count):
            event = self._events.get()
            if event[0] == "ready":
                dimension = event[2]
                event[1].precision = event[3]
            else:
                failures.append(event)
                self._workers.remove(event[1])
        if dimension is None:
            self.close()
            raise EmbeddingError(f"no embedding worker could load model {self.model!r}: {failures[0][2]}") \
                from failures[0][2]
        for _, worker, exc in failures:
            logger.error("embedding worker on %s failed to load the model: %s", worker.device, exc)
        return dimension

    def _work(self, worker: _Worker) -> None:
        try:
            if self.plan.device == "cpu":
                torch.set_num_threads(self.plan.threads or 1)  # OpenMP settings are per thread
            replica = self._factory(worker.device)
        except Exception as exc:  # noqa: BLE001 - reported to the caller, which decides
            self._events.put(("failed_start", worker, exc))
            return
        self._events.put(("ready", worker, replica.dimension, replica.precision_report))
        ahead = self.tokenize_ahead and hasattr(replica, "prepare")
        with ThreadPoolExecutor(1, thread_name_prefix=f"tokenize-{worker.device}") as tokenizer:
            job, prepared = self._next_job(), None
            while job is not None:
                # The next job already queued is taken now, and tokenized while this one runs.
                following = self._queued_job() if ahead else NO_JOB_QUEUED
                following_prepared = (tokenizer.submit(replica.prepare, following.texts)
                                      if isinstance(following, _Job) else None)
                try:
                    vectors = self._encode(worker, replica, job, prepared)
                except _ChunkTooLarge as exc:
                    self._events.put(("chunk_failed", worker, job, exc))
                except BaseException as exc:  # noqa: BLE001 - the worker dies; the caller replaces it
                    if following is not NO_JOB_QUEUED:
                        self._tasks.put(following)  # still in flight (or the closing None): another worker takes it
                    self._events.put(("died", worker, job, exc))
                    return
                else:
                    self._events.put(("done", worker, job, vectors))
                job, prepared = ((self._next_job(), None) if following is NO_JOB_QUEUED
                                 else (following, following_prepared))

    def _next_job(self) -> _Job | None:
        with self._waiting_lock:
            self._waiting += 1
        try:
            return self._tasks.get()
        finally:
            with self._waiting_lock:
                self._waiting -= 1

    def _queued_job(self) -> Any:
        """The next queued job, unless another worker is waiting for one: an idle worker takes it first."""
        if self._waiting:
            return NO_JOB_QUEUED
        try:
            return self._tasks.get_nowait()
        except queue.Empty:
            return NO_JOB_QUEUED

    def _encode(self, worker: _Worker, replica: Replica, job: _Job, prepared: Future | None = None) -> np.ndarray:
        """The job's vectors, in batches within the worker's budget; `prepared`: the whole job
        tokenized ahead, used when it runs as one batch."""
        vectors = np.empty((len(job.texts), self.dimension), dtype=np.float32)
        pieces = deque(split_by_budget(job.counts, range(len(job.texts)), worker.batch_tokens, worker.max_rows))
        while pieces:
            piece = pieces.popleft()
            # Tokens made ahead fit the job as one batch only; a split (or an out-of-memory retry) tokenizes anew.
            ready, prepared = (prepared if len(piece) == len(job.texts) else None), None
            out_of_memory = False
            try:
                if ready is not None:
                    vectors[piece] = replica.run(ready.result())
                    worker.tokenized_ahead += 1
                else:
                    vectors[piece] = replica.encode([job.texts[p] for p in piece], batch_size=len(piece))
            except torch.cuda.OutOfMemoryError:
                out_of_memory = True  # handled below, once the exception (and its frames' tensors) is gone
            if not out_of_memory:
                worker.count([job.counts[p] for p in piece])
                continue
            torch.cuda.empty_cache()
            padded = len(piece) * job.counts[piece[0]]
            if len(piece) == 1:
                raise _ChunkTooLarge(f"text {job.indices[piece[0]]} ({padded} tokens) does not fit in the free memory "
                                     f"of {worker.device} even alone: another process holds it; free it or set "
                                     '[embedding] device = "cpu"')
            worker.batch_tokens = min(worker.batch_tokens, padded // 2)
            worker.oom_splits += 1
            logger.warning("CUDA out of memory on %s with %s chunks (%s padded tokens): budget lowered to %s tokens",
                           worker.device, len(piece), padded, worker.batch_tokens)
            pieces.extendleft(reversed(split_by_budget(job.counts, piece, worker.batch_tokens, worker.max_rows)))
        return vectors

    # ---- the caller's side -----------------------------------------------------------------------
    def _batches(self, call: int, texts: Sequence[str], counts: Sequence[int]) -> Iterator[_Job]:
        order = sorted(range(len(texts)), key=lambda i: -counts[i])
        position = 0
        while position < len(order):
            # Cut for the roomiest worker now alive; smaller ones split what they take.
            budget = max(w.batch_tokens for w in self._workers)
            group = split_by_budget(counts, order[position:], budget, self.plan.max_batch_rows)[0]
            position += len(group)
            yield _Job(call, group, [texts[i] for i in group], [counts[i] for i in group])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if not self._workers:
            raise EmbeddingError(f"no embedding worker left for model {self.model!r} (see the errors above)")
        counts = self.tokenizer.count(texts)
        refuse_truncation(counts, self.tokenizer.max_tokens, self.model)
        with self._lock, self.telemetry.embedding():
            self._call += 1
            try:
                return self._run(self._call, texts, counts)
            except BaseException:
                self._drain_queued()
                raise

    def _run(self, call: int, texts: Sequence[str], counts: list[int]) -> np.ndarray:
        vectors = np.empty((len(texts), self.dimension), dtype=np.float32)
        filled = np.zeros(len(texts), dtype=bool)
        pending = self._batches(call, texts, counts)
        retries: deque[_Job] = deque()
        in_flight = 0
        while not filled.all():
            while in_flight < self._window and (job := (retries.popleft() if retries else next(pending, None))):
                self._tasks.put(job)
                in_flight += 1
            try:
                event = self._events.get(timeout=EVENT_WAIT_S)
            except queue.Empty:
                if not any(w.thread and w.thread.is_alive() for w in self._workers):
                    raise EmbeddingError("every embedding worker has stopped") from None
                continue
            kind, worker, *rest = event
            if kind == "ready":
                worker.precision = rest[1]
                logger.info("replacement embedding worker on %s is ready", worker.device)
                continue
            if kind == "failed_start":
                self._workers.remove(worker)
                if not self._workers:
                    raise EmbeddingError(f"no embedding worker left: a replacement on {worker.device} failed "
                                         f"to load model {self.model!r}: {rest[0]}") from rest[0]
                logger.error("replacement embedding worker on %s failed to load the model: %s", worker.device, rest[0])
                continue
            job = rest[0]
            if kind == "died":
                self._replace(worker, rest[1])
            if job.call != call:
                continue  # left over from a call that already failed
            in_flight -= 1
            if kind == "done":
                if filled[job.indices].any():
                    raise EmbeddingError(f"internal error: texts {job.indices} embedded twice")
                vectors[job.indices] = rest[1]
                filled[job.indices] = True
            elif kind == "chunk_failed":
                raise EmbeddingError(str(rest[1])) from rest[1]
            else:  # died
                job.attempts += 1
                if job.attempts >= MAX_BATCH_ATTEMPTS:
                    raise EmbeddingError(f"a batch of {len(job.indices)} texts (first: text {job.indices[0]}) failed "
                                         f"on {job.attempts} embedding workers; last error: {rest[1]!r}") from rest[1]
                retries.append(job)
        return vectors

    def _replace(self, worker: _Worker, exc: BaseException) -> None:
        logger.warning("embedding worker on %s died (%r): replacing it and re-queueing its batch", worker.device, exc)
        self._workers.remove(worker)
        self.replaced += 1
        self._start(_Worker(worker.device, worker.batch_tokens, worker.max_rows))

    def _drain_queued(self) -> None:
        try:
            while True:
                self._tasks.get_nowait()
        except queue.Empty:
            pass

    # ---- reporting and shutdown -----------------------------------------------------------------
    @property
    def precision_report(self) -> PrecisionReport | None:
        """What the workers run in: the first worker's report, its `used` naming every precision in use
        when the guard decided differently on different devices."""
        reports = [w.precision for w in self._workers if w.precision is not None]
        if not reports:
            return None
        used = sorted({report.used for report in reports})
        return reports[0] if len(used) == 1 else dataclasses.replace(reports[0], used="+".join(used))

    def telemetry_summary(self, reset: bool = False) -> dict[str, Any]:
        """Hardware use while embedding (min/mean/max) and each worker's batches and current budget.

        reset=True starts the next summary afresh (one per flow run in a long-lived process).
        """
        summary = {**self.telemetry.summary(reset=reset), "workers": [w.state() for w in self._workers],
                   "workers_replaced": self.replaced}
        if reset:
            self.replaced = 0
            for worker in self._workers:
                worker.batches = worker.chunks = worker.tokens = worker.padded_tokens = worker.oom_splits = 0
                worker.tokenized_ahead = 0
        return summary

    def close(self) -> None:
        for _ in self._workers:
            self._tasks.put(None)
        for worker in self._workers:
            if worker.thread is not None:
                worker.thread.join(timeout=10)
        self.telemetry.close()

    def __enter__(self) -> "EmbeddingPool":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
