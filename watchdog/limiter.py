"""Who may run now. Knows nothing of HTTP or processes.

Exact without locks: acquire and release run on the event loop, one callback at
a time, and a slot is released only when its function's process group is gone.
"""

from __future__ import annotations

import math


class Limiter:
    # Weight of the newest duration in the running average behind Retry-After.
    _ALPHA = 0.2

    def __init__(self, limit: int) -> None:
        self.limit = limit  # 0: no limit
        self.inflight = 0
        self._mean_duration = 0.0

    @property
    def at_capacity(self) -> bool:
        return self.limit > 0 and self.inflight >= self.limit

    def try_acquire(self) -> bool:
        if self.limit > 0 and self.inflight >= self.limit:
            return False
        self.inflight += 1
        return True

    def release(self, duration: float | None = None) -> None:
        if self.inflight <= 0:
            raise RuntimeError("release() without a matching acquire")
        self.inflight -= 1
        if duration is not None:
            if self._mean_duration == 0.0:
                self._mean_duration = duration
            else:
                self._mean_duration += self._ALPHA * (duration - self._mean_duration)

    def retry_after(self) -> int:
        """Whole seconds a rejected caller should wait: by then, on recent form, a
        running function has finished and freed its slot."""
        return max(1, math.ceil(self._mean_duration))
