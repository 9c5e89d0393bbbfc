"""What the hardware did while embedding: GPU utilisation and memory per device, or process CPU use.

A background thread samples only while an `embedding()` block is open (idle time between the
flow's batches is not counted) and keeps running min / mean / max, so memory stays flat
however long the run.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import pynvml

from .nvml import NvmlSession

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL_S = 0.5
# A CPU reading over a shorter span is mostly clock noise.
MIN_CPU_SPAN_S = 0.01


class RunningStat:
    def __init__(self) -> None:
        self.count, self.total = 0, 0.0
        self.low, self.high = float("inf"), float("-inf")

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        self.low, self.high = min(self.low, value), max(self.high, value)

    def summary(self) -> dict[str, float]:
        if not self.count:
            return {}
        return {"min": round(self.low, 1), "mean": round(self.total / self.count, 1), "max": round(self.high, 1)}


class Sampler(Protocol):
    device: str

    def begin(self) -> None: ...

    def read(self) -> dict[str, dict[str, float]]:
        """{series: {metric: value}}; empty when there is nothing to report yet."""
        ...

    def describe(self, stats: dict[str, dict[str, RunningStat]]) -> dict[str, Any]: ...

    def close(self) -> None: ...


class CpuSampler:
    """This process's CPU use since the last reading: 100 = one core busy, cores × 100 = all."""

    device = "cpu"

    def __init__(self, cores: int):
        self.cores = cores
        self._mark: tuple[float, float] | None = None

    def begin(self) -> None:
        self._mark = (time.process_time(), time.monotonic())

    def read(self) -> dict[str, dict[str, float]]:
        now = (time.process_time(), time.monotonic())
        if self._mark is None or now[1] - self._mark[1] < MIN_CPU_SPAN_S:
            return {}
        (cpu_then, wall_then), self._mark = self._mark, now
        return {"cpu": {"cpu_percent": 100.0 * (now[0] - cpu_then) / (now[1] - wall_then)}}

    def describe(self, stats: dict[str, dict[str, RunningStat]]) -> dict[str, Any]:
        return {"cores": self.cores, "cpu_percent": stats.get("cpu", {}).get("cpu_percent", RunningStat()).summary()}

    def close(self) -> None:
        pass


class GpuSampler:
    """Utilisation and memory used of the GPUs the pool runs on, through NVML."""

    device = "cuda"

    def __init__(self, indices: list[int], nvml: Any = pynvml):
        self.indices = indices
        self._session = NvmlSession(nvml)
        self._open = False
        self._names: dict[str, str] = {}

    def begin(self) -> None:
        if not self._open:
            self._session.__enter__()
            self._open = True

    def read(self) -> dict[str, dict[str, float]]:
        readings = {}
        for reading in self._session.read(self.indices):
            self._names[str(reading.index)] = reading.name
            values = {"memory_used_mib": float(reading.used_mib)}
            if reading.gpu_percent is not None:
                values["gpu_percent"] = float(reading.gpu_percent)
            readings[str(reading.index)] = values
        return readings

    def describe(self, stats: dict[str, dict[str, RunningStat]]) -> dict[str, Any]:
        return {"gpus": [{"index": int(key), "name": self._names.get(key, ""),
                          **{metric: stat.summary() for metric, stat in sorted(metrics.items())}}
                         for key, metrics in sorted(stats.items(), key=lambda item: int(item[0]))]}

    def close(self) -> None:
        if self._open:
            self._session.__exit__(None, None, None)
            self._open = False


class Telemetry:
    def __init__(self, sampler: Sampler, interval_s: float = DEFAULT_INTERVAL_S):
        self.sampler = sampler
        self.interval_s = interval_s
        self._stats: dict[str, dict[str, RunningStat]] = {}
        self._samples = 0
        self._lock = threading.Lock()
        self._active = threading.Event()
        self._closed = threading.Event()
        self._broken = False  # the sampler failed once: stop asking, never break embedding
        self._thread: threading.Thread | None = None

    def _take(self) -> None:
        if self._broken:
            return
        try:
            readings = self.sampler.read()
        except pynvml.NVMLError as exc:
            logger.warning("telemetry stopped: NVML failed while sampling (%s)", exc)
            self._broken = True
            return
        if readings:
            self._samples += 1
        for series, values in readings.items():
            metrics = self._stats.setdefault(series, {})
            for metric, value in values.items():
                metrics.setdefault(metric, RunningStat()).add(value)

    def _run(self) -> None:
        while not self._closed.is_set():
            self._active.wait()
            if self._closed.wait(self.interval_s):
                return
            with self._lock:
                if self._active.is_set():
                    self._take()

    @contextmanager
    def embedding(self) -> Iterator[None]:
        """Sample while the block runs; one last reading at its end covers short blocks."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="embedding-telemetry", daemon=True)
                self._thread.start()
            try:
                self.sampler.begin()
            except pynvml.NVMLError as exc:
                logger.warning("telemetry off: NVML failed to start (%s)", exc)
                self._broken = True
            self._active.set()
        try:
            yield
        finally:
            with self._lock:
                self._take()
                self._active.clear()

    def summary(self, reset: bool = False) -> dict[str, Any]:
        with self._lock:
            summary = {"device": self.sampler.device, "samples": self._samples, "interval_s": self.interval_s,
                       **self.sampler.describe(self._stats)}
            if reset:
                self._stats, self._samples = {}, 0
            return summary

    def close(self) -> None:
        self._closed.set()
        self._active.set()  # wake the thread so it sees the close
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            self.sampler.close()
