"""The bounded wait queue in front of the limit (`max_queue`, `queue_timeout`): a
request over the limit waits for a slot, first come first served, instead of a
429, while the queue has room. Knows nothing of HTTP or processes.

A slot freed while requests wait is not given back: it is handed to the first
waiter (the limiter's count does not move), so that a request arriving meanwhile
cannot take it and the limit stays exact. The waiter's task then holds a granted
slot, which the first `Executor.admit` of that task consumes (`GRANTED`); one it
never consumes (its body broke off, say) is given back by `settle`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars

from watchdog.limiter import Limiter

# A slot handed over to the current task by the queue, not yet taken by an admit.
GRANTED: contextvars.ContextVar[bool] = contextvars.ContextVar("granted", default=False)

# Why a waiter did not get a slot.
QUEUE_FULL = "queue_full"
QUEUE_TIMEOUT = "queue_timeout"
SHUTDOWN = "shutdown"


class WaitQueue:
    def __init__(self, limiter: Limiter, size: int, timeout: float) -> None:
        self.size = size
        self.timeout = timeout  # 0: a waiter waits as long as it takes
        self._limiter = limiter
        self._waiters: collections.deque[asyncio.Future[str | None]] = collections.deque()
        self._closed = False
        limiter.hand_over = self._hand_over

    @property
    def depth(self) -> int:
        return len(self._waiters)

    @property
    def has_room(self) -> bool:
        return not self._closed and len(self._waiters) < self.size

    async def wait(self) -> str | None:
        """Until a slot is handed over (None: the current task holds it, GRANTED),
        or why not: queue_timeout, shutdown. A cancelled waiter (its client hung
        up) leaves at once and never takes a slot."""
        waiter: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout(self.timeout or None):
                reason = await asyncio.shield(waiter)
        except TimeoutError:
            # Handed over in the same turn the deadline passed: it is granted.
            granted = waiter.done() and not waiter.cancelled() and waiter.result() is None
            reason = None if granted else QUEUE_TIMEOUT
        except asyncio.CancelledError:
            self._leave(waiter)
            raise
        finally:
            self._discard(waiter)
        if reason is None:
            GRANTED.set(True)
        return reason

    def close(self) -> None:
        """Shutting down: every waiter gets its answer (503) at once."""
        self._closed = True
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(SHUTDOWN)

    def _hand_over(self) -> bool:
        """A slot is being released: give it to the first waiter still waiting."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return True
        return False

    def _leave(self, waiter: asyncio.Future[str | None]) -> None:
        if waiter.done() and not waiter.cancelled() and waiter.result() is None:
            self._limiter.release()  # handed over as it hung up: pass it on
        elif not waiter.done():
            waiter.cancel()

    def _discard(self, waiter: asyncio.Future[str | None]) -> None:
        with contextlib.suppress(ValueError):  # handed over, or closed: already out
            self._waiters.remove(waiter)


def settle(limiter: Limiter) -> None:
    """At the end of a request that waited: a granted slot no admit took (the
    request ended before its invocation) is given back."""
    if GRANTED.get():
        GRANTED.set(False)
        limiter.release()
