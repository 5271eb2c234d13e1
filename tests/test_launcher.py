"""launcher.py: functions started on the C threads of watchdog._spawn, or on the loop.

In-process tests of the Launcher (real children, no HTTP) in both ways, and the
real gateway in both ways, under the load that found the reaper's race.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.conftest import StartGateway, needs_spawn, process_state, wait_dead
from tests.test_gateway import _fds, _zombie_children, fetch, metrics
from watchdog.launcher import Launcher, threads_available
from watchdog.process import FunctionProcess, SpawnError

ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
THREADS = pytest.param(1, id="threads", marks=needs_spawn)
WAYS = [THREADS, pytest.param(0, id="loop")]


@pytest.fixture
async def launcher(request: pytest.FixtureRequest) -> AsyncIterator[Launcher]:
    started = Launcher(request.param)
    started.start()
    yield started
    await started.settle()
    started.close()


def _inheritable(fd: int) -> bool:
    try:
        return os.get_inheritable(fd)
    except OSError:  # the directory listing's own, closed since
        return False


def never(proc: FunctionProcess | None) -> None:
    raise AssertionError("not cancelled: nothing may be orphaned")


async def start(launcher: Launcher, argv: list[str], body: bytes | None = None,
                env: dict[str, str] | None = None) -> FunctionProcess:
    return await launcher.spawn(argv, env or ENV, combine_output=True, max_output=1 << 24,
                                kill_grace=1.0, nice=None, orphaned=never, body=body)


@needs_spawn
def test_the_extension_is_built_here() -> None:
    # Where there is a C compiler (CI, the image's build stage) the fast way exists;
    # without one this skips (fails under CI=true), and the gateway uses the loop.
    assert threads_available()


@pytest.mark.parametrize("launcher", WAYS, indirect=True)
async def test_body_fed_and_output_collected(launcher: Launcher) -> None:
    for body in (b"", b"x" * 100, bytes(range(256)) * 1024):  # the last is over 64 KiB
        proc = await start(launcher, ["cat"], body)
        assert proc.fed <= len(body)
        if proc.fed < len(body):
            assert await proc.write(memoryview(body)[proc.fed:])
        proc.close_stdin()
        exit = await proc.wait()
        assert (exit.code, b"".join(exit.output)) == (0, body)
        assert process_state(proc.pid) is None  # reaped


@pytest.mark.parametrize("launcher", [THREADS], indirect=True)
async def test_a_small_body_is_written_and_stdin_closed_by_the_thread(
        launcher: Launcher) -> None:
    proc = await start(launcher, ["cat"], b"hello")
    assert proc.fed == 5
    assert not await proc.write(b"more")  # stdin is closed already
    exit = await proc.wait()
    assert b"".join(exit.output) == b"hello"


@pytest.mark.parametrize("launcher", WAYS, indirect=True)
async def test_environment_arguments_and_process_group(launcher: Launcher) -> None:
    env = {**ENV, "PLAIN": "a=b c", "ACCENT": "é ü", "EMPTY": ""}
    proc = await start(launcher, ["sh", "-c", 'printf "%s|%s|%s|%s|" "$PLAIN" "$ACCENT" '
                                  '"$EMPTY" "$1"; ps -o pgid= -p $$', "sh", "ärg"], b"", env)
    exit = await proc.wait()
    plain, accent, empty, arg, pgid = b"".join(exit.output).decode().split("|")
    assert (plain, accent, empty, arg) == ("a=b c", "é ü", "", "ärg")
    assert int(pgid) == proc.pid  # it leads its own group


@pytest.mark.parametrize("launcher", WAYS, indirect=True)
async def test_default_signals_and_nothing_inherited(launcher: Launcher) -> None:
    # Python ignores SIGPIPE; no descriptor of the gateway's may reach the function.
    proc = await start(launcher, ["sh", "-c", "grep -E '^SigIgn' /proc/self/status; "
                                  "ls /proc/self/fd"], b"")
    lines = b"".join((await proc.wait()).output).decode().split()
    ignored = int(lines[1], 16)
    assert ignored & (1 << (signal.SIGPIPE - 1)) == 0
    # 0, 1, 2, the one ls opens to list them, and what this test process was given
    # inheritable by whoever started it; none of the gateway's (pipes, eventfd).
    given = {fd for fd in map(int, os.listdir("/proc/self/fd")) if fd > 2 and
             _inheritable(fd)}
    assert len({int(fd) for fd in lines[2:]} - {0, 1, 2} - given) == 1


@pytest.mark.parametrize("launcher", WAYS, indirect=True)
async def test_a_missing_program_is_a_spawn_error(launcher: Launcher) -> None:
    with pytest.raises(SpawnError, match="cannot start '/no/such'") as caught:
        await start(launcher, ["/no/such"], b"")
    assert caught.value.errno == 2


@pytest.mark.parametrize("launcher", WAYS, indirect=True)
async def test_bad_environment_is_refused_before_any_start(launcher: Launcher) -> None:
    with pytest.raises(ValueError, match="environment"):
        await start(launcher, ["true"], b"", {**ENV, "A=B": "1"})
    with pytest.raises(ValueError, match="null"):
        await start(launcher, ["true"], b"", {**ENV, "A": "x\0y"})


@pytest.mark.parametrize("launcher", [THREADS], indirect=True)
async def test_a_caller_cancelled_while_it_starts_hands_it_over(launcher: Launcher) -> None:
    handed: asyncio.Queue[FunctionProcess | None] = asyncio.Queue()
    starting = asyncio.ensure_future(launcher.spawn(
        ["sleep", "30"], ENV, combine_output=True, max_output=1024, kill_grace=1.0,
        nice=None, orphaned=handed.put_nowait, body=b""))
    await asyncio.sleep(0)  # queued on the thread
    starting.cancel()
    proc = await asyncio.wait_for(handed.get(), 5)
    assert proc is not None
    assert process_state(proc.pid) not in (None, "Z")
    proc.stop("disconnect")
    exit = await proc.wait()
    assert exit.signal == signal.SIGTERM
    assert wait_dead(proc.pid)


@needs_spawn
@pytest.mark.parametrize("fails", [False, True], ids=["started", "failed"])
async def test_a_caller_cancelled_after_its_start_was_collected_hands_it_over(
        fails: bool) -> None:
    # The start is collected (its result set) and, in the same turn of the loop,
    # the caller is cancelled (its client hung up) before it resumes: the function
    # (or the failure) must still reach `orphaned`, or its slot is never given back.
    launcher = Launcher(1)
    launcher.start()
    handed: asyncio.Queue[FunctionProcess | None] = asyncio.Queue()
    starting = asyncio.ensure_future(launcher.spawn(
        ["/no/such"] if fails else ["sleep", "30"], ENV, combine_output=True,
        max_output=1024, kill_grace=1.0, nice=None, orphaned=handed.put_nowait, body=b""))
    await asyncio.sleep(0)  # queued on the thread
    collect = launcher._collect

    def collect_then_hang_up() -> None:
        collect()
        starting.cancel()

    loop = asyncio.get_running_loop()
    assert launcher._spawner is not None
    loop.remove_reader(launcher._spawner.fileno())
    loop.add_reader(launcher._spawner.fileno(), collect_then_hang_up)
    with pytest.raises(asyncio.CancelledError):
        await starting
    proc = await asyncio.wait_for(handed.get(), 5)
    if fails:
        assert proc is None
    else:
        assert proc is not None
        proc.stop("disconnect")
        assert (await proc.wait()).signal == signal.SIGTERM
    await launcher.settle()
    launcher.close()


@needs_spawn
async def test_one_bad_hand_over_loses_none_of_the_others() -> None:
    launcher = Launcher(1)
    launcher.start()
    handed: list[FunctionProcess | None] = []

    def orphaned(proc: FunctionProcess | None) -> None:
        handed.append(proc)
        if len(handed) == 1:
            raise RuntimeError("a bug in whoever takes it")

    starting = [asyncio.ensure_future(launcher.spawn(
        ["sleep", "30"], ENV, combine_output=True, max_output=1024, kill_grace=1.0,
        nice=None, orphaned=orphaned, body=b"")) for _ in range(3)]
    await asyncio.sleep(0)
    for task in starting:
        task.cancel()
    await asyncio.wait_for(launcher.settle(), 5)  # every start came back
    assert len(handed) == 3
    for proc in handed:
        assert proc is not None
        proc.stop("disconnect")
        await proc.wait()
    launcher.close()


@pytest.mark.parametrize("launcher", WAYS, indirect=True)
async def test_nice_is_set_below_zero_too(launcher: Launcher) -> None:
    # A gateway that runs at a negative nice (root, or a raised limit) gives its
    # functions a negative nice too: raising it towards 0 needs no privilege.
    own = os.getpriority(os.PRIO_PROCESS, 0)
    os.setpriority(os.PRIO_PROCESS, 0, -10)
    try:
        proc = await launcher.spawn(["sh", "-c", "sleep 0.2; nice"], ENV, combine_output=True,
                                    max_output=64, kill_grace=1.0, nice=-5, orphaned=never,
                                    body=b"")
    except PermissionError:
        pytest.skip("cannot lower this process's nice here")
    finally:
        os.setpriority(os.PRIO_PROCESS, 0, own)
    assert b"".join((await proc.wait()).output).strip() == b"-5"


@needs_spawn
def test_a_forked_child_cannot_use_its_parents_spawner() -> None:
    # Its threads do not exist there: a start would never run.
    script = """
import os, sys
from watchdog._spawn import Spawner
spawner = Spawner(1)
pid = os.fork()
if pid == 0:
    try:
        spawner.submit(1, "true", ["true"], {}, False, None, None)
    except RuntimeError as exc:
        print(exc, flush=True)
        os._exit(0)
    os._exit(1)
assert os.waitpid(pid, 0)[1] == 0
print(spawner.close())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=30, check=True)
    assert done.stdout.splitlines() == ["Spawner made before a fork: not usable here", "[]"]


@needs_spawn
async def test_stop_waits_for_starts_under_way() -> None:
    launcher = Launcher(1)
    launcher.start()
    handed: list[FunctionProcess | None] = []
    starting = [asyncio.ensure_future(launcher.spawn(
        ["true"], ENV, combine_output=True, max_output=1024, kill_grace=1.0, nice=None,
        orphaned=handed.append, body=b"")) for _ in range(8)]
    await asyncio.sleep(0)
    for task in starting[::2]:
        task.cancel()
    await launcher.settle()  # every start collected: none left to the threads
    started = [task.result() for task in starting[1::2]]
    assert len(handed) == 4
    assert all(proc is not None for proc in handed)
    for proc in [*started, *handed]:
        assert proc is not None
        await proc.wait()
    launcher.close()


# --- the gateway ---------------------------------------------------------------------


@pytest.mark.parametrize("threads", ["1", "0", "2"])
async def test_gateway_both_ways_with_short_functions_and_sweeps(
        gateway: StartGateway, threads: str) -> None:
    # `true` exits as soon as it starts, often before the thread that started it has
    # said so; the orphan reaper sweeps every 0.2 s meanwhile. It once reaped such a
    # child, whose request then hung: every request must come back.
    gw = gateway(["true"], env={"WATCHDOG_SPAWN_THREADS": threads})
    await fetch("POST", gw.url, b"warm")
    before = _fds(gw.proc.pid)
    async with aiohttp.ClientSession() as session:
        async def one(i: int) -> int:
            async with session.post(gw.url, data=b"x" * (i % 200)) as response:
                await response.read()
                return response.status
        for _ in range(8):
            statuses = await asyncio.wait_for(
                asyncio.gather(*(one(i) for i in range(200))), 20)
            assert set(statuses) == {200}
    assert "Traceback" not in gw.log()
    await asyncio.sleep(0.5)
    assert _fds(gw.proc.pid) <= before
    assert _zombie_children(gw.proc.pid) == []


def test_without_the_extension_functions_start_on_the_loop() -> None:
    # What a machine without a C compiler installs: no watchdog._spawn. (None in
    # sys.modules makes its import fail, as a missing module's does.)
    script = """
import asyncio, logging, sys
sys.modules["watchdog._spawn"] = None
from watchdog.launcher import Launcher, threads_available
logging.basicConfig(format="%(message)s")
async def main():
    launcher = Launcher(1)
    launcher.start()
    proc = await launcher.spawn(["cat"], {}, combine_output=True, max_output=64,
                                kill_grace=1.0, nice=None, orphaned=print, body=b"ok")
    await proc.write(b"ok")
    proc.close_stdin()
    print(threads_available(), launcher.threads, b"".join((await proc.wait()).output))
    await launcher.settle()
    launcher.close()
asyncio.run(main())
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=30, check=True)
    assert done.stdout.split() == ["False", "0", "b'ok'"]
    assert "watchdog._spawn was not built" in done.stderr


async def test_clients_that_hang_up_at_once_leave_no_slot_behind(
        gateway: StartGateway) -> None:
    # Each client sends a request and resets its connection straight away, often
    # in the same turn of the loop in which its function's start is collected.
    # Afterwards the gateway must have every slot back (not 429 for good).
    gw = gateway(["cat"], env={"max_inflight": "8", "exec_timeout": "3s"})
    request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    deadline = time.monotonic() + 3

    def hang_up_again_and_again(seed: int) -> None:
        pause = 0.0
        while time.monotonic() < deadline:
            with socket.create_connection(("127.0.0.1", gw.port)) as sock:
                sock.sendall(request)
                time.sleep(pause)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            pause = (pause + 0.0005 * seed) % 0.002

    await asyncio.gather(*(asyncio.to_thread(hang_up_again_and_again, seed)
                           for seed in range(1, 7)))
    # The last ones' functions are being stopped and reaped: their slots come back
    # within moments (a leaked one never does).
    inflight = ("http_requests_in_flight", ())
    for _ in range(100):
        if not metrics(gw)[inflight]:
            break
        await asyncio.sleep(0.05)
    assert metrics(gw)[inflight] == 0
    statuses = [(await fetch("POST", gw.url, b"x"))[0] for _ in range(10)]
    assert statuses == [200] * 10
    assert "Traceback" not in gw.log()
