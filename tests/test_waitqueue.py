"""The wait queue (max_queue, queue_timeout), against a running gateway: order,
bound, deadline, a waiter that hangs up, the limit exact with waiters, metrics,
readiness and shutdown."""

from __future__ import annotations

import asyncio
import functools
import signal
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Gateway, StartGateway, statuses_at_once
from watchdog.config import Config, ConfigError

# Notes its start in $STARTS, waits for $GO (a file the test makes), notes its end.
HELD = ["sh", "-c", 'echo "start $Http_X_N" >> "$STARTS"; '
        'while [ ! -e "$GO" ]; do sleep 0.01; done; echo "end $Http_X_N" >> "$STARTS"; '
        'echo "$Http_X_N"']


def queued(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"max_inflight": "1", "WATCHDOG_MAX_QUEUE": "4",
            "STARTS": str(tmp_path / "starts"), "GO": str(tmp_path / "go"), **extra}


def starts(tmp_path: Path) -> list[str]:
    path = tmp_path / "starts"
    return path.read_text().split("\n")[:-1] if path.exists() else []


async def until(check: Callable[[], bool], within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        assert loop.time() < deadline, "never came"
        await asyncio.sleep(0.02)


async def metrics(gw: Gateway, session: aiohttp.ClientSession) -> str:
    async with session.get(gw.metrics_url) as r:
        return await r.text()


async def test_waiters_are_served_in_order_without_a_429(
        gateway: StartGateway, tmp_path: Path) -> None:
    gw = gateway(HELD, env=queued(tmp_path))
    async with aiohttp.ClientSession() as session:
        async def call(n: int) -> tuple[int, str]:
            async with session.get(gw.url + "/", headers={"X-N": str(n)}) as r:
                return r.status, await r.text()

        first = asyncio.create_task(call(0))
        await until(lambda: starts(tmp_path) == ["start 0"])
        rest = []
        for n in (1, 2, 3):  # queued in this order
            rest.append(asyncio.create_task(call(n)))
            await until(functools.partial(_depth_is, gw, n))
        async with session.get(gw.url + "/_/ready") as r:
            assert r.status == 429  # readiness follows the slots, not the queue
        (tmp_path / "go").touch()
        answers = [await first, *[await task for task in rest]]
    assert answers == [(200, f"{n}\n") for n in range(4)]
    # One at a time, first come first served.
    assert starts(tmp_path) == [f"{what} {n}" for n in range(4) for what in ("start", "end")]


def _depth_is(gw: Gateway, depth: int) -> bool:
    return f"queue_depth {depth}" in _depth_line(gw)


def _depth_line(gw: Gateway) -> str:
    import urllib.request

    with urllib.request.urlopen(gw.metrics_url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("watchdog_queue_depth "):
                value: str = line.split()[1]
                return "queue_depth " + value.removesuffix(".0")
    return ""


async def test_a_full_queue_answers_429_at_once_and_says_why(
        gateway: StartGateway, tmp_path: Path) -> None:
    gw = gateway(HELD, env=queued(tmp_path, WATCHDOG_MAX_QUEUE="2"))
    async with aiohttp.ClientSession() as session:
        held = [asyncio.create_task(session.get(gw.url + "/", headers={"X-N": str(n)}))
                for n in range(3)]  # one runs, two wait
        await until(lambda: "queue_depth 2" in _depth_line(gw))
        async with session.get(gw.url + "/") as r:
            assert r.status == 429
            assert r.headers["X-Watchdog-Rejected"] == "queue_full"
            assert "wait queue is full" in await r.text()
        text = await metrics(gw, session)
        assert 'watchdog_rejections_total{reason="queue_full"} 1' in text
        (tmp_path / "go").touch()
        for task in held:
            response = await task
            assert response.status == 200
            response.close()
    assert len([line for line in starts(tmp_path) if line.startswith("start")]) == 3


async def test_a_waiter_past_queue_timeout_gets_429(gateway: StartGateway,
                                                    tmp_path: Path) -> None:
    gw = gateway(HELD, env=queued(tmp_path, WATCHDOG_QUEUE_TIMEOUT="300ms"))
    async with aiohttp.ClientSession() as session:
        running = asyncio.create_task(session.get(gw.url + "/", headers={"X-N": "0"}))
        await until(lambda: starts(tmp_path) == ["start 0"])
        async with session.get(gw.url + "/", headers={"X-N": "1"}) as r:
            assert r.status == 429
            assert r.headers["X-Watchdog-Rejected"] == "queue_timeout"
        text = await metrics(gw, session)
        assert 'watchdog_rejections_total{reason="queue_timeout"} 1' in text
        assert "watchdog_queue_wait_seconds_count 1" in text
        (tmp_path / "go").touch()
        (await running).close()
    assert "start 1" not in starts(tmp_path)  # it never ran


async def test_a_waiter_that_hangs_up_leaves_and_never_takes_a_slot(
        gateway: StartGateway, tmp_path: Path) -> None:
    gw = gateway(HELD, env=queued(tmp_path))
    async with aiohttp.ClientSession() as session:
        running = asyncio.create_task(session.get(gw.url + "/", headers={"X-N": "0"}))
        await until(lambda: starts(tmp_path) == ["start 0"])
        gone = asyncio.create_task(session.get(gw.url + "/", headers={"X-N": "1"}))
        await until(lambda: "queue_depth 1" in _depth_line(gw))
        gone.cancel()  # the client hangs up while it waits
        await until(lambda: "queue_depth 0" in _depth_line(gw))
        later = asyncio.create_task(session.get(gw.url + "/", headers={"X-N": "2"}))
        await until(lambda: "queue_depth 1" in _depth_line(gw))
        (tmp_path / "go").touch()
        (await running).close()
        response = await later
        assert response.status == 200
        assert await response.text() == "2\n"
    assert "start 1" not in starts(tmp_path)


async def test_the_limit_stays_exact_with_waiters(gateway: StartGateway,
                                                  tmp_path: Path) -> None:
    log = tmp_path / "runs"
    script = (f'echo "+" >> {log}; sleep 0.05; echo "-" >> {log}')
    gw = gateway(["sh", "-c", script], env={"max_inflight": "2", "WATCHDOG_MAX_QUEUE": "16",
                                            "WATCHDOG_QUEUE_TIMEOUT": "30s"})
    statuses = await statuses_at_once(gw.url + "/", 16)
    assert statuses == [200] * 16  # none refused while the queue had room
    running = most = 0
    for mark in log.read_text().split():
        running += 1 if mark == "+" else -1
        most = max(most, running)
    assert most == 2


async def test_shutdown_answers_waiters_503(gateway: StartGateway, tmp_path: Path) -> None:
    gw = gateway(HELD, env=queued(tmp_path, healthcheck_interval="5s"))
    async with aiohttp.ClientSession() as session:
        running = asyncio.create_task(session.get(gw.url + "/", headers={"X-N": "0"}))
        await until(lambda: starts(tmp_path) == ["start 0"])
        waiting = asyncio.create_task(session.get(gw.url + "/", headers={"X-N": "1"}))
        await until(lambda: "queue_depth 1" in _depth_line(gw))
        gw.signal(signal.SIGTERM)
        response = await waiting
        assert response.status == 503
        (tmp_path / "go").touch()
        (await running).close()
    assert "start 1" not in starts(tmp_path)


def test_the_queue_serves_one_worker() -> None:
    with pytest.raises(ConfigError, match="max_queue"):
        Config.from_env({"fprocess": "cat", "WATCHDOG_MAX_QUEUE": "4",
                         "WATCHDOG_WORKERS": "2", "WATCHDOG_PORT": "8080"})
