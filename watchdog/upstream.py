"""http mode: the function is an HTTP server, started once (of-watchdog's mode=http) or
already running beside the gateway (a sidecar, as Knative's queue-proxy), and each
request is forwarded to it under the gateway's limit.

The client is our own, on asyncio streams and httptools' response parser, not
aiohttp's: it keeps the serving path as light to import as classic mode's, and it
streams both ways with backpressure (the request body as it arrives, the answer as the
server writes it, chunked when it gives no length). Connections are kept alive and
reused, at most one request at a time each.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

import httptools

from watchdog.config import Config, upstream_address
from watchdog.executor import Body, Executor, Result, as_chunks
from watchdog.logs import FIELDS

log = logging.getLogger("watchdog")

# Not forwarded either way (RFC 9110 7.6.1): they describe one connection, not the
# message. The body's framing is the gateway's on each side.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer",
                        "transfer-encoding", "upgrade", "proxy-authenticate",
                        "proxy-authorization", "content-length",
                        # The gateway answers a client's Expect itself.
                        "expect"})
# How long a started server may take to accept its first connection.
START_WITHIN = 30.0
# Kept-alive connections to the upstream at most, idle (of-watchdog: 100 per host).
IDLE_CONNECTIONS = 100
READ_SIZE = 64 * 1024
# The upstream's answer head at most (as a request head: watchdog.framing).
MAX_HEAD = 1024 * 1024 + 4096
INTERNAL = {"X-OpenFaaS-Internal": "of-watchdog"}


class NotStarted(OSError):
    """The server did not start accepting: the gateway does not start either."""


class UpstreamError(Exception):
    """The upstream broke off or answered what is not HTTP."""


class _Answer:
    """httptools' callbacks for one response: the head, then body pieces."""

    __slots__ = ("closes", "complete", "framed", "head_done", "headers", "pieces", "size",
                 "upgraded")

    def __init__(self) -> None:
        self.headers: list[tuple[str, str]] = []
        self.framed = False  # a length or chunks: else the body ends with the connection
        # `Connection: close`. (httptools' should_keep_alive() is reset by the end of
        # the message, which has usually come with the head.)
        self.closes = False
        self.head_done = False
        self.complete = False
        self.pieces: list[bytes] = []
        self.size = 0
        self.upgraded: bytes | None = None  # a 101's: what came after its head

    def on_header(self, name: bytes, value: bytes) -> None:
        self.size += len(name) + len(value)
        if self.size > MAX_HEAD:
            raise UpstreamError("answer head too large")
        text = name.decode("latin-1")
        lower = text.lower()
        if lower in ("content-length", "transfer-encoding"):
            self.framed = True
        elif lower == "connection" and b"close" in value.lower():
            self.closes = True
        self.headers.append((text, value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        self.head_done = True

    def on_body(self, body: bytes) -> None:
        self.pieces.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


class _Connection:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        self.writer.close()


class Upstream:
    """The server requests go to: `start` (fork it, if any, and wait until it
    accepts), `forward` each request, `stop`."""

    def __init__(self, config: Config, executor: Executor, environ: Mapping[str, str],
                 on_exit: Callable[[str], None]) -> None:
        self._config = config
        self._executor = executor
        self._environ = dict(environ)
        self._on_exit = on_exit
        self.host, self.port, self.prefix = upstream_address(config.upstream_url)
        self._idle: list[_Connection] = []
        self._process: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    # --- lifecycle ---------------------------------------------------------------

    async def start(self) -> None:
        command = self._config.fprocess
        if command:
            self._process = await asyncio.create_subprocess_exec(
                *command, env=self._environ, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # its own group: stopped whole
                limit=self._config.log_buffer_size)  # the longest line relayed
            self._executor.owned.add(self._process.pid)  # reaped by asyncio, not the reaper
            assert self._process.stdout is not None
            assert self._process.stderr is not None
            self._tasks += [asyncio.create_task(self._relay(self._process.stdout, "stdout")),
                            asyncio.create_task(self._relay(self._process.stderr, "stderr")),
                            asyncio.create_task(self._watch(self._process))]
            log.info("upstream started", extra={FIELDS: {
                "pid": self._process.pid, "upstream_url": self._config.upstream_url}})
        await self._wait_accepting()

    async def _wait_accepting(self) -> None:
        """Until a connection is accepted (the server is up), or START_WITHIN; a sidecar's
        neighbour may start after the gateway, so it is waited for the same way."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_WITHIN
        while True:
            if self._process is not None and self._process.returncode is not None:
                raise NotStarted(f"the upstream exited ({self._process.returncode}) "
                                   "before it accepted a connection")
            try:
                connection = await self._connect()
            except OSError:
                if loop.time() > deadline:
                    raise NotStarted(f"{self._config.upstream_url} accepted no connection "
                                       f"within {START_WITHIN:.0f} s") from None
                await asyncio.sleep(0.01)
                continue
            self._keep(connection)
            return

    async def stop(self) -> None:
        self._stopping = True
        for connection in self._idle:
            connection.close()
        self._idle.clear()
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), self._config.kill_grace or 0.1)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        if process is not None:
            self._executor.owned.discard(process.pid)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _relay(self, stream: asyncio.StreamReader, name: str) -> None:
        """The server's output, a line at a time, into the gateway's log (never into an
        answer); a line longer than the stream's limit is cut, not held."""
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # longer than the limit: what was read is dropped
                continue
            if not line:
                return
            if not self._config.prefix_logs:  # as it came: a JSON line stays JSON
                sys.stderr.buffer.write(line if line.endswith(b"\n") else line + b"\n")
                sys.stderr.buffer.flush()
                continue
            log.info(line.rstrip(b"\n").decode("utf-8", "replace"),
                     extra={FIELDS: {"upstream": name}})

    async def _watch(self, process: asyncio.subprocess.Process) -> None:
        """of-watchdog exits when its server does (the pod restarts it): so does this."""
        code = await process.wait()
        if not self._stopping:
            self._on_exit(f"the upstream exited with status {code}")

    # --- a request ---------------------------------------------------------------

    async def forward(self, method: str, target: str, headers: Sequence[tuple[str, str]],
                      host: str, body: Body, has_body: bool, started: float,
                      upgrade: str | None = None) -> Result:
        """The upstream's answer to one request, within exec_timeout of `started`
        (504 past it); its body streamed. The slot is held until it is sent. With
        `upgrade` (the request's Upgrade, a WebSocket's), the request asks for it on
        a connection of its own, and a 101 hands that connection over to the client
        (`Result.tunnel`), within exec_timeout too, holding its slot until it ends."""
        rejected = self._executor.admit()
        if rejected is not None:
            return rejected
        executor = self._executor
        timeout = self._config.exec_timeout
        deadline = started + timeout if timeout else None
        connection: _Connection | None = None
        try:
            async with asyncio.timeout_at(deadline):
                connection = await (self._connect() if upgrade else self._take())
                await self._send(connection, method, target, headers, host, body, has_body,
                                 upgrade)
                answer, parser = await self._head(connection)
        except TimeoutError:
            if connection is not None:
                connection.close()
            executor.withdraw()
            log.warning("upstream did not answer within exec_timeout",
                        extra={FIELDS: {"exec_timeout": timeout}})
            return Result.text(504, "The function did not answer within exec_timeout.",
                               **INTERNAL)
        except (OSError, UpstreamError, httptools.HttpParserError) as exc:
            if connection is not None:
                connection.close()
            executor.withdraw()
            log.warning("upstream request failed", extra={FIELDS: {"error": str(exc)}})
            return Result.text(502, f"The function's server could not be reached: {exc}",
                               **INTERNAL)
        except BaseException:
            if connection is not None:
                connection.close()
            executor.withdraw()
            raise
        status = parser.get_status_code()
        length: int | None = None
        answer_headers: dict[str, str] = {
            "X-Duration-Seconds": f"{asyncio.get_running_loop().time() - started:f}"}
        cookies: list[tuple[str, str]] = []
        for name, value in answer.headers:
            lower = name.lower()
            if lower == "content-length":
                length = int(value) if value.isdigit() else None
            elif lower == "set-cookie":
                cookies.append((name, value))  # each on its own line (RFC 6265)
            elif lower not in HOP_BY_HOP:
                # A repeated field joined, as a proxy may (RFC 9110, 5.3).
                if name in answer_headers:
                    answer_headers[name] += ", " + value
                else:
                    answer_headers[name] = value
        if status == 101 and upgrade and answer.upgraded is not None:
            return self._tunnel(connection, answer, answer_headers, cookies, deadline)
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            self._done(connection, parser, answer)
            executor.withdraw()
            # To HEAD, the length a GET would get, as the server said it.
            return Result(status, [], answer_headers, content_length=length,
                          more_headers=cookies)
        if answer.complete:
            body_pieces = answer.pieces
            self._done(connection, parser, answer)
            executor.withdraw()
            return Result(status, body_pieces, answer_headers, more_headers=cookies)
        sent = False

        def released() -> None:
            nonlocal sent
            if not sent:
                sent = True
                executor.withdraw()
                if not answer.complete:
                    assert connection is not None
                    connection.close()

        return Result(status, [], answer_headers,
                      stream=lambda: self._rest(connection, parser, answer, deadline),
                      content_length=length, cleanup=released, more_headers=cookies)

    def _tunnel(self, connection: _Connection, answer: _Answer, headers: dict[str, str],
                cookies: list[tuple[str, str]], deadline: float | None) -> Result:
        """A 101: the connection goes to the client as it is, until either side ends
        it or exec_timeout passes (then it is closed, as of-watchdog's context ends
        its upgraded connections)."""
        executor = self._executor
        for name, value in answer.headers:
            if name.lower() in ("upgrade", "connection"):
                headers[name] = value
        headers.pop("X-Duration-Seconds", None)
        timer = (asyncio.get_running_loop().call_at(deadline, connection.close)
                 if deadline is not None else None)
        ended = False

        def released() -> None:
            nonlocal ended
            if not ended:
                ended = True
                if timer is not None:
                    timer.cancel()
                connection.close()
                executor.withdraw()

        return Result(101, [], headers, more_headers=cookies, cleanup=released,
                      tunnel=(connection.reader, connection.writer, answer.upgraded or b""))

    async def _rest(self, connection: _Connection, parser: httptools.HttpResponseParser,
                    answer: _Answer, deadline: float | None) -> AsyncIterator[bytes]:
        """The body as the upstream writes it; the connection is kept once it ends."""
        pieces = answer.pieces
        while True:
            for piece in pieces:
                yield piece
            pieces.clear()
            if answer.complete:
                self._done(connection, parser, answer)
                return
            async with asyncio.timeout_at(deadline):
                data = await connection.reader.read(READ_SIZE)
            if not data:
                if answer.framed:
                    raise UpstreamError("the upstream broke off its answer")
                answer.complete = True  # delimited by the close
                continue
            parser.feed_data(data)

    def _done(self, connection: _Connection, parser: httptools.HttpResponseParser,
              answer: _Answer) -> None:
        if answer.complete and not answer.closes and parser.get_http_version() == "1.1":
            self._keep(connection)
        else:
            connection.close()

    # --- the connection pool -----------------------------------------------------

    async def _connect(self) -> _Connection:
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=READ_SIZE)
        return _Connection(reader, writer)

    async def _take(self) -> _Connection:
        while self._idle:
            connection = self._idle.pop()
            if not connection.writer.is_closing() and not connection.reader.at_eof():
                return connection
            connection.close()
        return await self._connect()

    def _keep(self, connection: _Connection) -> None:
        if len(self._idle) < IDLE_CONNECTIONS and not self._stopping:
            self._idle.append(connection)
        else:
            connection.close()

    async def _send(self, connection: _Connection, method: str, target: str,
                    headers: Sequence[tuple[str, str]], host: str, body: Body,
                    has_body: bool, upgrade: str | None = None) -> None:
        lines = [f"{method} {self.prefix}{target} HTTP/1.1\r\nHost: {host}\r\n"]
        if upgrade:  # hop by hop: asked again of the next hop
            lines.append(f"Connection: Upgrade\r\nUpgrade: {upgrade}\r\n")
        for name, value in headers:
            lower = name.lower()
            if lower not in HOP_BY_HOP and lower != "host":
                lines.append(f"{name}: {value}\r\n")
        writer = connection.writer
        if isinstance(body, bytes):
            if body or has_body:
                lines.append(f"Content-Length: {len(body)}\r\n")
            lines.append("\r\n")
            writer.write("".join(lines).encode("utf-8", "surrogateescape") + body)
            await writer.drain()
            return
        lines.append("Transfer-Encoding: chunked\r\n\r\n")
        writer.write("".join(lines).encode("utf-8", "surrogateescape"))
        async for chunk in as_chunks(body):
            if chunk:
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()  # backpressure: the upstream reads at its pace
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    async def _head(self, connection: _Connection
                    ) -> tuple[_Answer, httptools.HttpResponseParser]:
        answer = _Answer()
        parser = httptools.HttpResponseParser(answer)
        while not answer.head_done:
            data = await connection.reader.read(READ_SIZE)
            if not data:
                raise UpstreamError("the upstream closed the connection without an answer")
            try:
                parser.feed_data(data)
            except httptools.HttpParserUpgrade as upgrade:  # 101: the other protocol's
                answer.upgraded = data[upgrade.args[0]:]
        return answer, parser
