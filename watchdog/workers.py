"""Several worker processes on one port: the supervisor.

One event loop is one core at most, and while it starts a function it waits
for the vfork inside posix_spawn. With `WATCHDOG_WORKERS=N`, N forked workers
each bind the ports with SO_REUSEPORT (the kernel spreads connections over
them) and run the ordinary gateway, with two things shared:

- the limit: a semaphore of max_inflight permits, taken without blocking, so
  that it stays exact across workers; each worker's count is in shared memory,
  so that the permits of a worker that dies are given back;
- the metrics: each worker's counts in a file of its own in a folder they share
  (watchdog.metrics.SharedRegistry), so that a scrape of any worker shows the sums.

The supervisor forwards SIGTERM and SIGINT (each worker then drains as one
gateway does), replaces a worker that dies, reaps what else comes back to it,
and exits 0 when every worker did.

Workers end with their supervisor, however it ends (an OOM kill, a crash): each
watches a pipe whose only write end the supervisor holds, and its end of file
stops the worker at once, functions' groups included. A pipe rather than
PR_SET_PDEATHSIG: that signal follows the death of the parent's *thread* that
forked, it is lost if the parent dies before the child has set it, and it would
come as one signal where stopping now takes the second-signal path.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from types import FrameType
from typing import Any

from watchdog.config import Config
from watchdog.limiter import SharedSlots
from watchdog.logs import FIELDS

log = logging.getLogger("watchdog")

# A worker that dies this many times in a row, each sooner than EARLY seconds
# after its start, is failing, not unlucky: give up rather than fork it forever.
EARLY = 2.0
CRASH_LOOP = 3
# A worker whose supervisor is gone stops as on a second signal, which takes at
# most kill_grace plus the write-out graces (server.py); past this much more, its
# loop is taken to be stuck, and the watching thread ends the functions itself.
ORPHANED_STOP_MARGIN = 15.0


def supervise(config: Config, environ: Mapping[str, str],
              run_worker: Callable[[Config, Mapping[str, str], SharedSlots], int]) -> int:
    environ = dict(environ)  # the functions' environment, without what follows
    metrics_dir = tempfile.mkdtemp(prefix="watchdog-metrics-")
    context = multiprocessing.get_context("fork")
    semaphore = context.BoundedSemaphore(config.max_inflight) if config.max_inflight else None
    counts = context.Array("i", config.workers, lock=False)
    _become_subreaper()
    # Only the supervisor keeps the write end: its death, however it comes, is the
    # workers' end of file. (Both ends are close-on-exec: no function holds them.)
    lifeline, lifeline_write = os.pipe()
    workers: dict[int, tuple[int, float]] = {}  # pid -> (index, started)
    early = [0] * config.workers  # deaths in a row soon after a start, by index
    stopping: list[int] = []  # signals received

    def forward(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def start(index: int) -> None:
        supervisor = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the supervisor's loop
            code = 1
            try:
                os.close(lifeline_write)
                for signum in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(signum, signal.SIG_DFL)
                share = _share_metrics_dir(metrics_dir)
                _watch_supervisor(lifeline, config.kill_grace + ORPHANED_STOP_MARGIN, index)
                code = run_worker(config, environ,
                                  SharedSlots(semaphore, counts, index, metrics_dir))
                if os.getppid() != supervisor:  # nobody left to remove the metrics
                    _remove_if_last(share, metrics_dir)
            except BaseException:
                log.exception("worker failed", extra={FIELDS: {"worker": index}})
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        workers[pid] = (index, time.monotonic())

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, forward)
    status = 0
    try:
        for index in range(config.workers):
            start(index)
        while workers:
            try:
                pid, wait_status = os.wait()
            except ChildProcessError:
                break
            if pid not in workers:
                continue  # an orphan left by a function of a worker that died
            index, started = workers.pop(pid)
            _give_back(semaphore, counts, index)
            _end_orphans(workers)
            code = os.waitstatus_to_exitcode(wait_status)
            if stopping:
                status = status or (code if code > 0 else 0)
                continue
            log.error("worker died; starting another", extra={FIELDS: {
                "worker": index, "pid": pid, "exit_status": code}})
            early[index] = early[index] + 1 if time.monotonic() - started < EARLY else 0
            if early[index] >= CRASH_LOOP:
                log.error("worker keeps dying at start: stopping",
                          extra={FIELDS: {"worker": index}})
                forward(signal.SIGTERM, None)
                status = 1
                continue
            start(index)
    finally:
        os.close(lifeline)
        os.close(lifeline_write)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return status


def _share_metrics_dir(metrics_dir: str) -> int:
    """In a worker: a shared lock of its own on the metrics folder (its own open
    file, so that a lock is each worker's), kept until it exits."""
    share = os.open(os.path.join(metrics_dir, ".workers"), os.O_RDONLY | os.O_CREAT, 0o600)
    fcntl.flock(share, fcntl.LOCK_SH)
    return share


def _remove_if_last(share: int, metrics_dir: str) -> None:
    """In a worker that outlived its supervisor: remove the metrics folder, if no
    other worker still holds a lock on it. Each lets go of its own lock before it
    asks for all of them, so the last to ask gets them."""
    os.close(share)
    try:
        last = os.open(os.path.join(metrics_dir, ".workers"), os.O_RDONLY)
    except FileNotFoundError:
        return  # removed already
    try:
        fcntl.flock(last, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return  # another worker is still stopping: it removes the folder
    finally:
        os.close(last)
    shutil.rmtree(metrics_dir, ignore_errors=True)


def _watch_supervisor(lifeline: int, within: float, index: int) -> None:
    """In a worker: a thread that waits for the supervisor's end (end of file on
    `lifeline`), then stops this worker as two signals do (the drain skipped, every
    function's group ended, its client answered 503), and, should the loop not have
    finished that `within` seconds later, ends the functions and the worker itself."""

    def watch() -> None:
        while True:
            try:
                if not os.read(lifeline, 1):
                    break
            except InterruptedError:
                continue
        log.error("supervisor gone: stopping now", extra={FIELDS: {"worker": index}})
        # Two different signals, which cannot merge into one pending signal: the
        # second is what skips the drain's waits (Watchdog.request_shutdown).
        for signum in (signal.SIGTERM, signal.SIGINT):
            os.kill(os.getpid(), signum)
        time.sleep(within)
        log.error("worker did not stop: ending its functions", extra={FIELDS: {
            "worker": index}})
        _end_every_child()
        sys.stderr.flush()
        os._exit(1)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()


def _end_every_child() -> None:
    """SIGKILL to the group of every child of every thread of this process (the
    launcher's C threads start functions too), and to the child itself."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        tasks = []
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/children") as f:
                pids = [int(pid) for pid in f.read().split()]
        except OSError:
            continue
        for pid in pids:
            for kill in (os.killpg, os.kill):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    kill(pid, signal.SIGKILL)


def _give_back(semaphore: Any, counts: Any, index: int) -> None:
    """The permits a dead worker held: its functions went with it."""
    held, counts[index] = counts[index], 0
    if semaphore is not None:
        for _ in range(held):
            semaphore.release()


def _end_orphans(workers: Mapping[int, object]) -> None:
    """The functions of a dead worker come back to the supervisor: end their
    groups (a function leads its own), as their worker would have. The loop in
    `supervise` reaps them."""
    from watchdog.process import children

    for pid in children():
        if pid not in workers:
            for kill in (os.killpg, os.kill):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    kill(pid, signal.SIGKILL)


def _become_subreaper() -> None:
    from watchdog.process import set_child_subreaper

    set_child_subreaper()
