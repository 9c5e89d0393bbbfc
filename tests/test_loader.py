"""The embedder loader: one build per process, in the background when started early, timed, retried after a failure."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from vectormill.embedding.loader import EmbedderLoader, loader_for
from vectormill.embedding.settings import EmbeddingSettings, ServiceSettings

# A service's settings: the loader imports no model libraries for them, so these tests stay light.
SETTINGS = EmbeddingSettings(service=ServiceSettings(url="http://127.0.0.1:9"))


class Built:
    model, dimension = "test", 4

    def embed(self, texts):
        return np.ones((len(texts), 4), dtype=np.float32)


class Builder:
    """Builds after `release` is set (or at once), failing the first `failures` times."""

    def __init__(self, failures: int = 0, gated: bool = False):
        self.failures, self.calls, self.threads = failures, 0, []
        self.release = threading.Event()
        if not gated:
            self.release.set()

    def __call__(self, settings):
        self.calls += 1
        self.threads.append(threading.current_thread().name)
        self.release.wait(10)
        if self.calls <= self.failures:
            raise RuntimeError(f"load {self.calls} failed")
        return Built()


def test_started_early_it_loads_in_the_background_and_get_waits_for_what_is_left():
    builder = Builder(gated=True)
    loader = EmbedderLoader(SETTINGS, builder)
    loader.start()
    loader.start()  # idempotent
    assert loader.started and not loader.loaded
    threading.Timer(0.3, builder.release.set).start()
    embedder = loader.get()
    assert isinstance(embedder, Built) and loader.get() is embedder and builder.calls == 1
    assert builder.threads == ["load-embedder"]
    times = loader.take_times()
    assert times.wait_model >= 0.2 and times.load_model >= times.wait_model - 0.05
    assert times.import_model == 0.0  # a service needs no model libraries
    assert loader.take_times().as_dict() == {"import_model": 0.0, "load_model": 0.0, "wait_model": 0.0}  # reported once


def test_never_started_it_loads_in_the_caller_and_nothing_is_waited_for():
    builder = Builder()
    loader = EmbedderLoader(SETTINGS, builder)
    assert not loader.started
    loader.get()
    assert builder.threads == [threading.current_thread().name] and loader.take_times().wait_model == 0.0


def test_a_failed_load_raises_in_get_and_the_next_get_tries_again():
    builder = Builder(failures=1)
    loader = EmbedderLoader(SETTINGS, builder)
    loader.start()
    with pytest.raises(RuntimeError, match="load 1 failed"):
        loader.get()
    assert not loader.loaded and not loader.started
    assert isinstance(loader.get(), Built) and builder.calls == 2


def callers_of_a_started_load(builder: Builder, count: int) -> tuple[EmbedderLoader, list]:
    """`count` threads call get() while a started load waits for `release`: what each got (embedder or error)."""
    loader = EmbedderLoader(SETTINGS, builder)
    loader.start()
    results = []

    def call():
        try:
            results.append(loader.get())
        except BaseException as exc:  # noqa: BLE001 - what each caller got
            results.append(exc)

    callers = [threading.Thread(target=call) for _ in range(count)]
    for caller in callers:
        caller.start()
    time.sleep(0.1)
    builder.release.set()
    for caller in callers:
        caller.join(10)
    return loader, results


def test_concurrent_callers_share_one_load():
    builder = Builder(gated=True)
    _, results = callers_of_a_started_load(builder, 4)
    assert builder.calls == 1 and len(results) == 4 and len({id(r) for r in results}) == 1
    assert isinstance(results[0], Built)


def test_one_loader_per_settings_in_a_process():
    assert loader_for(SETTINGS) is loader_for(EmbeddingSettings(service=ServiceSettings(url="http://127.0.0.1:9")))
    assert loader_for(SETTINGS) is not loader_for(EmbeddingSettings(precision="fp32"))


def test_every_caller_waiting_on_a_failed_load_gets_its_error():
    builder = Builder(failures=1, gated=True)
    loader, raised = callers_of_a_started_load(builder, 3)
    assert [str(exc) for exc in raised] == ["load 1 failed"] * 3 and builder.calls == 1
    assert all(isinstance(exc, RuntimeError) for exc in raised)
    assert isinstance(loader.get(), Built) and builder.calls == 2


def test_an_edit_that_does_not_touch_the_model_keeps_its_loader_and_old_models_are_closed():
    from vectormill.embedding import loader as loaders

    base = EmbeddingSettings(service=ServiceSettings(url="http://127.0.0.1:9"), model="a")
    assert loader_for(base) is loader_for(base.model_copy(update={"task_chunks": 7}))  # splits work only
    closed = []
    kept = [loader_for(base.model_copy(update={"model": name})) for name in ("b", "c", "d")]
    for loader in kept:
        loader.close = lambda loader=loader: closed.append(loader.settings.model)
    loader_for(base.model_copy(update={"model": "e"}))
    assert len(loaders._loaders) == loaders.MODELS_KEPT
    for _ in range(50):
        if closed:
            break
        time.sleep(0.05)
    assert closed == ["c"]  # b went when d came (its loader had not been patched yet); c when e came


def test_at_exit_a_load_under_way_finishes_and_the_embedder_is_closed(monkeypatch):
    """What the interpreter's exit runs (atexit): a thread left inside torch at teardown aborts the process."""
    from vectormill.embedding import loader as loader_module

    closed = threading.Event()

    class Closable(Built):
        def close(self):
            closed.set()

    builder = Builder(gated=True)
    building = EmbedderLoader(SETTINGS, lambda settings: (builder(settings), Closable())[1])
    monkeypatch.setattr(loader_module, "_loaders", loader_module.OrderedDict(building=building))
    building.start()
    threading.Timer(0.3, builder.release.set).start()

    loader_module.finish_background_work()

    assert building.loaded and closed.is_set() and not loader_module._loaders
    loader_module.finish_background_work()  # again: nothing left to do
