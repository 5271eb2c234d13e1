"""A short run of the whole benchmark suite, so that it cannot rot. The numbers
live in bench/RESULTS.md, not in assertions: shared machines make them flaky."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bench.suite import ECHO_CONFIGURATIONS, echo_name

ROOT = Path(__file__).parent.parent


def need_wrk() -> None:
    if shutil.which("wrk") is None:
        if os.environ.get("CI"):
            pytest.fail("wrk is missing: .ci/run should have installed it")
        pytest.skip("wrk not installed (apt-get install wrk)")


def test_benchmark_suite_smoke() -> None:
    need_wrk()
    before = (ROOT / "bench" / "RESULTS.md").read_text()
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "suite.py"), "--quick"],
                            capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for title in ("Echo throughput", "Shedding: 429 answers per second", "Overload sweep",
                  "Memory", "OSCAR mode overhead", "Footprint: cold start and memory",
                  "http mode: the proxy in front of a server",
                  "Streaming mode: large outputs and the first byte",
                  "Wait queue: the same overload with and without it"):
        assert f"## {title}" in out, title

    def rate(name: str) -> float:
        match = re.search(rf"^\| {re.escape(name)} \| ([\d,.]+) \|", out, re.MULTILINE)
        assert match is not None, (name, out)
        return float(match.group(1).replace(",", ""))

    if shutil.which("cc") or shutil.which("gcc"):  # as bench/suite.py looks for one
        assert rate("C loop: posix_spawn + pipe of cat, 4 threads") > 0
    else:
        assert "(no C compiler here: the C loop was not measured)" in out
    for configuration in ECHO_CONFIGURATIONS:
        assert rate(echo_name(*configuration)) > 0
    assert rate("fwatchdog, max_inflight=4 held, workers=1 (log INFO)") > 0
    assert rate("fwatchdog mode=streaming") > 0  # MiB/s of 64 MiB through cat
    assert rate("fwatchdog, max_queue=16") > 0  # served a second with the queue
    # CPU a request: the gateway's, its functions', all of it (numbers, not "–").
    row = next(line for line in out.splitlines()
               if line.startswith(f"| {echo_name(*ECHO_CONFIGURATIONS[0])} |"))
    gateway_us, function_us, all_us = (float(cell.replace(",", ""))
                                       for cell in row.strip("| ").split(" | ")[-3:])
    assert gateway_us > 0
    assert function_us > 0
    assert all_us == pytest.approx(gateway_us + function_us, abs=2)
    assert rate("fwatchdog, max_inflight=4 held, workers=2 (log INFO)") > 0
    assert rate("fwatchdog mode=http, workers=1") > 0  # the proxy answered, 200s
    assert rate("the server alone (no proxy)") > 0
    assert re.search(r"^\| 8 \| [\d,]+ \| [\d.,]+ \|", out, re.MULTILINE), out  # locust ran
    assert "| idle RSS |" in out
    assert "counted" not in out  # wc -c saw every byte of the streamed body
    assert re.search(r"\*\*Overhead: -?[\d.]+ ms\*\*", out)
    # --quick measures but leaves the published results alone.
    assert (ROOT / "bench" / "RESULTS.md").read_text() == before


def test_against_another_watchdog_binary() -> None:
    """--against takes any binary configured the OpenFaaS way; ours is one."""
    if shutil.which("wrk") is None:
        pytest.skip("wrk not installed")
    binary = str(Path(sys.executable).parent / "fwatchdog")
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "suite.py"), "--quick", "--only", "shed",
         "--against", binary], capture_output=True, text=True, timeout=300, check=False,
        cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    row = re.search(rf"^\| --against {re.escape(binary)} \| ([\d,]+) \|", result.stdout,
                    re.MULTILINE)
    assert row is not None, result.stdout
    assert int(row.group(1).replace(",", "")) > 0


def test_probe_benchmark_smoke() -> None:
    """bench/probe.py, briefly: one round of 20 probes per priority."""
    need_wrk()
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "probe.py"), "--rounds", "1",
                             "--probes", "20"], capture_output=True, text=True, timeout=120,
                            check=False, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = re.findall(r"^\| (\d+) \| ([\d.]+) \|", result.stdout, re.MULTILINE)
    assert [nice for nice, _ in rows] == ["0", "5"], result.stdout
    assert all(float(p50) > 0 for _, p50 in rows)


def compare_go(*args: str) -> str:
    """bench/compare_go.py with this gateway on both sides (so no Go is needed) and
    both metrics listeners on a free port instead of Go's fixed 8081."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        metrics_port = str(sock.getsockname()[1])
    result = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "compare_go.py"), "--metrics-port",
         metrics_port, *args], capture_output=True, text=True, timeout=120, check=False,
        cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_compare_go_smoke() -> None:
    """The same gateway on both sides: every case the same, in the summary's format
    (each setup run also compares its metrics, one case more)."""
    out = compare_go("--go", "python -m watchdog", "--cases", "6")
    assert out.splitlines()[-1] == "7 cases, 7 same, 0 different", out
    assert "## Differences" not in out


def test_compare_go_reports_a_difference() -> None:
    """A side that answers otherwise (a forced Content-Type) shows up, grouped."""
    out = compare_go("--go", "python -m watchdog --content-type text/x-other",
                     "--only", "sniff/request Content-Type echoed")
    assert out.splitlines()[-1] == "2 cases, 1 same, 1 different", out
    assert re.search(r"^\| header content-type \| text/x-other \| application/x-custom "
                     r"\| 1: sniff/request Content-Type echoed \|$", out, re.MULTILINE), out


def test_footprint_section_smoke() -> None:
    """--quick --only footprint: the gateway from the venv, and from the bundle when it
    is built (else its column says so); every measured cell a number."""
    need_wrk()
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "suite.py"), "--quick",
                             "--only", "footprint"], capture_output=True, text=True,
                            timeout=110, check=False, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "## Footprint: cold start and memory" in out
    header = next(line for line in out.splitlines() if line.startswith("| what | target |"))
    assert header.split(" | ")[2:4] == ["fwatchdog (venv)", "fwatchdog (OSCAR bundle) |"]
    rows = {line.split(" | ")[0][2:]: line.split(" | ")[2] for line in out.splitlines()
            if line.startswith("| ") and not line.startswith(("| what", "|---"))}
    assert list(rows) == ["exec → first 200 on /_/health", "first request after start / warm one",
                          "RSS idle after start", "RSS growth over the requests",
                          "RSS per 1,000 idle connections"]
    cold = re.fullmatch(r"(\d+) ms \(min (\d+)\)", rows["exec → first 200 on /_/health"])
    assert cold is not None, rows
    assert 0 < int(cold.group(2)) <= int(cold.group(1)), rows
    assert re.fullmatch(r"[\d.]+× \([\d.]+ / [\d.]+ ms\)",
                        rows["first request after start / warm one"]), rows
    idle = re.fullmatch(r"([\d.]+) MB", rows["RSS idle after start"])
    assert idle is not None, rows
    assert 5 < float(idle.group(1)) < 200, rows
    assert re.fullmatch(r"[+-][\d.]+ MB \([\d,]+\)", rows["RSS growth over the requests"]), rows
    assert re.fullmatch(r"[\d.]+ MB", rows["RSS per 1,000 idle connections"]), rows
