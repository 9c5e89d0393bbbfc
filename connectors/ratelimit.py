"""A thread-safe token bucket: at most `burst` requests at once, then `rate` per second.

The bucket is pure arithmetic over an injectable clock (`reserve(now)`), so its decisions are
tested without sleeping; `acquire()` adds the real clock and the sleep. One bucket is shared by
every thread of a source in the process (`shared_bucket`), so parallel fetch tasks of one
source together stay under its limit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """Tokens refill at `rate` per second up to `burst`; each request takes one.

    A request that finds the bucket empty reserves the next token (the balance goes negative)
    and waits until it is due, so waiting threads are served in arrival order and over any
    window of T seconds at most `burst + rate * T` requests start.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if rate <= 0:
            raise ValueError(f"rate must be positive, got {rate}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst}")
        self.rate = float(rate)
        self.burst = int(burst)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = float(burst)
        self._updated = clock()

    def reserve(self, now: float) -> float:
        """Take a token at time `now`; returns how long the caller must wait before using it."""
        with self._lock:
            elapsed = max(0.0, now - self._updated)
            self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate)
            self._updated = max(self._updated, now)
            self._tokens -= 1.0
            return max(0.0, -self._tokens / self.rate)

    def acquire(self) -> float:
        """Block until a token is available; returns the seconds waited."""
        wait = self.reserve(self._clock())
        if wait > 0:
            self._sleep(wait)
        return wait


_shared: dict[tuple[str, float, int], TokenBucket] = {}
_shared_lock = threading.Lock()


def shared_bucket(name: str, rate: float, burst: int) -> TokenBucket:
    """The process-wide bucket of the source `name` (one per name and limit)."""
    key = (name, float(rate), int(burst))
    with _shared_lock:
        if key not in _shared:
            _shared[key] = TokenBucket(rate, burst)
        return _shared[key]
