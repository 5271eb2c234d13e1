"""Several worker processes on one port: the supervisor.

One event loop is one core at most, and while it starts a function it waits
for the vfork inside posix_spawn. With `WATCHDOG_WORKERS=N`, N forked workers
each bind the ports with SO_REUSEPORT (the kernel spreads connections over
them) and run the ordinary gateway, with two things shared:

- the limit: a semaphore of max_inflight permits, taken without blocking, so
  that it stays exact across workers; each worker's count is in shared memory,
  so that the permits of a worker that dies are given back;
- the metrics: prometheus-client's multiprocess mode, so that a scrape of any
  worker shows the sums.

The supervisor forwards SIGTERM and SIGINT (each worker then drains as one
gateway does), replaces a worker that dies, reaps what else comes back to it,
and exits 0 when every worker did.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
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


def supervise(config: Config, environ: Mapping[str, str],
              run_worker: Callable[[Config, Mapping[str, str], SharedSlots], int]) -> int:
    environ = dict(environ)  # the functions' environment, without what follows
    metrics_dir = tempfile.mkdtemp(prefix="watchdog-metrics-")
    # Read by prometheus-client when it is imported, so before any worker does.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    context = multiprocessing.get_context("fork")
    semaphore = context.BoundedSemaphore(config.max_inflight) if config.max_inflight else None
    counts = context.Array("i", config.workers, lock=False)
    _become_subreaper()
    workers: dict[int, tuple[int, float]] = {}  # pid -> (index, started)
    early = [0] * config.workers  # deaths in a row soon after a start, by index
    stopping: list[int] = []  # signals received

    def forward(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    def start(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker: never returns into the supervisor's loop
            code = 1
            try:
                for signum in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(signum, signal.SIG_DFL)
                code = run_worker(config, environ, SharedSlots(semaphore, counts, index))
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
            _mark_dead(pid)
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
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return status


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


def _mark_dead(pid: int) -> None:
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def _become_subreaper() -> None:
    from watchdog.process import set_child_subreaper

    set_child_subreaper()
