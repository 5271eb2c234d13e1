"""process.py on its own: real children, no HTTP."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.conftest import alive, process_state, wait_dead
from watchdog.process import (
    EpollReadiness,
    Exit,
    OrphanReaper,
    SpawnError,
    Spill,
    signal_text,
    spawn,
)

SH = "/bin/sh"
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
_watching: list[EpollReadiness] = []  # the running test's


@pytest.fixture(autouse=True)
async def readiness() -> AsyncIterator[None]:
    """Where this test's functions are watched, on its own loop."""
    _watching.append(EpollReadiness(asyncio.get_running_loop()))
    yield
    _watching.pop().close()


def run(argv: list[str], **kwargs: object):  # type: ignore[no-untyped-def]
    options: dict[str, object] = {"combine_output": True, "max_output": 1 << 20,
                                  "kill_grace": 1.0, "readiness": _watching[-1]}
    options.update(kwargs)
    return spawn(argv, ENV, **options)  # type: ignore[arg-type]


async def test_round_trip_and_exit_status() -> None:
    proc = run(["cat"])
    assert await proc.write(b"abc")
    proc.close_stdin()
    exit = await proc.wait()
    assert (exit.code, exit.signal, b"".join(exit.output)) == (0, None, b"abc")
    assert exit.ok
    assert exit.describe() == "exit status 0"
    assert process_state(proc.pid) is None  # reaped


async def test_exit_code_and_signal() -> None:
    exit = await run([SH, "-c", "exit 7"]).wait()
    assert (exit.code, exit.status_label, exit.describe()) == (7, "7", "exit status 7")
    exit = await run([SH, "-c", "kill -KILL $$"]).wait()
    assert (exit.code, exit.signal, exit.status_label) == (None, signal.SIGKILL, "SIGKILL")
    assert exit.describe() == "signal: killed"  # the Go watchdog's words, nothing after


def test_signals_are_named_as_go_names_them() -> None:
    # Go's own table (syscall.Signal's String on Linux), not this libc's strsignal:
    # its first letter only in lower case, and real-time signals by number.
    assert [signal_text(s) for s in (1, 2, 6, 9, 11, 13, 15)] == [
        "hangup", "interrupt", "aborted", "killed", "segmentation fault", "broken pipe",
        "terminated"]
    assert signal_text(signal.SIGXCPU) == "CPU time limit exceeded"
    assert signal_text(signal.SIGIO) == "I/O possible"
    assert signal_text(signal.SIGRTMIN) == f"signal {int(signal.SIGRTMIN)}"
    assert signal_text(signal.SIGRTMAX) == f"signal {int(signal.SIGRTMAX)}"
    dumped = Exit(code=None, signal=signal.SIGSEGV, output=[], output_size=0,
                  overflowed=False, stopped_for=None, duration=0.0, core_dumped=True)
    assert dumped.describe() == "signal: segmentation fault (core dumped)"
    assert dumped.status_label == "SIGSEGV"  # the metric's label keeps the name


async def test_a_core_dump_is_said_as_go_says_it(tmp_path: Path) -> None:
    # Whether the kernel dumps depends on the machine (a core_pattern pipe to a
    # collector dumps even with `ulimit -c 0`): with a plain pattern, it dumps only
    # with a limit, in the folder the shell moved to.
    pattern = Path("/proc/sys/kernel/core_pattern").read_text()
    if pattern.startswith("|"):
        pytest.skip(f"core_pattern is a pipe ({pattern.strip()}): dumps are not ours to set")
    exit = await run([SH, "-c", f"cd {tmp_path} && ulimit -c 0 && kill -SEGV $$"]).wait()
    assert (exit.core_dumped, exit.describe()) == (False, "signal: segmentation fault")
    exit = await run([SH, "-c", f"cd {tmp_path} && ulimit -c unlimited && kill -SEGV $$"]).wait()
    if not exit.core_dumped:
        pytest.skip("the kernel wrote no core here (a limit or a read-only pattern folder)")
    assert exit.describe() == "signal: segmentation fault (core dumped)"


async def test_spawn_error_names_the_command() -> None:
    with pytest.raises(SpawnError, match="cannot start '/no/such'"):
        run(["/no/such"])


async def test_function_gets_default_signal_dispositions() -> None:
    # Python ignores SIGPIPE; a function must not inherit that.
    exit = await run([SH, "-c", "grep -E '^SigIgn' /proc/self/status"]).wait()
    ignored = int(b"".join(exit.output).split()[1], 16)
    assert ignored & (1 << (signal.SIGPIPE - 1)) == 0


async def test_stop_ends_the_group_with_term_then_kill(tmp_path: Path) -> None:
    script = (f"sh -c 'trap \"\" TERM; echo $$ > {tmp_path}/g; exec sleep 60' & "
              "trap '' TERM; wait")  # the leader too ignores SIGTERM
    proc = run([SH, "-c", script], kill_grace=0.5)
    deadline = time.monotonic() + 5
    while not (tmp_path / "g").exists() or not (tmp_path / "g").read_text().strip():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    grandchild = int((tmp_path / "g").read_text())
    started = time.monotonic()
    proc.stop("exec_timeout")
    exit = await proc.wait()
    assert 0.4 < time.monotonic() - started < 3
    assert exit.stopped_for == "exec_timeout"
    assert exit.signal == signal.SIGKILL
    assert wait_dead(grandchild, 3)


async def test_output_limit_stops_the_function() -> None:
    proc = run(["yes"], max_output=10_000)
    exit = await asyncio.wait_for(proc.wait(), 5)
    assert exit.overflowed
    assert exit.stopped_for == "overflow"
    assert exit.output == []
    assert not exit.ok


async def test_write_waits_for_a_slow_reader_and_gives_up_when_stopped() -> None:
    proc = run([SH, "-c", "sleep 30"])  # never reads stdin
    writing = asyncio.ensure_future(proc.write(b"x" * (4 << 20)))
    await asyncio.sleep(0.3)
    assert not writing.done()  # blocked on the full pipe: backpressure
    proc.stop("shutdown")
    assert await asyncio.wait_for(writing, 5) is False
    exit = await proc.wait()
    assert exit.stopped_for == "shutdown"


async def test_write_to_a_function_that_closed_stdin_returns_false() -> None:
    proc = run([SH, "-c", "exec 0<&-; sleep 0.2"])
    await asyncio.sleep(0.1)
    assert await proc.write(b"y" * (1 << 20)) is False
    assert (await proc.wait()).code == 0


async def test_stray_holding_stdout_is_cut_off_after_a_short_grace() -> None:
    started = time.monotonic()
    exit = await run([SH, "-c", "sleep 30 & echo out"]).wait()
    assert time.monotonic() - started < 1.5
    assert b"".join(exit.output) == b"out\n"


async def test_left_background_runs_on_and_is_reaped_as_an_orphan(tmp_path: Path) -> None:
    """leave_background (WATCHDOG_BACKGROUND=leave): what the function leaves in its
    group at its exit runs on, comes back to the subreaper, and is reaped there."""
    live: set[int] = set()
    reaper = OrphanReaper(lambda pid: pid in live)
    reaper.start()
    try:
        command = "sleep 30 >/dev/null 2>&1 & echo $!"
        killed = int(b"".join((await run([SH, "-c", command]).wait()).output))
        assert wait_dead(killed, 5)  # the default: swept at the function's exit
        proc = run([SH, "-c", command], leave_background=True)
        exit = await proc.wait()
        left = int(b"".join(exit.output))
        assert exit.ok
        assert process_state(proc.pid) is None  # the function itself: reaped
        assert alive(left)  # its background: running on
        stat = Path(f"/proc/{left}/stat").read_text().rsplit(")", 1)[1].split()
        assert int(stat[1]) == os.getpid()  # an orphan of ours now
        os.kill(left, signal.SIGTERM)  # it ends (here: is ended) on its own...
        deadline = time.monotonic() + 5
        while process_state(left) not in ("Z", None):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        reaper.sweep()  # ...and the sweep reaps it: no zombie stays
        assert process_state(left) is None
    finally:
        await reaper.stop()


async def test_left_background_holding_stdout_ends_the_function_at_its_output_end(
        tmp_path: Path) -> None:
    """As Go's Wait for the pipe: the function's end is its output's, so what a
    background process writes after the leader's exit is in the answer; stopped
    before that end, the whole group ends and the reason is the stop's."""
    script = f"(while [ ! -e {tmp_path}/go ]; do sleep 0.01; done; echo late) & echo early"
    proc = run([SH, "-c", script], leave_background=True)
    deadline = time.monotonic() + 5
    while process_state(proc.pid) != "Z":  # the leader has exited...
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    assert not proc.finished  # ...and the function has not ended: stdout is held
    (tmp_path / "go").touch()
    exit = await proc.wait()
    assert (b"".join(exit.output), exit.ok) == (b"early\nlate\n", True)

    proc = run([SH, "-c", f"sleep 30 & echo $! > {tmp_path}/bg"], leave_background=True)
    while process_state(proc.pid) != "Z" or not (tmp_path / "bg").read_text().strip():
        assert time.monotonic() < deadline + 5
        await asyncio.sleep(0.01)
    holder = int((tmp_path / "bg").read_text())
    proc.stop("exec_timeout")  # as the executor's deadline does
    exit = await proc.wait()
    assert exit.stopped_for == "exec_timeout"
    assert wait_dead(holder, 5)


async def test_orphans_left_at_shutdown_get_sigterm_before_sigkill(tmp_path: Path) -> None:
    live: set[int] = set()
    reaper = OrphanReaper(lambda pid: pid in live)
    reaper.start()
    script = (f"sh -c 'trap \"echo term > {tmp_path}/t; exit 0\" TERM; "
              f"echo $$ > {tmp_path}/bg; sleep 30 & wait' >/dev/null 2>&1 &")
    try:
        await run([SH, "-c", script], leave_background=True).wait()
        deadline = time.monotonic() + 5
        while not (tmp_path / "bg").exists() or not (tmp_path / "bg").read_text().strip():
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        left = int((tmp_path / "bg").read_text())
    finally:
        await reaper.stop(grace=5.0)
    assert (tmp_path / "t").read_text() == "term\n"  # it could finish up
    assert process_state(left) is None  # and it, and the sleep it left, were reaped
    assert [pid for pid in children_of_ours() if process_state(pid) != "Z"] == []


def children_of_ours() -> list[int]:
    from watchdog.process import children

    return children()


async def test_no_descriptor_is_left_open() -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        proc = run(["cat"])
        await proc.write(b"z")
        proc.close_stdin()
        await proc.wait()
    proc = run([SH, "-c", "sleep 30"])
    proc.stop("disconnect")
    await proc.wait()
    assert len(os.listdir("/proc/self/fd")) == before


async def test_orphan_reaper_collects_what_the_functions_left() -> None:
    live: set[int] = set()
    reaper = OrphanReaper(lambda pid: pid in live)
    reaper.start()
    try:
        exit = await run([SH, "-c", "sleep 0.2 & echo $!"]).wait()
        orphan = int(b"".join(exit.output))
        # Swept with SIGKILL when its leader exited, it came back to us (the
        # subreaper) as a child: a zombie until the sweep that the executor asks
        # for after every exit.
        deadline = time.monotonic() + 2
        while process_state(orphan) != "Z":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
        stat = Path(f"/proc/{orphan}/stat").read_text().rsplit(")", 1)[1].split()
        assert int(stat[1]) == os.getpid()
        reaper.soon()
        await asyncio.sleep(0.5)
        assert process_state(orphan) is None
    finally:
        await reaper.stop()


async def test_output_past_the_threshold_moves_to_an_unnamed_file(tmp_path: Path) -> None:
    spill = Spill(1000, str(tmp_path))
    exit = await run([SH, "-c", "head -c 5000 /dev/zero"], spill=spill).wait()
    assert exit.output == []  # nothing held in memory
    assert exit.spilled is not None
    assert (exit.spilled.size, exit.output_size) == (5000, 5000)
    assert b"".join([piece async for piece in exit.spilled.chunks(b"<")]) == b"<" + bytes(5000)
    assert os.fstat(exit.spilled.fd).st_nlink == 0
    exit.spilled.close()
    exit = await run([SH, "-c", "head -c 999 /dev/zero"], spill=spill).wait()
    assert (exit.spilled, len(b"".join(exit.output))) == (None, 999)  # under it: held
    # Stopped (here: past max_output), what it wrote is never sent: the file is closed.
    proc = run([SH, "-c", "head -c 5000 /dev/zero; sleep 30"], spill=spill, max_output=3000)
    exit = await proc.wait()
    assert (exit.stopped_for, exit.spilled, exit.output) == ("overflow", None, [])
    assert list(tmp_path.iterdir()) == []  # no name anywhere
    spill.close()
