"""Echo throughput: the gateway forking `cat` for 100-byte POSTs, driven by wrk,
side by side with a raw spawn-and-pipe loop of the same command (the ceiling a
fork-per-request gateway can reach on this machine).

    python bench/echo.py                       # 3 runs of 10 s per loop, medians
    python bench/echo.py --duration 1 --runs 1 # the smoke run the tests use
    python bench/echo.py --write               # also rewrite bench/RESULTS.md

Only loopback is ever targeted; every run is bounded in time.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BODY = b"x" * 100
WRK_SCRIPT = """wrk.method = "POST"
wrk.body = string.rep("x", 100)
wrk.headers["Content-Type"] = "text/plain"
"""


@dataclass
class Rate:
    rps: float
    p50_ms: float = float("nan")
    p99_ms: float = float("nan")
    errors: int = 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_gateway(loop: str, folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "TMPDIR": str(folder),
        "WATCHDOG_BIND_ADDRESS": "127.0.0.1",
        "WATCHDOG_PORT": str(port),
        "WATCHDOG_METRICS_PORT": str(free_port()),
        "WATCHDOG_LOG_LEVEL": "WARNING",  # the per-request line is measured elsewhere
        "WATCHDOG_LOOP": loop,
        "healthcheck_interval": "0",
    }
    log = folder / f"gateway-{loop}.log"
    # The log handle stays open in the child; closing ours is fine.
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "watchdog", "--", "cat"], env=env,
                                stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("gateway did not start:\n" + log.read_text())


def run_wrk(url: str, seconds: float, connections: int, script: Path) -> Rate:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency",
         "-s", str(script), url],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return Rate(rps, _latency(out, "50%"), _latency(out, "99%"),
                int(errors.group(1)) if errors else 0)


def _latency(out: str, percentile: str) -> float:
    match = re.search(rf"^\s+{percentile}\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    if match is None:
        return float("nan")
    return float(match.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[match.group(2)]


def _spawn_loop(seconds: float, counter: Any) -> None:  # a multiprocessing.Value
    """What the gateway does per request minus HTTP: pipe, posix_spawn, write, read, reap."""
    deadline = time.monotonic() + seconds
    done = 0
    while time.monotonic() < deadline:
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        pid = os.posix_spawnp("cat", ["cat"], os.environ, file_actions=[
            (os.POSIX_SPAWN_DUP2, in_r, 0), (os.POSIX_SPAWN_DUP2, out_w, 1)])
        os.close(in_r)
        os.close(out_w)
        os.write(in_w, BODY)
        os.close(in_w)
        while os.read(out_r, 65536):
            pass
        os.close(out_r)
        os.waitpid(pid, 0)
        done += 1
    with counter.get_lock():
        counter.value += done


def raw_spawn_rate(seconds: float, workers: int = 4) -> Rate:
    counter = multiprocessing.Value("l", 0)
    procs = [multiprocessing.Process(target=_spawn_loop, args=(seconds, counter))
             for _ in range(workers)]
    started = time.monotonic()
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
    return Rate(counter.value / (time.monotonic() - started))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--runs", type=int, default=3, help="runs per configuration")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--loops", default="asyncio,uvloop")
    parser.add_argument("--write", action="store_true", help="rewrite bench/RESULTS.md")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench: wrk not found (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    rows: list[tuple[str, Rate]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        script = folder / "post.lua"
        script.write_text(WRK_SCRIPT)
        raw = [raw_spawn_rate(args.duration) for _ in range(args.runs)]
        rows.append(("raw posix_spawn loop of cat, 4 processes", _median(raw)))
        for loop in args.loops.split(","):
            rates = []
            for _ in range(args.runs):
                proc, port = start_gateway(loop, folder)
                try:
                    rates.append(run_wrk(f"http://127.0.0.1:{port}/", args.duration,
                                         args.connections, script))
                finally:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(30)
            rows.append((f"fwatchdog -- cat, loop={loop}", _median(rates)))
    table = _table(rows, args)
    print(table)
    if args.write:
        words = argv if argv is not None else sys.argv[1:]
        replace_section("Echo throughput", " ".join(["python bench/echo.py", *words]), table)
    return 0 if all(rate.rps > 0 and rate.errors == 0 for _, rate in rows) else 1


def _median(rates: list[Rate]) -> Rate:
    return Rate(statistics.median(r.rps for r in rates),
                statistics.median(r.p50_ms for r in rates),
                statistics.median(r.p99_ms for r in rates),
                sum(r.errors for r in rates))


def _table(rows: list[tuple[str, Rate]], args: argparse.Namespace) -> str:
    ceiling = rows[0][1].rps
    lines = [
        f"echo: 100-byte POST, wrk -t2 -c{args.connections}, {args.duration:g} s x "
        f"{args.runs} runs (medians), {os.cpu_count()} cores",
        "",
        "| what | req/s | p50 ms | p99 ms | non-2xx | of raw spawn loop |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, rate in rows:
        p50, p99 = (_ms(value) for value in (rate.p50_ms, rate.p99_ms))
        lines.append(f"| {name} | {rate.rps:,.0f} | {p50} | {p99} | "
                     f"{rate.errors} | {rate.rps / ceiling:.0%} |")
    return "\n".join(lines)


def _ms(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.1f}"


def replace_section(title: str, command: str, table: str) -> None:
    """Put `table` under `## title` in bench/RESULTS.md, replacing what was there."""
    path = ROOT / "bench" / "RESULTS.md"
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    section = f"## {title}\n\nCommand: `{command}`\n\n{table}\n"
    start = text.find(f"## {title}\n")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
