from __future__ import annotations

import pytest

from watchdog.limiter import Limiter


def test_exact_limit() -> None:
    limiter = Limiter(2)
    assert [limiter.try_acquire() for _ in range(4)] == [True, True, False, False]
    assert limiter.at_capacity
    limiter.release()
    assert not limiter.at_capacity
    assert limiter.try_acquire()
    assert not limiter.try_acquire()


def test_zero_means_no_limit() -> None:
    limiter = Limiter(0)
    assert all(limiter.try_acquire() for _ in range(10_000))
    assert not limiter.at_capacity
    assert limiter.inflight == 10_000


def test_release_without_acquire_is_a_bug() -> None:
    with pytest.raises(RuntimeError):
        Limiter(1).release()


def test_retry_after_follows_recent_durations() -> None:
    limiter = Limiter(1)
    assert limiter.retry_after() == 1  # nothing known yet: the smallest hint
    for duration in (4.2, 4.2, 4.2):
        limiter.try_acquire()
        limiter.release(duration)
    assert limiter.retry_after() == 5
    for _ in range(40):
        limiter.try_acquire()
        limiter.release(0.01)
    assert limiter.retry_after() == 1
