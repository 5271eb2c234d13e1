"""A function's own HTTP server for http mode (tests/test_upstream.py): aiohttp, as the
OpenFaaS python3-http templates' servers are real servers. PORT from argv[1]."""

import asyncio
import json
import os
import sys
import time

from aiohttp import web


async def echo(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    return web.json_response({
        "method": request.method, "target": request.raw_path,
        "headers": dict(request.headers), "body": body.decode("utf-8", "replace"),
        "env_mark": os.environ.get("WATCHDOG_TEST_MARK", "")})


async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("s", "1")))
    return web.Response(text="slept\n")


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events, one every `gap` seconds: the test reads the first before
    the last is written."""
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for i in range(int(request.query.get("n", "3"))):
        await response.write(f"data: {i}\n\n".encode())
        await asyncio.sleep(float(request.query.get("gap", "0.5")))
    await response.write_eof()
    return response


async def cookies(request: web.Request) -> web.Response:
    response = web.Response(text="two cookies\n")
    response.headers.add("Set-Cookie", "a=1; Path=/")
    response.headers.add("Set-Cookie", "b=2; Path=/")
    return response


async def healthz(request: web.Request) -> web.Response:
    """ready_path: not ready while the file $NOT_READY exists."""
    if os.path.exists(os.environ.get("NOT_READY", "/nonexistent")):
        return web.Response(status=503, text="warming up\n")
    return web.Response(text="ready from the server\n")


async def websocket(request: web.Request) -> web.WebSocketResponse:
    """A WebSocket echo: each message back as it came."""
    ws = web.WebSocketResponse(max_msg_size=2**24)
    await ws.prepare(request)
    async for message in ws:
        if message.type == web.WSMsgType.TEXT:
            await ws.send_str("echo: " + message.data)
        elif message.type == web.WSMsgType.BINARY:
            await ws.send_bytes(message.data)
    return ws


async def die(request: web.Request) -> web.Response:
    print("dying now", flush=True)
    os._exit(3)


def main() -> None:
    app = web.Application(client_max_size=2**30)
    app.router.add_route("*", "/slow", slow)
    app.router.add_route("GET", "/events", events)
    app.router.add_route("POST", "/die", die)
    app.router.add_get("/cookies", cookies)  # and HEAD
    app.router.add_get("/ws", websocket)
    app.router.add_route("GET", "/healthz", healthz)
    app.router.add_route("*", "/{tail:.*}", echo)
    print("upstream up", json.dumps(sys.argv[1:]), file=sys.stderr, flush=True)
    # argv[2]: how long an idle connection is kept (gunicorn's default is 2 s).
    keepalive = float(sys.argv[2]) if len(sys.argv) > 2 else 75.0
    # argv[3]: seconds before it listens (a server slow to start, loading a model).
    if len(sys.argv) > 3:
        time.sleep(float(sys.argv[3]))
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None,
                keepalive_timeout=keepalive)


if __name__ == "__main__":
    main()
