"""The token bucket's decisions on a fake clock, and its bound under real threads."""

import threading
import time

import pytest

from vectormill.connectors.ratelimit import TokenBucket, shared_bucket


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def most_in_window(times: list[float], seconds: float) -> int:
    times = sorted(times)
    most, start = 0, 0
    for end, moment in enumerate(times):
        while moment - times[start] > seconds + 1e-9:
            start += 1
        most = max(most, end - start + 1)
    return most


def test_a_full_bucket_serves_its_burst_at_once_then_one_token_per_interval():
    clock = FakeClock()
    bucket = TokenBucket(rate=2, burst=3, clock=clock)
    assert [bucket.reserve(0.0) for _ in range(5)] == [0.0, 0.0, 0.0, 0.5, 1.0]


def test_tokens_refill_at_the_rate_but_never_beyond_the_burst():
    clock = FakeClock()
    bucket = TokenBucket(rate=4, burst=2, clock=clock)
    assert [bucket.reserve(0.0) for _ in range(2)] == [0.0, 0.0]
    assert bucket.reserve(0.25) == 0.0  # one token came back in a quarter second
    assert bucket.reserve(0.25) == pytest.approx(0.25)
    # A long idle spell refills only up to the burst.
    assert [bucket.reserve(100.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(0.25)]


def test_acquire_sleeps_for_the_reserved_wait_and_returns_it():
    clock = FakeClock()
    bucket = TokenBucket(rate=10, burst=1, clock=clock, sleep=clock.sleep)
    assert bucket.acquire() == 0.0
    assert bucket.acquire() == pytest.approx(0.1)
    assert clock.now == pytest.approx(0.1)


@pytest.mark.parametrize("rate, burst", [(5, 1), (5, 10), (50, 3), (0.5, 2)])
def test_starts_in_any_window_stay_within_burst_plus_rate_times_window(rate, burst):
    clock = FakeClock()
    bucket = TokenBucket(rate=rate, burst=burst, clock=clock, sleep=clock.sleep)
    starts = []
    for request in range(300):
        if request % 37 == 0:
            clock.now += 3.0  # idle spells let the bucket refill
        bucket.acquire()
        starts.append(clock.now)
    for window in (0.0, 0.5, 1.0, 5.0):
        assert most_in_window(starts, window) <= burst + rate * window + 1e-9
    # …and the limiter does not under-serve: a burst happens after each idle spell.
    assert most_in_window(starts, 0.0) == burst


def test_threads_sharing_a_bucket_stay_within_its_bound():
    bucket = TokenBucket(rate=100, burst=5)
    starts: list[float] = []
    lock = threading.Lock()

    def worker():
        for _ in range(20):
            bucket.acquire()
            with lock:
                starts.append(time.monotonic())

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(starts) == 120
    # 5 ms slack per window for thread wake-up jitter.
    assert most_in_window(starts, 0.5) <= 5 + 100 * 0.505
    assert max(starts) - min(starts) >= (120 - 5) / 100 * 0.95


def test_one_bucket_per_source_and_limit_in_the_process():
    assert shared_bucket("wiki-a", 5, 10) is shared_bucket("wiki-a", 5, 10)
    assert shared_bucket("wiki-a", 5, 10) is not shared_bucket("wiki-b", 5, 10)
    assert shared_bucket("wiki-a", 5, 10) is not shared_bucket("wiki-a", 1, 10)


@pytest.mark.parametrize("rate, burst", [(0, 1), (-1, 1), (1, 0)])
def test_rejects_limits_that_cannot_serve(rate, burst):
    with pytest.raises(ValueError):
        TokenBucket(rate=rate, burst=burst)
