"""Who may run now. Knows nothing of HTTP or processes.

Exact without locks in one process: acquire and release run on the event loop,
one callback at a time, and a slot is released only when its function's process
group is gone. With several workers, the slots are a semaphore they share.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class Limiter:
    # Weight of the newest duration in the running average behind Retry-After.
    _ALPHA = 0.2

    def __init__(self, limit: int) -> None:
        self.limit = limit  # 0: no limit
        self.mine = 0  # slots this process holds
        self._mean_duration = 0.0
        # The wait queue's: given a slot being released, True if it handed it to a
        # waiter (the count stays), False to free it.
        self.hand_over: Callable[[], bool] | None = None

    @property
    def inflight(self) -> int:
        """Slots in use, by every process that shares the limit."""
        return self.mine

    @property
    def at_capacity(self) -> bool:
        return self.limit > 0 and self.mine >= self.limit

    def try_acquire(self) -> bool:
        if self.limit > 0 and self.mine >= self.limit:
            return False
        self.mine += 1
        return True

    def release(self, duration: float | None = None) -> None:
        if self.mine <= 0:
            raise RuntimeError("release() without a matching acquire")
        if self.hand_over is None or not self.hand_over():
            self.mine -= 1
        if duration is not None:
            if self._mean_duration == 0.0:
                self._mean_duration = duration
            else:
                self._mean_duration += self._ALPHA * (duration - self._mean_duration)

    def retry_after(self, waiting: int = 0) -> int:
        """Whole seconds a rejected caller should wait: by then, on recent form, a
        running function has finished and freed its slot (and the `waiting` ahead
        of it have had theirs: waiting x run time / slots)."""
        slots = self.limit or 1
        return max(1, math.ceil(self._mean_duration * (1 + waiting / slots)))


class SharedLimiter(Limiter):
    """The limit held across worker processes: a semaphore of `limit` permits
    (sem_trywait: never blocks; None for no limit), and this worker's count in
    `counts[index]`, so that the supervisor can give back the permits of a worker
    that died."""

    def __init__(self, limit: int, semaphore: Any, counts: Any, index: int) -> None:
        super().__init__(limit)
        self._semaphore = semaphore  # multiprocessing.BoundedSemaphore
        self._counts = counts  # multiprocessing.Array("i", workers), one writer each
        self._index = index

    @property
    def inflight(self) -> int:
        if self._semaphore is None:  # no limit: add up what the workers hold
            return sum(self._counts)
        return self.limit - int(self._semaphore.get_value())

    @property
    def at_capacity(self) -> bool:
        return self._semaphore is not None and self._semaphore.get_value() == 0

    def try_acquire(self) -> bool:
        if self._semaphore is not None and not self._semaphore.acquire(False):
            return False
        self.mine += 1
        self._changed()
        return True

    def release(self, duration: float | None = None) -> None:
        super().release(duration)
        self._changed()
        if self._semaphore is not None:
            self._semaphore.release()

    def _changed(self) -> None:
        self._counts[self._index] = self.mine


@dataclass(frozen=True)
class SharedSlots:
    """What a worker needs to share the limit: made by the supervisor before it
    forks (a semaphore is None when there is no limit); and the folder where the
    workers keep their metrics (watchdog.metrics.SharedRegistry)."""

    semaphore: Any
    counts: Any
    index: int
    metrics_dir: str = ""

    def limiter(self, limit: int) -> Limiter:
        return SharedLimiter(limit, self.semaphore, self.counts, self.index)
