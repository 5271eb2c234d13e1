"""Issue 11's HTTP-layer findings, each replayed against a real gateway: endless
trailers, descriptor exhaustion, header bytes that are not UTF-8, parser
strictness, and requests pipelined behind one running at SIGTERM."""

from __future__ import annotations

import contextlib
import resource
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FUNCTIONS, Gateway, StartGateway
from tests.test_http import answers
from tests.test_reliability import SH, raw, rss_kib

TOKEN = "0f" * 32
CHUNKED_HEAD = (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n0\r\n")


def send_slowly(gw: Gateway, head: bytes, piece: bytes, total: int,
                timeout: float = 5.0) -> tuple[bytes, float]:
    """Send `head`, then `piece` until `total` bytes or the gateway stops reading;
    what came back (until it closed) and how long that took."""
    began = time.monotonic()
    answer = b""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=timeout) as sock:
        sock.sendall(head)
        sent = 0
        with contextlib.suppress(OSError):
            while sent < total and time.monotonic() - began < timeout:
                sock.sendall(piece)
                sent += len(piece)
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
    return answer, time.monotonic() - began


# --- 1. trailers --------------------------------------------------------------------

def test_an_endless_trailer_field_is_refused_and_closes(gateway: StartGateway) -> None:
    gw = gateway(["cat"])
    answer, took = send_slowly(gw, CHUNKED_HEAD + b"X-Trailer: ", b"a" * 1024, 4 * 2**20)
    assert answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 431 ")), answer[:200]
    assert b"trailer field longer than" in answer
    assert took < 4.0  # refused as it grows, not after read_timeout


def test_too_many_trailer_fields_are_refused(gateway: StartGateway) -> None:
    gw = gateway(["cat"])
    answer, _ = send_slowly(gw, CHUNKED_HEAD, b"X-T: 1\r\n" * 64, 64 * 8 * 100)
    assert answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 431 ")), answer[:200]
    assert b"trailer fields" in answer


def test_a_small_trailer_section_still_works(gateway: StartGateway) -> None:
    gw = gateway(["cat"])
    got = answers(raw(gw, CHUNKED_HEAD.replace(b"Host: x\r\n", b"Host: x\r\nConnection: "
                                               b"close\r\n") + b"X-T: 1\r\n\r\n"))
    assert got == [(b"HTTP/1.1 200 OK", b"hello")]


def _flood(gw: Gateway, stop: threading.Event) -> None:
    """A client that sends an endless trailer to /_/health, reconnecting."""
    head = (b"GET /_/health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"0\r\nX-Trailer: ")
    piece = b"a" * 65536
    while not stop.is_set():
        with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", gw.port), timeout=2) as sock:
            sock.sendall(head)
            while not stop.is_set():
                sock.sendall(piece)


def _health_latencies(gw: Gateway, seconds: float) -> list[float]:
    latencies = []
    request = b"GET /_/health HTTP/1.1\r\nHost: x\r\n\r\n"
    deadline = time.monotonic() + seconds
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        while time.monotonic() < deadline:
            began = time.monotonic()
            sock.sendall(request)
            answer = b""
            while not answer.endswith(b"OK"):
                chunk = sock.recv(4096)
                assert chunk, "the probe's connection closed"
                answer += chunk
            latencies.append(time.monotonic() - began)
            time.sleep(0.01)
    return latencies


def test_trailer_flood_keeps_health_fast_and_memory_flat(gateway: StartGateway) -> None:
    """The issue's bar: 8 clients sending endless trailers to /_/health, reconnecting;
    health's p99 under 50 ms and the gateway's RSS within +20 MB."""
    gw = gateway(["cat"])
    _health_latencies(gw, 0.2)  # warm
    before = rss_kib(gw)
    stop = threading.Event()
    clients = [threading.Thread(target=_flood, args=(gw, stop)) for _ in range(8)]
    for client in clients:
        client.start()
    try:
        time.sleep(0.5)
        latencies = sorted(_health_latencies(gw, 3.0))
        grown = rss_kib(gw) - before
    finally:
        stop.set()
        for client in clients:
            client.join(10)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    print(f"health p99 {p99 * 1000:.1f} ms over {len(latencies)}, RSS +{grown} KiB")
    assert p99 < 0.050
    assert grown < 20 * 1024


# --- 7. max_connections -------------------------------------------------------------

@contextlib.contextmanager
def descriptor_limit(soft: int) -> Iterator[None]:
    """Lower this process's RLIMIT_NOFILE for what it starts meanwhile."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


def test_idle_connections_cannot_exhaust_descriptors(gateway: StartGateway) -> None:
    """With RLIMIT_NOFILE at 160, the default cap is 160 - 64 = 96: 300 idle
    connections are shed oldest first, and health and a function still answer."""
    with descriptor_limit(160):
        gw = gateway(["cat"])
    idle = []
    try:
        for _ in range(300):
            idle.append(socket.create_connection(("127.0.0.1", gw.port), timeout=5))
        time.sleep(0.3)
        for _ in range(3):
            got = answers(raw(gw, b"GET /_/health HTTP/1.1\r\nHost: x\r\n"
                                  b"Connection: close\r\n\r\n", timeout=3))
            assert got == [(b"HTTP/1.1 200 OK", b"OK")]
            got = answers(raw(gw, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                                  b"Connection: close\r\n\r\nhi", timeout=3))
            assert got == [(b"HTTP/1.1 200 OK", b"hi")]
    finally:
        for sock in idle:
            sock.close()
    assert "Too many open files" not in gw.log()
    assert "max_connections=96" in gw.log()


def test_over_the_cap_with_none_idle_a_new_connection_is_closed(
        gateway: StartGateway, tmp_path: Path) -> None:
    gw = gateway([SH, str(FUNCTIONS / "sleeper.sh")],
                 env={"PIDS_DIR": str(tmp_path), "WATCHDOG_MAX_CONNECTIONS": "2"})
    busy = [socket.create_connection(("127.0.0.1", gw.port), timeout=5) for _ in range(2)]
    try:
        for sock in busy:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        deadline = time.monotonic() + 5
        while len(list(tmp_path.glob("child.*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        # Closed unread: the client sees an end of file, or a reset if its request
        # reached the closed socket.
        answer = b"reset"
        with contextlib.suppress(ConnectionResetError):
            answer = raw(gw, b"GET /_/health HTTP/1.1\r\nHost: x\r\n\r\n", timeout=3)
        assert answer in (b"", b"reset")
        assert "connection refused: at max_connections" in gw.log()
    finally:
        for sock in busy:
            sock.close()


# --- 9. header bytes that are not UTF-8 ----------------------------------------------

def test_authorization_not_utf8_gets_401_without_a_traceback(
        gateway: StartGateway) -> None:
    gw = gateway(["cat"], env={"WATCHDOG_MODE": "oscar", "OSCAR_SERVICE_TOKEN": TOKEN})
    got = answers(raw(gw, b"POST /run/x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe"
                          b"\r\nContent-Length: 4\r\nConnection: close\r\n\r\naGk="))
    assert got[0][0] == b"HTTP/1.1 401 Unauthorized"
    assert "Traceback" not in gw.log()


def test_expect_not_utf8_gets_417_without_a_traceback(gateway: StartGateway) -> None:
    gw = gateway(["cat"])
    got = answers(raw(gw, b"POST / HTTP/1.1\r\nHost: x\r\nExpect: \xff\xfe\r\n"
                          b"Content-Length: 2\r\nConnection: close\r\n\r\nhi"))
    assert got[0][0] == b"HTTP/1.1 417 Expectation Failed"
    assert "Traceback" not in gw.log()


# --- 13. parser strictness -----------------------------------------------------------

@pytest.mark.parametrize(("head", "status"), [
    (b"GET / HTTP/1.1\r\n\r\n", b"400"),
    (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", b"400"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
     b"501"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", b"501"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", b"501"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n", b"501"),
])
def test_heads_refused_as_rfc_9112_says(gateway: StartGateway, head: bytes,
                                         status: bytes) -> None:
    gw = gateway(["cat"])
    answer = raw(gw, head)  # returns at close
    assert answer.startswith(b"HTTP/1.1 " + status + b" "), answer[:200]
    assert b"\r\nConnection: close\r\n" in answer


def test_http_1_0_with_transfer_encoding_closes_after_the_answer(
        gateway: StartGateway) -> None:
    gw = gateway(["cat"])
    # A second request behind it is never read: one answer, and the gateway closes
    # (well before the client's own timeout, which would also end `raw`).
    began = time.monotonic()
    answer = raw(gw, b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: "
                     b"chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
                     b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 2\r\n"
                     b"\r\nho", timeout=30)
    assert time.monotonic() - began < 30
    assert answers(answer) == [(b"HTTP/1.0 200 OK", b"hi")]
    # To HTTP/1.0 closing goes unsaid (its default): no `Connection: keep-alive`.
    assert b"\r\nConnection:" not in answer


def test_only_the_go_watchdogs_methods_are_forked(gateway: StartGateway,
                                                  tmp_path: Path) -> None:
    gw = gateway([SH, "-c", f"touch {tmp_path}/forked"])
    for method in (b"OPTIONS", b"PROPFIND", b"HEAD"):
        answer = raw(gw, method + b" / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 405 "), (method, answer[:100])
        assert b"\r\nAllow: DELETE, GET, PATCH, POST, PUT\r\n" in answer
    assert not (tmp_path / "forked").exists()


def test_control_bytes_are_escaped_in_the_access_log(gateway: StartGateway) -> None:
    gw = gateway(["cat"])
    raw(gw, b"GET /a%1b[31mred%07%00 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    deadline = time.monotonic() + 5
    while "msg=request" not in gw.log() and time.monotonic() < deadline:
        time.sleep(0.02)
    log = gw.log_path.read_bytes()
    assert b'path="/a\\x1b[31mred\\x07\\x00"' in log
    for control in (b"\x1b", b"\x07", b"\x00"):
        assert control not in log


# --- 15. pipelined at SIGTERM --------------------------------------------------------

def test_requests_pipelined_behind_a_running_one_at_sigterm_get_503(
        gateway: StartGateway, tmp_path: Path) -> None:
    gw = gateway([SH, str(FUNCTIONS / "sleeper.sh")],
                 env={"PIDS_DIR": str(tmp_path), "SLEEP": "1"})
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
                     b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")
        deadline = time.monotonic() + 5
        while not (tmp_path / "child").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        gw.signal(signal.SIGTERM)
        answer = b""
        with contextlib.suppress(TimeoutError):
            while chunk := sock.recv(65536):
                answer += chunk
    got = answers(answer)
    assert [status for status, _ in got] == [b"HTTP/1.1 200 OK",
                                             b"HTTP/1.1 503 Service Unavailable"]
    first, second = answer.split(b"HTTP/1.1 503", 1)
    assert b"Connection: close" not in first  # the close is said on the last answer
    assert b"\r\nConnection: close\r\n" in second
