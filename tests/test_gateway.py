"""End to end: the real gateway on a loopback port, forking real processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from base64 import b64decode
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import FUNCTIONS, Gateway, StartGateway, alive, process_state, wait_dead

SH = "/bin/sh"


async def fetch(method: str, url: str, data: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.request(
        method, url, data=data, headers=headers,
    ) as response:
        return response.status, dict(response.headers), await response.read()


def metrics(gw: Gateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample on /metrics, keyed by (name, sorted labels)."""
    import urllib.request

    with urllib.request.urlopen(gw.metrics_url, timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def wait_for_file(path: Path, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.01)
    raise AssertionError(f"{path} never appeared")


async def file_appears(path: Path, within: float = 10.0) -> str:
    """wait_for_file without blocking the loop (a request is under way on it)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        await asyncio.sleep(0.01)
    raise AssertionError(f"{path} never appeared")


# --- the round trip ------------------------------------------------------------------


async def test_echo_text_and_binary(gateway: StartGateway) -> None:
    gw = gateway(["cat"])
    status, headers, body = await fetch("POST", gw.url, b"hello, world")
    assert (status, body) == (200, b"hello, world")
    assert float(headers["X-Duration-Seconds"]) > 0
    blob = bytes(range(256)) * 4096 + os.urandom(100_000)  # ~1.1 MB, every byte value
    status, _, body = await fetch("POST", gw.url + "/any/path", blob)
    assert status == 200
    assert body == blob


async def test_function_sees_http_variables(gateway: StartGateway) -> None:
    gw = gateway(["env"])
    status, _, body = await fetch(
        "POST", gw.url + "/some/path?x=1&y=two", b"12345",
        headers={"X-Custom-Header": "abc", "x-lower-case": "v", "Method": "forged",
                 "X.Dotted": "passed", "Content-Type": "text/plain"},
    )
    assert status == 200
    env = dict(line.split("=", 1) for line in body.decode().splitlines() if "=" in line)
    assert env["Http_X_Custom_Header"] == "abc"
    assert env["Http_X_Lower_Case"] == "v"
    assert env["Http_Method"] == "POST"  # not the forged header
    assert env["Http_Path"] == "/some/path"
    assert env["Http_Query"] == "x=1&y=two"
    assert env["Http_Host"] == f"127.0.0.1:{gw.port}"
    assert env["Http_ContentLength"] == env["Http_Content_Length"] == "5"
    assert env["Http_Content_Type"] == "text/plain"
    assert "Http_Transfer_Encoding" not in env
    assert env["Http_X.dotted"] == "passed"  # as Go names it (test_compat_go)
    assert env["WATCHDOG_TEST_MARK"] == gw.mark  # the gateway's own environment too


async def test_chunked_body_and_get_without_query(gateway: StartGateway) -> None:
    gw = gateway(["env"])

    async def chunks() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b"def"

    async with aiohttp.ClientSession() as session, session.post(
        gw.url + "/", data=chunks(),
    ) as response:
        body = await response.read()
    env = dict(line.split("=", 1) for line in body.decode().splitlines() if "=" in line)
    assert env["Http_Transfer_Encoding"] == "chunked"
    assert env["Http_ContentLength"] == "-1"
    status, _, body = await fetch("GET", gw.url + "/x")
    env = dict(line.split("=", 1) for line in body.decode().splitlines() if "=" in line)
    assert (status, env["Http_Method"], env["Http_ContentLength"]) == (200, "GET", "0")
    assert "Http_Query" not in env


async def test_nonzero_exit_is_500_with_output(gateway: StartGateway) -> None:
    gw = gateway([SH, "-c", "echo partial; exit 3"])
    status, _, body = await fetch("POST", gw.url, b"")
    assert status == 500
    assert body == b"exit status 3\npartial\n"


async def test_death_by_signal_says_which(gateway: StartGateway) -> None:
    gw = gateway([SH, "-c", "kill -SEGV $$"])
    status, _, body = await fetch("POST", gw.url, b"")
    assert status == 500
    assert body.startswith(b"signal: segmentation fault")  # Go's text
    samples = metrics(gw)
    key = ("watchdog_function_duration_seconds_count", (("exit_status", "SIGSEGV"),))
    assert samples[key] == 1


async def test_missing_executable_is_500_and_gateway_keeps_serving(
        gateway: StartGateway) -> None:
    gw = gateway(["/nonexistent/function"])
    status, _, body = await fetch("POST", gw.url, b"x")
    assert status == 500
    assert b"No such file or directory" in body
    status, _, body = await fetch("GET", gw.url + "/_/health")
    assert (status, body) == (200, b"OK")
    assert metrics(gw)[("http_requests_in_flight", ())] == 0


async def test_methods_outside_the_originals_list_get_405(gateway: StartGateway) -> None:
    gw = gateway(["cat"])
    status, headers, _ = await fetch("OPTIONS", gw.url + "/")
    assert status == 405
    assert "POST" in headers["Allow"]
    for method in ("GET", "PUT", "DELETE", "PATCH"):
        status, _, _ = await fetch(method, gw.url + "/", b"m")
        assert status == 200, method


# --- timeouts and stopping whole process groups --------------------------------------


async def test_exec_timeout_kills_function_and_grandchild(
        gateway: StartGateway, tmp_path: Path) -> None:
    gw = gateway([SH, str(FUNCTIONS / "family.sh")],
                 env={"exec_timeout": "1s", "WATCHDOG_KILL_GRACE": "1s",
                      "PIDS_DIR": str(tmp_path)})
    started = time.monotonic()
    status, _, body = await fetch("POST", gw.url, b"")
    elapsed = time.monotonic() - started
    assert (status, body) == (408, b"Killed process.\n")
    assert 0.9 < elapsed < 5
    child = int(wait_for_file(tmp_path / "child"))
    grandchild = int(wait_for_file(tmp_path / "grandchild"))
    # The grandchild ignores SIGTERM: only the SIGKILL after the grace ends it.
    assert wait_dead(child, 5)
    assert wait_dead(grandchild, 5)
    assert gw.survivors() == []
    status, _, _ = await fetch("POST", gw.url, b"")
    assert status == 408  # and it keeps serving


async def test_write_timeout_answers_504_and_kills(gateway: StartGateway,
                                                   tmp_path: Path) -> None:
    gw = gateway([SH, str(FUNCTIONS / "sleeper.sh")],
                 env={"write_timeout": "1", "PIDS_DIR": str(tmp_path)})
    status, _, body = await fetch("POST", gw.url, b"")
    assert status == 504
    assert b"write_timeout" in body
    assert wait_dead(int(wait_for_file(tmp_path / "child")), 5)


async def test_client_hanging_up_kills_the_group(gateway: StartGateway,
                                                 tmp_path: Path) -> None:
    gw = gateway([SH, str(FUNCTIONS / "family.sh")],
                 env={"PIDS_DIR": str(tmp_path), "WATCHDOG_KILL_GRACE": "1s"})
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        child = int(wait_for_file(tmp_path / "child"))
        grandchild = int(wait_for_file(tmp_path / "grandchild"))
    assert wait_dead(child, 5)
    assert wait_dead(grandchild, 5)
    deadline = time.monotonic() + 5
    while metrics(gw).get(("http_requests_in_flight", ())) != 0:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    assert metrics(gw)[("http_requests_total", (("code", "499"), ("method", "post")))] == 1
    assert "status=499" in gw.log()


async def test_grandchild_holding_stdout_does_not_hold_the_response(
        gateway: StartGateway) -> None:
    gw = gateway([SH, "-c", "sleep 30 & echo hi"])
    started = time.monotonic()
    status, _, body = await fetch("POST", gw.url, b"")
    assert (status, body) == (200, b"hi\n")
    assert time.monotonic() - started < 2
    # the conftest teardown checks the `sleep` is gone


async def test_read_timeout_slow_body_gets_408(gateway: StartGateway) -> None:
    gw = gateway(["cat"], env={"read_timeout": "1"})
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.settimeout(10)
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
        started = time.monotonic()
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 408")
    assert 0.5 < time.monotonic() - started < 5


async def test_output_over_the_limit_is_500_and_killed(gateway: StartGateway) -> None:
    gw = gateway(["yes"], env={"WATCHDOG_MAX_OUTPUT_BYTES": "100k"})
    status, _, body = await fetch("POST", gw.url, b"")
    assert status == 500
    assert b"max_output_bytes" in body
    status, _, _ = await fetch("GET", gw.url + "/_/health")
    assert status == 200


async def test_body_over_the_limit_is_413_before_any_fork(gateway: StartGateway,
                                                          tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    gw = gateway([SH, "-c", f"touch {marker}; cat"], env={"WATCHDOG_MAX_BODY_BYTES": "1000"})
    status, _, body = await fetch("POST", gw.url, b"x" * 1001)
    assert status == 413
    assert b"max_body_bytes" in body
    assert not marker.exists()
    status, _, body = await fetch("POST", gw.url, b"x" * 1000)
    assert (status, body) == (200, b"x" * 1000)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"y" * 300

    async with aiohttp.ClientSession() as session, session.post(gw.url, data=chunks()) as r:
        assert r.status == 413  # no Content-Length: found out while streaming


# --- the limit -------------------------------------------------------------------------


async def test_limit_is_exact_and_429_carries_its_numbers(gateway: StartGateway,
                                                          tmp_path: Path) -> None:
    gw = gateway([sys.executable, str(FUNCTIONS / "concurrency.py")],
                 env={"WATCHDOG_MAX_INFLIGHT": "3", "COUNT_DIR": str(tmp_path),
                      "SLEEP": "1.5"})
    waves = 2
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0)) as session:

        async def one() -> tuple[int, dict[str, str], bytes]:
            async with session.post(gw.url, data=b"x") as response:
                return response.status, dict(response.headers), await response.read()

        for _ in range(waves):
            results = await asyncio.gather(*(one() for _ in range(30)))
            statuses = sorted(status for status, _, _ in results)
            assert statuses == [200] * 3 + [429] * 27
            for status, headers, body in results:
                if status == 200:
                    assert body == b"done\n"
                    continue
                assert body == b"Concurrent request limit exceeded. Max concurrent requests: 3\n"
                assert headers["Content-Type"].startswith("text/plain")
                assert headers["X-OpenFaaS-Internal"] == "faas-middleware"
                assert int(headers["Retry-After"]) >= 1
                assert headers["X-Watchdog-Inflight"] == "3"
                assert headers["X-Watchdog-Max-Inflight"] == "3"
    assert (tmp_path / "max").read_text() == "3"
    assert (tmp_path / "current").read_text() == "0"
    samples = metrics(gw)
    assert samples[("http_requests_total", (("code", "200"), ("method", "post")))] == 3 * waves
    assert samples[("http_requests_total", (("code", "429"), ("method", "post")))] == 27 * waves
    assert samples[("watchdog_rejected_requests_total", ())] == 27 * waves
    assert samples[("watchdog_max_inflight", ())] == 3
    assert samples[("http_requests_in_flight", ())] == 0
    count = ("http_request_duration_seconds_count", (("code", "429"), ("method", "post")))
    assert samples[count] == 27 * waves
    assert samples[("watchdog_function_duration_seconds_count", (("exit_status", "0"),))] \
        == 3 * waves


async def test_readiness_flips_at_capacity(gateway: StartGateway, tmp_path: Path) -> None:
    gw = gateway([SH, str(FUNCTIONS / "sleeper.sh")],
                 env={"max_inflight": "1", "PIDS_DIR": str(tmp_path), "SLEEP": "1"})
    assert (await fetch("GET", gw.url + "/_/ready"))[0] == 200
    slow = asyncio.ensure_future(fetch("POST", gw.url, b""))
    await file_appears(tmp_path / "child")
    status, _, body = await fetch("GET", gw.url + "/_/ready")
    assert (status, body) == (429, b"")
    assert (await fetch("GET", gw.url + "/_/health"))[0] == 200  # busy is not unhealthy
    assert (await slow)[0] == 200
    deadline = time.monotonic() + 5
    while (await fetch("GET", gw.url + "/_/ready"))[0] != 200:
        assert time.monotonic() < deadline


async def test_health_checks_and_scrapes_are_not_counted(gateway: StartGateway) -> None:
    gw = gateway(["cat"])
    for _ in range(3):
        await fetch("GET", gw.url + "/_/health")
        await fetch("GET", gw.url + "/_/ready")
        metrics(gw)
    samples = metrics(gw)
    assert not [key for key in samples if key[0] == "http_requests_total"]
    await fetch("POST", gw.url, b"one")
    samples = metrics(gw)
    assert [key for key in samples if key[0] == "http_requests_total"] == [
        ("http_requests_total", (("code", "200"), ("method", "post")))]
    buckets = sorted(dict(key[1])["le"] for key in samples
                     if key[0] == "http_request_duration_seconds_bucket")
    assert sorted(buckets, key=float) == [
        "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10",
        "+Inf"]  # as the Go watchdog writes them (not "1.0")


# --- options of the original -----------------------------------------------------------


async def test_marshal_request(gateway: StartGateway) -> None:
    gw = gateway(["cat"], env={"marshal_request": "true"})
    status, _, body = await fetch("POST", gw.url, b"\x00\x01raw",
                                  headers={"X-Thing": "a", "Content-Type": "text/x"})
    assert status == 200
    document = json.loads(body)
    assert b64decode(document["body"]["raw"]) == b"\x00\x01raw"
    assert document["header"]["X-Thing"] == ["a"]
    assert "Host" not in document["header"]


async def test_content_type_forced_or_echoed(gateway: StartGateway) -> None:
    gw = gateway(["cat"], env={"content_type": "application/json"})
    _, headers, _ = await fetch("POST", gw.url, b"{}", headers={"Content-Type": "text/plain"})
    assert headers["Content-Type"] == "application/json"
    gw2 = gateway(["cat"])
    _, headers, _ = await fetch("POST", gw2.url, b"a", headers={"Content-Type": "text/csv"})
    assert headers["Content-Type"] == "text/csv"


async def test_combine_output_false_sends_stderr_to_the_log(gateway: StartGateway) -> None:
    gw = gateway([SH, "-c", "echo out; echo secret-err >&2"],
                 env={"combine_output": "false"})
    status, _, body = await fetch("POST", gw.url, b"")
    assert (status, body) == (200, b"out\n")
    assert "secret-err" in gw.log()
    gw2 = gateway([SH, "-c", "echo out; echo err >&2"])
    assert (await fetch("POST", gw2.url, b""))[2] == b"out\nerr\n"


async def test_write_debug_logs_the_output(gateway: StartGateway) -> None:
    gw = gateway(["cat"], env={"write_debug": "true"})
    await fetch("POST", gw.url, b"visible-in-log")
    await asyncio.sleep(0.2)
    assert "visible-in-log" in gw.log()


# --- resources ---------------------------------------------------------------------------


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _zombie_children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] == "Z" and int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


async def test_no_leaked_descriptors_and_no_zombies(gateway: StartGateway) -> None:
    gw = gateway([SH, "-c", "cat; sleep 5 & exit 1"])
    await fetch("POST", gw.url, b"warm")
    await asyncio.sleep(0.5)
    before = _fds(gw.proc.pid)
    async with aiohttp.ClientSession() as session:
        for round_ in range(4):
            async def one(i: int) -> int:
                async with session.post(gw.url, data=b"%d" % i) as response:
                    await response.read()
                    return response.status
            statuses = await asyncio.gather(*(one(i) for i in range(25)))
            assert set(statuses) == {500}, round_
    await asyncio.sleep(0.6)  # the orphan sweep runs 0.2 s after an exit
    assert _fds(gw.proc.pid) <= before
    assert _zombie_children(gw.proc.pid) == []


# --- shutdown ------------------------------------------------------------------------------


async def test_sigterm_under_load_drains_and_exits_0(gateway: StartGateway,
                                                    tmp_path: Path) -> None:
    gw = gateway([SH, str(FUNCTIONS / "sleeper.sh")],
                 env={"healthcheck_interval": "1s", "write_timeout": "20s",
                      "PIDS_DIR": str(tmp_path), "SLEEP": "2"})
    lock = gw.tmp / ".lock"
    assert lock.exists()
    running = [asyncio.ensure_future(fetch("POST", gw.url, b"")) for _ in range(3)]
    deadline = time.monotonic() + 10
    while len(list(tmp_path.glob("child.*"))) < 3:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    gw.signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    assert not lock.exists()
    assert (await fetch("GET", gw.url + "/_/health"))[0] == 503
    assert (await fetch("GET", gw.url + "/_/ready"))[0] == 503
    # During healthcheck_interval it still serves, as the Go watchdog does.
    late = asyncio.ensure_future(fetch("POST", gw.url, b""))
    results = await asyncio.gather(*running, late)
    assert [status for status, _, _ in results] == [200] * 4
    assert all(body == b"slept\n" for _, _, body in results)
    assert await asyncio.to_thread(gw.proc.wait, 20) == 0
    assert "msg=stopped" in gw.log()
    assert gw.survivors() == []


async def test_sigint_stops_too_and_refuses_new_connections(gateway: StartGateway) -> None:
    gw = gateway(["cat"])
    gw.signal(signal.SIGINT)
    assert await asyncio.to_thread(gw.proc.wait, 10) == 0
    with pytest.raises(aiohttp.ClientConnectionError):
        await fetch("POST", gw.url, b"")


async def test_second_sigterm_ends_running_functions_with_503(gateway: StartGateway,
                                                             tmp_path: Path) -> None:
    gw = gateway([SH, str(FUNCTIONS / "family.sh")],
                 env={"healthcheck_interval": "30s", "write_timeout": "0",
                      "PIDS_DIR": str(tmp_path), "WATCHDOG_KILL_GRACE": "1s"})
    running = asyncio.ensure_future(fetch("POST", gw.url, b""))
    child = int(await file_appears(tmp_path / "child"))
    grandchild = int(await file_appears(tmp_path / "grandchild"))
    gw.signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    assert not running.done()  # the first one waits: healthcheck_interval, then drain
    gw.signal(signal.SIGTERM)
    status, _, body = await running
    assert status == 503
    assert b"shutting down" in body
    assert await asyncio.to_thread(gw.proc.wait, 10) == 0
    assert not alive(child)
    assert process_state(grandchild) in (None, "Z", "X")


# --- Expect: 100-continue ------------------------------------------------------------------


def _read_status_line(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n", 1)[0]


async def test_expect_100_continue_is_withheld_from_a_refused_upload(
        gateway: StartGateway, tmp_path: Path) -> None:
    gw = gateway([SH, str(FUNCTIONS / "sleeper.sh")],
                 env={"max_inflight": "1", "PIDS_DIR": str(tmp_path), "SLEEP": "2",
                      "WATCHDOG_MAX_BODY_BYTES": "10Mi"})
    head = (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
            b"Expect: 100-continue\r\n\r\n")

    def ask(length: int) -> bytes:
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            sock.sendall(head % length)
            return _read_status_line(sock)

    assert await asyncio.to_thread(ask, 20 << 20) == b"HTTP/1.1 413 Request Entity Too Large"
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as uploader:
        uploader.sendall(head % 1000)
        assert _read_status_line(uploader) == b"HTTP/1.1 100 Continue"  # free: come on
        uploader.sendall(b"x" * 1000)
        await file_appears(tmp_path / "child")  # that one holds the only slot now...
        busy = await asyncio.to_thread(ask, 5 << 20)
        assert busy == b"HTTP/1.1 429 Too Many Requests"  # ...so no invitation to upload


@pytest.mark.parametrize(("setting", "nicer"), [(None, 5), ("0", 0), ("12", 12)])
async def test_functions_run_nicer_than_the_gateway(gateway: StartGateway, setting: str | None,
                                                    nicer: int) -> None:
    # The nice value is set as the program starts: read it a moment later.
    gw = gateway([SH, "-c", "sleep 0.2; cut -d' ' -f19 /proc/$$/stat"],
                 env={} if setting is None else {"WATCHDOG_FUNCTION_NICE": setting})
    status, _, body = await fetch("POST", gw.url, b"")
    own = int(Path(f"/proc/{gw.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[16])
    assert (status, int(body)) == (200, min(19, own + nicer))
