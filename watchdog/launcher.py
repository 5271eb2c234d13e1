"""Where functions are started: on C threads, or on the event loop itself.

`posix_spawn` suspends its caller until the child has exec'd. On the event loop
that was about half of the loop's busy time, during which nothing else was served
and the CPU sat idle; `os.posix_spawn` holds the GIL all the while, so Python threads cannot
take that wait away (they trade the GIL with the loop instead). The extension
`watchdog._spawn` starts functions on plain C threads that never take the GIL:
the loop queues a start and goes on, and one callback collects every start that
finished (`WATCHDOG_SPAWN_THREADS`; 0, or no compiled extension: on the loop).

Knows nothing of HTTP. A caller that is cancelled while its function starts
hands the function, once it exists, to the `orphaned` callback it gave.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import signal
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, NamedTuple, cast

from watchdog.process import EpollReadiness, FunctionProcess, SpawnError, Spill, spawn

_spawn: ModuleType | None
try:
    from watchdog import _spawn
except ImportError:  # built without a C compiler
    _spawn = None

if TYPE_CHECKING:
    from watchdog._spawn import Spawner

log = logging.getLogger("watchdog")

# What a caller that was cancelled while its function started is given: the
# function (to stop and to reap), or None when it could not start.
Orphaned = Callable[[FunctionProcess | None], None]


class _Start(NamedTuple):
    """What a start carries through the C thread and back."""

    started: asyncio.Future[FunctionProcess]
    program: str
    max_output: int
    kill_grace: float
    orphaned: Orphaned
    spill: Spill | None
    leave_background: bool


def threads_available() -> bool:
    return _spawn is not None


class Launcher:
    def __init__(self, threads: int) -> None:
        if threads and _spawn is None:
            log.warning("watchdog._spawn was not built (no C compiler at install): "
                        "functions start on the event loop")
        self.threads = threads if _spawn is not None else 0
        self._spawner: Spawner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending = 0  # starts queued and not yet collected
        self._settled: asyncio.Future[None] | None = None
        self._readiness: EpollReadiness | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._readiness = EpollReadiness(self._loop)
        if not self.threads:
            return
        assert _spawn is not None
        self._spawner = _spawn.Spawner(self.threads)
        self._loop.add_reader(self._spawner.fileno(), self._collect)

    async def spawn(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        combine_output: bool,
        max_output: int,
        kill_grace: float,
        nice: int | None,
        orphaned: Orphaned,
        body: bytes | None = None,
        spill: Spill | None = None,
        leave_background: bool = False,
    ) -> FunctionProcess:
        """Start `argv` as `process.spawn` does. A `body` that is the whole of its
        stdin may be written, as far as the pipe takes it without waiting, by the
        thread that starts it: `fed` says how much (stdin is closed when that is all
        of it); the rest is the caller's to write. Raises SpawnError."""
        assert self._loop is not None, "start() first"
        assert self._readiness is not None
        spawner = self._spawner
        if spawner is None:
            return spawn(argv, env, combine_output=combine_output, max_output=max_output,
                         kill_grace=kill_grace, nice=nice, readiness=self._readiness,
                         spill=spill, leave_background=leave_background)
        started: asyncio.Future[FunctionProcess] = self._loop.create_future()
        spawner.submit(_Start(started, argv[0], max_output, kill_grace, orphaned, spill,
                              leave_background),
                       argv[0],
                       list(argv), env if type(env) is dict else dict(env), combine_output,
                       nice, body)
        self._pending += 1
        try:
            return await started
        except asyncio.CancelledError:
            # Collected, but cancelled before this task resumed (a client that hung
            # up in the same turn of the loop): what started is handed over here.
            # A `started` cancelled before its collection is _collect's to hand over.
            if started.done() and not started.cancelled():
                orphaned(None if started.exception() is not None else started.result())
            raise

    async def settle(self) -> None:
        """Wait until every start already queued has reached its caller (or its
        `orphaned` callback)."""
        if self._pending:
            assert self._loop is not None
            self._settled = self._loop.create_future()
            await self._settled

    def close(self) -> None:
        """End the threads; after `settle`, and once the functions are gone (their
        descriptors are watched here)."""
        spawner, self._spawner = self._spawner, None
        if spawner is not None:
            assert self._loop is not None
            self._loop.remove_reader(spawner.fileno())
            # Empty after `settle`; whatever else started has nobody to go to.
            for _, _, pid, stdin_fd, stdout_fd, pidfd, _ in spawner.close():
                if pid > 0:
                    _abandon(pid, stdin_fd, stdout_fd, pidfd)
        if self._readiness is not None:
            self._readiness.close()
            self._readiness = None

    def _collect(self) -> None:
        assert self._loop is not None
        assert self._spawner is not None
        for started in self._spawner.collect():
            self._pending -= 1
            try:
                self._hand_over(*started)
            except Exception:
                # One start gone wrong must not lose the others of the batch.
                log.exception("a started function could not be handed over")
        if not self._pending and self._settled is not None and not self._settled.done():
            self._settled.set_result(None)

    def _hand_over(self, token: object, error: int, pid: int, stdin_fd: int, stdout_fd: int,
                   pidfd: int, fed: int) -> None:
        assert self._loop is not None
        assert self._readiness is not None
        started, program, max_output, kill_grace, orphaned, spill, leave = cast(_Start, token)
        proc = None
        if not error:
            try:
                proc = FunctionProcess(self._loop, pid, stdin_fd, stdout_fd, pidfd=pidfd,
                                       fed=fed, max_output=max_output, kill_grace=kill_grace,
                                       readiness=self._readiness, spill=spill,
                                       leave_background=leave)
            except Exception as exc:  # no descriptor left to watch it with, or a bug
                _abandon(pid, stdin_fd, stdout_fd, pidfd)
                if not isinstance(exc, OSError):
                    log.exception("a started function could not be watched")
                # Its caller gets a 500 rather than waiting for ever.
                error = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EIO
        if started.done():  # the caller was cancelled meanwhile
            orphaned(proc)
        elif proc is not None:
            started.set_result(proc)
        else:
            started.set_exception(SpawnError(
                error, f"cannot start {program!r}: {os.strerror(error)}"))


def _abandon(pid: int, *fds: int) -> None:
    """End and reap a function that cannot be watched (it is a child of a C thread:
    the orphan reaper does not look there). After SIGKILL the wait is short."""
    for target in (-pid, pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signal.SIGKILL)
    for fd in fds:
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
