"""watchdog/framing.py on its own: bytes in, heads, body pieces and ends out, however
the bytes are split; the request line and the target read as Go's net/http reads
them (each expectation below was measured against the Go classic watchdog); the
head's bound exact; the trailer section's bounds."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watchdog.framing import (
    MAX_CHUNK_LINE,
    MAX_FIELDS,
    MAX_HEAD,
    MAX_TRAILER_FIELD,
    MAX_TRAILER_FIELDS,
    FramingError,
    Head,
    RequestFramer,
)

Event = tuple[object, ...]


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.heads: list[Head] = []

    def on_head(self, head: Head) -> None:
        self.heads.append(head)
        self.events.append(("head", head.method, head.path, head.query, head.host,
                            head.version, tuple(head.headers), head.keep_alive))

    def on_body(self, chunk: bytes) -> None:
        if self.events and self.events[-1][0] == "body":  # pieces joined: splits differ
            self.events[-1] = ("body", self.events[-1][1] + chunk)  # type: ignore[operator]
        else:
            self.events.append(("body", chunk))

    def on_message_complete(self) -> None:
        self.events.append(("end",))


def frame(*pieces: bytes) -> Recorder:
    recorder = Recorder()
    framer = RequestFramer(recorder)
    for piece in pieces:
        framer.feed(piece)
    return recorder


def refusal(*pieces: bytes) -> tuple[int, str]:
    with pytest.raises(FramingError) as caught:
        frame(*pieces)
    return caught.value.status, caught.value.reason


def one_head(request: bytes) -> Head:
    heads = frame(request).heads
    assert len(heads) == 1
    return heads[0]


PIPELINE = (
    b"POST /a%20b?q=%zz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\r\n"
    b"PUT /caf\xc3\xa9?\xff HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3;ext=1\r\nabc\r\n10 \r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\n"
    b"UPDATE / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
    b"GET http://example.test/p HTTP/1.1\r\nHost: ignored\r\nConnection: close\r\n\r\n"
    b"GET /never HTTP/1.1\r\nHost: x\r\n\r\n"  # after `Connection: close`: not read
)


def test_a_pipeline_is_framed_request_by_request() -> None:
    recorder = frame(PIPELINE)
    assert [event for event in recorder.events if event[0] != "head"] == [
        ("body", b"hello"), ("end",), ("body", b"abc0123456789abcdef"), ("end",), ("end",),
        ("end",)]
    assert [(h.method, h.path, h.query, h.host, h.version, h.keep_alive)
            for h in recorder.heads] == [
        ("POST", "/a b", "q=%zz", None, "1.1", True),
        ("PUT", "/café", "\udcff", None, "1.1", True),
        ("UPDATE", "/", "", None, "1.0", True),
        ("GET", "/p", "", "example.test", "1.1", False),
    ]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(PIPELINE)), max_size=12))
def test_any_split_of_the_bytes_frames_the_same(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(PIPELINE)]
    pieces = [PIPELINE[a:b] for a, b in itertools.pairwise(bounds) if b > a]
    assert frame(*pieces).events == frame(PIPELINE).events


def test_a_byte_at_a_time_frames_the_same() -> None:
    long_line = b"GET /" + b"a" * 5000 + b"?q HTTP/1.1\r\nHost: x\r\n\r\n"
    for data in (PIPELINE, long_line):
        assert frame(*(data[i:i + 1] for i in range(len(data)))).events == frame(data).events


@pytest.mark.parametrize("split", [False, True])
def test_the_head_bound_is_gos_exactly(split: bool) -> None:
    """A head of 1 MiB + 4096 bytes (its empty line included) is read; one byte more
    is 431 (measured against Go: 1,052,672 bytes 200, 1,052,673 bytes 431)."""
    def head_of(size: int) -> bytes:
        start = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: "
        return start + b"a" * (size - len(start) - 4) + b"\r\n\r\n"

    def pieces(data: bytes) -> list[bytes]:
        return [data[i:i + 65536] for i in range(0, len(data), 65536)] if split else [data]

    assert len(frame(*pieces(head_of(MAX_HEAD))).heads) == 1
    assert refusal(*pieces(head_of(MAX_HEAD + 1)))[0] == 431
    assert refusal(*pieces(b"GET /" + b"a" * MAX_HEAD))[0] == 431  # never ends


def test_no_bound_on_a_field_or_a_target_but_the_heads() -> None:
    many = b"".join(b"X-%05d: v\r\n" % i for i in range(MAX_FIELDS - 2))
    head = one_head(b"GET /" + b"t" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n" + many
                    + b"X-Long: " + b"v" * 500_000 + b"\r\n\r\n")
    assert len(head.path) == 100_001
    assert len(head.headers) == MAX_FIELDS
    assert head.headers[-1] == ("X-Long", "v" * 500_000)


@pytest.mark.parametrize("piece", [None, 1000, 65536])
def test_fields_are_bounded_in_number(piece: int | None) -> None:
    """Unlike Go (none but the head's), as each costs the loop (see MAX_FIELDS); in
    pieces, refused as soon as one too many has come."""
    def pieces(data: bytes) -> list[bytes]:
        return [data] if piece is None else [data[i:i + piece]
                                             for i in range(0, len(data), piece)]

    fields = b"Host: x\r\n" + b"".join(b"X-%05d: v\r\n" % i for i in range(MAX_FIELDS - 1))
    assert len(frame(*pieces(b"GET / HTTP/1.1\r\n" + fields + b"\r\n")).heads) == 1
    too_many = b"GET / HTTP/1.1\r\n" + fields + b"X-One: more\r\n"
    assert refusal(*pieces(too_many + b"\r\n")) == (431, f"more than {MAX_FIELDS} header fields")
    if piece is not None:  # before the head's end
        assert refusal(*pieces(too_many + b"X-And: more\r\n"))[0] == 431


@pytest.mark.parametrize("method", [b"UPDATE", b"FOO", b"PURGE", b"PROPFIND", b"get",
                                    b"M-SEARCH", b"QUERY", b"X" * 2000,
                                    b"!#$%&'*+-.^_`|~09azAZ"])
def test_any_token_is_a_method(method: bytes) -> None:
    assert one_head(method + b" / HTTP/1.1\r\nHost: x\r\n\r\n").method == method.decode()


@pytest.mark.parametrize(("line", "status"), [
    (b"G(T / HTTP/1.1", 400), (b"G\xc3\xa9T / HTTP/1.1", 400), (b" / HTTP/1.1", 400),
    (b"GE\tT / HTTP/1.1", 400), (b"GET  / HTTP/1.1", 400), (b"GET / HTTP/1.1 ", 400),
    (b"GET /a b HTTP/1.1", 400), (b"GET /", 400), (b"GET / http/1.1", 400),
    (b"GET / HTTP/1.10", 400), (b"GET / HTTP/01.1", 400), (b"GET / HTTP/2.0", 505),
    (b"GET / HTTP/0.9", 505), (b"PRI * HTTP/2.0", 400), (b"GET foo HTTP/1.1", 400),
    (b"GET ?a HTTP/1.1", 400), (b"GET /a%zz HTTP/1.1", 400), (b"GET /a%f HTTP/1.1", 400),
    (b"GET /a% HTTP/1.1", 400), (b"GET /a\x01b HTTP/1.1", 400), (b"GET /a\x7f HTTP/1.1", 400),
    (b"GET /a?\x01 HTTP/1.1", 400), (b"GET http://ex.test:abc/a HTTP/1.1", 400),
    (b"GET http://ex.test/a%zz HTTP/1.1", 400), (b"GET http://%41.test/a HTTP/1.1", 400),
    (b"GET http://a{b/a HTTP/1.1", 400), (b"GET 1http://ab/a HTTP/1.1", 400),
])
def test_request_lines_go_refuses(line: bytes, status: int) -> None:
    assert refusal(line + b"\r\nHost: x\r\n\r\n")[0] == status


def test_empty_lines_before_a_request_line_only_after_a_post_as_go() -> None:
    """Go takes up to 4 CR or LF bytes after a POST (a client that ends its body with
    a CRLF too many), and answers 400 to an empty request line anywhere else."""
    post = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
    get = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    assert len(frame(post + b"\r\n\r\n" + get).heads) == 2
    assert len(frame(post + b"\r", b"\n", get).heads) == 2
    for data in (b"\r\n" + get, get + b"\r\n" + get, post + b"\r\n\r\n\r\n" + get):
        assert refusal(data) == (400, "empty request line")


def test_a_bad_method_is_refused_before_its_line_ends() -> None:
    """A TLS hello to the plain port: 400 at once, not at the head's bound or deadline."""
    assert refusal(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")[0] == 400


@pytest.mark.parametrize(("target", "path", "query", "host"), [
    (b"/caf\xc3\xa9?q=\xc3\xa9", "/café", "q=é", None),
    (b"/\xff\xfe?\xff", "/\udcff\udcfe", "\udcff", None),
    (b"/a%2Fb%20c+d", "/a/b c+d", "", None),
    (b"/a%C3%A9\xc3\xa9", "/aéé", "", None),
    (b"/a?q=%zz&r=%00", "/a", "q=%zz&r=%00", None),
    (b"/a??b?c", "/a", "?b?c", None),
    (b"/a#b?c#d", "/a#b", "c#d", None),
    (b'/a"<>|{}^`\\?x="<>', '/a"<>|{}^`\\', 'x="<>', None),
    (b"http://example.test/a/b?c=1", "/a/b", "c=1", "example.test"),
    (b"HTTP://EX.test/a", "/a", "", "EX.test"),
    (b"ftp://u:p@ex.test/a", "/a", "", "ex.test"),
    (b"http://[::1]:80/a", "/a", "", "[::1]:80"),
    (b"http://ex.test:/a", "/a", "", "ex.test:"),
    (b"http://%C3%A9.test/a", "/a", "", "é.test"),
    (b"http:///a", "/a", "", None),
    (b"http://example.test", "/", "", "example.test"),
    (b"*", "*", "", None),
])
def test_targets_read_as_go_reads_them(target: bytes, path: str, query: str,
                                       host: str | None) -> None:
    head = one_head(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (head.path, head.query, head.host) == (path, query, host)


def test_connect_authority_form() -> None:
    head = one_head(b"CONNECT x:80 HTTP/1.1\r\n\r\n")  # no Host needed, as Go
    assert (head.path, head.host, head.upgrade) == ("", "x:80", True)


@pytest.mark.parametrize(("fields", "status"), [
    (b"Host: a b\r\n", 400), ("Host: \u00e9x\r\n".encode(), 400), (b"Host: a{b\r\n", 400),
    (b"", 400), (b"Host: a\r\nHost: b\r\n", 400), (b"Host: x\r\nX-\xc3\xa9: v\r\n", 400),
    (b"Host: x\r\nTransfer-Encoding: gzip\r\n", 501),
])
def test_fields_refused(fields: bytes, status: int) -> None:
    assert refusal(b"GET / HTTP/1.1\r\n" + fields + b"\r\n")[0] == status


def test_http_1_0_and_keep_alive() -> None:
    assert not one_head(b"GET / HTTP/1.0\r\n\r\n").keep_alive
    assert one_head(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive
    assert one_head(b"GET / HTTP/1.2\r\nHost: x\r\n\r\n").version == "1.1"  # as Go
    chunked = b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n"
    assert not one_head(chunked + b"\r\n0\r\n\r\n").keep_alive  # RFC 9112 6.1


@pytest.mark.parametrize(("chunks", "status", "says"), [
    (b"ZZZ\r\n", 400, "malformed chunk size line"),
    (b"5\nhello\r\n", 400, "malformed chunk size line"),
    (b"5\r\nhelloXY", 400, "chunk data not followed by CRLF"),
    (b"1" * 17 + b"\r\n", 400, "malformed chunk size line"),
    (b"1;" + b"e" * MAX_CHUNK_LINE + b"\r\n", 400, "chunk size line longer than"),
    (b"0\r\nX-T: " + b"a" * MAX_TRAILER_FIELD, 431, "trailer field longer than"),
    (b"0\r\n" + b"X-T: 1\r\n" * (MAX_TRAILER_FIELDS + 1), 431, "trailer fields"),
    (b"0\r\nnot a field\r\n", 400, "malformed trailer field"),
])
def test_chunked_bodies_refused(chunks: bytes, status: int, says: str) -> None:
    head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    for pieces in ([head + chunks], [head, *(chunks[i:i + 7] for i in range(0, len(chunks), 7))]):
        got, reason = refusal(*pieces)
        assert got == status
        assert says in reason


def test_the_trailer_section_is_bounded_in_all() -> None:
    head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n"
    fields = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 9000) for i in range(120))
    status, reason = refusal(head + fields)
    assert (status, "trailer section longer than" in reason) == (431, True)
