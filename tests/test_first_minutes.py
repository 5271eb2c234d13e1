"""What a new user meets first: an install without a C compiler says so and goes on,
a busy port is named before anything else, and the first Ctrl-C says that a second
one skips the waits."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
import zipfile
from pathlib import Path

import pytest

from tests.conftest import LISTENING, Gateway, StartGateway

ROOT = Path(__file__).parent.parent


def start(args: list[str], tmp: Path) -> subprocess.CompletedProcess[str]:
    """The gateway run as a user runs it, to its end."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp)}
    return subprocess.run([sys.executable, "-m", "watchdog", "--bind-address", "127.0.0.1",
                           *args, "--", "cat"], env=env, capture_output=True, text=True,
                          timeout=30, check=False)


@pytest.mark.parametrize("busy", ["function", "metrics"])
def test_a_busy_port_is_named_first_and_stops_the_start(tmp_path: Path, busy: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        ports = {"function": "0", "metrics": "0", busy: str(port)}
        done = start(["--port", ports["function"], "--metrics-port", ports["metrics"]],
                     tmp_path)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    # The error is the last word, and nothing said the gateway ran or stopped before it.
    assert f"cannot listen on 127.0.0.1:{port} ({busy} port): Address already in use" \
        in lines[-1], done.stderr
    assert "level=error" in lines[-1]
    assert not [line for line in lines if "msg=stopped" in line or "msg=listening" in line]
    assert not (tmp_path / ".lock").exists()


def shutting_down(gw: Gateway) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        line = next((line for line in gw.log().splitlines()
                     if 'msg="shutting down"' in line), None)
        if line is not None:
            return line
        time.sleep(0.02)
    raise AssertionError(f"no shutdown line:\n{gw.log()}")


async def test_the_first_ctrl_c_says_a_second_skips_the_wait(gateway: StartGateway) -> None:
    gw = gateway(["cat"], env={"healthcheck_interval": "30s"})
    gw.signal(signal.SIGINT)
    line = await asyncio.to_thread(shutting_down, gw)
    assert 'hint="a second Ctrl-C (or SIGTERM) skips the waits' in line, line
    assert gw.proc.poll() is None  # it waits healthcheck_interval, as it says
    gw.signal(signal.SIGINT)
    # Well within the 30 s it would otherwise wait.
    assert await asyncio.to_thread(gw.proc.wait, 15) == 0
    assert "msg=stopped" in gw.log()


async def test_no_hint_when_there_is_nothing_to_wait_for(gateway: StartGateway) -> None:
    gw = gateway(["cat"])  # healthcheck_interval 0, nothing running
    gw.signal(signal.SIGINT)
    assert await asyncio.to_thread(gw.proc.wait, 15) == 0
    line = shutting_down(gw)
    assert "hint=" not in line, line


def source_copy(dest: Path) -> Path:
    """What a build reads, without the tree's compiled extension or build folders."""
    dest.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "watchdog", dest / "watchdog",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    return dest


def test_an_install_without_a_c_compiler_says_so_and_still_serves(tmp_path: Path) -> None:
    source = source_copy(tmp_path / "src")
    wheels = tmp_path / "wheels"
    # As `pip install --quiet .` builds it (the venv's pip, the Makefile's), with a
    # compiler that is not there.
    env = {**os.environ, "CC": "/nonexistent"}
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                            "--wheel-dir", str(wheels), str(source)],
                           env=env, capture_output=True, text=True, timeout=300, check=False)
    output = built.stdout + built.stderr
    assert built.returncode == 0, output
    assert "watchdog._spawn was not built" in output, output
    assert "install a C compiler and Python's headers" in output
    # That warning is the only one: no banner of setuptools' (a license table, the
    # experimental ext-modules table) around it.
    assert output.count("Warning:") == 1, output
    (wheel,) = wheels.glob("faas_watchdog-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "watchdog/server.py" in names
    assert not [name for name in names
                if name.startswith("watchdog/_spawn.") and name.endswith(".so")]
    fwatchdog = install(wheel, tmp_path / "venv")
    served, log = serve_once(fwatchdog, tmp_path, b"no compiler")
    assert served == b"no compiler", log
    assert "watchdog._spawn was not built" in log


def install(wheel: Path, venv: Path) -> Path:
    """A venv of its own with `wheel` installed; the runtime dependencies are this
    venv's (a path, so not its editable install of the tree, which would lend the
    tree's compiled extension)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                   timeout=60)
    (site,) = (venv / "lib").glob("python3*/site-packages")
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                    "install", "--quiet", "--no-deps", "--no-index", str(wheel)],
                   check=True, timeout=120)
    return venv / "bin" / "fwatchdog"


def serve_once(fwatchdog: Path, tmp: Path, body: bytes) -> tuple[bytes, str]:
    """Start the installed console script, send it one request, stop it: the answer
    and its log."""
    log_path = tmp / "installed.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(fwatchdog), "--bind-address", "127.0.0.1", "--port", "0",
             "--metrics-port", "0", "--healthcheck-interval", "0", "--", "cat"],
            env={"PATH": "/usr/bin:/bin", "TMPDIR": str(tmp)}, stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 15
            while not (listening := LISTENING.search(log_path.read_text())):
                assert proc.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.02)
            url = f"http://127.0.0.1:{listening.group(2)}/"
            with urllib.request.urlopen(urllib.request.Request(url, data=body),
                                        timeout=10) as response:
                answer = response.read()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    return answer, log_path.read_text()
