"""of-watchdog's other modes, against a running gateway: streaming (stdout sent as it
is written, with backpressure), serializing (its failure answers), static (a folder
behind the limit), and the defaults an of-watchdog mode brings."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Gateway, StartGateway
from watchdog.config import Config, ConfigError

# Writes, waits for the test's go-ahead (a file), writes again, ends with $CODE.
SLOW_WRITER = ["sh", "-c", 'echo first; while [ ! -e "$GO" ]; do sleep 0.01; done; '
               'echo second; echo "to the log" >&2; exit "${CODE:-0}"']


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def gone(gw: Gateway, within: float = 10.0) -> bool:
    """Whether every process the gateway forked is gone within `within` seconds."""
    deadline = time.monotonic() + within
    while gw.survivors():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def logged(gw: Gateway, text: str, within: float = 10.0) -> str:
    """The gateway's log once it holds `text` (it fails the test if it never does)."""
    deadline = time.monotonic() + within
    while text not in (log := gw.log()):
        assert time.monotonic() < deadline, f"{text!r} never logged:\n{log}"
        time.sleep(0.02)
    return log


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


async def scrape(gw: Gateway) -> str:
    async with aiohttp.ClientSession() as session, session.get(gw.metrics_url) as r:
        return await r.text()


async def raw_get(port: int, target: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    answer = await reader.read()
    writer.close()
    return answer


# --- streaming ----------------------------------------------------------------------


async def test_streaming_sends_the_first_bytes_while_the_function_runs(
        gateway: StartGateway, tmp_path: Path) -> None:
    go = tmp_path / "go"
    gw = gateway(SLOW_WRITER, env={"mode": "streaming", "GO": str(go)})
    async with aiohttp.ClientSession() as session, session.post(gw.url + "/") as r:
        assert r.status == 200
        assert r.headers["Transfer-Encoding"] == "chunked"
        assert r.headers["Content-Type"] == "application/octet-stream"  # of-watchdog's
        first = await r.content.readline()
        assert first == b"first\n"
        assert gw.survivors(), "the first bytes came before the function's end"
        go.touch()
        rest = await r.read()
    assert rest == b"second\n"  # stderr went to the log, never the body
    assert "to the log" in gw.log()


async def test_streaming_cuts_off_the_answer_of_a_function_that_fails_after_writing(
        gateway: StartGateway, tmp_path: Path) -> None:
    go = tmp_path / "go"
    go.touch()
    gw = gateway(SLOW_WRITER, env={"mode": "streaming", "GO": str(go), "CODE": "3"})
    async with aiohttp.ClientSession() as session, session.get(gw.url + "/") as r:
        assert r.status == 200  # the head had left before the failure
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()  # no last chunk: the client knows it is incomplete
    # The access line, written once the answer has gone (a moment after the client
    # saw it cut off).
    log = await asyncio.to_thread(logged, gw, "exit_status=3")
    assert "the answer is cut off" in log
    assert "exit=3" in log
    text = await scrape(gw)
    assert metric(text, 'http_requests_total{code="200",method="get"}') == 1


async def test_streaming_a_function_that_fails_before_writing_gets_its_500(
        gateway: StartGateway) -> None:
    gw = gateway(["sh", "-c", "echo oops >&2; exit 4"], env={"mode": "streaming"})
    async with aiohttp.ClientSession() as session, session.get(gw.url + "/") as r:
        assert r.status == 500
        assert await r.text() == "exit status 4\n"


async def test_streaming_keeps_memory_flat_for_a_client_that_reads_slowly(
        gateway: StartGateway) -> None:
    size = 256 * 2**20
    gw = gateway(["head", "-c", str(size), "/dev/zero"],
                 env={"mode": "streaming", "read_timeout": "60s", "write_timeout": "60s"})
    before = rss_kb(gw.proc.pid)
    received = 0
    peak = before
    async with aiohttp.ClientSession() as session, session.get(gw.url + "/") as r:
        async for piece in r.content.iter_chunked(2**20):
            received += len(piece)
            if received < 8 * 2**20:
                await asyncio.sleep(0.05)  # slower than `head` writes: backpressure
                peak = max(peak, rss_kb(gw.proc.pid))
        peak = max(peak, rss_kb(gw.proc.pid))
    assert received == size
    # Without backpressure the 256 MiB would have been read into memory at once.
    assert peak - before < 16 * 1024, (before, peak)


async def test_streaming_a_large_body_flows_through_cat_both_ways(
        gateway: StartGateway) -> None:
    gw = gateway(["cat"], env={"mode": "streaming"})
    piece = os.urandom(2**20)
    sent = hashlib.sha256()

    async def body() -> AsyncIterator[bytes]:
        for _ in range(48):
            sent.update(piece)
            yield piece

    got = hashlib.sha256()
    count = 0
    async with aiohttp.ClientSession() as session, session.put(gw.url + "/", data=body()) as r:
        assert r.status == 200
        async for chunk in r.content.iter_chunked(2**20):
            got.update(chunk)
            count += len(chunk)
    assert count == 48 * 2**20
    assert got.hexdigest() == sent.hexdigest()


async def test_streaming_exec_timeout_cuts_off_the_answer_and_ends_the_group(
        gateway: StartGateway, tmp_path: Path) -> None:
    gw = gateway(SLOW_WRITER, env={"mode": "streaming", "GO": str(tmp_path / "never"),
                                   "exec_timeout": "0.5s"})
    async with aiohttp.ClientSession() as session, session.get(gw.url + "/") as r:
        assert r.status == 200
        assert await r.content.readline() == b"first\n"
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()
    assert "stopped_for=exec_timeout" in gw.log()
    # The fixture then checks that no process of the group survived.


async def test_streaming_a_client_that_hangs_up_ends_the_function_and_frees_its_slot(
        gateway: StartGateway, tmp_path: Path) -> None:
    gw = gateway(SLOW_WRITER, env={"mode": "streaming", "GO": str(tmp_path / "never"),
                                   "max_inflight": "1"})
    async with aiohttp.ClientSession() as session:
        r = await session.get(gw.url + "/")
        assert await r.content.readline() == b"first\n"
        assert gw.survivors()
        r.close()  # hang up mid-answer
        assert await asyncio.to_thread(gone, gw), "the function outlived its client"
        (tmp_path / "never").touch()
        async with session.get(gw.url + "/") as again:
            assert again.status == 200  # the slot was given back
            await again.read()


async def test_streaming_the_limit_is_exact(gateway: StartGateway, tmp_path: Path) -> None:
    go = tmp_path / "go"
    gw = gateway(SLOW_WRITER, env={"mode": "streaming", "GO": str(go), "max_inflight": "2"})
    async with aiohttp.ClientSession() as session:
        held = [await session.get(gw.url + "/") for _ in range(2)]
        for r in held:
            assert r.status == 200
            assert await r.content.readline() == b"first\n"
        statuses = []
        for _ in range(4):
            async with session.get(gw.url + "/") as r:
                statuses.append(r.status)
        assert statuses == [429] * 4
        go.touch()
        for r in held:
            assert await r.read() == b"second\n"
            r.close()


@pytest.mark.parametrize("mode", ["streaming", "serializing"])
async def test_every_method_is_forked_in_of_watchdog_modes(
        gateway: StartGateway, mode: str) -> None:
    gw = gateway(["sh", "-c", 'echo "$Http_Method"'], env={"mode": mode})
    async with aiohttp.ClientSession() as session:
        for method in ("OPTIONS", "PROPFIND", "GET", "DELETE"):
            async with session.request(method, gw.url + "/") as r:
                assert r.status == 200, method
                assert await r.text() == method + "\n"
        async with session.head(gw.url + "/") as r:
            assert r.status == 200  # forked too (classic mode answers 405)


# --- serializing --------------------------------------------------------------------


async def test_serializing_answers_of_watchdogs_failure_and_its_content_type(
        gateway: StartGateway) -> None:
    gw = gateway(["sh", "-c", 'cat; echo "on stderr" >&2; exit "$CODE"'],
                 env={"mode": "serializing", "CODE": "2"})
    async with aiohttp.ClientSession() as session, session.post(gw.url + "/", data=b"in") as r:
        assert r.status == 500
        assert await r.read() == b"exit status 2"  # its output dropped, as of-watchdog
        assert r.headers["Content-Type"] == "application/octet-stream"
    ok = gateway(["cat"], env={"mode": "serializing"})
    async with aiohttp.ClientSession() as session, session.post(
            ok.url + "/", data=b"echoed") as r:
        assert r.status == 200
        assert r.headers["Content-Length"] == "6"  # whole, not chunked
        assert r.headers["Content-Type"] == "application/octet-stream"
        assert await r.read() == b"echoed"


# --- static -------------------------------------------------------------------------


@pytest.fixture
def site(tmp_path: Path) -> Path:
    root = tmp_path / "public"
    (root / "docs").mkdir(parents=True)
    (root / "plain").mkdir()
    (root / "hello.txt").write_text("hello\n")
    (root / "docs" / "index.html").write_text("<h1>docs</h1>\n")
    (root / "plain" / "a b.js").write_text("x\n")
    (root / "plain" / "sub").mkdir()
    (root / "big.bin").write_bytes(os.urandom(8 * 2**20))
    (tmp_path / "secret").write_text("outside\n")
    os.mkfifo(root / "pipe")  # opened, it would block a reader until a writer comes
    return root


async def test_static_serves_files_folders_and_ranges_as_go_does(
        gateway: StartGateway, site: Path) -> None:
    gw = gateway([], env={"mode": "static", "static_path": str(site)})
    async with aiohttp.ClientSession() as session:
        async def get(path: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
            async with session.get(gw.url + path, headers=headers,
                                   allow_redirects=False) as r:
                return r.status, dict(r.headers), await r.read()

        status, headers, body = await get("/hello.txt")
        assert (status, body) == (200, b"hello\n")
        assert headers["Content-Type"] == "text/plain; charset=utf-8"
        status, headers, body = await get("/docs")
        assert (status, headers["Location"]) == (301, "docs/")
        status, headers, body = await get("/docs/")
        assert (status, body) == (200, b"<h1>docs</h1>\n")
        status, headers, _ = await get("/docs/index.html")
        assert (status, headers["Location"]) == (301, "./")
        status, headers, body = await get("/plain/")
        assert status == 200
        assert headers["Content-Type"] == "text/html; charset=utf-8"
        assert b'<a href="a%20b.js">a b.js</a>' in body
        assert b'<a href="sub/">sub/</a>' in body
        for target in ("/../secret", "/docs/../../secret", "/%2e%2e/secret"):
            raw = await raw_get(gw.port, target)  # as sent: a client library cleans it
            assert raw.startswith(b"HTTP/1.1 404 "), (target, raw)  # never above the root
        status, _, _ = await get("/pipe")
        assert status == 404  # not a regular file: never read
        status, headers, body = await get("/hello.txt", Range="bytes=1-3")
        assert (status, body, headers["Content-Range"]) == (206, b"ell", "bytes 1-3/6")
        status, headers, _ = await get("/hello.txt", Range="bytes=10-")
        assert (status, headers["Content-Range"]) == (416, "bytes */6")
        _, headers, _ = await get("/hello.txt")
        status, _, body = await get("/hello.txt", **{"If-Modified-Since":
                                                      headers["Last-Modified"]})
        assert (status, body) == (304, b"")
        status, headers, body = await get("/big.bin")
        assert status == 200
        assert body == (site / "big.bin").read_bytes()
        async with session.post(gw.url + "/hello.txt") as r:
            assert r.status == 405
            assert r.headers["Allow"] == "GET, HEAD"


async def test_static_files_are_served_within_the_limit(
        gateway: StartGateway, site: Path) -> None:
    gw = gateway([], env={"mode": "static", "static_path": str(site), "max_inflight": "1"})
    async with aiohttp.ClientSession() as session:
        slow = await session.get(gw.url + "/big.bin")  # not read: its slot stays taken
        assert slow.status == 200
        async with session.get(gw.url + "/hello.txt") as r:
            assert r.status == 429
        assert len(await slow.read()) == 8 * 2**20
        slow.close()
        async with session.get(gw.url + "/hello.txt") as r:
            assert r.status == 200


# --- settings -----------------------------------------------------------------------


def test_an_of_watchdog_mode_brings_of_watchdogs_defaults(tmp_path: Path) -> None:
    classic = Config.from_env({"fprocess": "cat"})
    assert (classic.exec_timeout, classic.combine_output, classic.content_type) == (0, True, "")
    for mode in ("streaming", "serializing"):
        config = Config.from_env({"mode": mode, "fprocess": "cat"})
        assert (config.exec_timeout, config.combine_output, config.content_type) == (
            30, False, "application/octet-stream")
    http = Config.from_env({"mode": "http", "upstream_url": "http://127.0.0.1:1"})
    assert (http.exec_timeout, http.content_type) == (30, "")  # the server's own type
    given = Config.from_env({"mode": "streaming", "fprocess": "cat", "exec_timeout": "0",
                             "content_type": "text/plain", "combine_output": "true"})
    assert (given.exec_timeout, given.combine_output, given.content_type) == (
        0, True, "text/plain")  # what is set is kept
    static = Config.from_env({"mode": "static", "static_path": str(tmp_path)})
    assert static.fprocess == ()


def test_bad_of_watchdog_mode_settings_stop_start_up_with_the_reason(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"static_path=.*expected the path of a folder") as caught:
        Config.from_env({"mode": "static", "static_path": str(tmp_path / "none")})
    assert "WATCHDOG_STATIC_PATH" in str(caught.value)
    with pytest.raises(ConfigError, match="inproc runs Go code"):
        Config.from_env({"mode": "inproc", "fprocess": "cat"})
    with pytest.raises(ConfigError, match="no function to run"):
        Config.from_env({"mode": "streaming"})


async def test_ready_path_in_a_forking_mode_runs_the_function_at_that_path(
        gateway: StartGateway, tmp_path: Path) -> None:
    go = tmp_path / "go"
    script = ('if [ "$Http_Path" = /ready ]; then [ -e "$GO" ] || exit 1; echo ready; '
              'else echo served; fi')
    gw = gateway(["sh", "-c", script], env={"mode": "streaming", "ready_path": "/ready",
                                             "GO": str(go)})
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.url + "/_/ready") as r:
            assert r.status == 500  # the function said no (exit 1)
        go.touch()
        async with session.get(gw.url + "/_/ready") as r:
            assert r.status == 200
        async with session.get(gw.url + "/other") as r:
            assert await r.text() == "served\n"
        text = await scrape(gw)
    # The probes are not requests: only /other is counted.
    assert metric(text, 'http_requests_total{code="200",method="get"}') == 1
    assert metric(text, 'http_requests_total{code="500",method="get"}') == 0
