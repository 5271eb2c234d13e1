"""The HTTP ceiling: a minimal aiohttp server that answers every request with the
gateway's 429 (same status, body and headers) and does nothing else. What the
gateway's shedding rate is measured against.

    python bench/null_server.py PORT [asyncio|uvloop]
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

from aiohttp import web

BODY = b"Concurrent request limit exceeded. Max concurrent requests: 4\n"
HEADERS = {"Content-Type": "text/plain; charset=utf-8", "X-OpenFaaS-Internal": "faas-middleware",
           "Retry-After": "1", "X-Watchdog-Inflight": "4", "X-Watchdog-Max-Inflight": "4"}


async def refuse(request: web.Request) -> web.Response:
    return web.Response(status=429, body=BODY, headers=HEADERS)


async def serve(port: int) -> None:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", refuse)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    await asyncio.Event().wait()


def main() -> None:
    port = int(sys.argv[1])
    loop = sys.argv[2] if len(sys.argv) > 2 else "uvloop"
    factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    if loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(port))


if __name__ == "__main__":
    main()
