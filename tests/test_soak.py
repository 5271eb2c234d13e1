"""The soak: a bounded run of mixed good, failing, crashing, slow, hanging and
overloaded requests, with exact accounting. SOAK_SECONDS sets its length (45 s by
default, the CI budget; `SOAK_SECONDS=600 pytest tests/test_soak.py` for longer)."""

from __future__ import annotations

import asyncio
import collections
import os
import random
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import FUNCTIONS, StartGateway
from tests.test_gateway import metrics

KINDS = {  # query -> what the client must see
    "ok": {200}, "fail": {500}, "slow": {200}, "crash": {500}, "big": {200},
    "hang": {499},  # the client hangs up after 0.3 s
}


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def children(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()


SECONDS = float(os.environ.get("SOAK_SECONDS", "45"))


@pytest.mark.timeout(SECONDS + 90)
async def test_soak_with_exact_accounting(gateway: StartGateway) -> None:
    seconds = SECONDS
    gw = gateway(["/bin/sh", str(FUNCTIONS / "mixed.sh")], env={
        "WATCHDOG_MAX_INFLIGHT": "4", "exec_timeout": "2s", "WATCHDOG_KILL_GRACE": "500ms"})
    pid = gw.proc.pid
    seen: collections.Counter[int] = collections.Counter()
    wrong: list[tuple[str, int]] = []
    rng = random.Random(7)

    async def warm() -> None:
        async with aiohttp.ClientSession() as session:
            for _ in range(20):
                async with session.post(gw.url + "/?ok", data=b"warm") as response:
                    seen[response.status] += 1
                    await response.read()

    await warm()
    await asyncio.sleep(0.5)
    fds_before, rss_before = fds(pid), rss_kib(pid)

    async def client(session: aiohttp.ClientSession) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            kind = rng.choice([*KINDS, "ok", "ok", "slow", "slow"])
            payload = os.urandom(rng.randrange(0, 4096))
            try:
                async with session.post(
                        f"{gw.url}/?{kind}", data=payload,
                        timeout=aiohttp.ClientTimeout(total=0.3 if kind == "hang" else 10),
                ) as response:
                    body = await response.read()
                    status = response.status
                    if status == 200 and kind == "ok":
                        assert body == payload
            except TimeoutError:
                status = 499
            seen[status] += 1
            if status != 429 and status not in KINDS[kind]:
                wrong.append((kind, status))

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        await asyncio.gather(*(client(session) for _ in range(12)))

    deadline = time.monotonic() + 10
    while metrics(gw).get(("http_requests_in_flight", ())) != 0 or children(pid):
        assert time.monotonic() < deadline, children(pid)
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # the server side of the closed connections
    samples = metrics(gw)
    counted = {int(dict(labels)["code"]): value for (name, labels), value in samples.items()
               if name == "http_requests_total"}
    assert wrong == []
    for status in (200, 429, 499, 500):  # every path was taken
        assert seen[status] > 0, seen
    assert counted == dict(seen)  # every request, once, with the status the client saw
    assert samples[("watchdog_rejected_requests_total", ())] == seen[429]
    assert fds(pid) <= fds_before + 2
    assert children(pid) == []  # no zombie, no straggler
    assert rss_kib(pid) - rss_before < 10 << 10
