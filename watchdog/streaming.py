"""Streaming mode (of-watchdog's `mode=streaming`): a process forked per request, as
in classic mode, whose stdout goes to the client as it is written.

The head waits for the function's first bytes (or its end): a function that fails
before writing anything still gets its 500 (or 408, 413...). Once the head is sent
the status cannot change: a function that then fails or is stopped (exec_timeout,
write_timeout) has its answer cut off, with no end of body (the chunked body has no
last chunk, so an HTTP client reports it incomplete: of-watchdog ends it as if it
were whole). At most `HIGH_WATER` bytes wait for a slow client; past it the pipe is
not read and the function blocks on its writes, so memory stays flat whatever the
output's size. Knows nothing of HTTP.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Mapping

from watchdog.executor import Body, Executor, Result
from watchdog.logs import FIELDS
from watchdog.process import FunctionProcess, OutputStream

log = logging.getLogger("watchdog")

# Output held for a client that reads slower than the function writes.
HIGH_WATER = 256 * 1024


class OutputIncomplete(Exception):
    """The function failed, or was stopped, after its answer's head was sent."""


class StreamingInvoker:
    def __init__(self, executor: Executor) -> None:
        self._executor = executor

    async def invoke(self, env: Mapping[str, str], body: Body, started: float) -> Result:
        executor = self._executor
        rejected = executor.admit()
        if rejected is not None:
            return rejected
        launched = await executor.launch(env, body, streaming=True)
        if isinstance(launched, Result):
            return launched
        proc = launched
        sink = proc.stream_output(HIGH_WATER)
        loop = asyncio.get_running_loop()
        deadline, reason = executor.run_deadline(started, loop.time())
        timer = loop.call_at(deadline, proc.stop, reason) if deadline is not None else None
        # The body is fed while the output flows back: `cat` of a large body answers
        # as it reads.
        feeder = loop.create_task(self._feed(proc, body, started, deadline, reason))

        def cleanup() -> None:
            if timer is not None:
                timer.cancel()
            feeder.cancel()
            if not proc.finished:
                proc.stop("disconnect")  # the client is gone: its output has nowhere to go

        handed_over = False
        try:
            await sink.ready()  # its first bytes, or the end of its output
            first = sink.take()
            if not first:
                return executor.answer(await proc.wait())  # wrote nothing: as classic
            result = Result(200, [], cleanup=cleanup, live=True,
                            peek=lambda size: first[:size])
            result.stream = lambda: _chunks(first, sink, proc, result)
            handed_over = True
            return result
        finally:
            if not handed_over:
                cleanup()

    async def _feed(self, proc: FunctionProcess, body: Body, started: float,
                    run_deadline: float | None, run_reason: str) -> None:
        try:
            stopped = await self._executor.feed_body(proc, body, started, run_deadline,
                                                     run_reason)
            if stopped is not None:
                proc.stop(stopped)
        except Exception as exc:  # the client's body broke off, or was malformed
            log.info("request body failed: function stopped", exc_info=exc)
            proc.stop("body_broken")


async def _chunks(first: bytes, sink: OutputStream, proc: FunctionProcess,
                  result: Result) -> AsyncIterator[bytes]:
    yield first
    while True:
        await sink.ready()
        data = sink.take()
        if data:
            yield data
        elif sink.ended:
            break
    exit = await proc.wait()  # the end of its output comes with, or just before, it
    result.exit = exit
    if not exit.ok:
        stopped = {"stopped_for": exit.stopped_for} if exit.stopped_for else {}
        log.warning("function failed after its answer began: the answer is cut off",
                    extra={FIELDS: {"exit": exit.status_label, **stopped,
                                    "sent": sink.sent}})
        raise OutputIncomplete(exit.status_label)

