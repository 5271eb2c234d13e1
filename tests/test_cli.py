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

from watchdog.cli import go_flags, parse_args
from watchdog.config import SETTINGS, settings_markdown

ROOT = Path(__file__).parent.parent


def fwatchdog(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "watchdog", *args], env=full_env,
                          capture_output=True, text=True, timeout=30, check=False)


@pytest.mark.parametrize(("env", "args", "named"), [
    ({"WATCHDOG_MAX_INFLIGHT": "abc", "fprocess": "cat"}, [], "WATCHDOG_MAX_INFLIGHT='abc'"),
    ({"WATCHDOG_MAX_INFLIGHT": "-1", "fprocess": "cat"}, [], "WATCHDOG_MAX_INFLIGHT='-1'"),
    ({"exec_timeout": "soon", "fprocess": "cat", "WATCHDOG_STRICT_CONFIG": "true"}, [],
     "exec_timeout='soon'"),
    ({"max_inflight": "abc", "fprocess": "cat"}, ["--strict-config", "yes"],
     "max_inflight='abc'"),
    ({"port": "70000", "fprocess": "cat"}, [], "port='70000'"),
    ({"fprocess": ""}, [], "fprocess=''"),
    ({}, [], "no function to run"),
    ({}, ["--max-inflight", "x", "--", "cat"], "--max-inflight='x'"),
    ({}, ["-max-inflight", "x", "--", "cat"], "--max-inflight='x'"),  # Go's spelling
    ({}, ["-exec-timeout", "-5s", "--", "cat"], "--exec-timeout='-5s'"),  # as Go, a value
    ({}, ["-version=maybe"], "-version='maybe': expected a boolean"),
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


def test_help_says_which_words_a_boolean_takes() -> None:
    text = " ".join(fwatchdog("--help").stdout.split())
    assert "Accepts true/false, 1/0, yes/no or on/off (any case)." in text
    assert "true or false" not in text


@pytest.mark.parametrize(("argv", "spelled", "switches"), [
    (["-port", "8080", "-write-debug=true"], ["--port=8080", "--write-debug=true"], {}),
    (["--port", "-1", "-h"], ["--port=-1", "-h"], {}),
    (["-help"], ["--help"], {}),
    (["--version"], ["--version"], {}),  # ours: argparse's, on stdout
    (["-version"], [], {"version": True}),
    (["--version=false", "-run-healthcheck"], [], {"version": False,
                                                    "run-healthcheck": True}),
    (["-run-healthcheck=F", "--run-healthcheck=yes"], [], {"run-healthcheck": True}),
    (["-port", "--", "cat", "-version"], ["--port", "--", "cat", "-version"], {}),
    (["-fprocess", "env A=b", "-max-in", "2"], ["--fprocess=env A=b", "-max-in", "2"], {}),
])
def test_flags_are_read_as_gos_flag_package_reads_them(
        argv: list[str], spelled: list[str], switches: dict[str, bool]) -> None:
    assert go_flags(argv) == (spelled, switches)


def test_single_dash_flags_set_the_same_settings() -> None:
    config = parse_args(go_flags(["-max-inflight", "3", "-exec-timeout=2s", "--", "cat"])[0],
                        {})
    assert (config.max_inflight, config.exec_timeout, config.fprocess) == (3, 2, ("cat",))


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


@pytest.mark.parametrize("spelling", ["healthcheck", "-run-healthcheck"])
def test_healthcheck_follows_the_lock_file(tmp_path: Path, spelling: str) -> None:
    missing = fwatchdog(spelling, env={"TMPDIR": str(tmp_path)})
    assert (missing.returncode, missing.stderr) == (1, "unable to find lock file.\n")
    (tmp_path / ".lock").touch()
    found = fwatchdog(spelling, env={"TMPDIR": str(tmp_path)})
    assert (found.returncode, found.stdout, found.stderr) == (0, "", "")


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


def test_the_fprocess_check_finds_what_shutil_which_finds(tmp_path: Path) -> None:
    """The start's "fprocess not found" check, written without shutil (see cli._runnable)."""
    from watchdog.cli import _runnable

    script = tmp_path / "fn"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    plain = tmp_path / "data"
    plain.write_text("")
    programs = ["cat", "sh", "no-such-program", "/bin/sh", "/bin", str(script), str(plain),
                "fn", "data"]
    paths = [os.defpath, "", f"/nonexistent:{tmp_path}", f":{tmp_path}", str(tmp_path)]
    for program in programs:
        for path in paths:
            assert _runnable(program, path) == (
                shutil.which(program, path=path) is not None), (program, path)
        assert _runnable(program, None) == (shutil.which(program, path=os.defpath) is not None)
