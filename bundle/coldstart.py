"""Cold start of the bundle: exec to the first 200 from /_/health, median of N.

    sudo .venv/bin/python bundle/coldstart.py [-n 12] [--rootfs busybox] [--port 18451]
    .venv/bin/python bundle/coldstart.py --host          # the bundle, no chroot
    .venv/bin/python bundle/coldstart.py --venv          # the venv's gateway, for scale

(`python bench/suite.py --only footprint` measures both forms beside the Go watchdogs,
with memory.)

With --rootfs (bundle/rootfs.sh builds it) each start is a pod as tests/test_bundle.py
makes one: own mount and PID namespace, chroot, uid 1000, the bundle read-only at
/oscar/bin; the time includes unshare, the mounts and chroot (a few ms). The clock
starts before the fork and stops at the first 200, polled every 2 ms.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.footprint import wait_healthy  # noqa: E402 - as bench/suite.py's footprint
from tests.test_bundle import POD  # noqa: E402 - the same pod as the tests'


def once(argv: list[str], env: dict[str, str], port: int, in_namespace: bool) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return wait_healthy(proc, port, start)
    except RuntimeError as exc:  # exited, or not healthy in time
        raise SystemExit(str(exc)) from None
    finally:
        # unshare --fork ignores SIGTERM while it waits: signal the gateway itself
        target = proc.pid
        if in_namespace:
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
            with_child = children.read_text().split() if children.exists() else []
            target = int(with_child[0]) if with_child else proc.pid
        if proc.poll() is None:
            os.kill(target, signal.SIGTERM)
        proc.wait(30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=12)
    parser.add_argument("--port", type=int, default=18451)
    parser.add_argument("--bundle", type=Path, default=ROOT / "dist" / "oscar-bin")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--rootfs", default="busybox", help="busybox, bullseye or trixie")
    where.add_argument("--host", action="store_true", help="run the bundle without chroot")
    where.add_argument("--venv", action="store_true", help="run the venv's gateway")
    args = parser.parse_args()
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
           "fprocess": "cat", "WATCHDOG_BIND_ADDRESS": "127.0.0.1",
           "WATCHDOG_PORT": str(args.port), "WATCHDOG_METRICS_PORT": str(args.port + 1),
           "healthcheck_interval": "0"}
    in_namespace = not (args.host or args.venv)
    if args.venv:
        argv = [str(ROOT / ".venv" / "bin" / "python"), "-m", "watchdog"]
        env["PYTHONPATH"] = str(ROOT)
    elif args.host:
        argv = [str(args.bundle / "fwatchdog")]
    else:
        root = subprocess.run(["bash", str(ROOT / "bundle" / "rootfs.sh"), args.rootfs],
                              check=True, capture_output=True, text=True).stdout.split()[-1]
        config = Path(root) / "oscar" / "config"  # mounted over itself: empty is fine
        argv = ["unshare", "--mount", "--pid", "--fork", "--kill-child", "/bin/sh", "-c", POD,
                "pod", root, str(args.bundle.resolve()), str(config), "1000:1000",
                "/usr/bin/env", "/usr/sbin/chroot", *(f"{k}={v}" for k, v in env.items())]
    times = [once(argv, env, args.port, in_namespace) for _ in range(args.n)]
    load = os.getloadavg()[0]
    print(f"exec -> first 200 /_/health: median {statistics.median(times):.0f} ms, "
          f"min {min(times):.0f}, max {max(times):.0f} (n={args.n}, load {load:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
