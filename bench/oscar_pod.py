"""This gateway against OSCAR's own chain (the Go classic watchdog forking the FaaS
Supervisor), both as `/oscar/bin/fwatchdog` in the same emulated OSCAR pod
(tests/oscarpod: PID 1 of its own namespaces, OSCAR's environment, the manager
stand-in in front), on the seed's call: a PNG, base64, through the manager, a
script that hands it back.

    python bench/oscar_pod.py --go /work/gobin/fwatchdog-classic [--runs 3] [--calls 30]

Prints, per watchdog, medians over the runs: exec → healthy, the first call,
p50/p90 of the seed's call, and the CPU a call costs inside the pod (PID 1 and
all it waited for: the supervisor and the script included)."""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.oscarpod import (  # noqa: E402 - after the path, as a script
    Manager,
    build_supervisor,
    bundle_entries,
    rootfs,
    seed_png,
    supervisor_entries,
    venv_fwatchdog,
)
from tests.oscarpod.pod import Pod, host_image, new_token, oscar_environment  # noqa: E402

SERVICE = "seed"
SCRIPT = 'cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/result.png"\n'


@dataclass
class Run:
    cold_start: float
    first_call: float
    latencies: list[float]
    cpu_per_call: float


def call(url: str, token: str, body: bytes) -> float:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Authorization": f"Bearer {token}"})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as answer:
        answer.read()
        if answer.status != 200:
            raise RuntimeError(f"status {answer.status}")
    return time.perf_counter() - start


def one_run(entries: dict[str, Path], image: Path, work: Path, calls: int) -> Run:
    token = new_token()
    pod = Pod(rootfs=image, work=work, script=SCRIPT,
              env=oscar_environment(SERVICE, token, {}), bin_entries=entries).start()
    manager = None
    try:
        manager = Manager(pod, SERVICE, token, os.urandom(32))
        url = f"{manager.url}/run/{SERVICE}"
        image_bytes = seed_png()
        body = base64.b64encode(image_bytes)
        first = call(url, token, body)
        cpu_before = pod.cpu_seconds()
        latencies = [call(url, token, body) for _ in range(calls)]
        cpu = (pod.cpu_seconds() - cpu_before) / calls
        return Run(pod.cold_start(), first, latencies, cpu)
    finally:
        if manager is not None:
            manager.stop()
        pod.kill()


def measure(name: str, entries: dict[str, Path], image: Path, runs: int,
            calls: int) -> list[str]:
    results = []
    for index in range(runs):
        with tempfile.TemporaryDirectory(prefix="oscar-pod-run-") as work:
            results.append(one_run(entries, image, Path(work), calls))
        print(f"  {name} run {index + 1}/{runs} done", file=sys.stderr)

    def med(values: list[float]) -> float:
        return statistics.median(values)

    def pct(run: Run, q: int) -> float:
        ordered = sorted(run.latencies)
        return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]

    return [name, f"{med([r.cold_start for r in results]) * 1000:.1f}",
            f"{med([r.first_call for r in results]) * 1000:.1f}",
            f"{med([pct(r, 50) for r in results]) * 1000:.1f}",
            f"{med([pct(r, 90) for r in results]) * 1000:.1f}",
            f"{med([r.cpu_per_call for r in results]) * 1000:.1f}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--go", required=True, help="the Go classic watchdog binary")
    parser.add_argument("--bundle", help="this gateway's bundle folder (default: the venv's "
                        "gateway, in the host image)")
    parser.add_argument("--image", default="host",
                        help="host, or a root file system of bundle/rootfs.sh (trixie)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--calls", type=int, default=30)
    args = parser.parse_args(argv)
    build_supervisor()
    scratch = Path(tempfile.mkdtemp(prefix="oscar-pod-bench-"))
    try:
        image = host_image(scratch) if args.image == "host" else rootfs(args.image)
        if image is None:
            raise SystemExit(f"no root file system {args.image!r}")
        ours = (bundle_entries(Path(args.bundle)) if args.bundle
                else {**supervisor_entries(), "fwatchdog": venv_fwatchdog(scratch)})
        go_bin = scratch / "go"
        go_bin.mkdir()
        shutil.copy(args.go, go_bin / "fwatchdog")
        go = {**supervisor_entries(), "fwatchdog": go_bin / "fwatchdog"}
        rows = [measure("this gateway", ours, image, args.runs, args.calls),
                measure("Go classic + FaaS Supervisor", go, image, args.runs, args.calls)]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    header = ["/oscar/bin/fwatchdog", "exec → healthy (ms)", "first call (ms)",
              "seed p50 (ms)", "seed p90 (ms)", "CPU a call (ms)"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" + "---:|" * (len(header) - 1))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\nimage {args.image}; {args.runs} runs × {args.calls} calls; medians of the runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
