"""The core scenarios once more on the plain asyncio loop (uvloop is the default):
`WATCHDOG_LOOP=asyncio` must be as correct, only slower."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from tests.conftest import FUNCTIONS, StartGateway, wait_dead
from tests.test_gateway import fetch, wait_for_file


async def test_asyncio_loop_round_trip_limit_and_group_kill(gateway: StartGateway,
                                                            tmp_path: Path) -> None:
    gw = gateway(["cat"], env={"WATCHDOG_LOOP": "asyncio"})
    status, _, body = await fetch("POST", gw.url, b"plain loop")
    assert (status, body) == (200, b"plain loop")

    slow = gateway(["/bin/sh", str(FUNCTIONS / "family.sh")],
                   env={"WATCHDOG_LOOP": "asyncio", "max_inflight": "1", "exec_timeout": "1",
                        "PIDS_DIR": str(tmp_path), "WATCHDOG_KILL_GRACE": "0.5s"})
    async with aiohttp.ClientSession() as session:
        async def one() -> int:
            async with session.post(slow.url, data=b"") as response:
                return response.status
        statuses = sorted(await asyncio.gather(*(one() for _ in range(5))))
    assert statuses == [408, 429, 429, 429, 429]
    assert wait_dead(int(wait_for_file(tmp_path / "child")), 5)
    assert wait_dead(int(wait_for_file(tmp_path / "grandchild")), 5)
