"""Breaking things on purpose, against a running gateway: every fault gets a clear
answer, nothing is lost or left behind, and the gateway keeps serving after each.
docs/RELIABILITY.md is the table of what is tried here."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import FUNCTIONS, Gateway, StartGateway, alive, free_port, wait_dead
from tests.test_gateway import fetch, file_appears, metrics, wait_for_file

SH = "/bin/sh"


async def still_serving(gw: Gateway) -> None:
    status, _, body = await fetch("GET", gw.url + "/_/health")
    assert (status, body) == (200, b"OK")


def rss_kib(gw: Gateway) -> int:
    for line in Path(f"/proc/{gw.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def raw(gw: Gateway, data: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes as they are; what comes back until the server closes or stops."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=timeout) as sock:
        sock.sendall(data)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except TimeoutError:
            pass
    return answer


# --- functions that misbehave ----------------------------------------------------------


@pytest.mark.parametrize(("command", "said"), [
    ("kill -KILL $$", b"signal: killed\n"),
    ("kill -SEGV $$", b"signal: segmentation fault"),
    ("kill -ABRT $$", b"signal: aborted"),
])
async def test_function_dies_by_signal(gateway: StartGateway, command: str, said: bytes) -> None:
    gw = gateway([SH, "-c", command])
    status, _, body = await fetch("POST", gw.url, b"")
    assert status == 500
    assert body.startswith(said)
    await still_serving(gw)


async def test_function_closes_stdout_and_runs_on(gateway: StartGateway) -> None:
    gw = gateway([SH, "-c", "exec >&- 2>&-; sleep 30"], env={"exec_timeout": "1s",
                                                              "WATCHDOG_KILL_GRACE": "500ms"})
    started = time.monotonic()
    status, _, body = await fetch("POST", gw.url, b"")
    assert (status, body) == (408, b"Killed process.\n")  # the exit, not the EOF, decides
    assert time.monotonic() - started < 5
    await still_serving(gw)


async def test_function_never_reads_a_large_body(gateway: StartGateway) -> None:
    gw = gateway([SH, "-c", "sleep 1; echo ignored it"])
    before = rss_kib(gw)
    status, _, body = await fetch("POST", gw.url, os.urandom(32 << 20))
    assert (status, body) == (200, b"ignored it\n")  # the rest of the body was dropped
    assert rss_kib(gw) - before < 16 << 10  # backpressure: never the 32 MiB held
    await still_serving(gw)


async def test_function_floods_output(gateway: StartGateway, tmp_path: Path) -> None:
    gw = gateway([SH, "-c", f"echo $$ > {tmp_path}/pid; exec yes flood"],
                 env={"WATCHDOG_MAX_OUTPUT_BYTES": "4Mi"})
    before = rss_kib(gw)
    status, _, body = await fetch("POST", gw.url, b"")
    assert status == 500
    assert b"max_output_bytes" in body
    assert wait_dead(int(wait_for_file(tmp_path / "pid")), 5)
    assert rss_kib(gw) - before < 16 << 10
    await still_serving(gw)


async def test_daemonised_grandchild_is_ended_by_shutdown(gateway: StartGateway,
                                                          tmp_path: Path) -> None:
    # It must have left the group before its function ends: strays still in the
    # group are killed then.
    gw = gateway([SH, "-c", f"setsid sh -c 'echo $$ > {tmp_path}/daemon; exec sleep 300' "
                            "> /dev/null 2>&1 < /dev/null & sleep 0.5; echo started"])
    status, _, body = await fetch("POST", gw.url, b"")
    assert (status, body) == (200, b"started\n")
    daemon = int(wait_for_file(tmp_path / "daemon"))
    await asyncio.sleep(0.5)
    assert alive(daemon)  # it left the group: the sweep of the group cannot reach it
    gw.signal(signal.SIGTERM)
    assert await asyncio.to_thread(gw.proc.wait, 20) == 0
    assert wait_dead(daemon, 5)  # but it came back to the gateway, which ends it


# --- starting fails ------------------------------------------------------------------------


async def test_function_without_execute_permission(gateway: StartGateway,
                                                   tmp_path: Path) -> None:
    script = tmp_path / "noexec.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(stat.S_IRUSR | stat.S_IWUSR)
    gw = gateway([str(script)])
    status, _, body = await fetch("POST", gw.url, b"")
    assert status == 500
    assert b"Permission denied" in body
    assert metrics(gw)[("http_requests_in_flight", ())] == 0  # the slot came back
    await still_serving(gw)


def _unprivileged() -> list[str]:
    """Root is exempt from RLIMIT_NPROC and from file permissions: run the gateway
    with another real uid (what RLIMIT_NPROC counts) and without the capabilities
    that override both, still able to read the root-owned Python it runs on."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root and setpriv (util-linux)")
    return [setpriv, "--ruid=65534",
            "--bounding-set=-sys_resource,-sys_admin,-dac_override,-dac_read_search,-fowner",
            "--"]


@contextlib.contextmanager
def restricted_gateway(folder: Path, command: list[str], *, limits: Sequence[str] = (),
                       **settings: str) -> Iterator[str]:
    """The gateway without root's exemptions (see _unprivileged); yields its URL."""
    prefix = _unprivileged()
    folder.chmod(0o777)
    port = free_port()
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(Path(__file__).parent.parent),
           "TMPDIR": str(folder), "WATCHDOG_BIND_ADDRESS": "127.0.0.1",
           "WATCHDOG_PORT": str(port), "WATCHDOG_METRICS_PORT": "0",
           "healthcheck_interval": "0", **settings}
    proc = subprocess.Popen([*prefix, *limits, sys.executable, "-m", "watchdog", "--", *command],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        folder.chmod(0o777)
        proc.terminate()
        proc.wait(30)


async def test_process_limit_reached(tmp_path: Path) -> None:
    """RLIMIT_NPROC for a non-root real uid (root is exempt from it): the spawn fails
    with EAGAIN, the caller gets a 500 that says so, the gateway goes on."""
    with restricted_gateway(tmp_path, ["sleep", "2"], limits=["prlimit", "--nproc=4", "--"],
                            WATCHDOG_LOOP="asyncio") as url:
        async with aiohttp.ClientSession() as session:
            async def one() -> tuple[int, bytes]:
                async with session.post(url + "/", data=b"") as r:
                    return r.status, await r.read()
            results = await asyncio.gather(*(one() for _ in range(8)))
        statuses = sorted(status for status, _ in results)
        assert 500 in statuses, results
        refused = [body for status, body in results if status == 500]
        assert all(b"Resource temporarily unavailable" in body for body in refused), refused
        assert 200 in statuses  # the ones that could start still did
        assert (await fetch("GET", url + "/_/health"))[0] == 200


async def test_oscar_temporary_folder_not_writable(tmp_path: Path) -> None:
    """The workspace cannot be made: a 500 that says so; the script never runs."""
    marker = tmp_path / "ran"
    with restricted_gateway(tmp_path, [SH, "-c", f"touch {marker}"],
                            WATCHDOG_MODE="oscar") as url:
        tmp_path.chmod(0o555)  # the lock file is there; nothing new can be
        status, _, body = await fetch("POST", url + "/", b"aGk=")
        assert status == 500
        assert b"Permission denied" in body
        assert not marker.exists()
        assert (await fetch("GET", url + "/_/health"))[0] == 200


async def test_oscar_temporary_folder_full(gateway: StartGateway, tmp_path: Path) -> None:
    """A 256 KiB tmpfs as TMPDIR: a 1 MiB input cannot be written. 507, the script
    never runs, the partial workspace is removed."""
    full = tmp_path / "tiny"
    full.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(full)],  # noqa: ASYNC221
                             capture_output=True, check=False)
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        marker = tmp_path / "ran"
        gw = gateway([SH, "-c", f"touch {marker}"], env={"WATCHDOG_MODE": "oscar",
                                                        "TMPDIR": str(full)})
        status, _, body = await fetch("POST", gw.url, base64.b64encode(os.urandom(1 << 20)))
        assert status == 507
        assert b"No space left" in body
        assert not marker.exists()
        assert sorted(p.name for p in full.iterdir()) == [".lock"]
        assert (await fetch("POST", gw.url, b"aGk="))[0] == 200  # small inputs still fit
        assert marker.exists()
        gw.signal(signal.SIGTERM)
        gw.proc.wait(20)
    finally:
        subprocess.run(["umount", str(full)], check=False)  # noqa: ASYNC221


def _wait_port(port: int) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("the gateway did not start")


# --- clients that misbehave ------------------------------------------------------------


async def test_headers_sent_a_byte_at_a_time_are_cut_off(gateway: StartGateway) -> None:
    gw = gateway(["cat"], env={"read_timeout": "1s"})

    def slowloris() -> float:
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            started = time.monotonic()
            try:
                for byte in b"POST / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100:
                    sock.sendall(bytes([byte]))
                    time.sleep(0.1)
            except OSError:
                pass  # the gateway closed it
            assert sock.recv(1024) == b""  # closed, without an answer
            return time.monotonic() - started

    assert await asyncio.to_thread(slowloris) < 5  # not the 13 s the client would take
    await still_serving(gw)


async def test_client_disconnects_mid_body(gateway: StartGateway, tmp_path: Path) -> None:
    gw = gateway([SH, str(FUNCTIONS / "sleeper.sh")], env={"PIDS_DIR": str(tmp_path)})
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"x" * 500)
        function = int(await file_appears(tmp_path / "child"))
    assert wait_dead(function, 5)
    await still_serving(gw)
    deadline = time.monotonic() + 5
    while metrics(gw).get(("http_requests_total", (("code", "499"), ("method", "post")))) != 1:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)


async def test_client_disconnects_mid_response(gateway: StartGateway) -> None:
    gw = gateway([SH, "-c", "head -c 20000000 /dev/zero"])
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
    await asyncio.sleep(0.5)
    await still_serving(gw)
    status, _, body = await fetch("POST", gw.url, b"")
    assert (status, len(body)) == (200, 20_000_000)


@pytest.mark.parametrize(("request_bytes", "status"), [
    (b"GARBAGE\r\n\r\n", b"400"),
    # Heads over Go's bound (1 MiB and 4 KiB), in a field, in fields, in the target:
    # 431, as Go's net/http answers them (a field, a target, a count alone: no bound).
    (b"POST / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (2**20 + 4096) + b"\r\n\r\n", b"431"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
     + b"".join(b"X-%06d: v\r\n" % i for i in range(90_000)) + b"\r\nhi", b"431"),
    (b"GET /" + b"a" * (2**20 + 4096) + b" HTTP/1.1\r\nHost: x\r\n\r\n", b"431"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZZ\r\n\r\n",
     b"400"),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
     b"400"),
])
async def test_malformed_requests_get_4xx_and_one_log_line(
        gateway: StartGateway, request_bytes: bytes, status: bytes) -> None:
    gw = gateway(["cat"])
    answer = await asyncio.to_thread(raw, gw, request_bytes)
    assert answer.split(b" ", 2)[1] == status, answer[:200]
    await still_serving(gw)
    assert "Traceback" not in gw.log()  # at most one line, not a traceback


async def test_chunked_body_broken_after_the_function_started(gateway: StartGateway,
                                                               tmp_path: Path) -> None:
    """The function has the body's start when the rest turns out malformed: it is
    ended, and the client learns why at once (not at read_timeout)."""
    gw = gateway([SH, str(FUNCTIONS / "sleeper.sh")],
                 env={"PIDS_DIR": str(tmp_path), "read_timeout": "10s"})
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     b"5\r\nhello\r\n")
        function = int(await file_appears(tmp_path / "child"))
        sock.sendall(b"ZZZ\r\n\r\n")
        asked = time.monotonic()
        answer = await asyncio.to_thread(sock.recv, 65536)
    assert time.monotonic() - asked < 5
    assert answer.startswith(b"HTTP/1.1 400"), answer
    assert b"Bad request body" in answer
    assert wait_dead(function, 5)
    assert "Traceback" not in gw.log()
    await still_serving(gw)


async def test_thousands_of_connections_and_headers_do_not_stop_it(
        gateway: StartGateway) -> None:
    gw = gateway(["cat"])
    headers = {f"X-Header-{i}": "v" * 20 for i in range(60)}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=200)) as session:
        async def one(i: int) -> int:
            async with session.post(gw.url, data=b"%d" % i, headers=headers) as response:
                assert await response.read() == b"%d" % i
                return response.status
        statuses = await asyncio.gather(*(one(i) for i in range(300)))
    assert set(statuses) == {200}
    await still_serving(gw)


# --- shutdown under load -----------------------------------------------------------------


async def test_sigterm_under_heavy_load_loses_nothing(gateway: StartGateway,
                                                     tmp_path: Path) -> None:
    gw = gateway([SH, "-c", "sleep 0.4; cat"], env={
        "max_inflight": "8", "healthcheck_interval": "300ms", "write_timeout": "20s"})
    outcomes: list[str] = []

    async def client(session: aiohttp.ClientSession, i: int) -> None:
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            payload = b"%d-%d" % (i, len(outcomes))
            try:
                async with session.post(gw.url, data=payload) as response:
                    body = await response.read()
                    if response.status == 200:
                        assert body == payload  # a function that ran is answered whole
                    outcomes.append(str(response.status))
            except aiohttp.ClientConnectionError:
                outcomes.append("refused")  # after the listener closed: a clean refusal
                await asyncio.sleep(0.05)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        clients = [asyncio.ensure_future(client(session, i)) for i in range(24)]
        await asyncio.sleep(1.5)
        gw.signal(signal.SIGTERM)
        await asyncio.gather(*clients)
    assert await asyncio.to_thread(gw.proc.wait, 20) == 0
    assert set(outcomes) <= {"200", "429", "refused"}, set(outcomes)
    assert outcomes.count("200") >= 8
    assert "refused" in outcomes  # the listener did close
