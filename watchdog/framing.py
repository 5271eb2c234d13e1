"""A request's framing as its bytes arrive (RFC 9112), with the answers of Go's
net/http, which the OpenFaaS watchdogs are built on: the head, gathered whole within
Go's bound before any of it is used; its request line read by Go's rules (any token
as the method, a target of any bytes but controls, UTF-8 as curl sends it); its
fields read by llhttp; then the body by its Content-Length or its chunked coding,
the chunked trailer section bounded.

No I/O and no asyncio: `RequestFramer.feed` takes bytes as they come and calls its
sink's `on_head`, `on_body` and `on_message_complete`; bytes that break the rules
raise `FramingError`, which carries the status to answer.

Why not llhttp for all of it: it knows a fixed list of methods (400 to `UPDATE`, to
`get`), it refuses a target byte over 0x7F, and it cannot say where in the bytes fed
to it a message ended, which reading the next request line ourselves needs. It
still reads the fields, whose rules it keeps strictly (one Content-Length, CRLF line
ends, a final `chunked`), and it is fed each head once, whole (fed in pieces it
copies a field's every piece again: a long field cost its square).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Protocol

import httptools

# Go's MaxHeaderBytes (1 MiB) and the 4096 bytes its reader takes beyond it: a head
# (request line, fields, the empty line) of up to this many bytes is read, a longer
# one is 431. No bound on a line or on a field's length but this one.
MAX_HEAD = 2**20 + 4096
# Fields in a head, where Go has no bound but MAX_HEAD's (95,000 fields fit in it).
# Each costs the loop some µs, here and after (the dict of first values, an Http_*
# variable): 95,000 of them held it 0.4 s a request. Node's maxHeadersCount.
MAX_FIELDS = 2000
# A head is looked for whole in what came this long at most; a longer one (or one
# not all there) is gathered, its lines walked at memchr's pace.
HEAD_AT_ONCE = 8192
# A chunked body's trailer section, read and dropped (it holds no header of the
# request), bounded in all, per field while the field grows, and in fields.
MAX_TRAILER = 2**20
MAX_TRAILER_FIELD = 16384
MAX_TRAILER_FIELDS = 128
# A chunk's size line with its extensions (Go's bound on it).
MAX_CHUNK_LINE = 4096
# The codings llhttp refuses before the head is complete: no other than a final
# `chunked` is implemented (501, as Go's net/http), unlike a malformed head (400).
_UNSUPPORTED_CODING = ("Invalid `Transfer-Encoding` header value",
                       "Request has invalid `Transfer-Encoding`")

_TCHARS = rb"!#$%&'*+\-.^_`|~0-9A-Za-z"
_TOKEN = re.compile(rb"[%s]+" % _TCHARS)
_NOT_TOKEN = re.compile(rb"[^%s]" % _TCHARS)
_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])")
_SCHEME = re.compile(rb"[A-Za-z][A-Za-z0-9+.\-]*:")
_BAD_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_EMPTY_LINE = re.compile(rb"[\r\n]{1,4}")
# A URL's host as Go's url.Parse takes it: no ASCII byte that would need escaping,
# %-escapes only for bytes over 0x7F (and %25), bytes over 0x7F as they are.
_URL_HOST = re.compile(
    rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=:\[\]<>\"\x80-\xff]|%[89A-Fa-f][0-9A-Fa-f]|%25)*")
_PORT = re.compile(rb":[0-9]*")
# A Host header as Go's httpguts.ValidHostHeader takes it (ASCII only).
_HOST_HEADER = re.compile(r"[A-Za-z0-9!$%&'()*+,\-.:;=\[\]_~]*")
# Its size, blanks (Go trims them) and extensions (Go drops them), CRLF.
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})[ \t]*(?:;[^\x00-\x08\x0a-\x1f\x7f]*)?\r\n")
_LLHTTP_LINES = (b"GET / HTTP/1.0\r\n", b"GET / HTTP/1.1\r\n")
_TRAILER_LINE = re.compile(rb"[%s]+:[^\x00-\x08\x0a-\x1f\x7f]*\r\n" % _TCHARS)


class FramingError(Exception):
    """The bytes break the rules: answer `status` and read no more."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Head:
    """A request's head, read. `path` is percent-decoded and `query` raw, as Go's
    r.URL.Path and r.URL.RawQuery (bytes that are not UTF-8 as surrogate escapes);
    `host` is an absolute-form target's host (RFC 9112 3.2.2), else None; `target` the
    request target as it came (what a proxy forwards)."""

    __slots__ = ("chunked", "content_length", "headers", "host", "keep_alive", "method",
                 "path", "query", "target", "upgrade", "version")

    def __init__(self, method: str, path: str, query: str, host: str | None) -> None:
        self.method = method
        self.path = path
        self.query = query
        self.host = host
        self.target = ""
        self.version = "1.1"  # "1.0" or "1.1": HTTP/1.2 to 1.9 are read as 1.1, as Go does
        self.headers: list[tuple[str, str]] = []
        self.keep_alive = True
        self.upgrade = False  # CONNECT or `Upgrade`: no other protocol is spoken here
        self.content_length: int | None = None
        self.chunked = False


class Sink(Protocol):
    def on_head(self, head: Head) -> None: ...

    def on_body(self, chunk: bytes) -> None: ...

    def on_message_complete(self) -> None: ...


def split_target(method: bytes, target: bytes) -> tuple[str, str, str | None]:
    """(path, query, host) of a request target, as Go's url.ParseRequestURI reads it:
    the query raw from the first `?`, a `#` part of the path or query, the path
    percent-decoded, the host of an absolute-form target. ValueError where Go
    answers 400."""
    if target == b"*":
        return "*", "", None
    if method == b"CONNECT" and not target.startswith(b"/"):
        target = b"http://" + target  # the authority-form, read as Go reads it
    raw, _, query = target.partition(b"?")
    host = None
    if not raw.startswith(b"/"):
        scheme = _SCHEME.match(raw)
        if scheme is None or not raw.startswith(b"//", scheme.end()):
            raise ValueError("invalid URI for request")
        authority, slash, rest = raw[scheme.end() + 2:].partition(b"/")
        host = _url_host(authority) or None
        raw = slash + rest or (b"" if method == b"CONNECT" else b"/")
    if b"%" in raw:
        if _BAD_ESCAPE.search(raw):
            raise ValueError("invalid URL escape")
        raw = _unescape(raw)
    return (raw.decode("utf-8", "surrogateescape"), query.decode("utf-8", "surrogateescape"),
            host)


def _unescape(raw: bytes) -> bytes:
    """`raw` with each %XX as its byte; every `%` in it starts two hex digits."""
    pieces = raw.split(b"%")
    out = [pieces[0]]
    for piece in pieces[1:]:
        out += (bytes.fromhex(piece[:2].decode("ascii")), piece[2:])
    return b"".join(out)


def _url_host(authority: bytes) -> str:
    host = authority.rpartition(b"@")[2]  # without its userinfo
    port_at = host.find(b"]") + 1 if host.startswith(b"[") else host.rfind(b":")
    if port_at > 0 and port_at < len(host) and not _PORT.fullmatch(host, port_at):
        raise ValueError("invalid port in URL")
    if host.startswith(b"[") and not port_at:
        raise ValueError("missing ']' in host")
    if not _URL_HOST.fullmatch(host):
        raise ValueError("invalid host in URL")
    if b"%" in host:
        host = _unescape(host)
    return host.decode("utf-8", "surrogateescape")


def read_request_line(line: bytes) -> tuple[Head, int]:
    """A head from its request line (without the CRLF), and the minor version; as
    Go's readRequest: one space either side of the target, a token method, HTTP/1.x
    (another major: 505)."""
    method, _, rest = line.partition(b" ")
    target, space, version = rest.partition(b" ")
    if not space:
        raise FramingError(400, "malformed request line")
    if not _TOKEN.fullmatch(method):
        raise FramingError(400, "invalid method")
    if version == b"HTTP/1.1":
        minor = 1
    elif version == b"HTTP/1.0":
        minor = 0
    else:
        parts = _VERSION.fullmatch(version)
        if parts is None:
            raise FramingError(400, "malformed HTTP version")
        if parts[1] != b"1":
            if (method, target, version) == (b"PRI", b"*", b"HTTP/2.0"):
                raise FramingError(400, "HTTP/2 is not spoken here")
            raise FramingError(505, "unsupported protocol version")
        minor = int(parts[2])
    if not target:
        raise FramingError(400, "empty request target")
    if _CONTROL.search(target):
        raise FramingError(400, "invalid control character in URL")
    try:
        path, query, host = split_target(method, target)
    except ValueError as error:
        raise FramingError(400, str(error)) from None
    head = Head(method.decode("ascii"), path, query, host)
    head.target = target.decode("utf-8", "surrogateescape")
    head.version = "1.0" if minor == 0 else "1.1"
    head.upgrade = method == b"CONNECT"
    return head, minor


class _Fields:
    """llhttp's callback for the fields of one head. It holds no reference to its
    parser (which holds it): a cycle would keep the fields until the cyclic
    collector ran, 10 MB a head of many fields."""

    __slots__ = ("headers",)

    def __init__(self) -> None:
        self.headers: list[tuple[str, str]] = []

    def on_header(self, name: bytes, value: bytes) -> None:
        # Names are tokens (llhttp refuses others); a value goes on as its bytes, less
        # the whitespace around it, which is not part of it (RFC 9112 5; Go trims
        # both ends): llhttp drops the leading blanks and keeps the trailing ones.
        self.headers.append((name.decode("latin-1"),
                             value.rstrip(b" \t").decode("utf-8", "surrogateescape")))


def read_fields(head: Head, minor: int, block: bytes | memoryview) -> None:
    """The fields of `head` from `block` (what follows the request line, through the
    empty line), and what they say of the body and the connection."""
    fields = _Fields()
    parser = httptools.HttpRequestParser(fields)
    try:
        # The request line llhttp would refuse is read already: it is given one it knows.
        parser.feed_data(_LLHTTP_LINES[min(minor, 1)])
        parser.feed_data(block)
    except httptools.HttpParserUpgrade:
        head.upgrade = True
    except httptools.HttpParserError as error:
        reason = str(error) or type(error).__name__
        raise FramingError(501 if reason.startswith(_UNSUPPORTED_CODING) else 400,
                           reason) from None
    head.headers = headers = fields.headers
    hosts: list[str] = []
    connection: list[str] = []
    encodings: list[str] = []  # lists joined once: a head may hold 2,000 of each
    for name, value in headers:
        if len(name) == 4 and name.lower() == "host":
            hosts.append(value)
        elif len(name) == 10 and name.lower() == "connection":
            connection.append(value)
        elif len(name) == 17 and name.lower() == "transfer-encoding":
            encodings.append(value)
        elif head.content_length is None and len(name) == 14 and (
                name.lower() == "content-length"):
            try:
                head.content_length = int(value)  # llhttp takes one value, of digits
            except ValueError:
                raise FramingError(400, "malformed Content-Length") from None
    # RFC 9112 3.2, as Go's net/http: one Host, required in HTTP/1.1 (but for CONNECT).
    if len(hosts) > 1:
        raise FramingError(400, "more than one Host header")
    if not hosts and minor and head.method != "CONNECT":
        raise FramingError(400, "HTTP/1.1 request without a Host header")
    if hosts and not _HOST_HEADER.fullmatch(hosts[0]):
        raise FramingError(400, "malformed Host header")
    # As Go's net/http: `close` closes; HTTP/1.0 stays open only for `keep-alive`.
    if connection:
        tokens = {token.strip() for token in ",".join(connection).lower().split(",")}
        head.keep_alive = "close" not in tokens and (minor > 0 or "keep-alive" in tokens)
    else:
        head.keep_alive = minor > 0
    if encodings:
        codings = [coding.strip() for coding in ",".join(encodings).lower().split(",")
                   if coding.strip()]
        if codings != ["chunked"]:
            raise FramingError(501, "Transfer-Encoding other than chunked: "
                               + ", ".join(codings or ["(empty)"]))
        head.chunked = True
        if not minor:
            head.keep_alive = False  # RFC 9112 6.1: the framing cannot be trusted after


def head_end(data: bytes | bytearray, start: int, end: int) -> int:
    """Where a head in `data[start:end]` ends (after its empty line), or -1. A line end
    of LF alone counts, for llhttp to refuse it at once rather than wait for more."""
    crlf = data.find(b"\n\r\n", start, end)
    lf = data.find(b"\n\n", start, crlf + 2 if crlf >= 0 else end)
    if lf >= 0:
        return lf + 2
    return crlf + 3 if crlf >= 0 else -1


class RequestFramer:
    """Requests one after another from a connection's bytes. Each state reads from
    `data` at an offset and gives the offset it read to."""

    __slots__ = ("_buffer", "_crlf", "_head", "_keep_alive", "_line_end", "_lines",
                 "_method_read", "_minor", "_remaining", "_scanned", "_sink", "_skippable",
                 "_state", "_trailer_bytes", "_trailer_fields")

    def __init__(self, sink: Sink) -> None:
        self._sink = sink
        self._state: Callable[[bytes, int], int] = self._read_head
        self._buffer = bytearray()  # a head or a line, as it arrives
        self._head: Head | None = None  # its request line read, the head incomplete
        self._minor = 1
        self._line_end = 0  # in the head: after the request line, once it is read
        self._scanned = 0  # in a head that comes in pieces: looked at up to here
        self._lines = 0  # ... and lines counted in it
        self._method_read = False  # a space came after the method: it was checked
        self._skippable = 0  # CR or LF bytes taken before the next request line
        self._remaining = 0  # of a Content-Length body, or of a chunk
        self._crlf = b""  # what is still awaited of the CRLF after a chunk's data
        self._keep_alive = True
        self._trailer_bytes = 0
        self._trailer_fields = 0

    def feed(self, data: bytes) -> None:
        at, size = 0, len(data)
        while at < size:
            at = self._state(data, at)

    def stop(self) -> None:
        """Read nothing more: the connection closes after its answers."""
        self._state = self._ignore
        self._buffer = bytearray()

    @staticmethod
    def _ignore(data: bytes, at: int) -> int:
        return len(data)

    # --- the head ---------------------------------------------------------------------

    def _read_head(self, data: bytes, at: int) -> int:
        buffer = self._buffer
        if not buffer:
            if data[at] in b"\r\n":
                return self._skip_empty_line(data, at)
            self._skippable = 0
            end = head_end(data, at, at + HEAD_AT_ONCE)
            if end >= 0:  # all of it at once: the usual case
                self._check_bound(end - at)
                if data.count(b"\n", at, end) > MAX_FIELDS + 2:  # and 2 lines not fields
                    raise FramingError(431, f"more than {MAX_FIELDS} header fields")
                raw = data[at:end]
                self._begin(raw, 0)
                self._end_head(raw)
                return end
            self._scanned = self._lines = 0
        old = len(buffer)
        buffer += memoryview(data)[at:]
        if self._head is None:
            self._begin(buffer, old)
        end = self._walk(buffer)
        if end < 0:
            self._check_bound(len(buffer))
            return len(data)
        self._check_bound(end)
        self._buffer = bytearray()
        self._end_head(memoryview(buffer)[:end])  # no copy of what may be a MiB
        return at + end - old

    def _walk(self, buffer: bytearray) -> int:
        """Where the head in `buffer` ends (after its empty line), or -1; on from where
        the last look stopped, one find (memchr) a line, each line counted: a head of
        more than MAX_FIELDS fields is refused before the rest of it has come."""
        size = len(buffer)
        at = self._scanned
        while (lf := buffer.find(b"\n", at)) >= 0:
            following = buffer[lf + 1] if lf + 1 < size else -1
            if following < 0 or (following == 13 and lf + 2 == size):
                self._scanned = lf  # what follows decides: looked at again then
                return -1
            self._lines += 1  # each LF found ends a line that is not the empty one
            if self._lines > MAX_FIELDS + 1:  # and the request line
                raise FramingError(431, f"more than {MAX_FIELDS} header fields")
            if following == 10:
                return lf + 2  # a line end of LF alone: for llhttp to refuse at once
            if following == 13 and buffer[lf + 2] == 10:
                return lf + 3
            at = lf + 1
        self._scanned = size
        return -1

    def _skip_empty_line(self, data: bytes, at: int) -> int:
        """After a POST, as Go (RFC 9112 2.2, for clients that end a body with a CRLF
        too many): up to 4 CR or LF bytes before the request line; else, or more, an
        empty request line, 400."""
        empty = _EMPTY_LINE.match(data, at, at + self._skippable)
        if empty is None:
            raise FramingError(400, "empty request line")
        self._skippable -= empty.end() - at
        return empty.end()

    def _check_bound(self, size: int) -> None:
        if size > MAX_HEAD:
            raise FramingError(431, f"request head longer than {MAX_HEAD} bytes")

    def _begin(self, head: bytes | bytearray, start: int) -> None:
        """Read the request line once it is all there (as Go: 400 before the fields
        come); before it is, refuse a method that cannot be one (a TLS hello). Only
        what came from `start` on is looked at: a line may come a byte at a time."""
        line_end = head.find(b"\r\n", max(start - 1, 0))
        if line_end < 0:
            if head.find(b"\n", start) >= 0:
                raise FramingError(400, "request line not ended by CRLF")
            if not self._method_read:
                space = head.find(b" ", start)
                if _NOT_TOKEN.search(head, start, space if space >= 0 else len(head)):
                    raise FramingError(400, "invalid method")
                self._method_read = space >= 0
            return
        self._head, self._minor = read_request_line(bytes(head[:line_end]))
        self._line_end = line_end + 2
        self._method_read = False

    def _end_head(self, raw: bytes | memoryview) -> None:
        head = self._head
        assert head is not None
        self._head = None
        read_fields(head, self._minor, raw[self._line_end:])
        self._skippable = 4 if head.method == "POST" else 0
        self._keep_alive = head.keep_alive and not head.upgrade
        # An `Upgrade:` request is served as Go serves it, body and all (then the
        # connection closes); only CONNECT's bytes after the head are not a body.
        tunnel = head.upgrade and head.method == "CONNECT"
        body = not tunnel and (head.chunked or bool(head.content_length))
        if body:  # before the sink hears of it, which may stop the framer
            if head.chunked:
                self._state = self._read_chunk_size
            else:
                self._remaining = head.content_length or 0
                self._state = self._read_fixed
        self._sink.on_head(head)
        if not body:
            self._complete()

    def _complete(self) -> None:
        self._state = self._read_head
        self._sink.on_message_complete()
        if not self._keep_alive:
            self.stop()  # as Go: what follows a request that closes is not read

    # --- the body ---------------------------------------------------------------------

    def _read_fixed(self, data: bytes, at: int) -> int:
        end = min(at + self._remaining, len(data))
        self._remaining -= end - at
        self._sink.on_body(data if at == 0 and end == len(data) else data[at:end])
        if not self._remaining:
            self._complete()
        return end

    def _read_line(self, data: bytes, at: int, bound: int) -> tuple[bytes | None, int]:
        """A line through its LF, gathered across pieces; None (all of `data` read)
        while it is incomplete. A line over `bound` bytes raises OverflowError."""
        lf = data.find(b"\n", at, at + bound + 1 - len(self._buffer))
        if lf < 0:
            self._buffer += memoryview(data)[at:at + bound + 1]
            if len(self._buffer) > bound:
                raise OverflowError
            return None, len(data)
        if self._buffer:
            self._buffer += memoryview(data)[at:lf + 1]
            line = bytes(self._buffer)
            self._buffer = bytearray()
        else:
            line = data[at:lf + 1]
        return line, lf + 1

    def _read_chunk_size(self, data: bytes, at: int) -> int:
        try:
            line, at = self._read_line(data, at, MAX_CHUNK_LINE)
        except OverflowError:
            raise FramingError(400, f"chunk size line longer than {MAX_CHUNK_LINE} bytes"
                               ) from None
        if line is None:
            return at
        size = _CHUNK_LINE.fullmatch(line)
        if size is None:
            raise FramingError(400, "malformed chunk size line")
        self._remaining = int(size[1], 16)
        if self._remaining:
            self._state = self._read_chunk
        else:
            self._trailer_bytes = self._trailer_fields = 0
            self._state = self._read_trailer
        return at

    def _read_chunk(self, data: bytes, at: int) -> int:
        end = min(at + self._remaining, len(data))
        self._remaining -= end - at
        self._sink.on_body(data[at:end])
        if not self._remaining:
            self._crlf = b"\r\n"
            self._state = self._read_chunk_end
        return end

    def _read_chunk_end(self, data: bytes, at: int) -> int:
        awaited = self._crlf
        got = data[at:at + len(awaited)]
        if not awaited.startswith(got):
            raise FramingError(400, "chunk data not followed by CRLF")
        self._crlf = awaited[len(got):]
        if not self._crlf:
            self._state = self._read_chunk_size
        return at + len(got)

    def _read_trailer(self, data: bytes, at: int) -> int:
        """Bounded as it grows, before any of it is kept whole: an endless field is
        refused at its bound, not at the section's."""
        begun = at
        try:
            line, at = self._read_line(data, at, MAX_TRAILER_FIELD)
        except OverflowError:
            raise FramingError(431, f"trailer field longer than {MAX_TRAILER_FIELD} bytes"
                               ) from None
        self._trailer_bytes += at - begun
        if self._trailer_bytes > MAX_TRAILER:
            raise FramingError(431, f"trailer section longer than {MAX_TRAILER} bytes")
        if line is None:
            return at
        if line == b"\r\n":
            self._complete()
            return at
        if not _TRAILER_LINE.fullmatch(line):
            raise FramingError(400, "malformed trailer field")
        self._trailer_fields += 1
        if self._trailer_fields > MAX_TRAILER_FIELDS:
            raise FramingError(431, f"more than {MAX_TRAILER_FIELDS} trailer fields")
        return at
