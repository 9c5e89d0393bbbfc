"""The embedder of this process: built once per model settings, in a background thread when started early.

Importing torch and sentence-transformers and loading the model take seconds. A run that knows
it will embed starts the load (`EmbedderLoader.start`) and goes on listing, fetching and
parsing; the first embedding call then waits only for what is left (`get`). A run with nothing
to embed never starts it, so it never imports torch. The seconds each step took are kept for
the run summary (`take_times`).

Before the interpreter exits, every load under way finishes and every embedder is closed
(`finish_background_work`, registered with atexit): a thread still inside torch when the
interpreter tears down aborts the process (SIGABRT, exit 134) after the run's work is done.
"""

from __future__ import annotations

import atexit
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from .base import Embedder
from .registry import build_embedder
from .settings import EmbeddingSettings


@dataclass
class LoadTimes:
    import_model: float = 0.0  # import torch + sentence-transformers (0 when already imported, or a service)
    load_model: float = 0.0  # the model onto its devices, the precision guard's probe included
    wait_model: float = 0.0  # what callers of `get` spent waiting for a load already under way

    def as_dict(self) -> dict[str, float]:
        return {key: round(value, 3) for key, value in vars(self).items()}


def _import_model_libraries() -> None:
    import sentence_transformers  # noqa: F401 - imports torch and transformers too
    import torch  # noqa: F401


class _Load:
    """One attempt at building the embedder: every caller waiting on it gets its embedder or its error."""

    def __init__(self):
        self.done = threading.Event()
        self.embedder: Embedder | None = None
        self.error: BaseException | None = None
        self.reported = False  # its error reached a caller of get(): the next call tries again

    @property
    def spent(self) -> bool:
        return self.done.is_set() and self.embedder is None and self.reported


class EmbedderLoader:
    def __init__(self, settings: EmbeddingSettings, build: Callable[[EmbeddingSettings], Embedder] = build_embedder):
        self.settings = settings
        self._build = build
        self._lock = threading.Lock()
        self._attempt: _Load | None = None  # the current load; a failed one, once reported, is replaced
        self._times = LoadTimes()

    @property
    def started(self) -> bool:
        return self._attempt is not None and not self._attempt.spent

    @property
    def loaded(self) -> bool:
        return self._attempt is not None and self._attempt.embedder is not None

    def start(self) -> None:
        """Begin loading in the background (no-op when started or loaded already)."""
        with self._lock:
            if self.started:
                return
            attempt = self._attempt = _Load()
        # A daemon that `finish_background_work` waits for at exit: a run that ends without embedding
        # still lets its load finish, but nothing else has to know about it.
        threading.Thread(target=self._load, args=(attempt,), name="load-embedder", daemon=True).start()

    def get(self) -> Embedder:
        """The embedder; loads it here if nobody started it, waits if a load is under way.

        A failed load raises its error in every caller that waited for it, and the next call tries again.
        """
        with self._lock:
            attempt = self._attempt
            here = attempt is None or attempt.spent
            if here:
                attempt = self._attempt = _Load()
        if here:
            self._load(attempt)
        elif not attempt.done.is_set():
            waiting = time.perf_counter()
            attempt.done.wait()
            self._times.wait_model += time.perf_counter() - waiting
        if attempt.embedder is None:
            attempt.reported = True
            raise attempt.error  # type: ignore[misc]
        return attempt.embedder

    def close(self) -> None:
        """Close the embedder (its pool's worker threads hold the model), once a load under way ends."""
        attempt = self._attempt
        if attempt is None:
            return
        attempt.done.wait()
        close = getattr(attempt.embedder, "close", None)
        if close is not None:
            close()

    def take_times(self) -> LoadTimes:
        """The seconds spent since the last call (a long-lived process reports each load once)."""
        times, self._times = self._times, LoadTimes()
        return times

    def _load(self, attempt: _Load) -> None:
        try:
            if self.settings.service is None:
                started = time.perf_counter()
                _import_model_libraries()
                self._times.import_model += time.perf_counter() - started
            started = time.perf_counter()
            embedder = self._build(self.settings)
            self._times.load_model += time.perf_counter() - started
            attempt.embedder = embedder
        except BaseException as exc:  # noqa: BLE001 - handed to the callers of get()
            attempt.error = exc
        finally:
            attempt.done.set()


# Models kept per process: the one in use and the one before it (a run of an older config still going).
MODELS_KEPT = 2
_loaders: OrderedDict[str, EmbedderLoader] = OrderedDict()
_loaders_lock = threading.Lock()
_closing: list[threading.Thread] = []  # closes of dropped models, still to wait for at exit


def model_key(settings: EmbeddingSettings) -> str:
    """What the built embedder depends on: every [embedding] setting but those that only split a run's work."""
    return settings.model_dump_json(exclude={"task_chunks"})


def loader_for(settings: EmbeddingSettings) -> EmbedderLoader:
    """One loader, so one model, per process and model settings. Beyond MODELS_KEPT, the least recently
    used is dropped and its model closed (in the background: a load under way finishes first)."""
    key = model_key(settings)
    with _loaders_lock:
        loader = _loaders.get(key)
        if loader is None:
            loader = _loaders[key] = EmbedderLoader(settings)
        _loaders.move_to_end(key)
        while len(_loaders) > MODELS_KEPT:
            _, dropped = _loaders.popitem(last=False)
            closing = threading.Thread(target=dropped.close, name="close-embedder", daemon=True)
            closing.start()
            _closing.append(closing)
        return loader


@atexit.register
def finish_background_work() -> None:
    """Let every model load under way finish and close every embedder (its worker threads), so the
    process exits with its outcome, not a signal. Runs at interpreter exit; safe to call again."""
    with _loaders_lock:
        loaders, closing = list(_loaders.values()), list(_closing)
        _loaders.clear()
        _closing.clear()
    for loader in loaders:
        loader.close()
    for thread in closing:
        thread.join()
