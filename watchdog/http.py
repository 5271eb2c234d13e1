"""HTTP/1.1 for the function and metrics ports: asyncio.Protocol and llhttp
(through httptools).

Knows nothing of functions. A handler takes a `Request` and gives a `Response`,
at once (a 429, a health check: no task, no coroutine) or from a coroutine run as
one task per request (cancelled when the client hangs up).

Why not aiohttp's server, which both ports once used: on the path of every
forked request, its request and response objects, stream reader and per-request
machinery cost more than the rest of the gateway's Python together (bench/RESULTS.md
has the profile), and importing it was half of the gateway's cold start. This is
what the gateway needs of HTTP and no more: keep-alive and pipelining answered in
order, Content-Length and chunked bodies with backpressure, `Expect: 100-continue`,
idle and head deadlines, a cap on connections that sheds the longest idle, and a
drain that closes idle connections, lets answers in progress finish and answers 503
to the requests pipelined behind them. How a request's bytes are framed (bounded
heads and trailers, strict RFC 9112, Go's request line) is watchdog/framing.py's.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import http
import logging
import resource
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

from watchdog.framing import FramingError, Head, RequestFramer
from watchdog.logs import FIELDS

log = logging.getLogger("watchdog")

# A body's unread bytes above which the connection stops reading, and below which
# it reads again: what a slow function can make the gateway hold per request.
BODY_HIGH_WATER = 256 * 1024
BODY_LOW_WATER = 64 * 1024
# Answers at most this large are written in one go; larger ones a piece at a time.
WRITE_AT_ONCE = 256 * 1024
# After an answer sent before the request's body has all come (a 413, a 429), the
# rest is read and dropped if at most this much is left (the connection then serves
# the next request, as Go's net/http does), else the connection closes; after a
# refused head, at most this much more is read and dropped before it closes...
DROP_AT_MOST = 256 * 1024
# ...after reading and dropping for this long at most, so that the client reads the
# answer instead of a reset. Also how long a closing connection may take to flush.
LINGER = 5.0
# A tunnel (a WebSocket after its 101): the client's bytes held for the other end
# before the client is read no more, until they have gone on.
TUNNEL_HIGH_WATER = 256 * 1024
# Descriptors kept for what is not a client connection: listeners, the log, the
# metrics port, health probes, and each running function's pipes and pidfd.
RESERVED_DESCRIPTORS = 64
DESCRIPTORS_PER_FUNCTION = 4
# How often at most a line says that connections were refused at the cap.
CAP_LOG_INTERVAL = 10.0

_PHRASES = {status.value: status.phrase.encode() for status in http.HTTPStatus}


# An HTTP date's names, in English whatever the locale (RFC 9110's IMF-fixdate).
_DAYS = (b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun")
_MONTHS = (b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct",
           b"Nov", b"Dec")


def http_date(seconds: float) -> bytes:
    """`Wed, 02 Dec 2026 03:13:02 GMT`, as email.utils.formatdate(usegmt=True) writes
    it: without the email and datetime packages, a sixth of the gateway's imports."""
    t = time.gmtime(seconds)
    return b"%s, %02d %s %d %02d:%02d:%02d GMT" % (
        _DAYS[t.tm_wday], t.tm_mday, _MONTHS[t.tm_mon - 1], t.tm_year, t.tm_hour, t.tm_min,
        t.tm_sec)


def default_max_connections(max_inflight: int) -> int:
    """RLIMIT_NOFILE's soft limit less a reserve: RESERVED_DESCRIPTORS, plus
    DESCRIPTORS_PER_FUNCTION for each of max_inflight functions, or, without
    max_inflight, a quarter of the limit (at least RESERVED_DESCRIPTORS)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 2**20
    if max_inflight:
        reserve = RESERVED_DESCRIPTORS + DESCRIPTORS_PER_FUNCTION * max_inflight
    else:
        reserve = max(RESERVED_DESCRIPTORS, soft // 4)
    return max(1, soft - reserve)


class BodyError(Exception):
    """The request's body broke off or was malformed while it was being read."""


class Response:
    """`body` is sent as it is; `stream`, when given, instead, with `content_length`
    (None: unknown, sent chunked to HTTP/1.1, delimited by the close to HTTP/1.0, each
    piece as it comes). To HEAD, a `content_length` given with no stream is the size
    announced. `on_sent` is called once the answer has left, or cannot leave any more."""

    __slots__ = ("body", "close", "content_length", "headers", "more_headers", "on_sent",
                 "status", "stream", "tunnel")

    def __init__(
        self,
        status: int,
        body: Sequence[bytes] = (),
        headers: Mapping[str, str] | None = None,
        *,
        stream: Callable[[], AsyncIterator[bytes]] | None = None,
        content_length: int | None = 0,
        close: bool = False,
        on_sent: Callable[[], None] | None = None,
        more_headers: Sequence[tuple[str, str]] = (),
        tunnel: tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes] | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.headers = headers if headers is not None else {}
        # Fields a dict cannot hold: a repeated one that must not be joined (Set-Cookie).
        self.more_headers = more_headers
        # A 101's other end: after the head, the connection's bytes go there and back.
        self.tunnel = tunnel
        self.stream = stream
        self.content_length = content_length
        self.close = close
        self.on_sent = on_sent

    @classmethod
    def text(cls, status: int, text: str, **headers: str) -> Response:
        return cls(status, [text.encode()],
                   {"Content-Type": "text/plain; charset=utf-8", **headers})


class AnswerCutOff(Exception):
    """Raised by a response's stream to end the answer without the end of its body
    (no last chunk; the connection is reset), so that the client sees it incomplete."""


def gateway_error() -> Response:
    """The answer to a bug of ours: the details are in the log, not in the answer."""
    return Response.text(500, "Gateway error: see the gateway's log.\n")


Outcome = Response | Awaitable[Response]
Handler = Callable[["Request"], Outcome]


class Body:
    """A request's body as it arrives, bounded by the high-water mark."""

    __slots__ = ("_chunks", "_connection", "_error", "_size", "_waiter", "complete", "dropped",
                 "received")

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        self.complete = False
        self.dropped = False  # answered without it: what comes is thrown away
        self.received = 0

    @property
    def held(self) -> int:
        return self._size

    def take(self) -> bytes:
        """All of a complete body."""
        assert self.complete
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        return data

    async def chunks(self) -> AsyncIterator[bytes]:
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._size -= len(chunk)
                if self._size < BODY_LOW_WATER:
                    self._connection.update_reading()
                yield chunk
            elif self._error is not None:
                raise self._error
            elif self.complete:
                return
            else:
                self._waiter = self._connection.loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None

    def drop(self) -> None:
        self.dropped = True
        self._chunks.clear()
        self._size = 0

    def feed(self, chunk: bytes) -> None:
        self.received += len(chunk)
        if self.dropped:
            return
        self._chunks.append(chunk)
        self._size += len(chunk)
        self._wake()

    def finish(self) -> None:
        self.complete = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        if not self.complete and self._error is None:
            self._error = error
            self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class Request:
    """`path` (percent-decoded) and `query` (raw) as Go's r.URL.Path and RawQuery;
    bytes that are not UTF-8 in either, and in header values, as surrogate escapes
    (back to the same bytes with `surrogateescape`)."""

    __slots__ = ("_connection", "_fields", "_target_host", "body", "chunked", "content_length",
                 "continued", "headers", "keep_alive", "method", "path", "query", "target",
                 "version")

    def __init__(self, connection: Connection, head: Head) -> None:
        self._connection = connection
        self.method = head.method
        self.path = head.path
        self.query = head.query
        self.target = head.target
        self._target_host = head.host
        self.version = head.version
        self.headers = headers = head.headers
        self.keep_alive = head.keep_alive
        # The first value of each name, as Go's Header.Get.
        self._fields = {name.lower(): value for name, value in reversed(headers)}
        self.content_length = head.content_length
        self.chunked = head.chunked
        self.body = Body(connection)
        self.continued = False  # a 100 Continue was sent

    def header(self, name: str) -> str | None:
        """The first value of a header; `name` in lower case."""
        return self._fields.get(name)

    @property
    def host(self) -> str:
        """An absolute-form target's host, else the Host header (RFC 9112 3.2.2, Go)."""
        if self._target_host is not None:
            return self._target_host
        return self._fields.get("host", "")

    def send_continue(self) -> None:
        """`100 Continue`: invite the body a client holds back for it (none for a
        request without one, as Go)."""
        self.continued = True
        if self.content_length or self.chunked:
            self._connection.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    @property
    def awaits_continue(self) -> bool:
        """The client holds its body back until it is invited."""
        return not self.continued and self.version == "1.1" and (
            self._fields.get("expect", "").lower() == "100-continue")


# Every connection's pipelined requests until it has one (a deque is 760 bytes, a third
# of an idle connection): empty and never appended to (maxlen 0 drops what it is given).
_NO_QUEUE: collections.deque[Request] = collections.deque(maxlen=0)


class Connection(asyncio.Protocol):
    """One client connection: requests are answered one at a time, in order."""

    # Without a __dict__: an idle connection is mostly this object (RSS per 1,000
    # idle connections is a footprint target, bench/suite.py --only footprint).
    __slots__ = ("_active", "_answered", "_broken", "_closing", "_deadline", "_discarding",
                 "_drained", "_draining", "_dropping", "_framer", "_parsing", "_queue",
                 "_reading", "_server", "_task", "_transport", "_tunnel", "_write_paused",
                 "loop")

    def __init__(self, server: HttpServer) -> None:
        self._server = server
        self.loop = server.loop
        self._framer = RequestFramer(self)
        self._transport: asyncio.Transport | None = None
        self._parsing: Request | None = None  # its message is still arriving
        self._active: Request | None = None  # being answered
        self._answered = False  # the active request's answer has been written
        self._queue: collections.deque[Request] = _NO_QUEUE  # pipelined, made on the first
        self._task: asyncio.Task[Any] | None = None
        self._deadline: asyncio.TimerHandle | None = None
        self._closing = False  # close once the active request is done
        self._broken = False  # the parser failed: nothing more can be read
        self._reading = True
        self._write_paused = False
        self._drained: asyncio.Future[None] | None = None
        self._draining = False  # the gateway is shutting down: requests queued get 503
        self._discarding = False  # answered and closing: what comes is not parsed
        self._dropping = 0  # refused: bytes still read (and dropped) before closing
        self._tunnel: asyncio.StreamWriter | None = None  # after a 101: where bytes go

    # --- transport events -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have the interface without the class.
        self._transport = cast(asyncio.Transport, transport)
        if not self._server.admit(self):
            self._transport.close()  # over the cap: no read, no answer
            return
        self._arm(self._server.idle_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._server.connections.discard(self)
        self._server.idle.pop(self, None)
        if self._active is not None:
            self._server.ended()
        self._disarm()
        gone = ConnectionResetError("the client closed the connection")
        for request in (self._parsing, self._active, *self._queue):
            if request is not None:
                request.body.fail(gone)
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the handler ends what it started
        if self._drained is not None and not self._drained.done():
            self._drained.set_exception(gone)

    def data_received(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._to_tunnel(self._tunnel, data)
            return
        if self._discarding:
            self._discard(data)
            return
        if self._dropping:
            self._dropping -= len(data)
            if self._dropping <= 0 and self._transport is not None:
                self._transport.close()
            return
        if self._broken:
            return  # refused: what was already on its way
        try:
            self._framer.feed(data)
        except FramingError as error:
            self._bad_request(error.status, error.reason)

    def _discard(self, data: bytes) -> None:
        """After an answer that closes, sent before the body has come: the body is
        read and dropped, unparsed, so that the client reads the answer instead of
        a reset; up to its Content-Length, or DROP_AT_MOST of a chunked one."""
        request = self._active
        if request is None or self._transport is None:
            return
        body = request.body
        body.received += len(data)
        if request.chunked or request.content_length is None:
            if body.received > DROP_AT_MOST:
                self._discarding = False
                self._transport.close()
        elif body.received >= request.content_length:
            self._discarding = False
            self._parsing = request
            self.on_message_complete()

    # A client's EOF closes the connection (the Protocol default), as Go's net/http
    # takes it: a hang-up, which ends the function (499). A client that half-closes
    # after its request gets no answer; one that must, sends `Connection: close`.

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        if self._active is None:
            self._go_on()  # the next request waited for the client to read
        else:
            self.update_reading()

    # --- the framer's callbacks -------------------------------------------------------

    def on_head(self, head: Head) -> None:
        if self._closing and not (self._draining and self._active is not None):
            return  # after an answer that closes: nothing more is served
        if head.upgrade:
            self._closing = True  # no other protocol is spoken here: answer, then close
        request = Request(self, head)
        self._parsing = request
        if not request.content_length and not request.chunked:
            request.body.finish()  # no body: complete now, so that an answer needs no wait
        if self._active is None:
            self._start(request)
        else:
            if self._queue is _NO_QUEUE:
                self._queue = collections.deque()
            self._queue.append(request)
            self.update_reading()

    def on_body(self, chunk: bytes) -> None:
        request = self._parsing
        if request is not None:
            request.body.feed(chunk)
            if request.body.held > BODY_HIGH_WATER:
                self.update_reading()

    def on_message_complete(self) -> None:
        request, self._parsing = self._parsing, None
        if request is None:
            return
        request.body.finish()
        if request is self._active and self._answered:
            self._next()

    # --- answering ------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    def update_reading(self) -> None:
        """Read unless a body is held above its high-water mark or requests queue up."""
        transport = self._transport
        if transport is None or self._broken or self._tunnel is not None:
            return  # a tunnel's reading follows its other end (_to_tunnel)
        parsing = self._parsing
        # Backed-up answers stop only new requests, not the body of the current one.
        want = (not self._queue and not (self._write_paused and self._active is None)
                and (parsing is None or parsing.body.held < BODY_HIGH_WATER))
        if want != self._reading:
            self._reading = want
            if want:
                transport.resume_reading()
            else:
                transport.pause_reading()

    def close_when_idle(self) -> None:
        """Close now if no request is being answered, else after its answer; the
        requests pipelined behind it are answered 503."""
        self._closing = True
        self._draining = True
        if self._active is None and self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        if self._transport is not None:
            self._transport.abort()

    def _start(self, request: Request) -> None:
        self._disarm()  # a head is complete: the idle deadline is met
        self._server.idle.pop(self, None)
        if self._active is None:
            self._server.began()
        self._active = request
        self._answered = False
        try:
            outcome = (self._server.handler(request) if request.path != "*"
                       else _asterisk(request))
        except Exception:
            log.exception("request failed")
            outcome = gateway_error()
        if isinstance(outcome, Response):
            self._respond(request, outcome)
        else:
            self._task = self.loop.create_task(outcome)  # type: ignore[arg-type]
            self._task.add_done_callback(self._handled)

    def _handled(self, task: asyncio.Task[Response]) -> None:
        self._task = None
        if task.cancelled() or self._active is None:
            return  # the client is gone
        error = task.exception()
        if error is not None:
            log.error("request failed", exc_info=error)
            response = gateway_error()
        else:
            response = task.result()
        self._respond(self._active, response)

    def _respond(self, request: Request, response: Response) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            self._sent(response)
            return
        if response.tunnel is not None:
            self._task = self.loop.create_task(self._splice(request, response))
            self._task.add_done_callback(lambda _: self._sent(response))
            return
        if response.close or not request.keep_alive:
            self._closing = True
        body = request.body
        if not body.complete and (
                request.awaits_continue or request.chunked
                or (request.content_length or 0) - body.received > DROP_AT_MOST):
            # Answered before the body: a client still holding it back for a 100 is
            # not waited for, and much of it (or an unknown rest) is not read.
            self._closing = True
        if response.stream is not None:
            size = response.content_length
        elif request.method == "HEAD" and response.content_length:
            size = response.content_length  # what a GET would get, announced only
        else:
            size = sum(map(len, response.body))
        if size is None and request.version == "1.0":
            self._closing = True  # no chunks in HTTP/1.0: the close ends the body
        head = self._head(request, response, size)
        if response.stream is None and size is not None and size <= WRITE_AT_ONCE:
            if request.method == "HEAD" or not response.body:
                transport.write(head)
            else:
                transport.writelines((head, *response.body))
            self._sent(response)
            self._done(request)
        else:
            self._task = self.loop.create_task(self._write_out(request, response, head))
            # When it ends, however: even cancelled before it starts.
            self._task.add_done_callback(lambda _: self._sent(response))

    async def _write_out(self, request: Request, response: Response, head: bytes) -> None:
        chunked = (response.stream is not None and response.content_length is None
                   and request.version != "1.0")
        try:
            self.write(head)
            if request.method != "HEAD":
                pieces = response.stream() if response.stream is not None else _each(
                    response.body)
                async for piece in pieces:
                    if self._transport is None:
                        return
                    if chunked:
                        if not piece:
                            continue  # an empty chunk would end the body
                        self._transport.writelines((b"%x\r\n" % len(piece), piece, b"\r\n"))
                    else:
                        self._transport.write(piece)
                    if self._write_paused:
                        # A client that stops reading is let go, as one that stops
                        # sending is: after the idle deadline.
                        self._drained = self.loop.create_future()
                        async with asyncio.timeout(self._server.idle_timeout or None):
                            await self._drained
                if chunked and self._transport is not None:
                    self._transport.write(b"0\r\n\r\n")
        except ConnectionError:
            return
        except (TimeoutError, AnswerCutOff):
            self.abort()
            return
        except Exception:
            log.exception("sending the answer failed")
            self.abort()
            return
        finally:
            self._task = None
            self._drained = None
        # Before the next request starts, not in the task's done callback (a turn of
        # the loop later): a streamed OSCAR answer gives its slot back here, and the
        # call a client sends right after it must not find the limit still taken.
        self._sent(response)
        self._done(request)

    async def _splice(self, request: Request, response: Response) -> None:
        """After a 101: the client's bytes to the other end and back, with backpressure
        both ways, until either side ends (then both are closed)."""
        assert response.tunnel is not None
        reader, writer, early = response.tunnel
        self.write(b"".join([b"HTTP/1.1 101 Switching Protocols\r\n", *_fields(response),
                             b"\r\n", early]))
        self._disarm()  # no idle deadline in a tunnel: the mode's own (exec_timeout)
        self._framer.stop()
        self._tunnel = writer
        if not self._reading and self._transport is not None:
            self._reading = True
            self._transport.resume_reading()
        try:
            while self._transport is not None:
                data = await reader.read(TUNNEL_HIGH_WATER)
                if not data:
                    break
                self._transport.write(data)
                if self._write_paused:
                    self._drained = self.loop.create_future()
                    await self._drained
        except ConnectionError:
            pass
        finally:
            self._tunnel = None
            self._task = None
            self._drained = None
            writer.close()
            if self._transport is not None:
                self._transport.close()

    def _to_tunnel(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        if writer.is_closing():
            return
        writer.write(data)
        if (writer.transport.get_write_buffer_size() > TUNNEL_HIGH_WATER and self._reading
                and self._transport is not None):
            self._reading = False
            self._transport.pause_reading()
            self.loop.create_task(self._read_again(writer))

    async def _read_again(self, writer: asyncio.StreamWriter) -> None:
        """Once the other end has taken what the client sent, read the client again."""
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        if self._tunnel is writer and self._transport is not None and not self._reading:
            self._reading = True
            self._transport.resume_reading()

    def _done(self, request: Request) -> None:
        """The answer is written: on to the next request once this one's body is in."""
        self._answered = True
        if request.body.complete or self._broken:
            self._next()
            return
        # Answered before its body came (a 429, a 413, a read timeout): read the rest
        # and throw it away, for a little while only.
        request.body.drop()
        if self._closing:
            # Nothing after it is served: what comes is not worth parsing (an endless
            # trailer section, a large upload), only reading so that no reset comes.
            self._discarding = True
        self.update_reading()
        self._arm(LINGER)

    def _next(self) -> None:
        if self._active is not None:
            self._active = None
            self._server.ended()
        self._go_on()

    def _go_on(self) -> None:
        if self._closing or self._transport is None:
            if self._transport is not None:
                if self._draining and self._queue:
                    self._shed_queue()
                self._transport.close()
                self._arm(LINGER)  # to flush what is written; then it is cut
            return
        # A client that does not read its answers gets no new request (and nothing
        # more is read) until it does, or they would pile up here.
        if self._queue and not self._write_paused:
            request = self._queue.popleft()
            self.update_reading()
            self._start(request)
        else:
            self.update_reading()
            self._arm(self._server.idle_timeout)
            self._server.idle[self] = None  # the longest idle is shed first: at the end

    def _shed_queue(self) -> None:
        """Shutting down: every request already received gets an answer, 503, the
        last one with `Connection: close` (a client retries them elsewhere)."""
        body = b"The gateway is shutting down.\n"
        while self._queue:
            request = self._queue.popleft()
            request.body.fail(ConnectionResetError("the gateway is shutting down"))
            self.write(b"%s503 Service Unavailable\r\nContent-Type: text/plain; "
                       b"charset=utf-8\r\nContent-Length: %d\r\nDate: %s\r\n%s\r\n%s"
                       % (_status_version(request), len(body), self._server.date(),
                          _connection_field(request, not self._queue),
                          b"" if request.method == "HEAD" else body))
        self._parsing = None

    def _head(self, request: Request, response: Response, size: int | None) -> bytes:
        status = response.status
        lines = [b"%s%d %s\r\n" % (_status_version(request), status,
                                    _PHRASES.get(status, b"Unknown"))]
        lines += _fields(response)
        # Go sends no length with an empty answer to HEAD (it cannot know the size).
        if status < 200 or status in (204, 304):
            length = b""  # RFC 9110: no length there (a 304's would be the file's)
        elif size is None:
            length = b"Transfer-Encoding: chunked\r\n" if request.version != "1.0" else b""
        else:
            length = (b"Content-Length: %d\r\n" % size if size or request.method != "HEAD"
                      else b"")
        lines.append(b"%sDate: %s\r\n%s\r\n" % (length, self._server.date(), _connection_field(
            request, self._closing and not (self._draining and self._queue))))
        return b"".join(lines)

    @staticmethod
    def _sent(response: Response) -> None:
        if response.on_sent is not None:
            callback, response.on_sent = response.on_sent, None
            callback()

    def _bad_request(self, status: int, reason: str) -> None:
        """A head that breaks the rules, or a body that does: 400 (431 for a head
        over the limits) and the connection closes, since nothing after can be read."""
        self._closing = True
        if self._broken:
            return  # said once already
        self._broken = True
        if self._transport is not None:
            self._transport.pause_reading()
            self._reading = False
        parsing = self._parsing
        if parsing is not None and (parsing is self._active or parsing in self._queue):
            # Its head was fine and its handler has it: the body reader learns it.
            parsing.body.fail(BodyError(reason))
            if parsing is self._active and self._answered:
                self._next()  # answered already (a 429): only closing is left
            return
        log.warning("bad request", extra={FIELDS: {"status": status, "reason": reason}})
        if self._active is None and self._transport is not None:
            body = f"Bad request: {reason}\n".encode()
            self._transport.write(
                b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s"
                % (status, _PHRASES[status], len(body), body))
            self._close_after_refusal()

    def _close_after_refusal(self) -> None:
        """As Go's net/http: the answer is sent and the writing half shut; what the
        client still sends (the rest of a head over the bound) is read and dropped,
        DROP_AT_MOST and LINGER at most, so that it reads the answer, not a reset."""
        transport = self._transport
        assert transport is not None
        if transport.is_closing() or not transport.can_write_eof():
            transport.close()
            return
        transport.write_eof()
        self._dropping = DROP_AT_MOST
        self._reading = True
        transport.resume_reading()
        self._arm(LINGER)

    def _arm(self, seconds: float) -> None:
        """Close, unanswered, unless a request's head is complete within `seconds`.
        The idle deadline, the one every connection has, is kept by the server in
        one queue with one timer; the rare others (LINGER) get a timer each."""
        self._disarm()
        if not seconds:
            return
        if seconds == self._server.idle_timeout:
            self._server.watch_idle(self)
        else:
            self._deadline = self.loop.call_later(seconds, self.expire)

    def _disarm(self) -> None:
        self._server.unwatch_idle(self)
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def expire(self) -> None:
        self._deadline = None
        transport = self._transport
        if transport is not None and (self._active is None or self._answered):
            if transport.is_closing() or transport.get_write_buffer_size():
                transport.abort()  # a client that does not read would hold it open
            else:
                transport.close()


class HttpServer:
    """Listens, and keeps the connections for the drain: `stop_listening`, then
    `close_idle`, then `shutdown`."""

    def __init__(self, handler: Handler, *, idle_timeout: float,
                 max_connections: int = 0) -> None:
        self.handler = handler
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections or default_max_connections(0)
        self.loop = asyncio.get_running_loop()
        self.connections: set[Connection] = set()
        # Connections answering no request, the longest idle first: the ones shed.
        self.idle: dict[Connection, None] = {}
        self._refused = 0  # at the cap since the last line that said so
        self._refusal_logged = -CAP_LOG_INTERVAL
        self._servers: list[asyncio.Server] = []
        self._busy = 0  # connections answering a request
        self._quiet = asyncio.Event()
        self._quiet.set()
        self._second = -1
        self._date = b""
        # Idle deadlines (loop time) in the order they fall: all are idle_timeout
        # after their arming, so arming puts one at the end. One timer for the first,
        # instead of a TimerHandle a connection (a fifth of an idle one's memory).
        self._deadlines: collections.OrderedDict[Connection, float] = collections.OrderedDict()
        self._deadline_timer: asyncio.TimerHandle | None = None

    async def listen(self, host: str | None, port: int, *, reuse_port: bool = False,
                     backlog: int = 1024) -> tuple[str, int]:
        server = await self.loop.create_server(
            lambda: Connection(self), host, port, reuse_address=True, reuse_port=reuse_port,
            backlog=backlog)
        self._servers.append(server)
        for sock in server.sockets:
            # Answers are written whole; do not hold their last segment back.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        name = server.sockets[-1].getsockname()
        return str(name[0]), int(name[1])

    def admit(self, connection: Connection) -> bool:
        """A new connection: at the cap, the longest idle one is closed to make room;
        with none idle (every connection answering a request), the new one is refused."""
        if len(self.connections) >= self.max_connections:
            victim = next(iter(self.idle), None)
            if victim is None:
                self._refused += 1
                now = self.loop.time()
                if now - self._refusal_logged >= CAP_LOG_INTERVAL:
                    log.warning("connection refused: at max_connections", extra={FIELDS: {
                        "max_connections": self.max_connections, "refused": self._refused}})
                    self._refused, self._refusal_logged = 0, now
                return False
            del self.idle[victim]
            self.connections.discard(victim)
            victim.close_when_idle()
        self.connections.add(connection)
        self.idle[connection] = None
        return True

    def watch_idle(self, connection: Connection) -> None:
        deadlines = self._deadlines
        deadlines[connection] = self.loop.time() + self.idle_timeout
        deadlines.move_to_end(connection)
        if self._deadline_timer is None:
            self._deadline_timer = self.loop.call_at(next(iter(deadlines.values())),
                                                     self._expire_idle)

    def unwatch_idle(self, connection: Connection) -> None:
        self._deadlines.pop(connection, None)  # its timer may fire for nothing: harmless

    def _expire_idle(self) -> None:
        self._deadline_timer = None
        deadlines = self._deadlines
        now = self.loop.time()
        while deadlines:
            connection, at = next(iter(deadlines.items()))
            if at > now:
                self._deadline_timer = self.loop.call_at(at, self._expire_idle)
                return
            del deadlines[connection]
            connection.expire()

    def stop_listening(self) -> None:
        for server in self._servers:
            server.close()
        self._servers.clear()

    def close_idle(self) -> None:
        for connection in list(self.connections):
            connection.close_when_idle()

    def began(self) -> None:
        self._busy += 1
        self._quiet.clear()

    def ended(self) -> None:
        self._busy -= 1
        if not self._busy:
            self._quiet.set()

    async def shutdown(self, grace: float) -> None:
        """Stop listening, close what is idle, give answers in progress `grace`
        seconds, then cut what is left."""
        self.stop_listening()
        self.close_idle()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await self._quiet.wait()
        for connection in list(self.connections):
            connection.abort()
        await asyncio.sleep(0)  # let connection_lost run
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
            self._deadline_timer = None

    def date(self) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._date = http_date(now)
        return self._date


def _fields(response: Response) -> list[bytes]:
    """The answer's header lines. As request headers were decoded: an echoed value
    goes back byte for byte."""
    lines = [f"{name}: {value}\r\n".encode("utf-8", "surrogateescape")
             for name, value in response.headers.items()]
    for name, value in response.more_headers:
        lines.append(f"{name}: {value}\r\n".encode("utf-8", "surrogateescape"))
    return lines


def _status_version(request: Request) -> bytes:
    """The status line's start: an HTTP/1.0 request is answered in HTTP/1.0, as Go
    answers it (the answers to heads refused before they are read are HTTP/1.1)."""
    return b"HTTP/1.0 " if request.version == "1.0" else b"HTTP/1.1 "


def _connection_field(request: Request, closing: bool) -> bytes:
    """`Connection: close` when the connection closes after this answer; to HTTP/1.0,
    for which closing is the default, `Connection: keep-alive` when it does not (and
    nothing when it does, as Go)."""
    if request.version == "1.0":
        return b"" if closing else b"Connection: keep-alive\r\n"
    return b"Connection: close\r\n" if closing else b""


def _asterisk(request: Request) -> Response:
    """The asterisk-form target (RFC 9112 3.2.4) is the server's, not a function's:
    `OPTIONS *` is answered 200, any other method with it 400, as Go's net/http."""
    if request.method == "OPTIONS":
        return Response(200)
    return Response(400, close=True)


async def _each(pieces: Sequence[bytes]) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece
