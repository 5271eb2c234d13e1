"""The benchmark suite: one command, every configuration, the baselines measured
in the same run, a table per section in bench/RESULTS.md and a plot.

    python bench/suite.py                  # everything, 3 runs each (about 10 minutes)
    python bench/suite.py --quick          # a smoke run of every section (under a minute)
    python bench/suite.py --only echo,shed --runs 5
    python bench/suite.py --against /path/to/fwatchdog   # another watchdog, side by side
                                             # (repeat --against for several)

Sections:
  echo      `cat` per 100-byte POST, wrk -c16: the gateway (uvloop, asyncio, 2 workers,
            functions at the gateway's priority) against a C loop of posix_spawn+pipe
            of the same command (4 threads), the physical limit, with CPU a request
  shed      limit 4 held by sleeping functions, wrk -c64: answers/s of 429 against a
            null aiohttp server that only answers that 429 (the HTTP ceiling)
  overload  locust (headless, FastHttpUser) at rising concurrency against limit 4:
            throughput, p50/p99 and 429 share; plotted to bench/overload.png
  limit     served/s and run time of a CPU-bound and an I/O-bound function as
            max_inflight rises: how to choose it
  memory    idle RSS, RSS growth over many requests, peak RSS while a large body
            streams to `wc -c`
  oscar     OSCAR mode's overhead over running a trivial script directly
  streaming mode=streaming: 1 GiB through `cat` (the body sent while the answer is
            read), its rate, the gateway's CPU a MiB and its RSS growth, and the time
            to the first byte of a function that writes, then sleeps; each --against
            binary in its mode=streaming
  queue     a 50 ms function, max_inflight=4, offered 4x its capacity by wrk -c16
            (closed-loop clients that retry at once): without the wait queue (today,
            and each --against binary) and with max_queue=16: served/s, the 429
            share, the calls a client sends per success
  footprint exec to the first 200 on /_/health, the first request against warm ones,
            idle RSS, RSS growth over many requests, RSS per 1,000 idle connections:
            the gateway from the venv and from the OSCAR bundle (`make oscar-bin`), and
            each --against binary (the Go watchdogs: one at a time, their metrics port
            8081 fixed)

The load generator's CPU is reported beside each rate (in cores), so that a
saturated generator is not mistaken for a saturated gateway.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import footprint as fp
from bench import oscar
from bench import streaming as st
from bench.common import (
    POST_100,
    ROOT,
    Rate,
    Server,
    children_cpu,
    foreign_watchdog,
    free_port,
    gateway,
    idle_since,
    machine_idle,
    median_rate,
    ms,
    null_server,
    replace_section,
    wrk,
    wrk_with_cpu,
)

SECTIONS = ("echo", "shed", "overload", "limit", "memory", "oscar", "footprint", "proxy",
            "streaming", "queue")
LIMIT = 4
# (loop, workers, function_nice, spawn_threads): the defaults first, then one
# setting changed at a time.
ECHO_CONFIGURATIONS = (
    ("uvloop", 1, "5", "1"),
    ("uvloop", 1, "5", "0"),
    ("asyncio", 1, "5", "1"),
    ("uvloop", 2, "5", "1"),
    ("uvloop", 1, "0", "1"),
)


def echo_name(loop: str, workers: int, nice: str, threads: str) -> str:
    return (f"fwatchdog -- cat (loop={loop}, workers={workers}, function_nice={nice}, "
            f"spawn_threads={threads}, log INFO)")


class Suite:
    def __init__(self, args: argparse.Namespace, folder: Path) -> None:
        self.args = args
        self.folder = folder
        self.quick: bool = args.quick
        self.runs: int = 1 if args.quick else args.runs
        self.seconds: float = 1.0 if args.quick else args.duration
        self.post = folder / "post.lua"
        self.post.write_text(POST_100)

    # --- echo -------------------------------------------------------------------------

    def echo(self) -> str:
        loop_binary = self._compile_spawn_loop()
        rows: dict[str, list[Rate]] = {}
        for _ in range(self.runs):  # interleaved, so that all share the machine's mood
            if loop_binary is not None:
                before = children_cpu()
                idle = machine_idle()
                out = subprocess.run([str(loop_binary), "4", str(self.seconds), "cat"],
                                     capture_output=True, text=True, check=True,
                                     timeout=self.seconds + 30).stdout
                left_idle = idle_since(idle)
                runs = float(out) * self.seconds
                used = children_cpu() - before
                rows.setdefault("C loop: posix_spawn + pipe of cat, 4 threads", []).append(
                    Rate(float(out), all_us=used / runs * 1e6 if runs else math.nan,
                         idle=left_idle))
            for loop, workers, nice, threads in ECHO_CONFIGURATIONS:
                with gateway(self.folder, ["cat"], WATCHDOG_LOOP=loop, WATCHDOG_WORKERS=str(
                        workers), WATCHDOG_FUNCTION_NICE=nice, WATCHDOG_SPAWN_THREADS=threads,
                             WATCHDOG_LOG_LEVEL="INFO") as gw:
                    rows.setdefault(echo_name(loop, workers, nice, threads), []).append(
                        wrk_with_cpu(gw, self.seconds, 16, self.post))
            for binary in self.args.against:
                with foreign_watchdog(binary, self.folder, ["cat"]) as other:
                    rows.setdefault(f"--against {binary}", []).append(
                        wrk_with_cpu(other, self.seconds, 16, self.post))
        medians = {name: median_rate(rates) for name, rates in rows.items()}
        ceiling = next(iter(medians.values())).rps if loop_binary is not None else math.nan
        lines = [
            f"`cat` per request, 100-byte POST, wrk -t2 -c16, {self.seconds:g} s x "
            f"{self.runs} runs, medians; {os.cpu_count()} cores.",
            "",
            "CPU a request, in µs: the gateway's own (its threads included), its functions' "
            "(the `cat`s it reaped), and all of it (for the C loop: the loop and its `cat`s). "
            f"The machine has {os.cpu_count()} x 1 s of CPU a second: when it is all used "
            "(idle near 0), the ratio to the C loop is the ratio of these totals, wrk's "
            "share aside.",
            "",
            "| what | req/s | p50 ms | p99 ms | non-2xx | of the C loop | wrk CPU (cores) "
            "| machine idle | gateway µs | functions µs | all µs |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, rate in medians.items():
            share = "–" if math.isnan(ceiling) else f"{rate.rps / ceiling:.0%}"
            cpu = "–" if math.isnan(rate.driver_cpu) else f"{rate.driver_cpu:.2f}"
            spare = "–" if math.isnan(rate.idle) else f"{rate.idle:.1%}"
            lines.append(f"| {name} | {rate.rps:,.0f} | {ms(rate.p50_ms)} | {ms(rate.p99_ms)} "
                         f"| {rate.non_2xx} | {share} | {cpu} | {spare} | {_us(rate.server_us)} "
                         f"| {_us(rate.function_us)} | {_us(rate.all_us)} |")
        if loop_binary is None:
            lines.append("\n(no C compiler here: the C loop was not measured)")
        return "\n".join(lines)

    def _compile_spawn_loop(self) -> Path | None:
        compiler = shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            return None
        binary = self.folder / "spawnloop"
        subprocess.run([compiler, "-O2", "-pthread", "-o", str(binary),
                        str(ROOT / "bench" / "spawnloop.c")], check=True)
        return binary

    # --- shed -------------------------------------------------------------------------

    def shed(self) -> str:
        rows: dict[str, list[Rate]] = {}
        for _ in range(self.runs):
            with null_server(self.folder) as null:
                rows.setdefault("null aiohttp server (uvloop) answering the same 429", []
                                ).append(wrk(null.url, self.seconds, 64))
            for workers in (1, 2):
                with gateway(self.folder, ["sleep", "120"], WATCHDOG_MAX_INFLIGHT=str(LIMIT),
                             WATCHDOG_WORKERS=str(workers), write_timeout="180s") as gw:
                    rows.setdefault(f"fwatchdog, max_inflight={LIMIT} held, workers={workers} "
                                    "(log INFO)", []).append(self._shed(gw))
            for binary in self.args.against:
                with foreign_watchdog(binary, self.folder, ["sleep", "120"],
                                      max_inflight=str(LIMIT), write_timeout="180s") as other:
                    rows.setdefault(f"--against {binary}", []).append(self._shed(other))
        medians = {name: median_rate(rates) for name, rates in rows.items()}
        ceiling = next(iter(medians.values())).rps
        lines = [
            f"Limit {LIMIT} held by sleeping functions, wrk -t2 -c64 GET, {self.seconds:g} s "
            f"x {self.runs} runs, medians.",
            "",
            "| what | answers/s | p50 ms | p99 ms | 429 share | of the null server "
            "| wrk CPU (cores) |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for name, rate in medians.items():
            share = rate.non_2xx / rate.requests if rate.requests else math.nan
            lines.append(f"| {name} | {rate.rps:,.0f} | {ms(rate.p50_ms)} | {ms(rate.p99_ms)} "
                         f"| {share:.1%} | {rate.rps / ceiling:.0%} | {rate.driver_cpu:.2f} |")
        return "\n".join(lines)

    def _shed(self, server: Server) -> Rate:
        holders = [subprocess.Popen(["curl", "-s", "-o", "/dev/null", "-m", "150", "-d", "x",
                                     server.url], stdin=subprocess.DEVNULL)
                   for _ in range(LIMIT)]
        try:
            time.sleep(0.5)  # the four slots taken
            return wrk(server.url, self.seconds, 64)
        finally:
            server.stop()
            for holder in holders:
                holder.kill()
                holder.wait()

    # --- overload -----------------------------------------------------------------------

    def overload(self) -> str:
        if shutil.which("locust", path=str(Path(sys.executable).parent)) is None:
            return "(locust is not installed: `pip install '.[bench]'`)"
        levels = [2, 8] if self.quick else [1, 2, 4, 8, 16, 32, 64]
        points = []
        with gateway(self.folder, ["sleep", "0.05"], WATCHDOG_MAX_INFLIGHT=str(LIMIT)) as gw:
            for users in levels:
                points.append((users, *self._locust(gw.url, users)))
        lines = [
            f"A function of 50 ms (`sleep 0.05`), max_inflight={LIMIT}; locust (headless, "
            f"FastHttpUser, no wait) with N users, {self._locust_seconds()} s per level.",
            "",
            "| users | answers/s | served/s | p50 ms | p99 ms | 429 share | locust CPU (cores) |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for users, rps, served, p50, p99, share, cpu in points:
            lines.append(f"| {users} | {rps:,.0f} | {served:,.1f} | {ms(p50)} | {ms(p99)} | "
                         f"{share:.1%} | {cpu:.2f} |")
        plot = self._plot(points)
        if plot:
            lines += ["", f"![overload]({plot.name})"]
        return "\n".join(lines)

    def _locust_seconds(self) -> int:
        return 2 if self.quick else 10

    def _locust(self, url: str, users: int) -> tuple[float, float, float, float, float, float]:
        prefix = self.folder / f"locust{users}"
        seconds = self._locust_seconds()
        locust = str(Path(sys.executable).parent / "locust")
        started = time.monotonic()
        usage = children_cpu()
        subprocess.run(
            [locust, "-f", str(ROOT / "bench" / "locustfile.py"), "--headless", "-u", str(users),
             "-r", str(users), "-t", f"{seconds}s", "--host", url.rstrip("/"), "--csv",
             str(prefix), "--only-summary", "--loglevel", "ERROR", "--exit-code-on-error", "0"],
            check=True, capture_output=True, timeout=seconds + 60)
        cpu = (children_cpu() - usage) / (time.monotonic() - started)
        with open(f"{prefix}_stats.csv") as f:
            total = next(row for row in csv.DictReader(f) if row["Name"] == "Aggregated")
        rejected = 0
        with open(f"{prefix}_failures.csv") as f:
            for row in csv.DictReader(f):
                if "429" in row["Error"]:
                    rejected += int(row["Occurrences"])
        count = int(total["Request Count"])
        rps = float(total["Requests/s"])
        share = rejected / count if count else math.nan
        served = rps * (1 - share) if count else 0.0
        return (rps, served, float(total["50%"]), float(total["99%"]), share, cpu)

    def _plot(self, points: list[tuple[int, float, float, float, float, float, float]]
              ) -> Path | None:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return None
        users = [p[0] for p in points]
        figure, (rates, latency, shed) = plt.subplots(3, 1, figsize=(7, 9), sharex=True)
        rates.plot(users, [p[1] for p in points], "o-", label="all answers/s")
        rates.plot(users, [p[2] for p in points], "s-", label="served (200)/s")
        rates.set_ylabel("per second")
        latency.plot(users, [p[3] for p in points], "o-", label="p50")
        latency.plot(users, [p[4] for p in points], "s-", label="p99")
        latency.set_ylabel("latency, ms")
        shed.plot(users, [100 * p[5] for p in points], "o-", color="tab:red")
        shed.set_ylabel("429 share, %")
        shed.set_xlabel("offered concurrency (locust users)")
        for axis in (rates, latency, shed):
            axis.set_xscale("log", base=2)
            axis.axvline(LIMIT, color="grey", linestyle="--", label=f"max_inflight={LIMIT}")
            axis.legend(loc="best", fontsize="small")
            axis.grid(alpha=0.3)
        figure.suptitle("fwatchdog under overload (function: 50 ms)")
        figure.tight_layout()
        target = self.folder / "overload.png" if self.quick else ROOT / "bench" / "overload.png"
        figure.savefig(target, dpi=90)
        plt.close(figure)
        return target

    # --- limit --------------------------------------------------------------------------

    def limit(self) -> str:
        """What max_inflight should be: served/s and the functions' own run time for a
        CPU-bound and an I/O-bound function as the limit rises, under more offered
        load (wrk -c32) than any limit admits."""
        functions = {
            "CPU-bound (a 25 ms busy loop in sh)":
                ["/bin/sh", "-c", "i=0; while [ $i -lt 12000 ]; do i=$((i+1)); done"],
            "I/O-bound (sleep 0.05)": ["sleep", "0.05"],
        }
        limits = [1, 2, 8] if self.quick else [1, 2, 4, 8, 16]
        lines = [
            f"wrk -t2 -c32 for {self.seconds:g} s per limit; served = answers that were not "
            "429; run time = the function's own mean (watchdog_function_duration_seconds).",
            "",
            "| function | max_inflight | served/s | mean run time ms | 429 share |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, command in functions.items():
            for limit in limits:
                with gateway(self.folder, command, WATCHDOG_MAX_INFLIGHT=str(limit),
                             WATCHDOG_LOG_LEVEL="WARNING") as gw:
                    rate = wrk(gw.url, self.seconds, 32, self.post)
                    runs, seconds = _function_time(gw)
                served = (rate.requests - rate.non_2xx) / max(self.seconds, 1)
                share = rate.non_2xx / rate.requests if rate.requests else math.nan
                mean = 1000 * seconds / runs if runs else math.nan
                lines.append(f"| {name} | {limit} | {served:,.0f} | {ms(mean)} | {share:.1%} |")
        return "\n".join(lines)

    # --- memory -------------------------------------------------------------------------

    def memory(self) -> str:
        requests_wanted = 2_000 if self.quick else 100_000
        body_mib = 64 if self.quick else 1024
        with gateway(self.folder, ["cat"], WATCHDOG_LOG_LEVEL="WARNING") as gw:
            time.sleep(1.0)
            idle = gw.memory_kib()
            wrk(gw.url, 1, 16, self.post)  # warm up: first allocations, caches
            before = gw.memory_kib()
            done = 0
            while done < requests_wanted:
                done += wrk(gw.url, min(10.0, max(1.0, (requests_wanted - done) / 1000)), 16,
                            self.post).requests
            after = gw.memory_kib()
        with gateway(self.folder, ["wc", "-c"], WATCHDOG_LOG_LEVEL="WARNING",
                     write_timeout="600s", read_timeout="600s") as gw:
            baseline = gw.memory_kib("VmHWM")
            answer = subprocess.run(
                f"head -c {body_mib}M /dev/zero | curl -s -T - -X POST "
                f"-H 'Content-Type: application/octet-stream' {gw.url}",
                shell=True, capture_output=True, text=True, check=True, timeout=600).stdout
            peak = gw.memory_kib("VmHWM")
        # Large answers at once: past spill_output_bytes they wait in files, not memory.
        answers, answer_mb = 10, 16 if self.quick else 60
        with gateway(self.folder, ["head", "-c", f"{answer_mb}000000", "/dev/zero"],
                     WATCHDOG_LOG_LEVEL="WARNING") as gw:
            curl = f"curl -s -o /dev/null -w '%{{size_download}}\\n' -X POST {gw.url}"
            subprocess.run(curl, shell=True, check=True, capture_output=True,
                           timeout=120)  # warm up
            spill_before = gw.memory_kib("VmHWM")
            sizes = subprocess.run(" & ".join([curl] * answers) + " & wait", shell=True,
                                   capture_output=True, text=True, check=True,
                                   timeout=600).stdout.split()
            spill_peak = gw.memory_kib("VmHWM")
        counted = int(answer.split()[0]) if answer.strip() else -1
        lines = [
            "| what | measured | target |",
            "|---|---:|---:|",
            f"| idle RSS | {idle / 1024:.1f} MB | ≤ 25 MB |",
            f"| RSS growth over {done:,} requests (after 1 s of warm-up) | "
            f"{(after - before) / 1024:+.1f} MB | ≤ 5 MB |",
            f"| peak RSS while {body_mib} MiB stream to `wc -c` (before: {baseline / 1024:.1f} "
            f"MB) | {peak / 1024:.1f} MB | < 100 MB |",
            f"| peak RSS growth while {answers} answers of {answer_mb} MB are sent at once "
            f"(before: {spill_before / 1024:.1f} MB) | {(spill_peak - spill_before) / 1024:+.1f} "
            "MB | < 30 MB |",
        ]
        if counted != body_mib * 2**20:
            lines.append(f"\n**wc -c counted {counted} bytes, not {body_mib * 2**20}**")
        if sizes != [f"{answer_mb}000000"] * answers:
            lines.append(f"\n**the large answers came back as {sizes} bytes**")
        return "\n".join(lines)

    # --- oscar --------------------------------------------------------------------------

    def oscar(self) -> str:
        rounds, requests = (1, 20) if self.quick else (self.runs, 300)
        table, _ = oscar.measure(rounds, requests, 1024)
        return table

    # --- footprint ----------------------------------------------------------------------

    def footprint(self) -> str:
        """Rounds interleaved over the servers (each round starts each once: cold start,
        first and warm requests, idle RSS, 1,000 idle connections); the RSS growth over
        many requests once per server, after a warm-up."""
        rounds = 3 if self.quick else max(5, self.runs)
        requests_wanted = 2_000 if self.quick else 100_000
        connections = 200 if self.quick else 1000
        fp.allow_descriptors(connections)
        servers = self._footprint_servers()
        results = {name: fp.Footprint(note=note) for name, (_, _, note) in servers.items()}
        for _ in range(rounds):
            for name, (argv, go, _) in servers.items():
                if argv:
                    self._footprint_round(results[name], argv, go, connections)
        for name, (argv, go, _) in servers.items():
            if argv:
                self._footprint_growth(results[name], argv, go, requests_wanted)
        return _footprint_table(results, rounds, connections, requests_wanted)

    def _footprint_servers(self) -> dict[str, tuple[list[str], bool, str]]:
        """name -> (argv, a Go watchdog?, a note); an empty argv is a column not run."""
        here = Path(sys.executable).parent
        script = here / "fwatchdog"
        venv = [str(script)] if script.exists() else [sys.executable, "-m", "watchdog"]
        servers = {"fwatchdog (venv)": (venv, False, "")}
        bundle = ROOT / "dist" / "oscar-bin" / "fwatchdog"
        note = _bundle_staleness(bundle)
        servers["fwatchdog (OSCAR bundle)"] = (
            [str(bundle)] if bundle.exists() else [], False, note)
        for binary in self.args.against:
            servers[f"--against {binary}"] = ([binary], True, "")
        return servers

    def _footprint_start(self, result: fp.Footprint, go: bool
                         ) -> tuple[int, dict[str, str]] | None:
        """A port and the environment for one start; None (and a note) when a Go
        watchdog cannot have its fixed metrics port."""
        if go and not fp.wait_port_free(fp.GO_METRICS_PORT):
            result.note = (f"port {fp.GO_METRICS_PORT}, which the Go watchdogs must have, "
                           "stayed in use: some runs skipped (run the suite in its own "
                           "network namespace: `unshare --net sh -c 'ip link set lo up; ...'`)")
            return None
        port = free_port()
        env = fp.environ_for(port, free_port(), self.folder, ["cat"], go)
        if not go:
            env["PYTHONPATH"] = str(ROOT)  # the venv's `python -m watchdog`, if so started
        return port, env

    def _footprint_round(self, result: fp.Footprint, argv: list[str], go: bool,
                         connections: int) -> None:
        start = self._footprint_start(result, go)
        if start is None:
            return
        port, env = start
        with fp.started(argv, env, port, self.folder / "footprint.log",
                               kill=go) as (proc, cold):
            time.sleep(0.5)  # what it does just after it answers its first probe, done
            result.cold_ms.append(cold)
            result.idle_kib.append(fp.rss_kib(proc.pid))
            first, warm = fp.first_and_warm(port)
            result.first_ms.append(first)
            result.warm_ms.append(warm)
            result.per_1000_kib.append(
                fp.idle_connections_kib(proc.pid, port, connections)
                * 1000 / connections)

    def _footprint_growth(self, result: fp.Footprint, argv: list[str], go: bool,
                          requests_wanted: int) -> None:
        start = self._footprint_start(result, go)
        if start is None:
            return
        port, env = start
        url = f"http://127.0.0.1:{port}/"
        with fp.started(argv, env, port, self.folder / "footprint.log",
                               kill=go) as (proc, _):
            wrk(url, 1, 16, self.post)  # warm up: first allocations, caches
            before = fp.rss_kib(proc.pid)
            done = 0
            while done < requests_wanted:
                done += wrk(url, min(10.0, max(1.0, (requests_wanted - done) / 2000)), 16,
                            self.post).requests
            result.growth_kib.append(fp.rss_kib(proc.pid) - before)
            result.requests = done


    # --- proxy ------------------------------------------------------------------------

    def proxy(self) -> str:
        """http mode against bench/upstream_server.py (a plain asyncio server): the
        server alone, the gateway with 1 and 2 workers, and each --against binary in
        of-watchdog's mode=http (its fprocess a placeholder: the server is already up)."""
        port = free_port()
        upstream = Server([sys.executable, str(ROOT / "bench" / "upstream_server.py"),
                           str(port)], {"PATH": os.environ.get("PATH", ""),
                                        "PYTHONPATH": str(ROOT)},
                          port, self.folder / "upstream.log")
        rows: dict[str, list[Rate]] = {}
        url = f"http://127.0.0.1:{port}"
        with upstream:
            for _ in range(self.runs):
                rows.setdefault("the server alone (no proxy)", []).append(
                    wrk_with_cpu(upstream, self.seconds, 16))
                for workers in (1, 2):
                    with gateway(self.folder, [], mode="http", upstream_url=url,
                                 WATCHDOG_WORKERS=str(workers),
                                 WATCHDOG_LOG_LEVEL="WARNING") as gw:
                        rows.setdefault(f"fwatchdog mode=http, workers={workers}", []).append(
                            wrk_with_cpu(gw, self.seconds, 16))
                for binary in self.args.against:
                    with foreign_watchdog(binary, self.folder, ["sleep", "600"], mode="http",
                                          upstream_url=url) as other:
                        rows.setdefault(f"--against {binary} (mode=http)", []).append(
                            wrk_with_cpu(other, self.seconds, 16))
        medians = {name: median_rate(rates) for name, rates in rows.items()}
        direct = next(iter(medians.values()))
        lines = [
            f"GET, wrk -t2 -c16, keep-alive both sides, {self.seconds:g} s x {self.runs} "
            "runs, medians. Added p50: over the server alone. CPU: the proxy's own per "
            "request (the server's for its own row).",
            "",
            "| what | requests/s | p50 ms | added p50 ms | p99 ms | µs CPU a request |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, rate in medians.items():
            lines.append(f"| {name} | {rate.rps:,.0f} | {rate.p50_ms:.2f} | "
                         f"{rate.p50_ms - direct.p50_ms:.2f} | {ms(rate.p99_ms)} | "
                         f"{rate.server_us:,.0f} |")
        return "\n".join(lines)


    # --- streaming --------------------------------------------------------------------

    def streaming(self) -> str:
        size = (64 if self.quick else 1024) * 2**20
        first_rounds = 3 if self.quick else 10
        writer = ["sh", str(self.folder / "write_then_sleep.sh")]
        (self.folder / "write_then_sleep.sh").write_text("echo first\nsleep 0.3\n")
        rows: dict[str, list[tuple[float, float, float, float]]] = {}

        def measure(name: str, start: Callable[[list[str]], Server]) -> None:
            with start(["cat"]) as cat:  # one at a time: the Go ones share port 8081
                before_kib = cat.memory_kib()
                own_before, _ = cat.cpu_split()
                seconds, back, status = st.through(cat.port, size)
                own_after, _ = cat.cpu_split()
                grown = (cat.memory_kib("VmHWM") - before_kib) / 1024
            if back != size or not status.endswith(b" 200 OK"):
                raise RuntimeError(f"{name}: {status!r}, {back} of {size} bytes back")
            with start(writer) as first:
                waits = sorted(st.first_byte_ms(first.port) for _ in range(first_rounds))
            rows.setdefault(name, []).append(
                (size / 2**20 / seconds, (own_after - own_before) * 1e6 / (size / 2**20),
                 grown, waits[len(waits) // 2]))

        for _ in range(self.runs):
            measure("fwatchdog mode=streaming", lambda command: gateway(
                self.folder, command, mode="streaming", WATCHDOG_LOG_LEVEL="WARNING"))
            for binary in self.args.against:
                measure(f"--against {binary} (mode=streaming)",
                        lambda command, binary=binary: foreign_watchdog(  # type: ignore[misc]
                            binary, self.folder, command, mode="streaming",
                            healthcheck_interval="1s"))  # else it drains for write_timeout
        lines = [
            f"{size // 2**20} MiB through `cat`, sent while the answer is read (HTTP/1.0, "
            f"raw socket); first byte: `echo first; sleep 0.3`, median of {first_rounds}. "
            f"{self.runs} runs, medians. CPU: the watchdog's own (not `cat`'s) per MiB. "
            "RSS: its peak during the transfer over its RSS before. Targets: RSS ≤ +10 MB, "
            "first byte ≤ 10 ms.",
            "",
            "| what | MiB/s | µs CPU a MiB | RSS growth | first byte ms |",
            "|---|---:|---:|---:|---:|",
        ]
        for name, runs in rows.items():
            med = [sorted(column)[len(column) // 2] for column in zip(*runs, strict=True)]
            lines.append(f"| {name} | {med[0]:,.0f} | {med[1]:,.0f} | {med[2]:+.1f} MB | "
                         f"{med[3]:.1f} |")
        return "\n".join(lines)


    # --- queue ------------------------------------------------------------------------

    def queue(self) -> str:
        function = ["sleep", "0.05"]
        rows: dict[str, list[Rate]] = {}
        for _ in range(self.runs):
            for size in ("0", "16"):
                with gateway(self.folder, function, WATCHDOG_MAX_INFLIGHT=str(LIMIT),
                             WATCHDOG_MAX_QUEUE=size, WATCHDOG_LOG_LEVEL="WARNING") as gw:
                    name = ("fwatchdog, no queue" if size == "0"
                            else f"fwatchdog, max_queue={size}")
                    rows.setdefault(name, []).append(wrk(gw.url, self.seconds, 16))
            for binary in self.args.against:
                with foreign_watchdog(binary, self.folder, function, max_inflight=str(LIMIT),
                                      healthcheck_interval="1s") as other:
                    rows.setdefault(f"--against {binary}", []).append(
                        wrk(other.url, self.seconds, 16))
        medians = {name: median_rate(rates) for name, rates in rows.items()}
        lines = [
            f"`sleep 0.05`, max_inflight={LIMIT} (nominal capacity {LIMIT / 0.05:.0f}/s), "
            f"wrk -t2 -c16 GET (4x the limit, each client sending again at once), "
            f"{self.seconds:g} s x {self.runs} runs, medians. Latencies are of every "
            "answer, 429s included.",
            "",
            "| what | served/s | 429 share | calls per success | p50 ms | p99 ms |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, rate in medians.items():
            share = rate.non_2xx / rate.requests if rate.requests else math.nan
            served = rate.rps * (1 - share)
            per = rate.requests / (rate.requests - rate.non_2xx) if rate.requests > \
                rate.non_2xx else math.nan
            lines.append(f"| {name} | {served:,.1f} | {share:.1%} | {per:,.1f} | "
                         f"{ms(rate.p50_ms)} | {ms(rate.p99_ms)} |")
        return "\n".join(lines)


def _bundle_staleness(bundle: Path) -> str:
    """Why the bundle's column is missing or may not be the tree's code."""
    if not bundle.exists():
        return "not built: `make oscar-bin`"
    spec = importlib.util.spec_from_file_location("bundle_build", ROOT / "bundle" / "build.py")
    assert spec is not None
    assert spec.loader is not None
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)  # bundle/build.py: what the bundle is made of
    stamp = bundle.parent / "fwatchdog.d" / "BUILD-ID"
    if not stamp.exists() or stamp.read_text().strip() != str(build.inputs_digest()):
        return "stale: built from other sources than the tree's (`make oscar-bin`)"
    return ""


def _footprint_table(results: dict[str, fp.Footprint], rounds: int, connections: int,
                     requests_wanted: int) -> str:
    med = fp.Footprint.median
    names = list(results)
    lines = [
        f"Each server started {rounds} times, interleaved; medians. Function `cat`, 100-byte "
        f"POSTs on new connections (first and warm), {connections} keep-alive connections "
        f"idle after one answer each, wrk -c16 for about {requests_wanted:,} requests after a "
        f"1 s warm-up (one run each). {os.cpu_count()} cores, load "
        f"{os.getloadavg()[0]:.2f} at the end.",
        "",
        "| what | target | " + " | ".join(names) + " |",
        "|---|---:|" + "---:|" * len(names),
    ]

    def row(what: str, target: str, cells: list[str]) -> None:
        lines.append(f"| {what} | {target} | " + " | ".join(cells) + " |")

    def each(value: fp.Footprint, text: str) -> str:
        return text if value.cold_ms else "–"

    row("exec → first 200 on /_/health", "≤ 60 ms (venv), ≤ 100 ms (bundle)",
        [each(r, f"{med(r.cold_ms):.0f} ms (min {min(r.cold_ms or [0]):.0f})")
         for r in results.values()])
    row("first request after start / warm one", "≤ 2×",
        [each(r, f"{med(r.first_over_warm):.2f}× ({med(r.first_ms):.1f} / "
              f"{med(r.warm_ms):.1f} ms)") for r in results.values()])
    row("RSS idle after start", "≤ 25 MB",
        [each(r, f"{med(r.idle_kib) / 1024:.1f} MB") for r in results.values()])
    row("RSS growth over the requests", "≤ 5 MB",
        [each(r, f"{med(r.growth_kib) / 1024:+.1f} MB ({r.requests:,})")
         for r in results.values()])
    row("RSS per 1,000 idle connections", "≤ 2 MB",
        [each(r, f"{med(r.per_1000_kib) / 1024:.2f} MB") for r in results.values()])
    notes = [f"{name}: {r.note}" for name, r in results.items() if r.note]
    if notes:
        lines += ["", *(f"({note})" for note in notes)]
    return "\n".join(lines)


def _function_time(server: Server) -> tuple[float, float]:
    """(count, total seconds) of watchdog_function_duration_seconds, from /metrics."""
    count = total = 0.0
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("watchdog_function_duration_seconds_count"):
                count += float(line.rsplit(" ", 1)[1])
            elif line.startswith("watchdog_function_duration_seconds_sum"):
                total += float(line.rsplit(" ", 1)[1])
    return count, total


TITLES = {"echo": "Echo throughput", "shed": "Shedding: 429 answers per second",
          "overload": "Overload sweep", "limit": "Choosing max_inflight", "memory": "Memory",
          "oscar": "OSCAR mode overhead", "footprint": "Footprint: cold start and memory",
          "proxy": "http mode: the proxy in front of a server",
          "streaming": "Streaming mode: large outputs and the first byte",
          "queue": "Wait queue: the same overload with and without it"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("--quick", action="store_true", help="a smoke run of every section")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"sections, comma-separated ({', '.join(SECTIONS)})")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per wrk run")
    parser.add_argument("--against", metavar="PATH", action="append", default=[],
                        help="another watchdog binary (may be repeated)")
    parser.add_argument("--write", action="store_true",
                        help="write bench/RESULTS.md (implied unless --quick)")
    args = parser.parse_args(argv)
    if shutil.which("wrk") is None:
        print("bench: wrk not found (Debian: apt-get install wrk)", file=sys.stderr)
        return 2
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    write = args.write or not args.quick
    command = " ".join(["python bench/suite.py", *(argv if argv is not None else sys.argv[1:])])
    with tempfile.TemporaryDirectory() as tmp:
        suite = Suite(args, Path(tmp))
        for name in sections:
            started = time.monotonic()
            body = getattr(suite, name)()
            print(f"## {TITLES[name]} ({time.monotonic() - started:.0f} s)\n\n{body}\n",
                  flush=True)
            if write:
                replace_section(TITLES[name], command, body)
    return 0


def _us(value: float) -> str:
    return "–" if math.isnan(value) else f"{value:,.0f}"


if __name__ == "__main__":
    sys.exit(main())
