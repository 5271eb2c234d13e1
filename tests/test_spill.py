"""Output past spill_output_bytes: moved from memory to an unnamed private file and
sent from there, so that the gateway's memory stays flat whatever the answers' size."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Gateway, StartGateway
from tests.test_gateway import fetch

# 2.7 MB of known text: well past the 1 MiB default threshold.
NUMBERS = ["seq", "1", "400000"]
EXPECTED = b"".join(b"%d\n" % n for n in range(1, 400001))


def spill_files(gw: Gateway) -> list[os.stat_result]:
    """The gateway's open regular files under its $TMPDIR, as fstat sees them."""
    found = []
    folder = f"/proc/{gw.proc.pid}/fd"
    for name in os.listdir(folder):
        try:
            target = os.readlink(f"{folder}/{name}")
            info = os.stat(f"{folder}/{name}")
        except OSError:
            continue  # closed meanwhile
        if target.startswith(str(gw.tmp)) and not target.endswith("gateway.log"):
            found.append(info)
    return found


def vm(pid: int, key: str) -> int:
    """A /proc/PID/status figure (VmRSS, VmHWM) in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(key)


@pytest.mark.parametrize("code", [0, 3])
async def test_large_output_is_held_in_an_unnamed_private_file_and_sent_whole(
        gateway: StartGateway, code: int) -> None:
    expected = EXPECTED
    # The output, then a pause, during which the gateway holds it.
    gw = gateway(["/bin/sh", "-c", f"{' '.join(NUMBERS)}; sleep 1; exit {code}"])
    answer = asyncio.ensure_future(fetch("POST", gw.url, b""))
    deadline = time.monotonic() + 10
    while [held.st_size for held in spill_files(gw)] != [len(expected)]:  # all written
        assert time.monotonic() < deadline, spill_files(gw)
        assert not answer.done(), answer.result()[:2]
        await asyncio.sleep(0.02)
    [held] = spill_files(gw)
    assert held.st_nlink == 0  # no name leads to it
    assert held.st_mode & 0o777 == 0o600
    status, headers, body = await answer
    if code:
        assert (status, body) == (500, b"exit status 3\n" + expected)
    else:
        assert (status, body) == (200, expected)
    assert int(headers["Content-Length"]) == len(body)
    await asyncio.sleep(0.1)
    assert spill_files(gw) == []  # closed once sent
    # (and no name was left in $TMPDIR: the fixture checks the folder.)


async def test_a_small_output_stays_in_memory(gateway: StartGateway) -> None:
    gw = gateway(["/bin/sh", "-c", "echo small; sleep 1"],
                 env={"WATCHDOG_SPILL_OUTPUT_BYTES": "64Ki"})
    answer = asyncio.ensure_future(fetch("POST", gw.url, b""))
    await asyncio.sleep(0.5)
    assert spill_files(gw) == []
    assert (await answer)[2] == b"small\n"


async def test_spilled_output_over_max_output_bytes_is_refused_and_dropped(
        gateway: StartGateway) -> None:
    gw = gateway(["/bin/sh", "-c", "head -c 5000000 /dev/zero; sleep 30"],
                 env={"WATCHDOG_MAX_OUTPUT_BYTES": "3Mi"})
    status, _, body = await fetch("POST", gw.url, b"")
    assert status == 500
    assert b"max_output_bytes" in body
    assert spill_files(gw) == []


async def test_ten_concurrent_60_mb_answers_keep_the_gateways_memory_flat(
        gateway: StartGateway) -> None:
    size = 60_000_000
    gw = gateway(["head", "-c", str(size), "/dev/zero"])
    assert len((await fetch("POST", gw.url, b""))[2]) == size  # warm: every import done
    before = vm(gw.proc.pid, "VmHWM")

    async def one(session: aiohttp.ClientSession) -> int:
        received = 0
        async with session.post(gw.url, data=b"") as response:
            assert response.status == 200
            async for chunk in response.content.iter_chunked(1 << 20):
                received += len(chunk)  # counted, not kept
        return received

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        sizes = await asyncio.wait_for(
            asyncio.gather(*(one(session) for _ in range(10))), 100)
    assert sizes == [size] * 10
    grown = vm(gw.proc.pid, "VmHWM") - before
    print(f"gateway VmHWM grew {grown / 2**20:.1f} MiB for ten 60 MB answers at once")
    assert grown < 30 * 2**20


async def test_output_that_cannot_be_stored_is_a_500_and_the_gateway_goes_on(
        tmp_path: Path) -> None:
    from tests.test_reliability import restricted_gateway

    # RLIMIT_FSIZE on the gateway: its spill file cannot pass 2 MB (as a full disk).
    with restricted_gateway(tmp_path, ["/bin/sh", "-c", "seq 1 ${Http_Query:-400000}"],
                            limits=["prlimit", "--fsize=2000000", "--"]) as url:
        status, _, body = await fetch("POST", url, b"")
        assert (status, body) == (
            500, b"Function output could not be stored under $TMPDIR; killed.\n")
        assert (await fetch("POST", url + "/?3", b""))[::2] == (200, b"1\n2\n3\n")
        assert (await fetch("GET", url + "/_/health"))[0] == 200


async def test_without_a_file_for_it_output_is_held_in_memory(gateway: StartGateway,
                                                               tmp_path: Path) -> None:
    # $TMPDIR that does not exist (a scratch image without /tmp, or a read-only root
    # with suppress_lock, as Go documents it): the answer is whole, from memory.
    gw = gateway(NUMBERS, env={"TMPDIR": str(tmp_path / "missing"), "suppress_lock": "true"})
    status, _, body = await fetch("POST", gw.url, b"")
    assert (status, len(body)) == (200, len(EXPECTED))
    assert body == EXPECTED
    status, _, body = await fetch("POST", gw.url, b"")  # and again: no second warning
    assert status == 200
    assert gw.log_path.read_text().count("output is held in memory") == 1
