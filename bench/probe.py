"""Health-probe latency while CPU-bound functions fill the CPU, with the functions at
the gateway's priority (function_nice=0, as the Go watchdog) and one notch below
(the default, 5): what a Kubernetes liveness probe sees from a saturated pod.

    python bench/probe.py [--rounds 2] [--probes 300]

max_inflight=8 functions that each spin in sh for a few tens of milliseconds, kept
busy by wrk -c8 (on 2 cores: the CPU is full); meanwhile 300 sequential
`GET /_/health`, each on a new connection, 20 ms apart. Loopback only; every process
it starts is stopped.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import gateway

BUSY = "i=0; while [ $i -lt 60000 ]; do i=$((i+1)); done; cat"


def probe_latencies(port: int, probes: int) -> list[float]:
    latencies = []
    for _ in range(probes):
        started = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"GET /_/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            while sock.recv(4096):
                pass
        latencies.append((time.perf_counter() - started) * 1000)
        time.sleep(0.02)
    return sorted(latencies)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--probes", type=int, default=300)
    args = parser.parse_args(argv)
    load_seconds = round(2 + args.probes * 0.03) + 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):  # interleaved, so that both share the machine's mood
            for nice in ("0", "5"):
                with gateway(Path(tmp), ["sh", "-c", BUSY], WATCHDOG_MAX_INFLIGHT="8",
                             WATCHDOG_FUNCTION_NICE=nice, WATCHDOG_LOG_LEVEL="WARNING") as gw:
                    load = subprocess.Popen(["wrk", "-t1", "-c8", f"-d{load_seconds}s", gw.url],
                                            stdout=subprocess.DEVNULL)
                    try:
                        time.sleep(2)  # the functions fill the CPU
                        latencies = probe_latencies(gw.port, args.probes)
                    finally:
                        load.wait(timeout=60)
                rows.append((nice, latencies))
    print("| function_nice | probe p50 ms | p90 ms | p99 ms | max ms |")
    print("|---:|---:|---:|---:|---:|")
    for nice, lat in rows:
        print(f"| {nice} | {statistics.median(lat):.2f} | {lat[int(len(lat) * 0.9)]:.2f} "
              f"| {lat[int(len(lat) * 0.99)]:.2f} | {lat[-1]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
