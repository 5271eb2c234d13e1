"""Where the gateway's time goes on the echo path: py-spy samples it while wrk
drives `cat` with 100-byte POSTs, and the top frames are printed (own time, and
by area). Needs py-spy (the `bench` extra) and the right to ptrace (root here).

    python bench/profile.py [--seconds 8] [--write]
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import POST_100, gateway, replace_section, wrk

AREAS = (  # first match wins, on the innermost frame's file
    ("starting the function (posix_spawn, blocked in vfork)", ("process.py", "spawn")),
    ("the event loop, idle or in C", ("runners.py", "")),
    ("HTTP (watchdog/http.py: httptools' callbacks, answers)", ("watchdog/http.py", "")),
    ("aiohttp (the metrics port; before: the function port too)", ("aiohttp/", "")),
    ("watchdog (executor, process, server, logs, metrics)", ("watchdog/", "")),
    ("prometheus-client", ("prometheus_client/", "")),
    ("asyncio", ("asyncio/", "")),
)


def area(frame: str) -> str:
    for name, (path, function) in AREAS:
        if path in frame and frame.startswith(function):
            return name
    return "other"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--write", action="store_true", help="rewrite bench/RESULTS.md")
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        print("profile: py-spy not found (pip install '.[bench]')", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        script = folder / "post.lua"
        script.write_text(POST_100)
        raw = folder / "profile.txt"
        with gateway(folder, ["cat"], WATCHDOG_LOG_LEVEL="INFO") as gw:
            recorder = subprocess.Popen(
                [spy, "record", "-p", str(gw.proc.pid), "-d", str(round(args.seconds)), "-r",
                 "500", "-f", "raw", "-o", str(raw), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            rate = wrk(gw.url, args.seconds + 2, 16, script)
            recorder.wait(timeout=60)
        own: collections.Counter[str] = collections.Counter()
        areas: collections.Counter[str] = collections.Counter()
        for line in raw.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            frame = stack.rsplit(";", 1)[-1]
            own[frame] += int(count)
            areas[area(frame)] += int(count)
    total = sum(own.values()) or 1
    lines = [
        f"py-spy, 500 Hz, {args.seconds:g} s, while wrk -c16 drives `cat` "
        f"({rate.rps:,.0f} req/s during the profile; the gateway's thread busy "
        f"{total / (args.seconds * 500):.0%} of the time, "
        f"{total * 2000 / (rate.rps * args.seconds):.0f} µs a request); shares of the "
        "samples in which it was not idle.",
        "",
        "| area | share |",
        "|---|---:|",
        *(f"| {name} | {count / total:.1%} |" for name, count in areas.most_common()),
        "",
        "| frame (own time) | share |",
        "|---|---:|",
        *(f"| `{frame.replace('|', '/')}` | {count / total:.1%} |"
          for frame, count in own.most_common(12)),
    ]
    table = "\n".join(lines)
    print(table)
    if args.write:
        replace_section("Profile of the echo path", "python bench/profile.py --write", table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
