"""The search service's metrics, for GET /metrics in Prometheus' text format (prometheus-client), per key name
(never its secret): searches by status, their latency, those running and waiting, the store state served."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .http_gate import KEY_SCOPE, Occupancy

UNKNOWN_KEY = "-"  # the key label of a search refused before a key was found (401)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class ServiceMetrics:
    """One service's metrics, in a registry of its own (not the process's global one)."""

    def __init__(self, occupancy: Occupancy):
        self.registry = CollectorRegistry()
        self._running = 0
        self._lock = threading.Lock()
        self.requests = Counter("vectormill_search_requests", "Searches answered, by key name and HTTP status "
                                "(429: shed by the admission queue)", ["key", "status"], registry=self.registry)
        self.latency = Histogram("vectormill_search_seconds", "Time from a search's arrival to its answer, by key "
                                 "name", ["key"], buckets=LATENCY_BUCKETS, registry=self.registry)
        running = Gauge("vectormill_searches_running", "Searches running in the search pool", registry=self.registry)
        running.set_function(lambda: self._running)
        waiting = Gauge("vectormill_searches_waiting", "Searches admitted and waiting for the search pool (or still "
                        "sending their body)", registry=self.registry)
        waiting.set_function(lambda: max(0, occupancy.admitted - self._running))
        self.generation = Gauge("vectormill_store_generation", "The store checkpoint of the last answer",
                                registry=self.registry)
        self.lsn = Gauge("vectormill_store_lsn", "The last write the last answer includes", registry=self.registry)

    @contextmanager
    def running(self) -> Iterator[None]:
        """Around a search in the pool (a thread of its own)."""
        with self._lock:
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1

    def served(self, generation: int, lsn: int) -> None:
        self.generation.set(generation)
        self.lsn.set(lsn)

    def text(self) -> bytes:
        return generate_latest(self.registry)


class Measured:
    """Counts and times every request to /search (pure ASGI middleware, outside the authentication, so that the
    401s and 429s are counted too), by the name of the key the authentication found."""

    def __init__(self, app, metrics: ServiceMetrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] != "/search":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), ["none"]  # "none": the client left before an answer

        async def sent(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = str(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sent)
        except Exception:
            status[0] = "500"  # answered so by the server-error layer outside
            raise
        finally:
            key = scope.get(KEY_SCOPE)
            name = key.name if key is not None else UNKNOWN_KEY
            self.metrics.requests.labels(name, status[0]).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - started)
