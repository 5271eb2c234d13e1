"""One invocation: admit or reject, spawn, feed the body, enforce the deadlines,
and turn the function's end into a status and a body.

Knows nothing of HTTP: the body arrives as bytes (all of it) or as an async
iterator of chunks, and the answer leaves as a `Result`, so the HTTP layer and
OSCAR mode share it.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field

from watchdog.config import Config
from watchdog.launcher import Launcher
from watchdog.limiter import Limiter
from watchdog.metrics import Metrics
from watchdog.process import Exit, FunctionProcess, OrphanReaper, SpawnError, Spill
from watchdog.waitqueue import GRANTED

log = logging.getLogger("watchdog")

# A request body: all of it, or its chunks as they arrive.
Body = bytes | AsyncIterator[bytes]

# max_output of a streamed function: its output is never held whole.
UNBOUNDED = 2**62

# Why the gateway stopped a function -> what its caller gets.
STOPS = {
    "exec_timeout": (408, "Killed process."),  # the Go watchdog's words
    "read_timeout": (408, "Request body not received within read_timeout; function killed."),
    "write_timeout": (504, "Function did not answer within write_timeout; killed."),
    "shutdown": (503, "Gateway shutting down: function killed at the drain deadline."),
    "overflow": (500, "Function output exceeded max_output_bytes; killed."),
    "spill_failed": (500, "Function output could not be stored under $TMPDIR; killed."),
    "body_too_large": (413, "Request body larger than max_body_bytes; function killed."),
    "body_broken": (400, "Request body broke off or was malformed; function killed."),
}


@dataclass(slots=True)
class Result:
    status: int
    body: list[bytes]
    headers: dict[str, str] = field(default_factory=dict)
    exit: Exit | None = None
    # A body too large to hold, made while it is sent; `content_length` is its size.
    stream: Callable[[], AsyncIterator[bytes]] | None = None
    content_length: int | None = None
    # Called by whoever sends the answer, once it is sent (or cannot be).
    cleanup: Callable[[], None] | None = None
    # A streamed body's first bytes, up to the size asked, read without the rest.
    peek: Callable[[int], bytes] | None = None
    # The function's output as it is written (streaming mode): its end, and
    # `exit`, come after the head; the answer is counted once it is sent.
    live: bool = False
    # Repeated fields not to be joined (an upstream's Set-Cookie), after `headers`.
    more_headers: Sequence[tuple[str, str]] = ()
    # A 101: the connection the client's bytes go to and come from (its reader, its
    # writer, and what it sent after its head), until either side ends.
    tunnel: tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes] | None = None

    @classmethod
    def text(cls, status: int, message: str, **headers: str) -> Result:
        return cls(status, [message.encode() + b"\n"],
                   {"Content-Type": "text/plain; charset=utf-8", **headers})

    @classmethod
    def output(cls, status: int, exit: Exit, prefix: bytes = b"",
               headers: dict[str, str] | None = None) -> Result:
        """`prefix` and the function's output: held, or sent from its spill file
        (closed once sent)."""
        spilled = exit.spilled
        if spilled is None:
            return cls(status, [prefix, *exit.output] if prefix else exit.output,
                       headers or {}, exit)
        return cls(status, [], headers or {}, exit, stream=lambda: spilled.chunks(prefix),
                   content_length=len(prefix) + spilled.size, cleanup=spilled.close,
                   peek=lambda size: (prefix + spilled.head(size))[:size])

    def head(self, size: int) -> bytes:
        """The body's first `size` bytes (fewer if it is shorter), at a cost bounded
        by `size`; of a streamed body that cannot be peeked at, none."""
        if self.stream is not None:
            return self.peek(size) if self.peek is not None else b""
        head = bytearray()
        for piece in self.body:
            head += piece[:size - len(head)]
            if len(head) >= size:
                break
        return bytes(head)


class Executor:
    def __init__(self, config: Config, limiter: Limiter, metrics: Metrics) -> None:
        self._config = config
        self._limiter = limiter
        self._metrics = metrics
        self._reject_body = [b"Concurrent request limit exceeded. Max concurrent requests: "
                             b"%d\n" % config.max_inflight]
        self._reject_key: tuple[int, int, str] = (-1, -1, "")
        self._reject_headers: dict[str, str] = {}
        self.live: dict[int, FunctionProcess] = {}  # by pid
        # Functions run this much nicer than the gateway, which keeps the CPU it
        # needs to answer health checks and 429s while they fill the rest.
        self._nice = (min(19, os.getpriority(os.PRIO_PROCESS, 0) + config.function_nice)
                      if config.function_nice else None)
        # Children that are not functions and are reaped by their owner (http mode's
        # server, by asyncio): the orphan reaper must leave them alone, or their
        # owner would wait for an exit it can no longer see.
        self.owned: set[int] = set()
        self.reaper = OrphanReaper(lambda pid: pid in self.live or pid in self.owned)
        self.launcher = Launcher(config.spawn_threads)
        self._stopping: str | None = None  # stop_all's reason: for starts still underway
        # $TMPDIR, as the lock file's folder (the Go watchdog's os.TempDir()).
        self._spill = (Spill(config.spill_output_bytes, os.path.dirname(config.lock_path))
                       if config.spill_output_bytes else None)

    def start(self) -> None:
        self.reaper.start()
        self.launcher.start()

    async def stop(self) -> None:
        """End every function, reap it and its orphans, and the launcher's threads."""
        self.stop_all("shutdown")
        await self.launcher.settle()  # starts under way come in, and are stopped
        await self.wait_all()
        await self.reaper.stop(self._config.kill_grace)
        self.launcher.close()
        if self._spill is not None:
            self._spill.close()

    def reject_body_size(self, content_length: int | None) -> Result | None:
        """413 from the Content-Length alone, before any slot or fork."""
        limit = self._config.max_body_bytes
        if limit and content_length is not None and content_length > limit:
            return self._too_large()
        return None

    def admit(self) -> Result | None:
        """Take a slot (None), or the 429 to answer at once. A slot the wait queue
        handed to this task is taken instead (watchdog.waitqueue.GRANTED)."""
        if GRANTED.get():
            GRANTED.set(False)
            return None
        if self._limiter.try_acquire():
            return None
        return self.rejected()

    def withdraw(self, duration: float | None = None) -> None:
        """Give back the slot of an admitted request that will start nothing (or
        that ran with `keep_slot` and has finished what it does after)."""
        self._limiter.release(duration)

    async def invoke(
        self,
        env: Mapping[str, str],
        body: Body,
        started: float,
    ) -> Result:
        """Run the function once with `body` as its stdin. `started` is the request's
        arrival on the loop's clock; read_timeout and write_timeout count from it."""
        rejected = self.admit()
        if rejected is not None:
            return rejected
        return await self.run(env, body, started)

    async def run(
        self,
        env: Mapping[str, str],
        body: Body | None,
        started: float,
        on_gone: Callable[[], None] | None = None,
        keep_slot: bool = False,
        *,
        argv: Sequence[str] | None = None,
        combine_output: bool | None = None,
    ) -> Result:
        """Run an admitted function; its slot is given back when its group is gone,
        and `on_gone` called then (or at once when it could not start). With
        `keep_slot` the slot stays taken and the caller gives it back (`withdraw`)
        after `on_gone`, once its own work on the output is done too. The body is
        bytes when it has all arrived, chunks while it arrives; without one, stdin
        is empty (an empty body). `argv` and `combine_output` replace fprocess and
        the setting (OSCAR mode: the pod's script, the hand-over to the supervisor).
        With on_hangup=finish, a hang-up (the caller cancelled) does not stop it:
        the caller waits for it all the same and gets its Result."""
        work = self._run(env, body, started, on_gone, keep_slot, argv=argv,
                         combine_output=combine_output)
        if self._config.on_hangup == "finish":
            return await _to_the_end(work)
        return await work

    async def _run(
        self,
        env: Mapping[str, str],
        body: Body | None,
        started: float,
        on_gone: Callable[[], None] | None,
        keep_slot: bool,
        *,
        argv: Sequence[str] | None,
        combine_output: bool | None,
    ) -> Result:
        if body is None:
            body = b""
        launched = await self.launch(env, body, on_gone, keep_slot, argv=argv,
                                     combine_output=combine_output)
        if isinstance(launched, Result):
            return launched
        proc = launched

        # One future ends the wait: the group gone (None) or a deadline passed (its
        # name). A timer and a callback, not timeout scopes: this is every request.
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[str | None] = loop.create_future()
        proc.add_done_callback(lambda _: _end(ended, None))
        run_deadline, run_reason = self.run_deadline(started, loop.time())
        timer = None
        if run_deadline is not None:
            timer = loop.call_at(run_deadline, _expire, ended, proc, run_reason)
        try:
            stopped = await self.feed_body(proc, body, started, run_deadline, run_reason)
            if stopped == "body_too_large":
                proc.stop(stopped)
                return self._too_large()
            if stopped is not None:
                return self._stopped(proc, stopped)
            expired = await ended
            if expired is not None:
                return self._stopped(proc, expired)
            return self.answer(await proc.wait())  # finished: no wait
        finally:
            if timer is not None:
                timer.cancel()
            # Also on cancellation, when the client hung up: end the group.
            if not proc.finished:
                proc.stop("disconnect")

    async def launch(
        self,
        env: Mapping[str, str],
        body: Body,
        on_gone: Callable[[], None] | None = None,
        keep_slot: bool = False,
        *,
        argv: Sequence[str] | None = None,
        combine_output: bool | None = None,
        streaming: bool = False,
    ) -> FunctionProcess | Result:
        """Start an admitted function and track it (its slot is given back when its
        group is gone), or the answer when it cannot start. With `streaming`, its
        output is neither bounded nor spilled: it goes on to the client as it comes
        (`FunctionProcess.stream_output`)."""
        config = self._config
        if isinstance(body, bytes) and config.max_body_bytes and len(body) > config.max_body_bytes:
            self._give_back(on_gone, keep_slot)  # chunked: no Content-Length said so
            return self._too_large()
        try:
            proc = await self.launcher.spawn(
                config.fprocess if argv is None else argv, env,
                combine_output=(config.combine_output if combine_output is None
                                else combine_output),
                max_output=UNBOUNDED if streaming else config.max_output_bytes,
                kill_grace=config.kill_grace, nice=self._nice,
                orphaned=lambda proc: self._orphaned(proc, on_gone, keep_slot),
                body=body if isinstance(body, bytes) else None,
                spill=None if streaming else self._spill,
                leave_background=config.background == "leave")
        except SpawnError as exc:
            self._give_back(on_gone, keep_slot)
            log.error("cannot start function: %s", exc.strerror)
            return Result.text(500, f"Failed to start function: {exc.strerror}")
        self._track(proc, on_gone, keep_slot)
        return proc

    def run_deadline(self, started: float, now: float) -> tuple[float | None, str]:
        """When a function started `now` for a request that arrived at `started` is
        stopped (on the loop's clock; None: never), and why."""
        config = self._config
        return _earliest(
            now + config.exec_timeout if config.exec_timeout else None, "exec_timeout",
            started + config.write_timeout if config.write_timeout else None, "write_timeout",
        )

    async def feed_body(self, proc: FunctionProcess, body: Body, started: float,
                        run_deadline: float | None, run_reason: str) -> str | None:
        """The body to the function's stdin; why it must be stopped (body_too_large,
        or the deadline that passed while the body arrived), else None. A body that
        is all here has no read deadline: a function that does not read is stopped
        by the run deadline, which also ends the write. What the pipe took at once
        was written where the function started."""
        if isinstance(body, bytes):
            if proc.fed < len(body):
                await proc.write(memoryview(body)[proc.fed:])
            proc.close_stdin()
            return None
        # While the client sends, the earlier of its deadline and the run's.
        read_timeout = self._config.read_timeout
        waiting, reason = _earliest(run_deadline, run_reason,
                                    started + read_timeout if read_timeout else None,
                                    "read_timeout")
        try:
            async with asyncio.timeout_at(waiting):
                return None if await self._feed(proc, body) else "body_too_large"
        except TimeoutError:
            return reason

    def rejected(self, reason: str = "max_inflight", waiting: int = 0) -> Result:
        """The 429, made from parts kept between calls: shedding load is the one
        thing that must stay cheap when everything else is busy. Its headers are
        shared: copy them before changing them. `reason` and `waiting` are the wait
        queue's (max_queue): why, and how many wait ahead (for Retry-After)."""
        self._metrics.observe_rejection(reason)
        limiter = self._limiter
        key = (limiter.retry_after(waiting), limiter.inflight, reason)
        if key != self._reject_key:  # changes rarely while saturated
            self._reject_key = key
            self._reject_headers = {
                "Content-Type": "text/plain",  # as faas-middleware's limiter, exactly
                "X-OpenFaaS-Internal": "faas-middleware",
                "Retry-After": str(key[0]),
                "X-Watchdog-Inflight": str(key[1]),
                "X-Watchdog-Max-Inflight": str(limiter.limit),
            }
            if reason != "max_inflight":
                self._reject_headers["X-Watchdog-Rejected"] = reason
        body = self._reject_body
        if reason == "queue_full":
            body = [body[0].rstrip(b"\n") + b", and the wait queue is full (max_queue %d)\n"
                    % self._config.max_queue]
        elif reason == "queue_timeout":
            body = [body[0].rstrip(b"\n") + b"; waited queue_timeout for a slot\n"]
        return Result(429, body, self._reject_headers)

    def stop_all(self, reason: str) -> None:
        """Stop every function, and those whose start is underway once they exist."""
        self._stopping = reason
        for proc in list(self.live.values()):
            proc.stop(reason)

    async def wait_all(self) -> None:
        while self.live:
            await next(iter(self.live.values())).wait()

    # --- inside ---------------------------------------------------------------------

    async def _feed(self, proc: FunctionProcess, body: AsyncIterator[bytes]) -> bool:
        """Copy the body to stdin with backpressure; False when it passes the limit."""
        limit = self._config.max_body_bytes
        received = 0
        async for chunk in body:
            received += len(chunk)
            if limit and received > limit:
                return False
            if not await proc.write(chunk):
                break  # the function stopped reading; as Go, ignore the rest
        proc.close_stdin()
        return True

    def _track(self, proc: FunctionProcess, on_gone: Callable[[], None] | None,
               keep_slot: bool = False) -> None:
        """Its slot is given back, and `on_gone` called, when its group is gone."""
        self.live[proc.pid] = proc
        proc.add_done_callback(lambda exit: self._on_exit(proc, exit, keep_slot))
        if on_gone is not None:
            proc.add_done_callback(lambda _: on_gone())
        if self._stopping is not None:
            proc.stop(self._stopping)

    def _orphaned(self, proc: FunctionProcess | None,
                  on_gone: Callable[[], None] | None, keep_slot: bool = False) -> None:
        """A function whose caller was cancelled while it started (the client hung up)."""
        if proc is None:
            self._give_back(on_gone, keep_slot)
            return
        self._track(proc, on_gone, keep_slot)
        proc.stop("disconnect")

    def _give_back(self, on_gone: Callable[[], None] | None, keep_slot: bool = False) -> None:
        if not keep_slot:
            self.withdraw()
        if on_gone is not None:
            on_gone()

    def _stopped(self, proc: FunctionProcess, reason: str) -> Result:
        """Stop the group and answer at once; its slot stays taken until it is reaped."""
        proc.stop(reason)
        status, message = STOPS[reason]
        return Result.text(status, message)

    def answer(self, exit: Exit) -> Result:
        """The answer to a function's end: its output (200), 500 with its exit
        status, or the reason the gateway stopped it."""
        if exit.stopped_for is not None:
            status, message = STOPS[exit.stopped_for]
            return Result.text(status, message)
        if exit.code != 0:
            # Untyped: the HTTP layer sniffs it, as Go's net/http does the original's.
            return Result.output(500, exit, (exit.describe() + "\n").encode())
        return Result.output(200, exit)

    def _too_large(self) -> Result:
        return Result.text(
            413, f"Request body larger than max_body_bytes ({self._config.max_body_bytes}).")

    def _on_exit(self, proc: FunctionProcess, exit: Exit, keep_slot: bool = False) -> None:
        del self.live[proc.pid]
        if not keep_slot:
            self._limiter.release(exit.duration)
        self.reaper.soon()  # the sweep may have orphaned killed grandchildren
        self._metrics.observe_function(exit.status_label, exit.duration)
        if self._config.write_debug and (exit.output or exit.spilled is not None):
            output = b"".join(exit.output)
            if exit.spilled is not None:  # its start only: a log line is held whole
                output = exit.spilled.head(self._config.spill_output_bytes)
            log.info("function output: %s%s", output.decode("utf-8", "backslashreplace"),
                     "" if len(output) == exit.output_size
                     else f" (first {len(output)} of {exit.output_size} bytes)")


def as_chunks(body: Body) -> AsyncIterator[bytes]:
    """The body as chunks, for readers that take it a piece at a time."""
    return _one(body) if isinstance(body, bytes) else body


async def _one(payload: bytes) -> AsyncIterator[bytes]:
    yield payload


async def _to_the_end(work: Coroutine[object, object, Result]) -> Result:
    """`work`'s Result, even when the caller is cancelled meanwhile (its client hung
    up): the function runs to its end, as the Go watchdog lets it, and is answered
    and counted as if the client were there. The work is a task of its own, which
    the cancellation does not reach. The caller stays cancelled when the work failed
    after it (a body cut off by the hang-up: nobody to tell), and a second
    cancellation (not a hang-up: the gateway itself going down) ends the work too."""
    task = asyncio.ensure_future(work)
    current = asyncio.current_task()
    hung_up = False
    try:
        await asyncio.wait((task,))
    except asyncio.CancelledError:
        if current is None or task.done():
            if task.done() and not task.cancelled():
                task.exception()  # seen: nobody is left to be told of it
            raise
        current.uncancel()
        hung_up = True
        try:
            await asyncio.wait((task,))
        except asyncio.CancelledError:
            task.cancel()
            raise
    if hung_up and (task.cancelled() or task.exception() is not None):
        raise asyncio.CancelledError
    return task.result()


def _end(ended: asyncio.Future[str | None], reason: str | None) -> None:
    if not ended.done():  # nor cancelled, when the client hung up
        ended.set_result(reason)


def _expire(ended: asyncio.Future[str | None], proc: FunctionProcess, reason: str) -> None:
    if not ended.done():
        proc.stop(reason)
        _end(ended, reason)


def _earliest(first: float | None, first_reason: str, second: float | None,
              second_reason: str) -> tuple[float | None, str]:
    """The earlier of two deadlines (None: none) and its name; the first on a tie."""
    if second is None or (first is not None and first <= second):
        return first, first_reason
    return second, second_reason
