"""Drop-in fidelity with the Go classic watchdog (openfaas/classic-watchdog), pinned
case by case: each test starts the real gateway with OpenFaaS variables only (no
`WATCHDOG_*` name, no flag: what a pod that ran the Go binary sets) and asserts what
the Go watchdog does, observably (status, headers, body, the function's environment).
Where the gateway differs on purpose, the test asserts the documented difference and
names the setting that gives Go's way (README, "Compared with the Go watchdog").

This is the place where every future difference is pinned down. The facts were
measured side by side against the Go binary built from its public source
(`bench/compare_go.py` replays the same raw requests against both and lists what
differs); these tests never need Go.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Protocol

import pytest

from tests.conftest import Gateway, StartGateway, free_port


class GoLike(Protocol):
    def __call__(self, fprocess: str, **openfaas: str) -> Gateway: ...


@pytest.fixture
def go_like(gateway: StartGateway) -> GoLike:
    """`go_like("cat", max_inflight="1")`: the gateway started as the Go watchdog is,
    `fprocess` and other lower-case OpenFaaS variables in the environment and no
    `WATCHDOG_*` name, but two the tests need: the loopback address and a free
    metrics port (Go's is fixed at 8081). `port` is the OpenFaaS name, a free port.
    Stopped, and checked for survivors, by the `gateway` fixture."""

    def start(fprocess: str, **openfaas: str) -> Gateway:
        env: dict[str, str | None] = {
            "WATCHDOG_PORT": None,
            "healthcheck_interval": "0",  # an OpenFaaS name too; Go's default is 30 s
            "fprocess": fprocess,
            "port": str(free_port()),
            **openfaas,
        }
        return gateway([], env)

    return start


def raw(gw: Gateway, request: bytes, *, timeout: float = 5.0) -> bytes:
    """Send `request` as it is and read until the gateway closes or `timeout` passes
    (send `Connection: close` for one answer)."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks)


def head_of(answer: bytes) -> tuple[str, dict[str, str], bytes]:
    """(status line, headers with lower-case names, body) of one raw answer."""
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return lines[0], headers, body


# Each section below is one area of issue 13; keep new cases in their area.

# --- 1, 5, 10, 11: answers (Content-Type sniffing, /_/health methods, methods, headers)

# An output of `cat` without a request Content-Type -> the type Go's net/http sniffs.
SNIFFED = [
    (b"<html><body>hi</body></html>", "text/html; charset=utf-8"),
    (b"\n\t <!DOCTYPE html>\n<html>", "text/html; charset=utf-8"),
    (b"<?xml version='1.0'?><a/>", "text/xml; charset=utf-8"),
    (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", "application/pdf"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "image/png"),
    (b"GIF89a\x01\x00\x01\x00", "image/gif"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg"),
    (b"PK\x03\x04\x14\x00", "application/zip"),
    (b"\x1f\x8b\x08\x00\x00\x00\x00\x00", "application/x-gzip"),
    (b'{"a": 1}\n', "text/plain; charset=utf-8"),
    ("h\u00e9llo\n".encode(), "text/plain; charset=utf-8"),
    (b"\xef\xbb\xbfhi", "text/plain; charset=utf-8"),
    (b"\xff\xfeh\x00i\x00", "text/plain; charset=utf-16le"),
    (b"abc\x00def", "application/octet-stream"),
    (b"  \n", "text/plain; charset=utf-8"),
]


def _request(method: bytes, path: bytes = b"/", body: bytes = b"", headers: bytes = b"") -> bytes:
    return (method + b" " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % len(body)
            + headers + b"Connection: close\r\n\r\n" + body)


def _script(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text("#!/bin/sh\n" + text)
    path.chmod(0o755)
    return path


def test_an_untyped_output_is_sniffed_as_go(go_like: GoLike) -> None:
    """No request Content-Type, no content_type: net/http's sniffed type (issue 13, 1)."""
    gw = go_like("cat")
    for body, expected in SNIFFED:
        status, headers, got = head_of(raw(gw, _request(b"POST", body=body)))
        assert (status, headers.get("content-type"), got) == (
            "HTTP/1.1 200 OK", expected, body), body


def test_an_empty_output_has_no_type_as_go(go_like: GoLike) -> None:
    status, headers, body = head_of(raw(go_like("cat"), _request(b"GET")))
    assert status == "HTTP/1.1 200 OK"
    assert "content-type" not in headers
    assert headers["content-length"] == "0"
    assert "x-duration-seconds" in headers
    assert "date" in headers
    assert body == b""


def test_the_setting_then_the_requests_type_win_on_a_200(go_like: GoLike) -> None:
    gw = go_like("cat")
    _, echoed, _ = head_of(raw(gw, _request(b"POST", body=b"<html>",
                                            headers=b"Content-Type: x/y\r\n")))
    assert echoed["content-type"] == "x/y"
    _, empty, _ = head_of(raw(gw, _request(b"POST", body=b"<html>",
                                           headers=b"Content-Type: \r\n")))
    assert empty["content-type"] == "text/html; charset=utf-8"  # an empty one is none
    configured = go_like("cat", content_type="application/x-set")
    _, headers, _ = head_of(raw(configured, _request(b"POST", body=b"<html>",
                                                     headers=b"Content-Type: x/y\r\n")))
    assert headers["content-type"] == "application/x-set"


def test_a_failed_functions_answer_is_sniffed_and_untimed(go_like: GoLike,
                                                          tmp_path: Path) -> None:
    """Go's 500 is `exit status 1\\n` and the output, typed by sniffing all of it
    (neither content_type nor the request's type apply), without X-Duration-Seconds."""
    gw = go_like(str(_script(tmp_path, "fail.sh", "cat\nexit 1\n")),
                 content_type="application/x-set")
    for body, expected in [(b"<html>", "text/plain; charset=utf-8"),
                           (b"abc\x00def", "application/octet-stream"),
                           (b"\x89PNG\r\n\x1a\n", "application/octet-stream"),
                           (b"", "text/plain; charset=utf-8")]:
        status, headers, got = head_of(raw(gw, _request(b"POST", body=body,
                                                        headers=b"Content-Type: x/y\r\n")))
        assert status == "HTTP/1.1 500 Internal Server Error"
        assert got == b"exit status 1\n" + body
        assert headers["content-type"] == expected, body
        assert "x-duration-seconds" not in headers


def test_a_spilled_output_is_sniffed_from_its_start(go_like: GoLike, tmp_path: Path) -> None:
    """Past spill_output_bytes (1 MiB) the output waits in a file: its type still is
    that of its first bytes, on a 200 and on a 500."""
    big = b"\x89PNG\r\n\x1a\n" + b"x" * (3 * 2**20 // 2)
    status, headers, got = head_of(raw(go_like("cat"), _request(b"POST", body=big)))
    assert (status, headers["content-type"]) == ("HTTP/1.1 200 OK", "image/png")
    assert headers["content-length"] == str(len(big))
    assert got == big
    failed = go_like(str(_script(tmp_path, "fail.sh", "cat\nexit 1\n")))
    status, headers, got = head_of(raw(failed, _request(b"POST", body=big)))
    assert (status, headers["content-type"]) == ("HTTP/1.1 500 Internal Server Error",
                                                 "application/octet-stream")
    assert got == b"exit status 1\n" + big


def test_the_exec_timeout_408_is_text_and_untimed(go_like: GoLike) -> None:
    status, headers, body = head_of(raw(go_like("sleep 5", exec_timeout="0.3s"),
                                        _request(b"POST")))
    assert (status, body) == ("HTTP/1.1 408 Request Timeout", b"Killed process.\n")
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert "x-duration-seconds" not in headers


def test_health_answers_get_only_as_go(go_like: GoLike, tmp_path: Path) -> None:
    """Go's health handler: GET, else 405 (HEAD too), and the function is never run
    for it (issue 13, 5). `Allow` is ours (RFC 9110 requires it on a 405)."""
    ran = tmp_path / "ran"
    gw = go_like(str(_script(tmp_path, "mark.sh", f"touch {ran}\ncat\n")))
    status, headers, body = head_of(raw(gw, _request(b"GET", b"/_/health")))
    assert (status, headers["content-type"], body) == (
        "HTTP/1.1 200 OK", "text/plain; charset=utf-8", b"OK")
    assert head_of(raw(gw, _request(b"GET", b"/_/health?probe=1")))[2] == b"OK"
    for method in (b"HEAD", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"):
        status, headers, body = head_of(raw(gw, _request(method, b"/_/health", b"x")))
        assert status == "HTTP/1.1 405 Method Not Allowed", method
        assert (headers.get("allow"), "content-type" in headers, body) == ("GET", False, b"")
    assert not ran.exists()
    # Another path, as on Go's mux: the function's.
    assert head_of(raw(gw, _request(b"POST", b"/_/health/", b"fn")))[2] == b"fn"
    assert ran.exists()
    (gw.tmp / ".lock").unlink()
    status, headers, body = head_of(raw(gw, _request(b"GET", b"/_/health")))
    assert (status, headers["content-length"], "content-type" in headers, body) == (
        "HTTP/1.1 503 Service Unavailable", "0", False, b"")


def test_ready_answers_get_and_head_only(go_like: GoLike, tmp_path: Path) -> None:
    """/_/ready is the gateway's own (Go's function gets that path): GET and HEAD."""
    ran = tmp_path / "ran"
    gw = go_like(str(_script(tmp_path, "mark.sh", f"touch {ran}\ncat\n")))
    assert head_of(raw(gw, _request(b"GET", b"/_/ready")))[2] == b"OK"
    status, headers, body = head_of(raw(gw, _request(b"HEAD", b"/_/ready")))
    assert (status, headers["content-length"], body) == ("HTTP/1.1 200 OK", "2", b"")
    for method in (b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS"):
        status, headers, _ = head_of(raw(gw, _request(method, b"/_/ready", b"x")))
        assert (status, headers.get("allow")) == (
            "HTTP/1.1 405 Method Not Allowed", "GET, HEAD"), method
    assert not ran.exists()


def test_methods_go_does_not_fork_for_are_405(go_like: GoLike, tmp_path: Path) -> None:
    """As Go's handler: only GET, POST, PUT, PATCH and DELETE run the function; the
    rest is 405 with no body and no type (and, ours, `Allow`)."""
    ran = tmp_path / "ran"
    gw = go_like(str(_script(tmp_path, "mark.sh", f"touch {ran}\ncat\n")))
    for method in (b"HEAD", b"OPTIONS", b"TRACE", b"PROPFIND", b"MKCOL", b"PURGE"):
        status, headers, body = head_of(raw(gw, _request(method, b"/", b"x")))
        assert status == "HTTP/1.1 405 Method Not Allowed", method
        assert headers["allow"] == "DELETE, GET, PATCH, POST, PUT"
        assert ("content-type" in headers, "x-duration-seconds" in headers, body) == (
            False, False, b"")
    assert not ran.exists()


def test_methods_no_parser_table_knows_are_405_as_go(go_like: GoLike) -> None:
    """Any token is a method to Go (405 unless it is one of the five, case counts);
    UPDATE was once listed as served here (issue 13, 10)."""
    gw = go_like("cat")
    for method in (b"UPDATE", b"FOO", b"get", b"X-CUSTOM"):
        status, _, _ = head_of(raw(gw, _request(method, b"/", b"x")))
        assert status == "HTTP/1.1 405 Method Not Allowed", method
        status, _, _ = head_of(raw(gw, _request(method, b"/_/health")))
        assert status == "HTTP/1.1 405 Method Not Allowed", method


def test_the_lock_file_is_0660_less_the_umask_as_go(go_like: GoLike) -> None:
    """Go writes it 0660, which the umask trims (0640 under 022)."""
    gw = go_like("cat")
    found = re.search(r"^Umask:\s*([0-7]+)", Path(f"/proc/{gw.proc.pid}/status").read_text(),
                      re.MULTILINE)
    assert found is not None
    umask = int(found.group(1), 8)
    assert (gw.tmp / ".lock").stat().st_mode & 0o777 == 0o660 & ~umask

# --- 3, 10, 11: the request head (limits, raw bytes, methods, HTTP/1.0)

# Go's MaxHeaderBytes (1 MiB) and the 4096 bytes its reader allows beyond it.
GO_HEAD_BOUND = 2**20 + 4096


def _rh_exchange(gw: Gateway, data: bytes, *, pause: bytes = b"",
                 timeout: float = 3.0) -> tuple[bytes, bool]:
    """Send `data` (then, after a pause, `pause`); what came back, and whether the
    gateway closed the connection (else it stayed open `timeout` seconds)."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        if pause:
            sock.settimeout(0.5)
            with contextlib.suppress(TimeoutError):
                answer = sock.recv(65536)  # nothing, unless a 100 Continue comes
            sock.settimeout(timeout)
            sock.sendall(pause)
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except TimeoutError:
            return answer, False
    return answer, True


def _rh_echo(folder: Path) -> str:
    """A function that says what it was given of the target, and its Host."""
    script = folder / "target.sh"
    script.write_text('#!/bin/sh\nprintf "%s|%s|%s" "$Http_Path" "$Http_Query" "$Http_Host"\n')
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize(("target", "seen"), [
    # Raw UTF-8 as curl sends it, and bytes that are not UTF-8: as they came.
    (b"/caf\xc3\xa9/x?q=\xc3\xa9t\xc3\xa9", b"/caf\xc3\xa9/x|q=\xc3\xa9t\xc3\xa9|x"),
    (b"/\xff\xfe?\xff", b"/\xff\xfe|\xff|x"),
    # The path percent-decoded, the query raw, a `#` part of either.
    (b"/a%2Fb%20c+d%ff?x=%C3%A9&y=%zz", b"/a/b c+d\xff|x=%C3%A9&y=%zz|x"),
    (b"/a#b?c#d", b"/a#b|c#d|x"),
    (b'/a"<>|{}^`\\?x="<>', b'/a"<>|{}^`\\|x="<>|x'),
    # The absolute form: its host is the request's (RFC 9112 3.2.2).
    (b"http://u:p@example.test/a/b?c=1", b"/a/b|c=1|example.test"),
])
def test_the_function_sees_the_target_as_go_gives_it(go_like: GoLike, tmp_path: Path,
                                                     target: bytes, seen: bytes) -> None:
    gw = go_like(_rh_echo(tmp_path))
    status, _, body = head_of(raw(gw, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n"
                                       b"Connection: close\r\n\r\n"))
    assert (status, body) == ("HTTP/1.1 200 OK", seen)


def test_large_heads_go_accepts_reach_the_function(go_like: GoLike, tmp_path: Path) -> None:
    """Go bounds the head only (1 MiB): a 100 KB field, a 100 KB target, 1,900 fields
    all reach the function (once 431: over 16 KiB, 8,190 bytes, 128 fields). Unlike Go,
    2,000 fields at most (README, "Compared with the Go watchdog"): 2,001 are 431."""
    script = tmp_path / "sizes.sh"
    script.write_text('#!/bin/sh\nprintf "%s %s %s" "${#Http_Path}" "${#Http_X_Big}" '
                      '"$(env | grep -c \'^Http_X_H[0-9]\')"\n')
    script.chmod(0o755)
    gw = go_like(str(script))
    head = (b"GET /" + b"p" * 99_999 + b" HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 100_000
            + b"\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(1900))
            + b"Connection: close\r\n\r\n")
    status, _, body = head_of(raw(gw, head))
    assert (status, body) == ("HTTP/1.1 200 OK", b"100000 100000 1900")
    too_many = (b"GET / HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(2000))
                + b"Host: x\r\n\r\n")
    assert head_of(raw(gw, too_many))[0] == "HTTP/1.1 431 Request Header Fields Too Large"


def test_a_head_past_gos_bound_is_431(go_like: GoLike) -> None:
    """Measured against Go: a head of 1 MiB + 4096 bytes (its empty line included) is
    read, one byte more is 431 with `Connection: close`, on a status line of 1.1 for
    any request (Go writes it so, before it has read the request's version)."""
    gw = go_like("cat")

    def head_of_size(size: int, version: bytes = b"1.1") -> bytes:
        start = (b"GET /_/health HTTP/" + version
                 + b"\r\nHost: x\r\nConnection: close\r\nX-Fill: ")
        return start + b"f" * (size - len(start) - 4) + b"\r\n\r\n"

    fits = head_of_size(GO_HEAD_BOUND)
    assert len(fits) == GO_HEAD_BOUND
    assert head_of(raw(gw, fits))[0] == "HTTP/1.1 200 OK"
    for version in (b"1.1", b"1.0"):
        over = head_of_size(GO_HEAD_BOUND + 1, version)
        assert len(over) == GO_HEAD_BOUND + 1
        status, headers, _ = head_of(raw(gw, over))
        assert (status, headers["connection"]) == (
            "HTTP/1.1 431 Request Header Fields Too Large", "close")


@pytest.mark.parametrize(("line", "status"), [
    (b"G(T / HTTP/1.1", "400"), (b"G\xc3\xa9T / HTTP/1.1", "400"), (b" / HTTP/1.1", "400"),
    (b"GET  / HTTP/1.1", "400"), (b"GET /", "400"), (b"GET / HTTP/1.10", "400"),
    (b"GET / HTTP/2.0", "505"), (b"GET / HTTP/0.9", "505"), (b"GET foo HTTP/1.1", "400"),
    (b"GET /a%zz HTTP/1.1", "400"), (b"GET /a\x7fb HTTP/1.1", "400"),
    (b"GET /a\tb HTTP/1.1", "400"), (b"GET * HTTP/1.1", "400"),
])
def test_request_lines_go_refuses_are_refused_as_go(go_like: GoLike, tmp_path: Path,
                                                    line: bytes, status: str) -> None:
    """Go's readRequest: one space either side of the target, a token method, a
    target without controls whose escapes are whole, HTTP/1.x (else 505)."""
    ran = tmp_path / "ran"
    script = tmp_path / "mark.sh"
    script.write_text(f"#!/bin/sh\ntouch {ran}\n")
    script.chmod(0o755)
    gw = go_like(str(script))
    answer, closed = _rh_exchange(gw, line + b"\r\nHost: x\r\n\r\n")
    got, headers, _ = head_of(answer)
    assert (got.split(" ")[1], headers.get("connection"), closed) == (status, "close", True)
    assert not ran.exists()


@pytest.mark.parametrize(("host", "status"), [
    (b"x:8080", "200"), (b"a_b", "200"), (b"", "200"),
    (b"a b", "400"), (b"a{b", "400"), ("\u00e9x".encode(), "400"),
])
def test_host_is_checked_as_go(go_like: GoLike, host: bytes, status: str) -> None:
    gw = go_like("cat")
    answer = raw(gw, b"GET / HTTP/1.1\r\nHost: " + host + b"\r\nConnection: close\r\n\r\n")
    assert head_of(answer)[0].split(" ")[1] == status


def test_a_405_keeps_the_connection_as_go(go_like: GoLike) -> None:
    """Any token method reaches the dispatch (405, its body read and dropped) and the
    connection serves the next request; a method that is not a token is 400 and
    closes, and what was sent after it is not read."""
    gw = go_like("cat")
    after = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi"
    for first, statuses, served in (
            (b"FOO / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc", [b"405", b"200"], True),
            (b"PROPFIND / HTTP/1.1\r\nHost: x\r\n\r\n", [b"405", b"200"], True),
            (b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n", [b"400"], False)):
        answer, closed = _rh_exchange(gw, first + after)
        got = [line.split(b" ", 2)[1] for line in answer.split(b"\r\n")
               if line.startswith(b"HTTP/1.1 ")]
        assert (got, answer.endswith(b"\r\n\r\nhi"), closed) == (statuses, served, True), first


def test_options_asterisk_is_the_servers_as_go(go_like: GoLike, tmp_path: Path) -> None:
    """`OPTIONS *` is answered by Go's net/http itself (200, no body, the connection
    kept); the function never runs for it."""
    ran = tmp_path / "ran"
    script = tmp_path / "mark.sh"
    script.write_text(f"#!/bin/sh\ntouch {ran}\ncat\n")
    script.chmod(0o755)
    gw = go_like(str(script))
    answer, closed = _rh_exchange(
        gw, b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
    first, _, rest = answer.partition(b"\r\n\r\n")
    assert first.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Length: 0\r\n" in first
    assert (rest.startswith(b"HTTP/1.1 200 OK\r\n"), rest.endswith(b"\r\n\r\nhi"), closed) == (
        True, True, True)


def test_http_1_0_is_answered_in_1_0_as_go(go_like: GoLike) -> None:
    """An HTTP/1.0 request gets an HTTP/1.0 status line; without `Connection:
    keep-alive` the connection closes after it, unsaid (1.0's default), with it it is
    kept and said so; a 405 too. A head refused before it is read: HTTP/1.1, as Go."""
    gw = go_like("cat")
    answer, closed = _rh_exchange(gw, b"POST / HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello")
    status, headers, body = head_of(answer)
    assert (status, "connection" in headers, body, closed) == (
        "HTTP/1.0 200 OK", False, b"hello", True)
    answer, closed = _rh_exchange(
        gw, b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi"
            b"FOO / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
            b"POST / HTTP/1.0\r\nContent-Length: 2\r\n\r\nho")
    parts = answer.split(b"HTTP/1.0 ")
    assert [part.split(b"\r\n", 1)[0] for part in parts[1:]] == [
        b"200 OK", b"405 Method Not Allowed", b"200 OK"]
    assert [b"\r\nConnection: keep-alive\r\n" in part for part in parts[1:]] == [
        True, True, False]
    assert (answer.endswith(b"\r\n\r\nho"), closed) == (True, True)
    answer, _ = _rh_exchange(gw, b"G(T / HTTP/1.0\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")


def test_100_continue_only_to_http_1_1_as_go(go_like: GoLike) -> None:
    """A 1.1 client that waits for `100 Continue` gets it (on a 1.1 line); a 1.0
    client does not (Go sends none to 1.0, nor a 417), and is served."""
    gw = go_like("cat")
    answer, _ = _rh_exchange(gw, b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                                 b"Content-Length: 5\r\nConnection: close\r\n\r\n",
                             pause=b"hello")
    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n")
    answer, _ = _rh_exchange(gw, b"POST / HTTP/1.0\r\nExpect: 100-continue\r\n"
                                 b"Content-Length: 5\r\n\r\n", pause=b"hello")
    assert answer.startswith(b"HTTP/1.0 200 OK\r\n")
    assert answer.endswith(b"\r\n\r\nhello")
    # No body to invite: no 100 (Go: only when ContentLength is not 0).
    answer, _ = _rh_exchange(gw, b"GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                                 b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    # An Expect Go does not know is 417 in either version.
    answer, _ = _rh_exchange(gw, b"POST / HTTP/1.0\r\nExpect: foo\r\n"
                                 b"Content-Length: 5\r\n\r\n", pause=b"hello")
    assert answer.startswith(b"HTTP/1.0 417 Expectation Failed\r\n")


def test_blank_lines_and_chunk_sizes_as_go(go_like: GoLike) -> None:
    """A CRLF too many after a POST's body is taken (Go: up to 4 CR or LF bytes after a
    POST), an empty request line anywhere else is 400; blanks after a chunk's size
    are taken (Go trims them)."""
    gw = go_like("cat")
    post = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
    last = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\nho"
    answer, _ = _rh_exchange(gw, post + b"\r\n" + last)
    assert answer.count(b"HTTP/1.1 200 OK\r\n") == 2
    assert answer.endswith(b"\r\n\r\nho")
    status, _, _ = head_of(raw(gw, b"\r\n" + last))
    assert status == "HTTP/1.1 400 Bad Request"
    chunked = (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
               b"Connection: close\r\n\r\n2 \r\nhi\r\n3\t;x=1\r\nyou\r\n0\r\n\r\n")
    status, _, body = head_of(raw(gw, chunked))
    assert (status, body) == ("HTTP/1.1 200 OK", b"hiyou")


def test_an_empty_answer_to_head_has_no_length_as_go(go_like: GoLike) -> None:
    gw = go_like("cat")
    status, headers, _ = head_of(raw(gw, b"HEAD / HTTP/1.1\r\nHost: x\r\n"
                                        b"Connection: close\r\n\r\n"))
    assert (status, "content-length" in headers) == ("HTTP/1.1 405 Method Not Allowed", False)

# --- 2, 4, 9, 11: the function (environment, header names, hang-ups, exit text, fprocess)

def _fn_script(folder: Path, name: str, text: str) -> str:
    """A function as a file: fprocess has no quoting (Go splits it on spaces)."""
    path = folder / name
    path.write_text("#!/bin/sh\n" + text)
    path.chmod(0o755)
    return str(path)


def _fn_post(path: bytes = b"/", body: bytes = b"", headers: bytes = b"") -> bytes:
    return (b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n" % len(body)
            + headers + b"Connection: close\r\n\r\n" + body)


def _fn_environ(data: bytes) -> dict[bytes, bytes]:
    """`env -0`'s output, or /proc/PID/environ: name -> value, the first of a name."""
    found: dict[bytes, bytes] = {}
    for entry in data.split(b"\0"):
        name, equals, value = entry.partition(b"=")
        if equals:
            found.setdefault(name, value)
    return found


def _fn_wait_for(check: object, timeout: float = 10.0) -> None:
    """Until `check()` is true; fails after `timeout` (a deadline, not a measure)."""
    import time

    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"never: {check}"
        time.sleep(0.02)


def _fn_counted(gw: Gateway, code: str) -> bool:
    """Whether http_requests_total has a sample for `code` (a scrape of the metrics
    port, as a raw request)."""
    with socket.create_connection(("127.0.0.1", gw.metrics_port), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        text = b"".join(iter(lambda: sock.recv(65536), b"")).decode()
    return re.search(rf'^http_requests_total\{{code="{code}",method="post"\}} [1-9]',
                     text, re.M) is not None


@pytest.mark.parametrize("locale", [
    {},  # none set: Python's start coerces the C locale, PEP 538, LC_CTYPE=C.UTF-8
    {"LC_CTYPE": "C"},  # coerced too, the value replaced
    {"LANG": "C"},
    {"LC_CTYPE": "C.UTF-8"},  # the pod's own: kept
    {"LC_ALL": "C"},  # no coercion at all
])
def test_the_function_environment_is_the_pods_exactly(go_like: GoLike,
                                                      locale: dict[str, str]) -> None:
    """Go passes os.Environ() and the Http_* variables, nothing else: whatever Python
    did to its own environment at start never reaches the function (issue 13, 2)."""
    gw = go_like("env -0", **locale)
    _, _, body = head_of(raw(gw, _fn_post()))
    seen = {k: v for k, v in _fn_environ(body).items() if not k.startswith(b"Http_")}
    assert seen == _fn_environ(Path(f"/proc/{gw.proc.pid}/environ").read_bytes())
    assert seen.get(b"LC_CTYPE") == (locale.get("LC_CTYPE", "").encode() or None)


def test_workers_pass_the_same_environment(go_like: GoLike) -> None:
    """--workers: the forked workers' functions get the environment the gateway was
    exec'd with, not the supervisor's additions (PROMETHEUS_MULTIPROC_DIR)."""
    gw = go_like("env -0", WATCHDOG_WORKERS="2", WATCHDOG_METRICS_PORT=str(free_port()))
    exec_env = _fn_environ(Path(f"/proc/{gw.proc.pid}/environ").read_bytes())
    for _ in range(4):  # whichever worker answers
        _, _, body = head_of(raw(gw, _fn_post()))
        assert {k: v for k, v in _fn_environ(body).items()
                if not k.startswith(b"Http_")} == exec_env


def test_header_names_become_variables_as_go_names_them(go_like: GoLike) -> None:
    """Every token is a header name Go serves, canonicalised (upper case first and
    after '-', lower case else) and '-' -> '_': dots and the other token characters
    stay, in a name execve takes though a shell cannot (issue 13, 4)."""
    gw = go_like("env -0")
    headers = (b"X.Dot.Name: dot\r\nx_under_score: u\r\nweird!#$%&'*+.^_`|~: w\r\n"
               b"x.y-z_w.V: m\r\nx--double: dd\r\n-lead: l\r\n9num: n\r\nMethod: evil\r\n")
    _, _, body = head_of(raw(gw, _fn_post(headers=headers)))
    seen = _fn_environ(body)
    assert {k: v for k, v in seen.items() if k.startswith(b"Http_")} == {
        b"Http_X.dot.name": b"dot", b"Http_X_under_score": b"u",
        b"Http_Weird!#$%&'*+.^_`|~": b"w", b"Http_X.y_Z_w.v": b"m", b"Http_X__Double": b"dd",
        b"Http__Lead": b"l", b"Http_9num": b"n", b"Http_Method": b"POST",
        b"Http_Connection": b"close", b"Http_ContentLength": b"0",
        b"Http_Content_Length": b"0", b"Http_Path": b"/", b"Http_Host": b"x"}


def _fn_hang_up_while_running(gw: Gateway, folder: Path) -> int:
    """Send a request, wait until its function runs, hang up; the function's pid."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(_fn_post())
        pid_file = folder / "pid"
        _fn_wait_for(lambda: pid_file.exists() and pid_file.read_text().strip())
    return int(pid_file.read_text())


BLOCKED = ('echo $$ > {0}/pid; while [ ! -e {0}/release ]; do sleep 0.02; done; '
           'echo done > {0}/marker; echo ok\n')


def test_a_client_hang_up_ends_the_function_by_default(go_like: GoLike,
                                                       tmp_path: Path) -> None:
    """Ours, on purpose: the function of a client that hung up is stopped (its
    group, SIGTERM then SIGKILL) and counted as 499. Go lets it run."""
    from tests.conftest import wait_dead

    gw = go_like(_fn_script(tmp_path, "blocked.sh", BLOCKED.format(tmp_path)))
    pid = _fn_hang_up_while_running(gw, tmp_path)
    assert wait_dead(pid)
    _fn_wait_for(lambda: _fn_counted(gw, "499"))
    (tmp_path / "release").touch()
    assert not (tmp_path / "marker").exists()


def test_on_hangup_finish_runs_the_function_to_its_end_as_go(go_like: GoLike,
                                                            tmp_path: Path) -> None:
    """WATCHDOG_ON_HANGUP=finish: Go's way. The function runs on after the hang-up,
    to its end, and is counted with its own status (200), as Go counts it."""
    gw = go_like(_fn_script(tmp_path, "blocked.sh", BLOCKED.format(tmp_path)),
                 WATCHDOG_ON_HANGUP="finish")
    _fn_hang_up_while_running(gw, tmp_path)
    # Not a measure: time for the gateway to hear of the hang-up (by default it then
    # stops the function within milliseconds, as the test above shows), so that
    # what follows shows that it did not.
    time.sleep(0.5)
    (tmp_path / "release").touch()  # a stopped function would never get here
    _fn_wait_for(lambda: (tmp_path / "marker").exists())
    _fn_wait_for(lambda: _fn_counted(gw, "200"))
    assert not _fn_counted(gw, "499")


def test_on_hangup_finish_is_waited_for_by_the_drain(go_like: GoLike,
                                                     tmp_path: Path) -> None:
    """A function whose client hung up is still a request in flight: SIGTERM's drain
    waits for it (up to write_timeout), as Go's Shutdown waits for its handler."""
    gw = go_like(_fn_script(tmp_path, "blocked.sh", BLOCKED.format(tmp_path)),
                 WATCHDOG_ON_HANGUP="finish")
    _fn_hang_up_while_running(gw, tmp_path)
    gw.signal(15)  # SIGTERM, once: a second one would skip the waits
    _fn_wait_for(lambda: "shutting down" in gw.log())
    assert "inflight=1" in gw.log().split("shutting down", 1)[1].split("\n", 1)[0]
    (tmp_path / "release").touch()
    _fn_wait_for(lambda: (tmp_path / "marker").exists())  # not stopped by the drain
    assert gw.proc.wait(30) == 0


def test_background_work_is_killed_at_the_functions_exit_by_default(
        go_like: GoLike, tmp_path: Path) -> None:
    """Ours, on purpose: what a function leaves in its group ends with it (Go lets
    it run); one that holds stdout holds the answer 0.1 s at most."""
    from tests.conftest import wait_dead

    script = _fn_script(tmp_path, "bg.sh", "sleep 30 >/dev/null 2>&1 & echo $!\n")
    gw = go_like(script)
    status, _, body = head_of(raw(gw, _fn_post()))
    assert status == "HTTP/1.1 200 OK"
    assert wait_dead(int(body))


def test_background_leave_lets_it_run_as_go(go_like: GoLike, tmp_path: Path) -> None:
    """WATCHDOG_BACKGROUND=leave: Go's way. A `cmd &` that let go of stdout runs on
    after the answer, as an orphan of the gateway (its subreaper); the slot is given
    back at the function's end (a second call is not 429 with max_inflight=1); at
    shutdown it gets SIGTERM, and time to finish, before SIGKILL."""
    from tests.conftest import alive, process_state, wait_dead

    script = _fn_script(tmp_path, "bg.sh", (
        f"(trap 'echo term >> {tmp_path}/terms; exit 0' TERM; sleep 30 & wait) "
        ">/dev/null 2>&1 &\necho $!\n"))
    gw = go_like(script, max_inflight="1", WATCHDOG_BACKGROUND="leave")
    left = []
    for _ in range(2):
        status, _, body = head_of(raw(gw, _fn_post()))
        assert status == "HTTP/1.1 200 OK"
        left.append(int(body))
    for pid in left:
        assert alive(pid)
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        assert int(stat[1]) == gw.proc.pid  # came back to the gateway
    assert gw.stop() == 0
    assert all(wait_dead(pid) and process_state(pid) is None for pid in left)
    assert (tmp_path / "terms").read_text() == "term\n" * 2


def test_background_leave_reaps_what_ends_on_its_own(go_like: GoLike, tmp_path: Path) -> None:
    """No zombie stays: a background process that ends after the answer is reaped by
    the gateway (within its sweep interval), not left for an init that may be none."""
    from tests.conftest import alive, process_state

    script = _fn_script(tmp_path, "bg.sh", (
        f"(while [ ! -e {tmp_path}/release ]; do sleep 0.02; done) >/dev/null 2>&1 &\n"
        "echo $!\n"))
    gw = go_like(script, WATCHDOG_BACKGROUND="leave")
    _, _, body = head_of(raw(gw, _fn_post()))
    pid = int(body)
    assert alive(pid)
    (tmp_path / "release").touch()
    _fn_wait_for(lambda: process_state(pid) is None)


def test_background_leave_waits_for_stdout_as_go(go_like: GoLike, tmp_path: Path) -> None:
    """Go's exec waits for the output's end: a background process that keeps stdout
    holds the answer, and what it writes is in it (`sh -c 'sleep 5 &'` answers after
    5 s on Go). By default it is cut off 0.1 s after the function's exit."""
    from tests.conftest import process_state

    text = (f"echo $$ > {tmp_path}/pid\n"
            f"(while [ ! -e {tmp_path}/release ]; do sleep 0.02; done; echo late) &\n"
            "echo early\n")
    cut = go_like(_fn_script(tmp_path, "late.sh", text))
    assert head_of(raw(cut, _fn_post()))[2] == b"early\n"
    (tmp_path / "pid").unlink()
    gw = go_like(_fn_script(tmp_path, "late.sh", text), WATCHDOG_BACKGROUND="leave")
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(_fn_post())
        _fn_wait_for(lambda: (tmp_path / "pid").exists() and (tmp_path / "pid").read_text())
        leader = int((tmp_path / "pid").read_text())
        _fn_wait_for(lambda: process_state(leader) == "Z")  # exited; its answer waits
        (tmp_path / "release").touch()
        answer = b"".join(iter(lambda: sock.recv(65536), b""))
    assert head_of(answer)[0] == "HTTP/1.1 200 OK"
    assert head_of(answer)[2] == b"early\nlate\n"


def test_background_leave_still_ends_the_group_at_exec_timeout(go_like: GoLike,
                                                               tmp_path: Path) -> None:
    """exec_timeout while a background process holds stdout: 408 `Killed process.` at
    the deadline and the whole group ended (Go answers once the holder ends, and
    kills only the function, which has already exited)."""
    from tests.conftest import wait_dead

    script = _fn_script(tmp_path, "hold.sh", f"sleep 30 &\necho $! > {tmp_path}/bg\n")
    gw = go_like(script, exec_timeout="1s", WATCHDOG_BACKGROUND="leave")
    status, _, body = head_of(raw(gw, _fn_post(), timeout=10))
    assert (status, body) == ("HTTP/1.1 408 Request Timeout", b"Killed process.\n")
    assert wait_dead(int((tmp_path / "bg").read_text()))


def test_background_leave_stopped_gets_sigterm_and_its_grace(go_like: GoLike,
                                                            tmp_path: Path) -> None:
    """What a `background=leave` function left holding stdout, stopped at exec_timeout,
    ends as any stopped function's group: SIGTERM first (its trap runs), SIGKILL only
    after kill_grace."""
    from tests.conftest import wait_dead

    termed = tmp_path / "termed"
    script = _fn_script(tmp_path, "trap.sh", (
        f"( trap 'echo termed > {termed}; exit 0' TERM; sleep 30 & wait ) &\n"
        f"echo $! > {tmp_path}/bg\n"))
    gw = go_like(script, exec_timeout="1s", WATCHDOG_BACKGROUND="leave",
                 WATCHDOG_KILL_GRACE="5s")
    status, _, body = head_of(raw(gw, _fn_post(), timeout=10))
    assert (status, body) == ("HTTP/1.1 408 Request Timeout", b"Killed process.\n")
    assert wait_dead(int((tmp_path / "bg").read_text()))
    assert termed.read_text() == "termed\n"


@pytest.mark.parametrize(("name", "said"), [
    ("KILL", b"signal: killed\n"),
    ("TERM", b"signal: terminated\n"),
    ("HUP", b"signal: hangup\n"),
    ("INT", b"signal: interrupt\n"),
    ("PIPE", b"signal: broken pipe\n"),
    ("USR1", b"signal: user defined signal 1\n"),
    ("XCPU", b"signal: CPU time limit exceeded\n"),
    ("34", b"signal: signal 34\n"),
    ("SEGV", b"signal: segmentation fault\n"),
    ("ABRT", b"signal: aborted\n"),
])
def test_a_death_by_signal_is_said_in_gos_words(go_like: GoLike, tmp_path: Path,
                                                name: str, said: bytes) -> None:
    """The 500's body starts with Go's text for the signal, nothing after it (no
    `(SIGKILL)`); ` (core dumped)` only when the kernel says it dumped, as Go."""
    gw = go_like(_fn_script(tmp_path, "die.sh", "read s\nulimit -c 0\necho before\nkill -$s $$\n"))
    status, _, body = head_of(raw(gw, _fn_post(body=name.encode() + b"\n")))
    assert status == "HTTP/1.1 500 Internal Server Error"
    if body.startswith(said[:-1] + b" (core dumped)\n"):
        said = said[:-1] + b" (core dumped)\n"  # a core_pattern pipe dumps even so
    assert body == said + b"before\n"


def test_fprocess_is_split_on_each_space_as_go(go_like: GoLike,
                                               gateway: StartGateway) -> None:
    """Go's strings.Split(fprocess, " "): two spaces make an empty argument, which a
    pod that ran on Go got (issue 13, 11). WATCHDOG_FPROCESS keeps our rule (runs of
    whitespace); an fprocess that starts with a space never ran on Go: refused."""
    gw = go_like("printf %s|  x")
    assert head_of(raw(gw, _fn_post()))[2] == b"|x|"  # printf '%s|' '' 'x'
    ours = gateway([], {"WATCHDOG_FPROCESS": "printf %s|  x"})
    assert head_of(raw(ours, _fn_post()))[2] == b"x|"
    with pytest.raises(RuntimeError, match=r"exited 2:[\s\S]*fprocess=' cat'"):
        go_like(" cat")


def test_marshal_request_is_gos_json_byte_for_byte(go_like: GoLike) -> None:
    """The bytes Go's json.Marshal gave for this request (measured): header names
    sorted, UTF-8 as sent, `<>&` and U+2028/U+2029 escaped, \\ufffd for each byte
    that is not UTF-8."""
    gw = go_like("cat", marshal_request="true")
    headers = (b"Z-Last: <a&b>\r\nA-First: \xe2\x80\xa8 \xe2\x80\xa9 \xc3\xa9 \xff \xe2\x82 "
               b"x\tq\\\"\r\nX-Multi: 1\r\nx-multi: 2\r\n")
    _, _, body = head_of(raw(gw, _fn_post(body=b"a<b", headers=headers)))
    assert body == (b'{"header":{"A-First":["\\u2028 \\u2029 \xc3\xa9 \\ufffd \\ufffd\\ufffd '
                    b'x\\tq\\\\\\""],"Connection":["close"],"Content-Length":["3"],'
                    b'"X-Multi":["1","2"],"Z-Last":["\\u003ca\\u0026b\\u003e"]},'
                    b'"body":{"raw":"YTxi"}}')


# --- 6, 7: configuration and flags (legacy values, -run-healthcheck, -version)

def test_bad_openfaas_values_start_as_go_with_one_warning_each(go_like: GoLike) -> None:
    """Go (readconfig.go) starts with each of these and uses its fallback, and reads a
    boolean other than `true` as false: so does the gateway, with one warning per
    variable naming it, its value, what is used and the accepted form
    (WATCHDOG_STRICT_CONFIG=true makes them an error: tests/test_cli.py)."""
    gw = go_like("env", max_inflight="abc", read_timeout="-1", exec_timeout="1.5",
                 write_timeout="5sec", cgi_headers="maybe")
    status, _, body = head_of(raw(gw, b"GET / HTTP/1.1\r\nHost: x\r\nX-Probe: 1\r\n"
                                    b"Connection: close\r\n\r\n"))
    assert status == "HTTP/1.1 200 OK"
    assert b"Http_X_Probe=1" not in body  # cgi_headers=maybe: false, as in Go
    warned = re.findall(r"level=warning .*? variable=(\S+)", gw.log())
    assert sorted(warned) == ["cgi_headers", "exec_timeout", "max_inflight", "read_timeout",
                              "write_timeout"]
    assert ('variable=max_inflight value=abc used="0 (the default)" '
            'expected="a whole number >= 0 (0: no limit)"') in gw.log()
    assert 'variable=read_timeout value=-1 used="30s (the default)"' in gw.log()


def go_cli(*args: str, tmpdir: Path) -> subprocess.CompletedProcess[str]:
    """`fwatchdog ARGS` as a probe or a shell runs it: no setting but TMPDIR."""
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(Path(__file__).parent.parent),
           "TMPDIR": str(tmpdir)}
    return subprocess.run([sys.executable, "-m", "watchdog", *args], env=env,
                          capture_output=True, text=True, timeout=30, check=False)


def test_run_healthcheck_follows_the_lock_file_as_go(go_like: GoLike) -> None:
    """Go's exec probe: exit 0 while os.TempDir()/.lock exists, else `unable to find
    lock file.` on stderr and exit 1 (the lock is removed on SIGTERM)."""
    gw = go_like("cat")
    healthy = go_cli("-run-healthcheck", tmpdir=gw.tmp)
    assert (healthy.returncode, healthy.stdout, healthy.stderr) == (0, "", "")
    assert gw.stop() == 0
    gone = go_cli("-run-healthcheck", tmpdir=gw.tmp)
    assert (gone.returncode, gone.stdout, gone.stderr) == (1, "", "unable to find lock file.\n")


@pytest.mark.parametrize("args", [["-version"], ["--version=true"], ["-version=1"],
                                  ["-run-healthcheck=false", "-version"]])
def test_version_prints_gos_line_on_stderr_and_exits_0(args: list[str],
                                                       tmp_path: Path) -> None:
    """Go logs `2006/01/02 15:04:05 Version: dev\tSHA: unknown` and exits 0, serving
    nothing (no fprocess needed)."""
    result = go_cli(*args, tmpdir=tmp_path)
    assert (result.returncode, result.stdout) == (0, "")
    assert re.fullmatch(r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d Version: [^\s]+\tSHA: unknown\n",
                        result.stderr), result.stderr


def test_a_flag_go_does_not_know_exits_2(tmp_path: Path) -> None:
    """Go's flag package: `flag provided but not defined`, exit 2; ours names it."""
    result = go_cli("-bogus", tmpdir=tmp_path)
    assert result.returncode == 2
    assert "-bogus" in result.stderr

# --- 8: metrics (bucket labels)

# The Go watchdog's /metrics after one POST / answered 200 (classic-watchdog 23db914,
# client_golang's text format), the three OpenFaaS families word for word; its go_*,
# process_* and promhttp_* families describe the Go runtime and are not exposed here.
GO_BUCKETS = ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10",
              "+Inf"]
GO_HELP = {
    "http_request_duration_seconds": "Seconds spent serving HTTP requests.",
    "http_requests_in_flight": "total HTTP requests in-flight",
    "http_requests_total": "total HTTP requests processed",
}
GO_TYPES = {"http_request_duration_seconds": "histogram", "http_requests_in_flight": "gauge",
            "http_requests_total": "counter"}


def scrape(gw: Gateway) -> tuple[dict[str, str], list[str]]:
    """(headers, lines) of GET /metrics on the metrics port."""
    with socket.create_connection(("127.0.0.1", gw.metrics_port), timeout=5) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status, headers, body = head_of(answer)
    assert status == "HTTP/1.1 200 OK"
    return headers, body.decode().splitlines()


def test_metrics_are_exposed_as_go_exposes_them(go_like: GoLike) -> None:
    """Issue 13, 8: `le="1"`, not `le="1.0"`; Go's HELP texts, label values (code="200",
    method="post"), number format (`1`, not `1.0`), content type and family order."""
    gw = go_like("cat")
    status, _, _ = head_of(raw(gw, _request(b"POST", body=b"hi")))
    assert status == "HTTP/1.1 200 OK"
    headers, lines = scrape(gw)
    assert headers["content-type"] == ("text/plain; version=0.0.4; charset=utf-8; "
                                       "escaping=underscores")
    buckets = [re.search(r'le="([^"]*)"', line).group(1)  # type: ignore[union-attr]
               for line in lines if line.startswith("http_request_duration_seconds_bucket{")]
    assert buckets == GO_BUCKETS
    assert 'http_request_duration_seconds_bucket{code="200",method="post",le="1"} 1' in lines
    assert 'http_requests_total{code="200",method="post"} 1' in lines
    assert 'http_request_duration_seconds_count{code="200",method="post"} 1' in lines
    assert "http_requests_in_flight 0" in lines
    helps = dict(line[len("# HELP "):].split(" ", 1) for line in lines
                 if line.startswith("# HELP "))
    types = dict(line[len("# TYPE "):].split(" ", 1) for line in lines
                 if line.startswith("# TYPE "))
    assert {name: helps[name] for name in GO_HELP} == GO_HELP
    assert {name: types[name] for name in GO_TYPES} == GO_TYPES
    families = [line.split()[2] for line in lines if line.startswith("# TYPE ")]
    assert families == sorted(families)  # client_golang sorts families by name
    assert not [line for line in lines if "_created" in line]  # no such series in Go


def test_a_labelled_family_appears_with_its_first_child_as_go(go_like: GoLike) -> None:
    """Before any function request Go exposes no http_requests_total at all (not even
    its HELP), and the in-flight gauge at 0."""
    _, lines = scrape(go_like("cat"))
    assert not [line for line in lines if "http_requests_total" in line]
    assert not [line for line in lines if "http_request_duration_seconds" in line]
    assert "http_requests_in_flight 0" in lines


def test_methods_outside_gos_list_are_one_label_value(go_like: GoLike) -> None:
    """Any token is a method a client may send (405): as Go's promhttp, those outside
    its list (and its exact upper or lower case) are counted as method="unknown", so
    that a client inventing methods cannot grow the series without bound."""
    gw = go_like("cat")
    for method in (b"FOO", b"PROPFIND", b"Get", b"X-CUSTOM-1", b"X-CUSTOM-2", b"get"):
        status, _, _ = head_of(raw(gw, method + b" / HTTP/1.1\r\nHost: x\r\n"
                                   b"Connection: close\r\n\r\n"))
        assert status == "HTTP/1.1 405 Method Not Allowed", method
    _, lines = scrape(gw)
    counts = [line for line in lines if line.startswith("http_requests_total{")]
    assert sorted(counts) == [
        'http_requests_total{code="405",method="get"} 1',  # `get`: Go's list has it
        'http_requests_total{code="405",method="unknown"} 5',
    ]


# --- the lead's: smaller differences found by bench/compare_go.py


def test_the_429_is_faas_middlewares_byte_for_byte(go_like: GoLike, tmp_path: Path) -> None:
    """Go's limiter (faas-middleware) answers `text/plain` (no charset), its header
    and its body; the gateway adds only Retry-After and its in-flight numbers."""
    gw = go_like(_fn_script(tmp_path, "blocked.sh", BLOCKED.format(tmp_path)),
                 max_inflight="1")
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as busy:
        busy.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        _fn_wait_for(lambda: (tmp_path / "pid").exists())  # it holds the slot
        status, headers, body = head_of(raw(gw, b"POST / HTTP/1.1\r\nHost: x\r\n"
                                            b"Content-Length: 0\r\nConnection: close"
                                            b"\r\n\r\n"))
        (tmp_path / "release").touch()
    assert status == "HTTP/1.1 429 Too Many Requests"
    assert headers["content-type"] == "text/plain"
    assert headers["x-openfaas-internal"] == "faas-middleware"
    assert body == b"Concurrent request limit exceeded. Max concurrent requests: 1\n"


def test_host_and_transfer_encoding_variables_as_go(go_like: GoLike, tmp_path: Path) -> None:
    """Go sets no Http_Host for an empty Host (an HTTP/1.0 request without one), and
    gives Transfer-Encoding as it keeps it, `chunked` in lower case."""
    script = tmp_path / "env.sh"
    script.write_text('#!/bin/sh\nprintf "%s|%s|%s" "${Http_Host-unset}" '
                      '"${Http_Transfer_Encoding-unset}" "$(cat)"\n')
    script.chmod(0o755)
    gw = go_like(str(script))
    _, _, body = head_of(raw(gw, b"POST / HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi"))
    assert body == b"unset|unset|hi"
    _, _, body = head_of(raw(gw, b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked"
                                 b"\r\nConnection: close\r\n\r\n2\r\nhi\r\n0\r\n\r\n"))
    assert body == b"h|chunked|hi"


def test_an_upgrade_requests_body_reaches_the_function(go_like: GoLike) -> None:
    """`curl --http2 -d hello` asks to upgrade to h2c with a body: Go ignores the
    upgrade and serves the body; so does the gateway, then closes the connection."""
    gw = go_like("cat")
    status, headers, body = head_of(raw(gw, (
        b"POST / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
        b"Content-Length: 5\r\n\r\nhello")))
    assert (status, body) == ("HTTP/1.1 200 OK", b"hello")
    assert headers["connection"] == "close"


def test_a_header_values_surrounding_whitespace_is_not_the_functions(
        go_like: GoLike, tmp_path: Path) -> None:
    """RFC 9112 5: the whitespace around a field value is not part of it; Go trims
    both ends, so does the gateway (llhttp alone keeps the trailing one)."""
    script = tmp_path / "env.sh"
    script.write_text('#!/bin/sh\nprintf "[%s][%s]" "$Http_X_S" "$Http_X_T"\n')
    script.chmod(0o755)
    gw = go_like(str(script))
    _, _, body = head_of(raw(gw, b"GET / HTTP/1.1\r\nHost: h\r\nX-S:  sp  \t\r\n"
                                 b"X-T: a b \r\nConnection: close\r\n\r\n"))
    assert body == b"[sp][a b]"


def test_the_harness_starts_like_go(go_like: GoLike) -> None:
    """With OpenFaaS names only, the gateway serves `fprocess` on `port`."""
    gw = go_like("cat")
    status, _, body = head_of(raw(gw, b"POST / HTTP/1.1\r\nHost: x\r\n"
                                    b"Content-Length: 2\r\nConnection: close\r\n\r\nhi"))
    assert status == "HTTP/1.1 200 OK"
    assert body == b"hi"
