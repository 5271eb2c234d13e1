"""A short run of the benchmark, so that it cannot rot. The numbers themselves
live in bench/RESULTS.md, not in assertions: shared machines make them flaky."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def test_echo_benchmark_smoke() -> None:
    if shutil.which("wrk") is None:
        if os.environ.get("CI"):
            pytest.fail("wrk is missing: .ci/run should have installed it")
        pytest.skip("wrk not installed (apt-get install wrk)")
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "echo.py"), "--duration", "1", "--runs", "1",
         "--loops", "uvloop"],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = re.findall(r"^\| (.+?) \| ([\d,]+) \|", result.stdout, re.MULTILINE)
    names = [name for name, _ in rows]
    assert names == ["raw posix_spawn loop of cat, 4 processes", "fwatchdog -- cat, loop=uvloop"]
    assert all(int(rate.replace(",", "")) > 0 for _, rate in rows)


def test_oscar_overhead_benchmark_smoke() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "oscar.py"), "--rounds", "1", "--requests", "20"],
        capture_output=True, text=True, timeout=120, check=False, cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    overhead = re.search(r"\*\*Overhead: (-?[\d.]+) ms\*\*", result.stdout)
    assert overhead is not None, result.stdout
    rows = re.findall(r"^\| (.+?) \| ([\d.]+) \|", result.stdout, re.MULTILINE)
    assert [name for name, _ in rows] == [
        "script run directly (`/bin/sh script.sh`)",
        "fwatchdog, mode=oscar (base64 in and out, token)"]
