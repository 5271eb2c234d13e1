"""OSCAR mode's cost per request: a trivial script (copy the input file to the
output folder) run directly, and the same script behind the gateway in oscar
mode (base64 in, base64 out, a token, one request at a time on a kept-alive
connection), measured side by side in one run.

    python bench/oscar.py                          # 3 rounds of 300 requests
    python bench/oscar.py --rounds 1 --requests 20 # a smoke run
    python bench/oscar.py --write                  # also rewrite its part of bench/RESULTS.md

The watchdog + FaaS Supervisor chain it replaces answers in about 535 ms
(REFERENCE.md, measured on a machine like this one). Only loopback is used.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import gateway, replace_section

SCRIPT = 'cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/out"\n'
TOKEN = "ab" * 32
SUPERVISOR_CHAIN_MS = 535.0  # REFERENCE.md


def run_direct(script: Path, folder: Path, payload: bytes, requests: int) -> list[float]:
    """The script alone: its folders and input file made beforehand, as a
    supervisor would, and only the run timed."""
    in_dir, out_dir = folder / "in", folder / "out"
    in_dir.mkdir(exist_ok=True)
    out_dir.mkdir(exist_ok=True)
    (in_dir / "event").write_bytes(payload)
    env = {**os.environ, "INPUT_FILE_PATH": str(in_dir / "event"),
           "TMP_INPUT_DIR": str(in_dir), "TMP_OUTPUT_DIR": str(out_dir)}
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        pid = os.posix_spawn("/bin/sh", ["/bin/sh", str(script)], env)
        os.waitpid(pid, 0)
        times.append(time.perf_counter() - started)
    return times


def run_gateway(port: int, payload: bytes, requests: int) -> list[float]:
    body = base64.b64encode(payload)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "text/plain"}
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times = []
    for _ in range(requests):
        started = time.perf_counter()
        connection.request("POST", "/run/bench", body, headers)
        response = connection.getresponse()
        answer = response.read()
        times.append(time.perf_counter() - started)
        if response.status != 200 or base64.b64decode(answer) != payload:
            raise RuntimeError(f"bad answer: {response.status} {answer[:200]!r}")
    connection.close()
    return times


def measure(rounds: int, requests: int, size: int) -> tuple[str, bool]:
    """The table, and whether the gateway left its folder clean."""
    payload = os.urandom(size)
    direct: list[float] = []
    through: list[float] = []
    overheads: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        script = folder / "script.sh"
        script.write_text(SCRIPT)
        work = folder / "gw"
        work.mkdir()
        with gateway(work, [], WATCHDOG_MODE="oscar", fprocess=f"/bin/sh {script}",
                     OSCAR_SERVICE_NAME="bench", OSCAR_SERVICE_TOKEN=TOKEN) as gw:
            run_gateway(gw.port, payload, 10)  # warm up
            for _ in range(rounds):
                d = run_direct(script, folder, payload, requests)
                g = run_gateway(gw.port, payload, requests)
                direct += d
                through += g
                overheads.append(statistics.median(g) - statistics.median(d))
        clean = sorted(p.name for p in work.iterdir()) == ["gateway.log"]
    return _table(direct, through, overheads, rounds, requests, size), clean


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=300, help="per round and side")
    parser.add_argument("--size", type=int, default=1024, help="input bytes")
    parser.add_argument("--write", action="store_true", help="rewrite bench/RESULTS.md")
    args = parser.parse_args(argv)
    table, clean = measure(args.rounds, args.requests, args.size)
    print(table)
    if not clean:
        print("the gateway left request folders behind", file=sys.stderr)
        return 1
    if args.write:
        command = " ".join(["python bench/oscar.py", *(argv if argv is not None
                                                        else sys.argv[1:])])
        replace_section("OSCAR mode overhead", command, table)
    return 0


def _ms(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] * 1000
    return statistics.quantiles(values, n=100)[q - 1] * 1000


def _table(direct: list[float], through: list[float], overheads: list[float], rounds: int,
           requests: int, size: int) -> str:
    overhead = statistics.median(overheads) * 1000
    lines = [
        f"Trivial script (cp input -> output), {size}-byte input, one request at a time, "
        f"{rounds} rounds x {requests} requests, {os.cpu_count()} cores.",
        "",
        "| what | p50 ms | p90 ms | p99 ms |",
        "|---|---:|---:|---:|",
        f"| script run directly (`/bin/sh script.sh`) | {_ms(direct, 50):.2f} | "
        f"{_ms(direct, 90):.2f} | {_ms(direct, 99):.2f} |",
        f"| fwatchdog, mode=oscar (base64 in and out, token) | {_ms(through, 50):.2f} | "
        f"{_ms(through, 90):.2f} | {_ms(through, 99):.2f} |",
        "",
        f"**Overhead: {overhead:.2f} ms** (median over rounds of p50(gateway) - "
        f"p50(direct); target <= 10 ms). The fwatchdog + FaaS Supervisor chain: about "
        f"{SUPERVISOR_CHAIN_MS:.0f} ms per request (REFERENCE.md), "
        f"{SUPERVISOR_CHAIN_MS / (statistics.median(through) * 1000):.0f}x this.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
