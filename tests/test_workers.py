"""WATCHDOG_WORKERS=2: one port served by two processes, the limit exact across
them, metrics that add up, workers replaced when they die."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import FUNCTIONS, Gateway, StartGateway, alive, free_port, wait_dead
from tests.test_gateway import fetch, file_appears, metrics


def two_workers(gateway: StartGateway, command: list[str], **env: str) -> Gateway:
    return gateway(command, env={"WATCHDOG_WORKERS": "2", "WATCHDOG_PORT": str(free_port()),
                                 "WATCHDOG_METRICS_PORT": str(free_port()), **env})


def worker_pids(gw: Gateway) -> set[int]:
    children = Path(f"/proc/{gw.proc.pid}/task/{gw.proc.pid}/children").read_text().split()
    return {int(pid) for pid in children if "python" in Path(f"/proc/{pid}/cmdline").read_text()}


async def test_limit_is_exact_across_workers_and_metrics_add_up(
        gateway: StartGateway, tmp_path: Path) -> None:
    gw = two_workers(gateway, [sys.executable, str(FUNCTIONS / "concurrency.py")],
                     WATCHDOG_MAX_INFLIGHT="3", COUNT_DIR=str(tmp_path), SLEEP="1.5")
    assert gw.log().count("msg=listening") == 2 or await _second_listening(gw)
    # A new connection per request, so that the kernel spreads them over both workers.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True,
                                                                    limit=0)) as session:
        async def one() -> tuple[int, str]:
            async with session.post(gw.url, data=b"x") as response:
                await response.read()
                return response.status, response.headers.get("X-Watchdog-Inflight", "")
        results = await asyncio.gather(*(one() for _ in range(30)))
    assert sorted(status for status, _ in results) == [200] * 3 + [429] * 27
    assert {inflight for status, inflight in results if status == 429} == {"3"}
    assert (tmp_path / "max").read_text() == "3"
    samples = metrics(gw)
    assert samples[("http_requests_total", (("code", "200"), ("method", "post")))] == 3
    assert samples[("http_requests_total", (("code", "429"), ("method", "post")))] == 27
    assert samples[("watchdog_rejected_requests_total", ())] == 27
    assert samples[("http_requests_in_flight", ())] == 0
    assert samples[("watchdog_max_inflight", ())] == 3


async def _second_listening(gw: Gateway) -> bool:
    deadline = time.monotonic() + 10
    while gw.log().count("msg=listening") < 2:
        assert time.monotonic() < deadline, gw.log()
        await asyncio.sleep(0.05)
    return True


async def test_both_workers_serve(gateway: StartGateway) -> None:
    gw = two_workers(gateway, ["/bin/sh", "-c", "echo $PPID"])
    await _second_listening(gw)
    parents = set()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s:
        for _ in range(40):
            async with s.post(gw.url, data=b"") as response:
                parents.add(int(await response.read()))
    assert parents == worker_pids(gw)
    assert len(parents) == 2


async def test_a_dead_worker_is_replaced_and_its_slots_given_back(
        gateway: StartGateway, tmp_path: Path) -> None:
    gw = two_workers(gateway, ["/bin/sh", str(FUNCTIONS / "sleeper.sh")],
                     WATCHDOG_MAX_INFLIGHT="1", PIDS_DIR=str(tmp_path), SLEEP="30")
    await _second_listening(gw)
    slow = asyncio.ensure_future(fetch("POST", gw.url, b""))
    function = int(await file_appears(tmp_path / "child"))
    holder = int(Path(f"/proc/{function}/stat").read_text().rsplit(")", 1)[1].split()[1])
    assert holder in worker_pids(gw)
    assert (await fetch("POST", gw.url, b""))[0] == 429  # the only slot is taken
    os.kill(holder, signal.SIGKILL)  # a crash, with a slot held
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await slow  # its client is cut off...
    assert wait_dead(function, 5)  # ...and its function ended by the supervisor
    deadline = time.monotonic() + 10
    while len(worker_pids(gw)) < 2 or holder in worker_pids(gw):
        assert time.monotonic() < deadline, gw.log()
        await asyncio.sleep(0.05)
    assert "worker died" in gw.log()
    # Its slot came back: a request gets through again (it runs: SLEEP is 30 s, so
    # look for its pid file rather than its answer).
    (tmp_path / "child").unlink()
    running = asyncio.ensure_future(fetch("POST", gw.url, b""))
    await file_appears(tmp_path / "child")
    running.cancel()
    gw.signal(signal.SIGTERM)
    await asyncio.sleep(0.2)  # two signals at once would merge into one
    gw.signal(signal.SIGTERM)
    assert await asyncio.to_thread(gw.proc.wait, 20) == 0


async def test_sigterm_stops_every_worker_with_status_0(gateway: StartGateway) -> None:
    gw = two_workers(gateway, ["cat"])
    await _second_listening(gw)
    workers = worker_pids(gw)
    assert len(workers) == 2
    assert (await fetch("POST", gw.url, b"hi"))[2] == b"hi"
    gw.signal(signal.SIGTERM)
    assert await asyncio.to_thread(gw.proc.wait, 20) == 0
    assert not any(alive(pid) for pid in workers)
    assert gw.log().count("msg=stopped") == 2


async def test_workers_and_their_functions_end_with_a_killed_supervisor(
        gateway: StartGateway, tmp_path: Path) -> None:
    # An OOM kill or a crash of the supervisor: nothing forwards a signal, nobody
    # ends the functions. The workers must not go on serving (reparented to init).
    port = free_port()
    gw = gateway(["/bin/sh", str(FUNCTIONS / "sleeper.sh")],
                 env={"WATCHDOG_WORKERS": "2", "WATCHDOG_PORT": str(port),
                      "WATCHDOG_METRICS_PORT": str(free_port()), "PIDS_DIR": str(tmp_path),
                      "SLEEP": "300"})
    await _second_listening(gw)
    workers = worker_pids(gw)
    assert len(workers) == 2
    slow = asyncio.ensure_future(fetch("POST", gw.url, b""))
    function = int(await file_appears(tmp_path / "child"))  # a request in flight
    os.kill(gw.proc.pid, signal.SIGKILL)
    await asyncio.to_thread(gw.proc.wait, 5)
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in (*workers, function)) or gw.survivors():
        assert time.monotonic() < deadline, (gw.survivors(), gw.log())
        await asyncio.sleep(0.05)
    # Its client was answered (the second-signal path: 503) or cut off, not left hanging.
    try:
        status = (await asyncio.wait_for(slow, 5))[0]
    except aiohttp.ClientError:
        status = None
    assert status in (503, None)
    assert gw.log().count("msg=\"supervisor gone: stopping now\"") == 2
    with socket.socket() as sock:  # the port is free: no worker listens on it
        # (SO_REUSEADDR lets the closed connections' TIME_WAIT be, never a listener.)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen()
