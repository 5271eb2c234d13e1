"""What the benchmarks share: starting the gateway and the baselines on loopback
ports, driving them with wrk, reading a process's CPU and memory, and writing
bench/RESULTS.md. Every run is bounded in time and targets 127.0.0.1 only."""

from __future__ import annotations

import math
import os
import re
import resource
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"
POST_100 = """wrk.method = "POST"
wrk.body = string.rep("x", 100)
wrk.headers["Content-Type"] = "text/plain"
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} (exit {proc.poll()})")


class Server:
    """A process we started that serves HTTP on 127.0.0.1:`port`."""

    def __init__(self, argv: list[str], env: dict[str, str], port: int, log: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/"
        metrics_port = env.get("WATCHDOG_METRICS_PORT", "8081")
        self.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        wait_port(port, self.proc)

    def cpu_split(self) -> tuple[float, float]:
        """(the gateway's own CPU seconds, its functions' that it reaped): the process
        and, under `--workers`, its workers (its children of the same name)."""
        own = reaped = 0.0
        name = _stat(self.proc.pid)[0]
        for pid in (self.proc.pid, *_children(self.proc.pid)):
            fields = _stat(pid)
            if fields and fields[0] == name:
                ticks = [int(v) for v in fields[12:16]]
                own += ticks[0] + ticks[1]
                reaped += ticks[2] + ticks[3]
        hz = os.sysconf("SC_CLK_TCK")
        return own / hz, reaped / hz

    def memory_kib(self, field: str = "VmRSS") -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise KeyError(field)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            time.sleep(0.2)  # two signals sent at once would merge into one
            if self.proc.poll() is None:
                self.proc.terminate()  # the gateway: a second signal skips the drain
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _stat(pid: int) -> list[str]:
    """/proc/PID/stat as fields, the name first (unparenthesised); [] once gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    head, _, tail = text.rpartition(")")
    return [head.partition("(")[2], *tail.split()]


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def gateway(folder: Path, command: list[str], *, log_name: str = "gateway.log",
            **settings: str) -> Server:
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "TMPDIR": str(folder),
        "WATCHDOG_BIND_ADDRESS": "127.0.0.1",
        "WATCHDOG_PORT": str(port),
        "WATCHDOG_METRICS_PORT": str(free_port()),
        "healthcheck_interval": "0",
        **settings,
    }
    argv = [sys.executable, "-m", "watchdog"] + (["--", *command] if command else [])
    return Server(argv, env, port, folder / log_name)


def foreign_watchdog(binary: str, folder: Path, command: list[str], **settings: str) -> Server:
    """Another watchdog binary, configured the OpenFaaS way (lower-case variables)."""
    port = free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TMPDIR": str(folder),
           "fprocess": " ".join(command), "port": str(port),
           # The Go watchdog's metrics port is fixed (8081); ours, when it is the binary
           # compared, must not collide with anything else running.
           "WATCHDOG_METRICS_PORT": str(free_port()), **settings}
    return Server([binary], env, port, folder / "against.log")


def null_server(folder: Path, loop: str = "uvloop") -> Server:
    port = free_port()
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)}
    return Server([sys.executable, str(ROOT / "bench" / "null_server.py"), str(port), loop],
                  env, port, folder / "null.log")


@dataclass
class Rate:
    rps: float
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    non_2xx: int = 0
    requests: int = 0
    driver_cpu: float = math.nan  # the load generator's CPU, in cores
    server_us: float = math.nan  # the server's own CPU a request, in µs
    function_us: float = math.nan  # its functions' CPU a request (what it reaped)
    all_us: float = math.nan  # everything the measured thing used a request
    idle: float = math.nan  # the machine's idle share of its CPU meanwhile


def machine_idle() -> tuple[int, int]:
    """(idle, all) jiffies of every CPU since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(value) for value in f.readline().split()[1:]]
    return fields[3] + fields[4], sum(fields)  # idle + iowait


def idle_since(before: tuple[int, int]) -> float:
    """The machine's idle share of its CPU since `before` (a machine_idle())."""
    idle, total = machine_idle()
    return (idle - before[0]) / max(1, total - before[1])


def children_cpu() -> float:
    """CPU seconds of this process's children that have ended (wrk, the C loop)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wrk(url: str, seconds: float, connections: int, script: Path | None = None) -> Rate:
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    if script is not None:
        argv += ["-s", str(script)]
    before = children_cpu()
    started = time.monotonic()
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True,
                         timeout=seconds + 60).stdout
    elapsed = time.monotonic() - started
    cpu = children_cpu() - before
    rps = _number(r"Requests/sec:\s+([\d.]+)", out)
    total = _number(r"(\d+) requests in", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return Rate(rps, _latency(out, "50%"), _latency(out, "99%"),
                int(non_2xx.group(1)) if non_2xx else 0, int(total), cpu / elapsed)


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    if match is None:
        raise RuntimeError(f"unexpected wrk output:\n{text}")
    return float(match.group(1))


def _latency(out: str, percentile: str) -> float:
    match = re.search(rf"^\s+{percentile}\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
    if match is None:
        return math.nan
    return float(match.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[match.group(2)]


def median_rate(rates: list[Rate]) -> Rate:
    def med(values: list[float]) -> float:
        values = [v for v in values if not math.isnan(v)]
        return statistics.median(values) if values else math.nan
    return Rate(med([r.rps for r in rates]), med([r.p50_ms for r in rates]),
                med([r.p99_ms for r in rates]), sum(r.non_2xx for r in rates),
                sum(r.requests for r in rates), med([r.driver_cpu for r in rates]),
                med([r.server_us for r in rates]), med([r.function_us for r in rates]),
                med([r.all_us for r in rates]), med([r.idle for r in rates]))


def wrk_with_cpu(server: Server, seconds: float, connections: int,
                 script: Path | None = None) -> Rate:
    """`wrk` against `server`, with the server's and its functions' CPU a request,
    and how much of the machine's CPU was left idle."""
    own, reaped = server.cpu_split()
    idle = machine_idle()
    rate = wrk(server.url, seconds, connections, script)
    rate.idle = idle_since(idle)
    own_after, reaped_after = server.cpu_split()
    if rate.requests:
        rate.server_us = (own_after - own) / rate.requests * 1e6
        rate.function_us = (reaped_after - reaped) / rate.requests * 1e6
        rate.all_us = rate.server_us + rate.function_us
    return rate


def ms(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:.1f}"


def replace_section(title: str, command: str, body: str) -> None:
    """Put `body` under `## title` in bench/RESULTS.md, replacing what was there."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    section = f"## {title}\n\nCommand: `{command}`\n\n{body.rstrip()}\n"
    start = text.find(f"## {title}\n")
    if start >= 0:
        end = text.find("\n## ", start + 1)
        text = text[:start] + section + (text[end:] if end >= 0 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text)
