"""The function port's HTTP/1.1 (watchdog/http.py), spoken byte for byte to a real
gateway: what clients other than aiohttp's do, and what a bad one does."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import time
from pathlib import Path

import pytest

from tests.conftest import FUNCTIONS, StartGateway
from tests.test_gateway import fetch, file_appears
from tests.test_reliability import SH, raw, rss_kib, still_serving


def answers(data: bytes) -> list[tuple[bytes, bytes]]:
    """(status line, body) of each answer in `data`, in order (Content-Length only)."""
    found = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        length = next(int(line.split(b":")[1]) for line in lines
                      if line.lower().startswith(b"content-length:"))
        found.append((lines[0], rest[:length]))
        data = rest[length:]
    return found


async def test_pipelined_requests_are_answered_in_order(gateway: StartGateway) -> None:
    gw = gateway(["cat"])
    requests = b"".join(
        b"POST /%d HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
        % (i, len(b"body-%d" % i), b"body-%d" % i) for i in range(5))
    requests += b"GET /_/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    got = answers(await asyncio.to_thread(raw, gw, requests))
    assert got == [(b"HTTP/1.1 200 OK", b"body-%d" % i) for i in range(5)] + [
        (b"HTTP/1.1 200 OK", b"OK")]


async def test_http_1_0_is_answered_in_1_0_and_closed(gateway: StartGateway) -> None:
    """As Go: an HTTP/1.0 status line, and no Connection field (closing is 1.0's
    default); the connection closes after the answer."""
    gw = gateway(["cat"])
    answer = await asyncio.to_thread(
        raw, gw, b"POST / HTTP/1.0\r\nContent-Length: 5\r\n\r\nhello")  # returns at close
    assert answer.startswith(b"HTTP/1.0 200 OK\r\n")
    assert b"\r\nConnection:" not in answer
    assert answer.endswith(b"\r\n\r\nhello")


async def test_absolute_form_target(gateway: StartGateway) -> None:
    gw = gateway([SH, "-c", 'printf "%s|%s" "$Http_Path" "$Http_Query"'])
    answer = await asyncio.to_thread(
        raw, gw, b"GET http://example.test/a/b?c=1 HTTP/1.1\r\nHost: x\r\n"
                 b"Connection: close\r\n\r\n")
    assert answers(answer) == [(b"HTTP/1.1 200 OK", b"/a/b|c=1")]


@pytest.mark.parametrize(("size", "goes_on"), [(100_000, True), (3_000_000, False)])
async def test_refused_upload_is_dropped_and_the_connection_goes_on(
        gateway: StartGateway, tmp_path: Path, size: int, goes_on: bool) -> None:
    """A 429 is answered while the body is still coming. As Go's net/http: up to
    256 KiB left, the rest is read and dropped and the connection serves its next
    request; more, and the connection closes after the answer."""
    gw = gateway([SH, str(FUNCTIONS / "sleeper.sh")],
                 env={"PIDS_DIR": str(tmp_path), "max_inflight": "1"})
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as holder:
        holder.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        await file_appears(tmp_path / "child")  # the one slot is taken

        def upload() -> bytes:
            with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
                sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                             % size)
                first = sock.recv(65536)  # answered before the body is sent
                rest = b""
                with contextlib.suppress(ConnectionError):
                    sock.sendall(b"x" * size)
                    sock.sendall(
                        b"GET /_/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    while chunk := sock.recv(65536):
                        rest += chunk
                return first + rest

        data = await asyncio.to_thread(upload)
    got = answers(data)
    assert got[0][0] == b"HTTP/1.1 429 Too Many Requests"
    if goes_on:
        assert [status for status, _ in got[1:]] == [b"HTTP/1.1 200 OK"]
    else:
        assert len(got) == 1
        assert b"\r\nConnection: close\r\n" in data
    await still_serving(gw)


async def test_a_body_the_function_does_not_read_yet_is_held_bounded(
        gateway: StartGateway) -> None:
    """Backpressure: a function that sleeps before reading makes the gateway stop
    reading the client, not buffer the upload."""
    gw = gateway([SH, "-c", "sleep 2; wc -c"])
    before = rss_kib(gw)

    def upload() -> tuple[bytes, int]:
        size = 64 << 20
        with socket.create_connection(("127.0.0.1", gw.port), timeout=20) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                         b"Connection: close\r\n\r\n" % size)
            sock.settimeout(0.5)
            sent, peak, chunk = 0, 0, b"x" * (1 << 16)
            while sent < size:
                try:
                    sent += sock.send(chunk[: size - sent])
                except TimeoutError:
                    peak = max(peak, rss_kib(gw))  # the gateway is not reading: stuck
                    continue
            sock.settimeout(20)
            answer = b""
            while data := sock.recv(65536):
                answer += data
        return answer, peak

    answer, peak = await asyncio.to_thread(upload)
    assert answers(answer) == [(b"HTTP/1.1 200 OK", b"%d\n" % (64 << 20))]
    assert peak - before < 16 * 1024, (before, peak)  # KiB: far from the 64 MiB sent


async def test_upgrade_is_answered_then_closed(gateway: StartGateway) -> None:
    gw = gateway(["cat"])
    answer = await asyncio.to_thread(
        raw, gw, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                 b"\r\n\x81\x05hello")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"\r\nConnection: close\r\n" in answer
    await still_serving(gw)


async def test_every_idle_connection_is_closed_at_its_own_deadline(
        gateway: StartGateway) -> None:
    """The idle deadlines share one queue and one timer in the server: connections
    opened at different times, some answered once and some never sending a byte, are
    each closed, and one that keeps sending requests is not."""
    gw = gateway(["cat"], env={"read_timeout": "1s"})

    def scenario() -> tuple[list[bool], int]:
        quiet = []
        for i in range(12):
            sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
            if i % 2:
                sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nz")
                assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
            quiet.append(sock)
            time.sleep(0.1)
        busy = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
        served = 0
        deadline = time.monotonic() + 2.5  # more than read_timeout: it must stay open
        while time.monotonic() < deadline:
            busy.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nz")
            assert busy.recv(65536).startswith(b"HTTP/1.1 200 OK")
            served += 1
            time.sleep(0.2)
        closed = []
        for sock in quiet:
            try:
                closed.append(sock.recv(1) == b"")  # closed by the gateway, unanswered
            except TimeoutError:
                closed.append(False)
            sock.close()
        busy.close()
        return closed, served

    closed, served = await asyncio.to_thread(scenario)
    assert closed == [True] * 12
    assert served >= 5


async def test_idle_keep_alive_is_closed_after_read_timeout(gateway: StartGateway) -> None:
    gw = gateway(["cat"], env={"read_timeout": "1s"})

    def idle() -> tuple[bytes, float]:
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi")
            first = sock.recv(65536)
            answered = time.monotonic()
            assert sock.recv(1) == b""  # closed by the gateway
            return first, time.monotonic() - answered

    first, waited = await asyncio.to_thread(idle)
    assert first.endswith(b"\r\n\r\nhi")
    assert 0.5 < waited < 5


async def test_many_idle_connections_cost_no_descriptor_leak(gateway: StartGateway) -> None:
    gw = gateway(["cat"])
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    count = min(400, limit // 4)
    fds_before = len(list(Path(f"/proc/{gw.proc.pid}/fd").iterdir()))
    socks = [socket.create_connection(("127.0.0.1", gw.port)) for _ in range(count)]
    try:
        await still_serving(gw)
    finally:
        for sock in socks:
            sock.close()
    deadline = time.monotonic() + 5
    while len(list(Path(f"/proc/{gw.proc.pid}/fd").iterdir())) > fds_before + 2:
        assert time.monotonic() < deadline, "connections' descriptors not closed"
        await asyncio.sleep(0.05)


async def test_a_client_that_does_not_read_its_answers_is_not_buffered_for(
        gateway: StartGateway) -> None:
    """Pipelined requests whose answers are never read: once the answers back up, the
    gateway stops taking requests (and reading), instead of holding every answer."""
    gw = gateway(["cat"])
    before = rss_kib(gw)
    request = b"GET /_/health HTTP/1.1\r\nHost: x\r\n\r\n"

    def flood() -> int:
        with socket.create_connection(("127.0.0.1", gw.port)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
            sock.settimeout(2)
            batch, sent = request * 2000, 0
            deadline = time.monotonic() + 10
            try:
                while sent < 200 << 20 and time.monotonic() < deadline:
                    sent += sock.send(batch)
            except TimeoutError:
                pass  # the gateway stopped reading: what this test wants
            return sent

    sent = await asyncio.to_thread(flood)
    assert sent < 64 << 20, sent  # bytes the gateway took before it stopped reading
    assert rss_kib(gw) - before < 32 * 1024
    await still_serving(gw)


async def test_an_early_answer_does_not_wait_for_a_huge_body(gateway: StartGateway) -> None:
    """A 413 for a declared 10 GB: the connection closes after the answer (a little
    reading and dropping at most), it does not read 10 GB nor wait for them."""
    gw = gateway(["cat"], env={"WATCHDOG_MAX_BODY_BYTES": "100"})

    def stall() -> tuple[bytes, float]:
        with socket.create_connection(("127.0.0.1", gw.port), timeout=15) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n"
                         + b"x" * 1000)
            started = time.monotonic()
            data = b""
            with contextlib.suppress(ConnectionError):
                while chunk := sock.recv(65536):
                    data += chunk
            return data, time.monotonic() - started

    data, waited = await asyncio.to_thread(stall)
    assert data.startswith(b"HTTP/1.1 413 ")
    assert b"\r\nConnection: close\r\n" in data
    assert waited < 8  # the linger (5 s), not the client's pace


async def test_chunked_trailers_are_not_headers(gateway: StartGateway) -> None:
    gw = gateway(["env"])
    answer = await asyncio.to_thread(
        raw, gw, b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                 b"Connection: close\r\n\r\n2\r\nhi\r\n0\r\nX-Injected: from-trailer\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert b"Http_Transfer_Encoding=chunked" in answer
    assert b"X_Injected" not in answer


async def test_an_endless_header_is_cut_at_the_head_limit(gateway: StartGateway) -> None:
    """A field may be as long as the head's bound (1 MiB and 4 KiB, as Go), not more:
    4 MiB of it are refused at the bound, and the gateway holds no more than that."""
    gw = gateway(["cat"])
    before = rss_kib(gw)

    def endless() -> bytes:
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Endless: ")
            with contextlib.suppress(ConnectionError):
                for _ in range(64):  # 4 MiB, in pieces too short to complete a field
                    sock.sendall(b"a" * 65536)
            with contextlib.suppress(ConnectionError):
                return sock.recv(65536)
            return b""

    answer = await asyncio.to_thread(endless)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:100]
    assert rss_kib(gw) - before < 8 * 1024
    await still_serving(gw)


async def test_a_big_answer_nobody_reads_is_let_go(gateway: StartGateway) -> None:
    """A client that stops reading a streamed answer is cut after the idle deadline,
    as one that stops sending is: the request ends and its slot is free."""
    gw = gateway([SH, "-c", "head -c 20000000 /dev/zero"],
                 env={"read_timeout": "1s", "max_inflight": "1"})
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        deadline = time.monotonic() + 10
        while True:  # the slot is given back although this client never reads
            try:
                status, _, _ = await fetch("GET", gw.url + "/_/ready")
            except OSError:
                status = 0
            if status == 200:
                break
            assert time.monotonic() < deadline, "the unread answer still holds its slot"
            await asyncio.sleep(0.2)
    await still_serving(gw)


async def test_marshal_request_body_has_the_read_timeout(gateway: StartGateway) -> None:
    gw = gateway(["cat"], env={"marshal_request": "true", "read_timeout": "1s"})

    def trickle() -> tuple[bytes, float]:
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nx")
            started = time.monotonic()
            return sock.recv(65536), time.monotonic() - started

    answer, waited = await asyncio.to_thread(trickle)
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert waited < 5


async def test_head_ready_and_no_upload_invited_for_a_refusal(gateway: StartGateway) -> None:
    gw = gateway(["cat"])
    # /_/ready: /_/health is GET only, as the Go watchdog's (tests/test_compat_go.py).
    answer = await asyncio.to_thread(
        raw, gw, b"HEAD /_/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b"\r\n\r\n")  # no body for HEAD
    refused = await asyncio.to_thread(
        raw, gw, b"TRACE / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n"
                 b"Expect: 100-continue\r\n\r\n")
    assert refused.startswith(b"HTTP/1.1 405 ")  # no "100 Continue" first


@pytest.mark.parametrize("seconds", [0, 951782400, 1796181134, 4102444799, 2**31 - 1])
def test_date_header_is_written_as_email_utils_writes_it(seconds: int) -> None:
    """The Date header without importing email (a leap day, the epoch, 2099's last second)."""
    from email.utils import formatdate

    from watchdog.http import http_date

    assert http_date(seconds) == formatdate(seconds, usegmt=True).encode()
