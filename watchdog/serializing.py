"""Serializing mode (of-watchdog's `mode=serializing`): a process forked per request,
its output sent whole, as in classic mode, but with of-watchdog's answer to a
function that fails: 500 with its exit status as the body ("exit status 1"), its
output dropped. Knows nothing of HTTP."""

from __future__ import annotations

from collections.abc import Mapping

from watchdog.executor import Body, Executor, Result


class SerializingInvoker:
    def __init__(self, executor: Executor, content_type: str) -> None:
        self._executor = executor
        self._content_type = content_type

    async def invoke(self, env: Mapping[str, str], body: Body, started: float) -> Result:
        result = await self._executor.invoke(env, body, started)
        exit = result.exit
        if exit is None or result.status != 500 or exit.stopped_for is not None:
            return result  # its output, a 429, or the gateway's own answer
        if result.cleanup is not None:
            result.cleanup()  # a spilled output, never sent
        headers = {"Content-Type": self._content_type} if self._content_type else {}
        return Result(500, [exit.describe().encode()], headers)
