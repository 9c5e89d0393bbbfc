"""The embedder of this process: built once per settings, in a background thread when started early.

Importing torch and sentence-transformers and loading the model take seconds. A run that knows
it will embed starts the load (`EmbedderLoader.start`) and goes on listing, fetching and
parsing; the first embedding call then waits only for what is left (`get`). A run with nothing
to embed never starts it, so it never imports torch. The seconds each step took are kept for
the run summary (`take_times`).
"""

from __future__ import annotations

import functools
import threading
import time
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


class EmbedderLoader:
    def __init__(self, settings: EmbeddingSettings, build: Callable[[EmbeddingSettings], Embedder] = build_embedder):
        self.settings = settings
        self._build = build
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._embedder: Embedder | None = None
        self._error: BaseException | None = None
        self._times = LoadTimes()

    @property
    def started(self) -> bool:
        return self._thread is not None or self._done.is_set()

    @property
    def loaded(self) -> bool:
        return self._embedder is not None

    def start(self) -> None:
        """Begin loading in the background (no-op when started or loaded already)."""
        with self._lock:
            if self.started:
                return
            # A daemon: a run that ends without embedding (its changed documents kept their chunk texts)
            # exits without waiting for a load it did not need.
            self._thread = threading.Thread(target=self._load, name="load-embedder", daemon=True)
            self._thread.start()

    def get(self) -> Embedder:
        """The embedder; loads it here if nobody started it, waits if a load is under way.

        A failed load raises its error here, and the next call tries again.
        """
        with self._lock:
            if self._embedder is not None:
                return self._embedder
            here = not self.started
            if here:
                self._thread = threading.current_thread()
        if here:
            self._load()
        else:
            waiting = time.perf_counter()
            self._done.wait()
            self._times.wait_model += time.perf_counter() - waiting
        with self._lock:
            if self._embedder is not None:
                return self._embedder
            error, self._error, self._thread = self._error, None, None
            self._done.clear()
        raise error  # type: ignore[misc]

    def take_times(self) -> LoadTimes:
        """The seconds spent since the last call (a long-lived process reports each load once)."""
        times, self._times = self._times, LoadTimes()
        return times

    def _load(self) -> None:
        try:
            if self.settings.service is None:
                started = time.perf_counter()
                _import_model_libraries()
                self._times.import_model += time.perf_counter() - started
            started = time.perf_counter()
            embedder = self._build(self.settings)
            self._times.load_model += time.perf_counter() - started
            self._embedder = embedder
        except BaseException as exc:  # noqa: BLE001 - handed to the caller of get()
            self._error = exc
        finally:
            self._done.set()


@functools.cache
def loader_for(settings: EmbeddingSettings) -> EmbedderLoader:
    """One loader, so one model, per process and settings."""
    return EmbedderLoader(settings)
