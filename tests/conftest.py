"""Start the real `fwatchdog` (python -m watchdog) on loopback ports, as a child
process, and check after every test that nothing it forked is left alive."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol

import pytest

FUNCTIONS = Path(__file__).parent / "functions"
LISTENING = re.compile(r"msg=listening address=(\S+):(\d+) metrics_address=(\S+):(\d+)")

# A test that needs the compiled watchdog._spawn: skipped where it was not built (no C
# compiler at install, which the README allows), failed under CI, which must build it.
needs_spawn = pytest.mark.needs_spawn


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "needs_spawn: needs the compiled watchdog._spawn")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("needs_spawn") is not None:
        from watchdog.launcher import threads_available

        if not threads_available():
            reason = "watchdog._spawn is not built (no C compiler at install)"
            if os.environ.get("CI", "").lower() not in ("", "0", "false"):
                pytest.fail(f"{reason}: CI must build it")
            pytest.skip(reason)


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    """pytest removes old temporary folders with shutil.rmtree, which recurses once a
    level: a tree deeper than the recursion limit (tests make 3,000 levels on purpose)
    would crash the session (INTERNALERROR) when its folder ages out. Before that,
    move every folder deeper than SHALLOW levels up to the top, in this session's
    folder, in those pytest removes now (older than the last few, and not locked by
    a session still running) and in those it gave up on (garbage-*)."""
    factory = getattr(session.config, "_tmp_path_factory", None)
    basetemp = getattr(factory, "_basetemp", None)
    if basetemp is None:
        return  # no temporary folder was made
    root = Path(basetemp).parent
    numbered = {int(path.name[7:]): path for path in root.glob("pytest-*")
                if path.name[7:].isdigit()}
    keep = int(session.config.getini("tmp_path_retention_count"))
    aged = [path for number, path in numbered.items()
            if number <= max(numbered, default=0) - keep and not (path / ".lock").exists()]
    for top in [Path(basetemp), *aged, *root.glob("garbage-*")]:
        with contextlib.suppress(OSError):
            while _move_deep_folders_up(str(top)):
                pass


SHALLOW = 64


def _move_deep_folders_up(top: str) -> int:
    """One pass: folders SHALLOW levels down are renamed into `top` (as garbage-deep-N,
    which pytest removes); how many were. Without recursion, with descriptors (a
    deep path is longer than PATH_MAX)."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    root = os.open(top, flags)
    moved = 0
    folders = [root]
    listings = [os.scandir(root)]
    try:
        while listings:
            entry = next(listings[-1], None)
            if entry is None:
                listings.pop().close()
                if folders[-1] != root:
                    os.close(folders[-1])
                folders.pop()
            elif entry.is_dir(follow_symlinks=False):
                if len(folders) >= SHALLOW:
                    os.rename(entry.name, f"garbage-deep-{uuid.uuid4().hex}",
                              src_dir_fd=folders[-1], dst_dir_fd=root)
                    moved += 1
                else:
                    folders.append(os.open(entry.name, flags, dir_fd=folders[-1]))
                    listings.append(os.scandir(folders[-1]))
    finally:
        for listing in listings:
            listing.close()
        for fd in folders[1:]:
            os.close(fd)
        os.close(root)
    return moved


class Gateway:
    """One running gateway. Its functions inherit WATCHDOG_TEST_MARK, which is how
    `survivors()` finds every process it forked, grandchildren included."""

    def __init__(self, command: list[str], env: Mapping[str, str | None], tmp: Path,
                 args: list[str] | None = None) -> None:
        self.mark = uuid.uuid4().hex
        self.tmp = tmp
        self.log_path = tmp / "gateway.log"
        full_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "TMPDIR": str(tmp),
            "WATCHDOG_TEST_MARK": self.mark,
            "WATCHDOG_BIND_ADDRESS": "127.0.0.1",
            "WATCHDOG_PORT": "0",
            "WATCHDOG_METRICS_PORT": "0",
            "healthcheck_interval": "0",  # tests may override with either name
            "PYTHONPATH": str(Path(__file__).parent.parent),
        }
        for name, value in env.items():  # None: not set at all
            if value is None:
                full_env.pop(name, None)
            else:
                full_env[name] = value
        argv = [sys.executable, "-m", "watchdog", *(args or [])]
        if command:
            argv += ["--", *command]
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, env=full_env, stdout=self._log,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self.port, self.metrics_port = self._wait_listening()
        except BaseException:
            self.kill()  # never leave a gateway running behind a failed start
            raise
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"

    def _wait_listening(self, timeout: float = 15.0) -> tuple[int, int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = LISTENING.search(self.log())
            if match:
                return int(match.group(2)), int(match.group(4))
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.02)
        raise RuntimeError(f"gateway did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, then the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def survivors(self) -> list[int]:
        """Live (non-zombie) processes carrying this gateway's mark, itself excluded."""
        return marked_processes(self.mark, exclude=self.proc.pid)


def free_port() -> int:
    """A loopback port free now (for the tests that need a fixed one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def statuses_at_once(url: str, count: int) -> list[int]:
    """The statuses of `count` GETs of `url` sent at once, each read to its end."""
    import aiohttp  # the tests' client; not every test module needs it

    async with aiohttp.ClientSession() as session:
        async def call() -> int:
            async with session.get(url) as r:
                await r.read()
                return r.status

        return list(await asyncio.gather(*(call() for _ in range(count))))


def process_state(pid: int) -> str | None:
    """The state letter from /proc/PID/stat, or None when the pid is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def alive(pid: int) -> bool:
    state = process_state(pid)
    return state is not None and state not in ("Z", "X")


def wait_dead(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return False


def marked_processes(mark: str, exclude: int = -1) -> list[int]:
    needle = f"WATCHDOG_TEST_MARK={mark}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == exclude:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


class StartGateway(Protocol):
    def __call__(self, command: list[str], env: Mapping[str, str | None] | None = None,
                 args: list[str] | None = None) -> Gateway: ...


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[StartGateway]:
    """`gateway(command, env={...}, args=[...])` starts one; all are stopped after the
    test, which then fails if any function process survived."""
    started: list[Gateway] = []

    def start(command: list[str], env: Mapping[str, str | None] | None = None,
              args: list[str] | None = None) -> Gateway:
        folder = tmp_path / f"gw{len(started)}"
        folder.mkdir()
        gw = Gateway(command, env or {}, folder, args)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        if gw.proc.poll() is None:
            gw.signal(signal.SIGTERM)
            time.sleep(0.1)  # two signals sent at once would merge into one
            if gw.proc.poll() is None:
                gw.signal(signal.SIGTERM)  # the second one skips the waits
        try:
            gw.proc.wait(30)
        except subprocess.TimeoutExpired:
            gw.kill()
            pytest.fail(f"gateway did not stop on SIGTERM:\n{gw.log()}")
        gw._log.close()
    for gw in started:
        deadline = time.monotonic() + 5
        while gw.survivors() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gw.survivors() == [], "function processes outlived the gateway"
        # No lock file, no request folder: only the log the fixture keeps there.
        assert sorted(p.name for p in gw.tmp.iterdir()) == ["gateway.log"]
