"""http mode (of-watchdog's mode=http) and the sidecar: a real aiohttp server, started
by the gateway or beside it, behind the gateway's limit."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import FUNCTIONS, StartGateway, free_port, statuses_at_once

APP = [sys.executable, str(FUNCTIONS / "http_app.py")]


def http_env(port: int, **extra: str) -> dict[str, str]:
    return {"mode": "http", "upstream_url": f"http://127.0.0.1:{port}", **extra}


@pytest.fixture
def beside() -> Iterator[int]:
    """The sidecar's neighbour: the same server, started by the test, not the gateway."""
    port = free_port()
    proc = subprocess.Popen([*APP, str(port)], stderr=subprocess.DEVNULL)
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


async def test_requests_are_forwarded_with_method_target_headers_and_body(
        gateway: StartGateway) -> None:
    port = free_port()
    gw = gateway([*APP, str(port)], env=http_env(port))
    async with aiohttp.ClientSession() as session:
        async with session.put(gw.url + "/a%2Fb/c?x=1&y=%20", data=b"hello upstream",
                               headers={"X-Thing": "1", "Host": "fn.example"}) as r:
            assert r.status == 200
            assert r.headers["X-Duration-Seconds"]
            seen = await r.json()
        assert seen["method"] == "PUT"
        assert seen["target"] == "/a%2Fb/c?x=1&y=%20"  # escapes kept, as sent
        assert seen["body"] == "hello upstream"
        assert seen["headers"]["X-Thing"] == "1"
        assert seen["headers"]["Host"] == "fn.example"
        # A chunked upload goes on chunked; OPTIONS is forwarded as every method is.
        async def chunks() -> AsyncIterator[bytes]:
            for piece in (b"a" * 100_000, b"b" * 100_000):
                yield piece
        async with session.post(gw.url + "/up", data=chunks()) as r:
            assert len((await r.json())["body"]) == 200_000
        async with session.options(gw.url + "/cors") as r:
            assert (await r.json())["method"] == "OPTIONS"
    log = gw.log()
    assert "upstream up" in log  # the server's stderr is in the gateway's log


async def test_a_connection_the_server_closed_while_idle_is_not_reused(
        gateway: StartGateway) -> None:
    port = free_port()
    gw = gateway([*APP, str(port), "0.2"], env=http_env(port))
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.get(gw.url + "/again") as r:
                assert r.status == 200
            await asyncio.sleep(0.5)  # the server has closed its side by now


async def test_the_limit_is_exact_through_the_proxy(gateway: StartGateway) -> None:
    port = free_port()
    gw = gateway([*APP, str(port)], env=http_env(port, max_inflight="2"))
    statuses = await statuses_at_once(gw.url + "/slow?s=0.6", 6)
    assert sorted(statuses) == [200, 200, 429, 429, 429, 429]
    async with aiohttp.ClientSession() as session, session.get(
            gw.url + "/slow?s=0") as r:  # the slots came back
        assert r.status == 200


async def test_exec_timeout_answers_504_and_a_dead_server_stops_the_gateway(
        gateway: StartGateway) -> None:
    port = free_port()
    gw = gateway([*APP, str(port)], env=http_env(port, exec_timeout="300ms"))
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.url + "/slow?s=5") as r:
            assert r.status == 504
            assert r.headers["X-OpenFaaS-Internal"] == "of-watchdog"
        async with session.post(gw.url + "/die") as r:
            assert r.status == 502
            assert r.headers["X-OpenFaaS-Internal"] == "of-watchdog"
    assert gw.proc.wait(15) == 1  # as of-watchdog: the pod restarts it
    assert "dying now" in gw.log()


async def test_server_sent_events_flow_as_they_are_written(gateway: StartGateway) -> None:
    port = free_port()
    gw = gateway([*APP, str(port)], env=http_env(port))
    async with aiohttp.ClientSession() as session:
        began = time.monotonic()
        async with session.get(gw.url + "/events?n=3&gap=0.5") as r:
            assert r.headers["Transfer-Encoding"] == "chunked"
            first = await r.content.readuntil(b"\n\n")
            first_at = time.monotonic() - began
            rest = await r.read()
        total = time.monotonic() - began
    assert first == b"data: 0\n\n"
    assert rest == b"data: 1\n\ndata: 2\n\n"
    assert first_at < total / 3  # the first event came before the stream ended


async def test_a_sidecar_limits_a_server_it_did_not_start(
        gateway: StartGateway, beside: int) -> None:
    gw = gateway([], env=http_env(beside, max_inflight="1"))
    async with aiohttp.ClientSession() as session:
        async def call() -> int:
            async with session.get(gw.url + "/slow?s=0.5") as r:
                await r.read()
                return r.status
        assert sorted(await asyncio.gather(call(), call(), call())) == [200, 429, 429]
        async with session.get(gw.url + "/_/health") as r:
            assert r.status == 200


def test_a_server_that_never_listens_stops_start_up_naming_it(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        unused = s.getsockname()[1]
    proc = subprocess.run(
        [sys.executable, "-m", "watchdog", "--", "sh", "-c", "exit 0"],
        env={"PATH": "/usr/bin:/bin", "mode": "http", "WATCHDOG_PORT": "0",
             "WATCHDOG_METRICS_PORT": "0", "upstream_url": f"http://127.0.0.1:{unused}",
             "PYTHONPATH": str(FUNCTIONS.parent.parent), "TMPDIR": str(tmp_path)},
        capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "upstream exited" in proc.stderr


def test_http_mode_refuses_several_workers_each_starting_the_server() -> None:
    proc = subprocess.run([sys.executable, "-m", "watchdog", "--workers", "2", "--port",
                           "8080", "--", "true"],
                          env={"PATH": "/usr/bin:/bin", "mode": "http",
                               "upstream_url": "http://127.0.0.1:5000",
                               "PYTHONPATH": str(FUNCTIONS.parent.parent)},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "WATCHDOG_WORKERS='2': expected 1 in http mode with fprocess" in proc.stderr


def test_http_mode_needs_an_upstream_url() -> None:
    proc = subprocess.run([sys.executable, "-m", "watchdog", "--", "true"],
                          env={"PATH": "/usr/bin:/bin", "mode": "http",
                               "PYTHONPATH": str(FUNCTIONS.parent.parent)},
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "WATCHDOG_UPSTREAM_URL" in proc.stderr
    assert "http://HOST:PORT" in proc.stderr


async def test_repeated_set_cookie_and_the_length_of_a_head_answer_come_through(
        gateway: StartGateway) -> None:
    port = free_port()
    gw = gateway([*APP, str(port)], env=http_env(port))
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.url + "/cookies") as r:
            assert r.headers.getall("Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]
            assert await r.read() == b"two cookies\n"
        async with session.head(gw.url + "/cookies") as r:
            assert r.status == 200
            assert r.headers["Content-Length"] == "12"  # what the GET got, announced


async def test_buffer_http_sends_a_chunked_body_with_its_length(gateway: StartGateway) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for piece in (b"x" * 70_000, b"y" * 70_000):
            yield piece
            await asyncio.sleep(0.05)  # not all there with the head

    for buffered, expected in (("true", "140000"), ("false", None)):
        port = free_port()
        gw = gateway([*APP, str(port)], env=http_env(port, http_buffer_req_body=buffered))
        async with aiohttp.ClientSession() as session, session.post(
                gw.url + "/up", data=chunks()) as r:
            seen = await r.json()
        assert len(seen["body"]) == 140_000
        assert seen["headers"].get("Content-Length") == expected, buffered
        assert ("Transfer-Encoding" in seen["headers"]) is (expected is None)


async def test_ready_path_asks_the_server_within_the_gateways_own_checks(
        gateway: StartGateway, tmp_path: Path) -> None:
    port = free_port()
    flag = tmp_path / "not-ready"
    flag.touch()
    gw = gateway([*APP, str(port)], env=http_env(port, ready_path="/healthz",
                                                   NOT_READY=str(flag)))
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.url + "/_/ready") as r:
            assert r.status == 503
            assert await r.text() == "warming up\n"
        flag.unlink()
        async with session.get(gw.url + "/_/ready") as r:
            assert r.status == 200
            assert await r.text() == "ready from the server\n"
        async with session.get(gw.url + "/_/health") as r:
            assert await r.text() == "OK"  # health stays the gateway's own
        async with session.get(gw.metrics_url) as r:
            assert "\nhttp_requests_total{" not in await r.text()  # a probe is no request


async def test_a_wsgi_application_under_a_real_wsgi_server(gateway: StartGateway) -> None:
    port = free_port()
    gw = gateway([sys.executable, str(FUNCTIONS / "wsgi_app.py"), str(port)],
                 env=http_env(port, max_inflight="2"))
    async with aiohttp.ClientSession() as session:
        for i in range(5):  # wsgiref closes every connection: none is reused
            async with session.post(gw.url + f"/wsgi/{i}?q={i}", data=b"form") as r:
                assert r.status == 200
                assert await r.json() == {"method": "POST", "path": f"/wsgi/{i}",
                                          "query": f"q={i}", "body": "form"}


@pytest.mark.parametrize(("settings", "line"), [
    ({}, 'msg="upstream up [\\"{port}\\"]" upstream=stderr'),  # a log line of the gateway's
    ({"prefix_logs": "false"}, '\nupstream up ["{port}"]\n'),  # as the server wrote it
    ({"log_buffer_size": "16"}, None),  # longer than that: dropped
])
async def test_the_servers_output_in_the_log_as_of_watchdogs_options_say(
        gateway: StartGateway, settings: dict[str, str], line: str | None) -> None:
    port = free_port()
    gw = gateway([*APP, str(port)], env=http_env(port, **settings))
    async with aiohttp.ClientSession() as session, session.get(
            gw.url + "/x", headers={"X-Call-Id": "c-42"}) as r:
        assert r.status == 200
    gw.stop()
    log = gw.log()
    if line is None:
        assert "upstream up" not in log
    else:
        assert line.format(port=port) in log
    assert "call_id=" not in log  # log_callid is off by default


async def test_log_callid_puts_the_call_id_in_the_access_line(gateway: StartGateway) -> None:
    port = free_port()
    gw = gateway([*APP, str(port)], env=http_env(port, log_callid="true"))
    async with aiohttp.ClientSession() as session:
        for headers in ({"X-Call-Id": "c-42"}, {}):
            async with session.get(gw.url + "/x", headers=headers) as r:
                assert r.status == 200
    gw.stop()
    log = gw.log()
    assert "path=/x status=200" in log
    assert " call_id=c-42\n" in log
    assert " call_id=none\n" in log


async def test_a_websocket_passes_through_within_the_limit(gateway: StartGateway) -> None:
    port = free_port()
    gw = gateway([*APP, str(port)], env=http_env(port, max_inflight="1"))
    big = os.urandom(3 * 2**20)  # more than the tunnel holds at once: backpressure
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(gw.url + "/ws", max_msg_size=2**24) as ws:
            await ws.send_str("hello")
            assert (await ws.receive_str(timeout=10)) == "echo: hello"
            await ws.send_bytes(big)
            assert (await ws.receive_bytes(timeout=20)) == big
            async with session.get(gw.url + "/x") as r:
                assert r.status == 429  # the open WebSocket holds the one slot
        # Closed: its slot is given back.
        for _ in range(100):
            async with session.get(gw.url + "/x") as r:
                if r.status == 200:
                    break
            await asyncio.sleep(0.05)
        assert r.status == 200


async def test_exec_timeout_ends_a_websocket(gateway: StartGateway) -> None:
    port = free_port()
    gw = gateway([*APP, str(port)], env=http_env(port, exec_timeout="1s"))
    async with aiohttp.ClientSession() as session, session.ws_connect(gw.url + "/ws") as ws:
        await ws.send_str("early")
        assert (await ws.receive_str(timeout=5)) == "echo: early"
        # Closed by the gateway at the deadline (else this wait times out).
        message = await ws.receive(timeout=10)
        assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR)


async def test_a_server_slow_to_start_is_waited_for_before_the_port_opens(
        gateway: StartGateway) -> None:
    port = free_port()
    began = time.monotonic()
    gw = gateway([*APP, str(port), "75", "1.5"], env=http_env(port))
    assert time.monotonic() - began >= 1.5  # listening only once the server accepts
    async with aiohttp.ClientSession() as session:
        async with session.get(gw.url + "/_/ready") as r:
            assert r.status == 200
        async with session.get(gw.url + "/first") as r:
            assert r.status == 200  # never a 502 for a server still starting
