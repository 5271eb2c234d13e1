"""What a pod pays for the gateway before and besides its work: the time from exec to
the first 200 on /_/health, the first request against a warm one, the resident memory
idle, after many requests, and per idle connection. Loopback only, every wait bounded.

The clock of a cold start starts before the fork and stops at the first 200, polled
every 2 ms on a new connection (refused until the port listens: a few µs each).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import statistics
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

HEALTH = b"GET /_/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
# The Go watchdogs' metrics port, fixed: one of them at a time, and nobody else on it.
GO_METRICS_PORT = 8081


def healthy(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(HEALTH)
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def wait_healthy(proc: subprocess.Popen[bytes], port: int, started: float,
                 within: float = 10.0) -> float:
    """Milliseconds from `started` (a perf_counter) to the first 200 on /_/health."""
    while time.perf_counter() - started < within:
        if healthy(port):
            return (time.perf_counter() - started) * 1000
        if proc.poll() is not None:
            raise RuntimeError(f"exited {proc.returncode} before it was healthy")
        time.sleep(0.002)
    raise RuntimeError(f"not healthy after {within:g} s")


@contextmanager
def started(argv: Sequence[str], env: dict[str, str], port: int, log: Path, *,
            kill: bool = False) -> Iterator[tuple[subprocess.Popen[bytes], float]]:
    """Start `argv`, wait until healthy; yields (the process, ms to healthy) and stops
    it afterwards: SIGTERM twice (the gateway's second skips its drain), or SIGKILL
    with `kill` (a Go watchdog started with healthcheck_interval=0 never exits on
    SIGTERM, and otherwise waits its interval)."""
    with open(log, "ab") as out:
        begin = time.perf_counter()
        proc = subprocess.Popen(list(argv), env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT)
        try:
            yield proc, wait_healthy(proc, port, begin)
        finally:
            if kill:
                proc.kill()
            stop(proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    for _ in range(2):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.2)  # two signals sent at once would merge into one
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def request_ms(port: int, body: bytes = b"x" * 100) -> float:
    """One POST on a new connection, to the last byte of its answer (which closes)."""
    head = (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    begin = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    elapsed = (time.perf_counter() - begin) * 1000
    if not answer.startswith(b"HTTP/1.1 200") or not answer.endswith(body):
        raise RuntimeError(f"unexpected answer: {answer[:200]!r}")
    return elapsed


def first_and_warm(port: int, warm: int = 20) -> tuple[float, float]:
    """(the first request's ms, the median of `warm` later ones), each on a new connection."""
    first = request_ms(port)
    for _ in range(5):
        request_ms(port)
    return first, statistics.median(request_ms(port) for _ in range(warm))


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def idle_connections_kib(pid: int, port: int, count: int = 1000) -> float:
    """RSS growth of `pid` once `count` connections have each had an answer and stay
    open, idle (keep-alive), as a platform's proxies leave them."""
    ask = b"GET /_/health HTTP/1.1\r\nHost: x\r\n\r\n"
    before = rss_kib(pid)
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            socks.append(sock)
            sock.sendall(ask)
            if not sock.recv(4096).startswith(b"HTTP/1.1 200"):
                raise RuntimeError("a connection was not answered 200")
        time.sleep(0.5)
        for sock in socks:  # all still open: none was shed at a cap
            sock.sendall(ask)
            if not sock.recv(4096).startswith(b"HTTP/1.1 200"):
                raise RuntimeError("an idle connection was closed")
        time.sleep(0.2)
        return rss_kib(pid) - before
    finally:
        for sock in socks:
            sock.close()


def allow_descriptors(count: int) -> None:
    """Raise this process's soft RLIMIT_NOFILE to hold `count` connections, before
    the servers start: they inherit it (the gateway sizes its connection cap on it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 2 * count + 256  # both ends, when the server counts against it too
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (
            want if hard == resource.RLIM_INFINITY else min(hard, want), hard))


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def wait_port_free(port: int, within: float = 60.0) -> bool:
    deadline = time.monotonic() + within
    while not port_free(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


@dataclass
class Footprint:
    """One server's measurements, several runs each (milliseconds, KiB)."""

    cold_ms: list[float] = field(default_factory=list)
    first_ms: list[float] = field(default_factory=list)
    warm_ms: list[float] = field(default_factory=list)
    idle_kib: list[int] = field(default_factory=list)
    growth_kib: list[int] = field(default_factory=list)
    per_1000_kib: list[float] = field(default_factory=list)
    requests: int = 0
    note: str = ""

    @staticmethod
    def median(values: Sequence[float]) -> float:
        return statistics.median(values) if values else float("nan")

    @property
    def first_over_warm(self) -> list[float]:
        return [f / w for f, w in zip(self.first_ms, self.warm_ms, strict=True) if w]


def environ_for(port: int, metrics_port: int, folder: Path, command: Sequence[str],
                go: bool) -> dict[str, str]:
    """The same function and ports, the OpenFaaS way for a Go watchdog (whose metrics
    port is fixed), the gateway's own for ours."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TMPDIR": str(folder),
           "fprocess": " ".join(command), "port": str(port), "healthcheck_interval": "0",
           # Ignored by Go; this gateway, when it is the binary compared, keeps off 8081.
           "WATCHDOG_METRICS_PORT": str(metrics_port)}
    if not go:
        env.update(WATCHDOG_BIND_ADDRESS="127.0.0.1", WATCHDOG_PORT=str(port),
                   WATCHDOG_LOG_LEVEL="WARNING")
    return env
