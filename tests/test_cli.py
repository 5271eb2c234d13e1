"""The command line: exit status 2 with one named line for bad settings, --help and
the README's table from the settings table, the healthcheck subcommand."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from watchdog.config import SETTINGS, settings_markdown

ROOT = Path(__file__).parent.parent


def fwatchdog(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "watchdog", *args], env=full_env,
                          capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize(("env", "args", "named"), [
    ({"WATCHDOG_MAX_INFLIGHT": "abc", "fprocess": "cat"}, [], "WATCHDOG_MAX_INFLIGHT='abc'"),
    ({"WATCHDOG_MAX_INFLIGHT": "-1", "fprocess": "cat"}, [], "WATCHDOG_MAX_INFLIGHT='-1'"),
    ({"exec_timeout": "soon", "fprocess": "cat"}, [], "exec_timeout='soon'"),
    ({"fprocess": ""}, [], "fprocess=''"),
    ({}, [], "no function to run"),
    ({}, ["--max-inflight", "x", "--", "cat"], "--max-inflight='x'"),
    ({}, ["--"], "-- must be followed by a command"),
])
def test_bad_settings_stop_startup_with_status_2_and_one_line(
        env: dict[str, str], args: list[str], named: str) -> None:
    result = fwatchdog(*args, env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"fwatchdog: error: {named}")
    assert "expected" in lines[0] or named.startswith(("no function", "--"))


def test_help_lists_every_setting_with_its_variables_and_default() -> None:
    result = fwatchdog("--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())  # argparse wraps lines
    for setting in SETTINGS:
        assert setting.flag in text
        assert "Variables: " + ", ".join(setting.variables) in text


def test_readme_settings_table_is_the_generated_one() -> None:
    readme = (ROOT / "README.md").read_text()
    assert settings_markdown() in readme, (
        "README's settings table is stale: paste python -m watchdog.config's output")


def test_console_script_is_installed() -> None:
    script = shutil.which("fwatchdog", path=str(Path(sys.executable).parent))
    assert script is not None
    result = subprocess.run([script, "--version"], capture_output=True, text=True,
                            check=False, timeout=30)
    assert result.returncode == 0
    assert result.stdout.startswith("fwatchdog ")


def test_healthcheck_follows_the_lock_file(tmp_path: Path) -> None:
    assert fwatchdog("healthcheck", env={"TMPDIR": str(tmp_path)}).returncode == 1
    (tmp_path / ".lock").touch()
    assert fwatchdog("healthcheck", env={"TMPDIR": str(tmp_path)}).returncode == 0


def test_port_in_use_stops_startup_with_status_1_and_a_reason(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = fwatchdog("--bind-address", "127.0.0.1", "--port", str(port),
                           "--metrics-port", "0", "--", "cat",
                           env={"TMPDIR": str(tmp_path)})
    assert result.returncode == 1
    assert "msg=\"cannot start\"" in result.stderr
    assert "address already in use" in result.stderr.lower()
    assert not (tmp_path / ".lock").exists()


def test_unwritable_lock_folder_stops_startup_with_status_1(tmp_path: Path) -> None:
    result = fwatchdog("--bind-address", "127.0.0.1", "--port", "0", "--metrics-port", "0",
                       "--", "cat", env={"TMPDIR": str(tmp_path / "missing")})
    assert result.returncode == 1
    assert "No such file or directory" in result.stderr
