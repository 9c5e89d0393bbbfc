"""What the sources of one run share when they run side by side: the store and the embedding pool.

Each selected source runs in a task of its own (flows/ingest.py), on the flow's thread pool, so
one source's rate limit or slow listing holds no other. They share:
- the store, behind one lock (`SharedStore`): the flow process stays the one writer, every
  write is still whole documents, and each source's cursor still moves last, after what it covers;
- the embedding pool (`FairEmbedding`): one thread hands embedding calls to the run's
  execution, taken round-robin from one queue per source (`FairQueue`), so a source with much
  waiting cannot starve one with little, and this process's model runs one call at a time;
- the turns of suspects (`SuspectTurns`): documents a dead process was handling go after every
  source's other work, one at a time, so a suspect that kills the process again is the only
  document in flight (and is quarantined), and no other source's work or cursor waits on it.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
from collections import deque
from concurrent.futures import Future
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")


class FairQueue(Generic[Item]):
    """One queue per source, taken round-robin: each `take` serves the next source in turn that has
    something waiting, and a source that still has more goes to the back of the line."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[Item]] = {}
        self._turns: deque[str] = deque()  # the sources with something waiting, in turn order

    def put(self, source: str, item: Item) -> None:
        queue = self._queues.setdefault(source, deque())
        if not queue:
            self._turns.append(source)
        queue.append(item)

    def take(self) -> Item | None:
        """The next item in turn; None when nothing waits."""
        if not self._turns:
            return None
        source = self._turns.popleft()
        queue = self._queues[source]
        item = queue.popleft()
        if queue:
            self._turns.append(source)
        return item

    def __len__(self) -> int:
        return sum(len(queue) for queue in self._queues.values())


class _Later:
    """The result of an embedding call that the pool's thread will start, with the interface of a future."""

    def __init__(self, started: Future):
        self._started = started  # resolves to the execution's own future-like result

    def result(self) -> Any:
        return self._started.result().result()


class FairEmbedding:
    """The run's embedding calls, started one at a time in one thread, round-robin across sources.

    The thread runs in a copy of the creating thread's context (the flow run's), so the calls are
    task runs of the flow like before. Use as a context manager: leaving it waits for the thread.
    """

    def __init__(self, execution: Any):
        self._execution = execution
        self._waiting: FairQueue[tuple[Any, dict[str, Any], Future]] = FairQueue()
        self._ready = threading.Condition()
        self._closed = False
        # The flow run's context, without any source task's: prefect-dask ships a submitting task run's
        # context (its parameters: the open store) to the workers, which cannot pickle it.
        self._flow_context = contextvars.copy_context()
        self._thread = threading.Thread(target=self._flow_context.copy().run, args=(self._serve,),
                                        name="vectormill-embedding", daemon=True)

    def __enter__(self) -> "FairEmbedding":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        self._thread.join()

    def for_source(self, source: str) -> "SourceExecution":
        return SourceExecution(self._execution, self, source)

    def submit_fetch(self, task: Any, parameters: dict[str, Any]) -> Any:
        """Submit a fetch task as the flow run does (see __init__)."""
        return self._flow_context.copy().run(self._execution.submit_fetch, task, parameters)

    def embed(self, source: str, task: Any, parameters: dict[str, Any]) -> _Later:
        started: Future = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("the run's embedding pool is closed")
            self._waiting.put(source, (task, parameters, started))
            self._ready.notify()
        return _Later(started)

    def _next(self) -> tuple[Any, dict[str, Any], Future] | None:
        with self._ready:
            while not len(self._waiting) and not self._closed:
                self._ready.wait()
            return self._waiting.take()  # None once closed and drained

    def _serve(self) -> None:
        while (call := self._next()) is not None:
            task, parameters, started = call
            if not started.set_running_or_notify_cancel():
                continue
            try:
                started.set_result(self._execution.embed(task, parameters))
            except BaseException as exc:  # noqa: BLE001 - the source that asked takes it
                started.set_exception(exc)


class SourceExecution:
    """The run's execution as one source sees it: its embedding calls go through the fair pool."""

    def __init__(self, execution: Any, pool: FairEmbedding, source: str):
        self._execution, self._pool, self._source = execution, pool, source

    def embed(self, task: Any, parameters: dict[str, Any]) -> _Later:
        return self._pool.embed(self._source, task, parameters)

    def submit_fetch(self, task: Any, parameters: dict[str, Any]) -> Any:
        return self._pool.submit_fetch(task, parameters)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._execution, name)


class SharedStore:
    """The run's store with every call behind one lock: sources in their own threads read and
    write it one call at a time."""

    def __init__(self, store: Any):
        self._store = store
        self._lock = threading.RLock()

    def __getattr__(self, name: str) -> Any:
        with self._lock:
            value = getattr(self._store, name)
        if not callable(value):
            return value

        def locked(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                return value(*args, **kwargs)

        return locked


class SuspectTurns:
    """Suspects go alone: `alone()` waits until every source of the run said its other work is done (or it
    ended), then lets one suspect at a time through."""

    def __init__(self, sources: Iterable[str]):
        self._waiting_for = set(sources)
        self._done = threading.Condition()
        self._one = threading.Lock()

    def other_work_done(self, source: str) -> None:
        """The source has nothing but suspects left (or ended); saying it again changes nothing."""
        with self._done:
            self._waiting_for.discard(source)
            self._done.notify_all()

    @contextlib.contextmanager
    def alone(self) -> Iterator[None]:
        with self._done:
            self._done.wait_for(lambda: not self._waiting_for)
        with self._one:
            yield
