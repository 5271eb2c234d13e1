"""This gateway side by side with the Go classic watchdog: the same raw requests sent
to each, under the same OpenFaaS environment, and every observable compared.

    python bench/compare_go.py --go /work/gobin/fwatchdog-classic \\
        [--gateway "python -m watchdog"] [--cases N] [--only TEXT] [--json out.json]

Each side is started, one at a time, for each setup (an `fprocess` and a few OpenFaaS
variables on top of a shared environment) on the same 127.0.0.1 port, its cases sent,
its metrics scraped, and stopped; lifecycle and flag cases start their own. Compared:
the status line, the headers (Date ignored, X-Duration-Seconds by presence only), the
body, what the function was given (bench/compare_probe.sh records its argv, its
environment and its stdin), how the connection ended when answers were missing, the
metrics text (Go's runtime families and series names only the gateway has set aside),
exit statuses and the lock file. Prints the differences grouped, each with its cases,
and "N cases, M same, K different".

The Go watchdog's metrics port is fixed (8081): both sides use it, one at a time, and
the script waits for it to be free. `--go` may name any command that starts a watchdog
configured the OpenFaaS way; with two gateways, `--metrics-port` moves both off 8081.
The case list is fixed (no randomness); every wait is bounded; traffic is loopback
only; what is started is stopped, its process group killed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = ROOT / "bench" / "compare_probe.sh"
GO_METRICS_PORT = 8081
# Families of the runtimes, not of the watchdogs: never comparable.
RUNTIME_METRICS = ("go_", "process_", "promhttp_", "python_")
BODY_PREVIEW = 40  # characters of a body shown in the table

# --- what is sent ---------------------------------------------------------------------

Step = bytes | float  # bytes to send, or seconds to pause before the next step
Header = tuple[str | bytes, str | bytes] | bytes  # (name, value), or a raw line


def _b(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode("latin-1")


def request(target: str | bytes = "/", method: str | bytes = "GET", *,
            headers: Sequence[Header] = (), body: bytes = b"", version: str = "HTTP/1.1",
            host: str | None = "x", close: bool = True, length: bool | None = None) -> bytes:
    """One raw request: Host first, then `headers`, then Content-Length (when there is a
    body, or `length`, and `headers` frame none) and Connection: close (`close`)."""
    lines = [_b(method) + b" " + _b(target) + b" " + _b(version)]
    if host is not None:
        lines.append(b"Host: " + _b(host))
    for header in headers:
        lines.append(header if isinstance(header, bytes)
                     else _b(header[0]) + b": " + _b(header[1]))
    framed = any(line.lower().startswith((b"content-length:", b"transfer-encoding:"))
                 for line in lines[1:])
    if not framed and (length if length is not None else bool(body)):
        lines.append(b"Content-Length: " + str(len(body)).encode())
    if close:
        lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def chunked(*chunks: bytes, trailer: Sequence[bytes] = ()) -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks)
    return out + b"0\r\n" + b"".join(line + b"\r\n" for line in trailer) + b"\r\n"


TE_CHUNKED: Header = ("Transfer-Encoding", "chunked")

# --- what comes back ------------------------------------------------------------------


@dataclass
class Answer:
    status: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True, order=True)
class Record:
    """What one run of the probe function was given."""

    argv: tuple[str, ...]
    env: tuple[str, ...]  # sorted: Go passes header variables in map order
    stdin: bytes
    done: bool  # a `sleep=` run that reached its end


@dataclass
class Observation:
    answers: list[Answer] = field(default_factory=list)
    end: str = ""  # how the connection ended, when answers were missing
    function: list[Record] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, str] | None = None


class AnswerReader:
    """Splits the bytes of a connection into answers as they arrive (interim 1xx
    answers included, not counted); the answers listed in `heads` have no body."""

    def __init__(self, heads: frozenset[int]) -> None:
        self.heads = heads
        self.buffer = b""
        self.answers: list[Answer] = []
        self.finals = 0

    def feed(self, data: bytes) -> None:
        self.buffer += data
        while self._take(eof=False):
            pass

    def eof(self) -> None:
        self._take(eof=True)

    def _take(self, *, eof: bool) -> bool:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        lines = self.buffer[:end].decode("latin-1").split("\r\n")
        headers = [(name.strip(), value.strip()) for name, _, value in
                   (line.partition(":") for line in lines[1:])]
        code = lines[0].split(" ")[1] if lines[0].count(" ") else ""
        start = end + 4
        interim = code.startswith("1")
        if interim or self.finals in self.heads or code in ("204", "304"):
            size: int | None = 0
        else:
            size = self._body_size(headers, start, eof=eof)
        if size is None:
            return False
        body = self.buffer[start:start + size]
        if _header(headers, "transfer-encoding").lower() == "chunked" and not interim:
            body = _dechunk(body)
        self.answers.append(Answer(lines[0], headers, body))
        self.buffer = self.buffer[start + size:]
        self.finals += not interim
        return True

    def _body_size(self, headers: list[tuple[str, str]], start: int, *,
                   eof: bool) -> int | None:
        """The bytes the body takes after `start`, None while they are not all here."""
        if _header(headers, "transfer-encoding").lower() == "chunked":
            return _chunked_size(self.buffer, start)
        length = _header(headers, "content-length")
        if length.isdigit():
            return int(length) if len(self.buffer) - start >= int(length) else None
        return len(self.buffer) - start if eof else None  # until the server closes


def _header(headers: Iterable[tuple[str, str]], name: str) -> str:
    return next((value for key, value in headers if key.lower() == name), "")


def _chunked_size(buffer: bytes, start: int) -> int | None:
    at = start
    while True:
        line_end = buffer.find(b"\r\n", at)
        if line_end < 0:
            return None
        size = int(buffer[at:line_end].split(b";")[0] or b"0", 16)
        if size == 0:
            trailer_end = buffer.find(b"\r\n\r\n", line_end)
            if buffer[line_end:line_end + 4] == b"\r\n\r\n":
                return line_end + 4 - start
            return None if trailer_end < 0 else trailer_end + 4 - start
        at = line_end + 2 + size + 2
        if at > len(buffer):
            return None


def _dechunk(raw: bytes) -> bytes:
    out: list[bytes] = []
    at = 0
    while True:
        line_end = raw.find(b"\r\n", at)
        size = int(raw[at:line_end].split(b";")[0] or b"0", 16)
        if size == 0:
            return b"".join(out)
        out.append(raw[line_end + 2:line_end + 2 + size])
        at = line_end + 2 + size + 2


def exchange(port: int, steps: Sequence[Step], *, answers: int = 1,
             heads: frozenset[int] = frozenset(), wait: float = 4.0) -> Observation:
    """Send `steps` on one connection (from a thread, so that a server answering
    before it has read everything cannot stall us) and read until `answers` final
    answers came, the server closed, or `wait` seconds passed."""
    observation = Observation()
    reader = AnswerReader(heads)
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        sender_sock = sock.dup()
        sender = threading.Thread(target=_send, args=(sender_sock, steps, wait), daemon=True)
        sender.start()
        deadline = time.monotonic() + wait
        try:
            observation.end = _read(sock, reader, answers, deadline)
        finally:
            with contextlib.suppress(OSError):
                sender_sock.shutdown(socket.SHUT_RDWR)
            sender.join(wait)
            sender_sock.close()
    observation.answers = reader.answers
    if observation.end and reader.buffer:
        observation.end += f", {len(reader.buffer)} bytes unparsed: {short(reader.buffer)}"
    return observation


def _send(sock: socket.socket, steps: Sequence[Step], wait: float) -> None:
    sock.settimeout(wait + 5)
    # A server may answer and close before all is sent; what it does is what is compared.
    with contextlib.suppress(OSError):
        for step in steps:
            if isinstance(step, float):
                time.sleep(step)
            else:
                sock.sendall(step)


def _read(sock: socket.socket, reader: AnswerReader, answers: int, deadline: float) -> str:
    """'' once every answer came, else how the connection ended."""
    while reader.finals < answers:
        remaining = deadline - time.monotonic()
        try:
            if remaining <= 0:
                raise TimeoutError
            sock.settimeout(remaining)
            chunk = sock.recv(1 << 18)
        except TimeoutError:
            return f"still open after {reader.finals} of {answers} answers"
        except ConnectionResetError:
            return f"reset after {reader.finals} of {answers} answers"
        if not chunk:
            reader.eof()
            if reader.finals < answers:
                return f"closed after {reader.finals} of {answers} answers"
            return ""
        reader.feed(chunk)
    return ""


def short(data: bytes, limit: int = BODY_PREVIEW) -> str:
    text = repr(data)[2:-1]
    if len(text) <= limit:
        return f"'{text}'"
    digest = hashlib.sha256(data).hexdigest()[:8]
    return f"{len(data)} bytes '{text[:limit]}'… sha {digest}"


def short_text(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} chars)"


# --- the watchdogs ----------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    name: str  # "Go" or "gateway"
    argv: tuple[str, ...]


def side_argv(command: str) -> tuple[str, ...]:
    """A command line, shell-split; a first word `python` is this interpreter."""
    words = shlex.split(command)
    if words and words[0] in ("python", "python3"):
        words[0] = sys.executable
    return tuple(words)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_free(port: int, within: float) -> None:
    """Wait until nothing holds `port` (another Go watchdog has 8081, say)."""
    deadline = time.monotonic() + within
    while True:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("", port))
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit(f"port {port} stayed busy for {within:g} s") from None
        time.sleep(0.2)


def describe_exit(code: int | None, within: float) -> str:
    if code is None:
        return f"still running after {within:g} s"
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit {code}"


class Running:
    """A watchdog we started, leading its own process group: stopping it kills the
    group too (what Go's functions leave behind lives there)."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], log: Path) -> None:
        self.log = log
        with open(log, "ab") as out:
            out.write(f"--- {shlex.join(argv)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(list(argv), env=dict(env), cwd=ROOT,
                                         stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)

    def ready(self, port: int, metrics_port: int, within: float = 10.0) -> str:
        """'' once both ports accept connections and /_/health says 200 (or 3 s passed:
        with suppress_lock Go never does), else why the watchdog is not serving."""
        deadline = time.monotonic() + within
        for each in (port, metrics_port):
            while not _accepts(each):
                if self.proc.poll() is not None:
                    return (f"did not start: {describe_exit(self.proc.returncode, 0)} "
                            f"({self.last_words()})")
                if time.monotonic() > deadline:
                    return f"not listening on {each} after {within:g} s"
                time.sleep(0.02)
        healthy_by = time.monotonic() + 3
        while time.monotonic() < healthy_by:
            answer = exchange(port, [request("/_/health")], wait=2)
            if answer.answers and answer.answers[-1].status.split(" ")[1:2] == ["200"]:
                break
            time.sleep(0.02)
        return ""

    def last_words(self) -> str:
        """The log's last line, for a watchdog that would not start."""
        lines = self.log.read_bytes().decode("utf-8", "replace").strip().splitlines()
        return short_text(lines[-1], 100) if lines else "nothing logged"

    def send(self, signum: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def wait_exit(self, within: float) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(within)
        return describe_exit(self.proc.poll(), within)

    def stop(self) -> None:
        self.send(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


@dataclass
class Context:
    """One side under one setup: where it listens, what its environment is."""

    side: Side
    env: dict[str, str]
    port: int
    metrics_port: int
    folder: Path  # $TMPDIR: the lock file's folder
    wait_port: float

    @property
    def probe_dir(self) -> Path:
        return self.folder / "probe"

    @property
    def lock(self) -> Path:
        return self.folder / ".lock"

    def start(self, args: Sequence[str] = (), **openfaas: str) -> Running:
        wait_free(self.metrics_port, self.wait_port)
        return Running([*self.side.argv, *args], {**self.env, **openfaas},
                       self.folder / f"{self.side.name}.log")

    @contextlib.contextmanager
    def serving(self, **openfaas: str) -> Iterator[Running]:
        running = self.start(**openfaas)
        try:
            why = running.ready(self.port, self.metrics_port)
            if why:
                raise NotServing(why)
            yield running
        finally:
            running.stop()
            self.clean()

    def clean(self) -> None:
        self.lock.unlink(missing_ok=True)
        for path in self.probe_dir.iterdir():
            path.unlink()


class NotServing(Exception):
    pass


def take_records(folder: Path) -> list[Record]:
    """The probe's records, emptied from `folder`, in a fixed order. A run ended
    before it wrote its argv is left out: the gateway may start a function before a
    malformed body shows, and end it at once, or not, as the bytes arrive."""
    records = []
    for argv_file in folder.glob("*.argv"):
        base = folder / argv_file.stem
        argv = _nul_list(argv_file.read_bytes())
        if not argv:
            continue
        records.append(Record(
            argv=argv,
            env=tuple(sorted(_nul_list(_file(base.with_suffix(".env"))))),
            stdin=_file(base.with_suffix(".stdin")),
            done=base.with_suffix(".done").exists()))
    for path in folder.iterdir():
        path.unlink()
    return sorted(records)


def _file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return b""


def _nul_list(data: bytes) -> tuple[str, ...]:
    return tuple(item.decode("utf-8", "backslashreplace")
                 for item in data.split(b"\0")[:-1])


LOOPBACK = re.compile(rb"127\.0\.0\.1:\d+")
SERIES = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"')


def scrape(metrics_port: int) -> dict[str, str] | None:
    got = exchange(metrics_port, [request("/metrics")])
    return parse_metrics(got.answers[-1].body.decode()) if got.answers else None


def parse_metrics(text: str) -> dict[str, str]:
    """Series → value, the runtimes' families left out. Values that depend on timing
    are left out (sums) or '·' (creation times); a histogram's buckets are one entry,
    its `le` values (their counts depend on timing, the _count series says how many)."""
    out: dict[str, str] = {}
    buckets: dict[str, set[str]] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            if not name.startswith(RUNTIME_METRICS):
                out[f"{name} (type)"] = kind
            continue
        match = SERIES.match(line)
        if match is None or match.group(1).startswith(RUNTIME_METRICS):
            continue
        name, labels, value = match.groups()
        pairs = dict(LABEL.findall(labels or ""))
        if name.endswith("_bucket"):
            buckets.setdefault(f"{name} (le values)", set()).add(pairs.get("le", ""))
            continue
        key = name + "{" + ",".join(f'{k}="{v}"' for k, v in sorted(pairs.items())) + "}"
        if name.endswith("_sum"):
            continue  # a time; its series are the _count series
        out[key] = "·" if name.endswith("_created") else format(float(value), ".12g")
    for key, values in buckets.items():
        out[key] = ",".join(sorted(values, key=_le_order))
    return out


def _le_order(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return float("inf")


def metric_name(key: str) -> str:
    return re.split(r"[{ ]", key, maxsplit=1)[0]


# --- comparing ------------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    what: str
    go: str
    gateway: str


def header_view(answer: Answer) -> dict[str, str]:
    """Lower-case names, repeated fields joined; Date left out (it is the time), and
    the framing (Content-Length, Transfer-Encoding: the body is compared itself), and
    X-Duration-Seconds by presence only (its value is a time)."""
    view: dict[str, list[str]] = {}
    for name, value in answer.headers:
        key = name.lower()
        if key in ("date", "content-length", "transfer-encoding"):
            continue
        view.setdefault(key, []).append("(present)" if key == "x-duration-seconds"
                                        else value)
    return {key: ", ".join(values) for key, values in view.items()}


def _code(status: str) -> str:
    return status.split(" ")[1] if status.count(" ") else status


def answer_differences(go: list[Answer], gateway: list[Answer]) -> list[Difference]:
    out = []
    if len(go) != len(gateway):
        out.append(Difference("answers", _statuses(go), _statuses(gateway)))
    several = max(len(go), len(gateway)) > 1
    for index, (ours, theirs) in enumerate(zip(go, gateway, strict=False)):
        prefix = f"answer {index + 1}: " if several else ""
        if ours.status != theirs.status:
            out.append(Difference(prefix + "status", ours.status, theirs.status))
            if _code(ours.status) != _code(theirs.status):
                continue  # another answer altogether: its headers and body differ too
        go_headers, gateway_headers = header_view(ours), header_view(theirs)
        for name in sorted(go_headers.keys() | gateway_headers.keys()):
            if go_headers.get(name) != gateway_headers.get(name):
                out.append(Difference(f"{prefix}header {name}",
                                      short_text(go_headers.get(name, "(none)")),
                                      short_text(gateway_headers.get(name, "(none)"))))
        if _loopback(ours.body) != _loopback(theirs.body):
            out.append(Difference(prefix + "body", short(ours.body), short(theirs.body)))
    return out


def _loopback(body: bytes) -> bytes:
    """Go's read errors name the connection's ports, which change from run to run."""
    return LOOPBACK.sub(b"127.0.0.1:PORT", body)


def _statuses(answers: list[Answer]) -> str:
    finals = [_code(a.status) for a in answers]
    return f"{len(answers)}: {' '.join(finals)}" if answers else "none"


def function_differences(go: list[Record], gateway: list[Record]) -> list[Difference]:
    if len(go) != len(gateway):
        return [Difference("function runs", str(len(go)), str(len(gateway)))]
    out = []
    for ours, theirs in zip(go, gateway, strict=True):
        if ours.argv != theirs.argv:
            out.append(Difference("function argv", short_text(repr(list(ours.argv))),
                                  short_text(repr(list(theirs.argv)))))
        out += _env_differences(ours.env, theirs.env)
        if ours.stdin != theirs.stdin:
            out.append(Difference("function stdin", short(ours.stdin), short(theirs.stdin)))
        if ours.done != theirs.done:
            out.append(Difference("function ran to its end", _yes(ours.done),
                                  _yes(theirs.done)))
    return out


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _env_differences(go: tuple[str, ...], gateway: tuple[str, ...]) -> list[Difference]:
    only_go = [entry for entry in go if entry not in gateway]
    only_gateway = [entry for entry in gateway if entry not in go]

    def values(entries: list[str], name: str) -> str:
        found = [entry.partition("=")[2] for entry in entries
                 if entry.partition("=")[0] == name]
        return short_text(", ".join(found)) if found else "(unset)"

    names = sorted({entry.partition("=")[0] for entry in only_go + only_gateway})
    return [Difference(f"function env {name}", values(only_go, name),
                       values(only_gateway, name)) for name in names]


def metric_differences(go: dict[str, str] | None,
                       gateway: dict[str, str] | None) -> tuple[list[Difference], list[str]]:
    """One difference per metric name Go has: its series that differ, on each side;
    names only the gateway has are notes (its additions), not differences."""
    if go is None or gateway is None:
        if go is gateway:
            return [], []
        return [Difference("metrics", "scraped" if go else "none",
                           "scraped" if gateway else "none")], []
    names = {metric_name(key) for key in go}
    by_name: dict[str, tuple[list[str], list[str]]] = {}
    for key in sorted(go.keys() | gateway.keys()):
        name = metric_name(key)
        if name in names and go.get(key) != gateway.get(key):
            sides = by_name.setdefault(name, ([], []))
            for values, seen in zip(sides, (go, gateway), strict=True):
                if key in seen:
                    values.append(_series(key, seen[key]))
    out = [Difference(f"metrics {name}", short_text(", ".join(ours) or "(none)", 160),
                      short_text(", ".join(theirs) or "(none)", 160))
           for name, (ours, theirs) in by_name.items()]
    extra = sorted({metric_name(key) for key in gateway} - names)
    return out, [f"series only the gateway has: {', '.join(extra)}"] if extra else []


def _series(key: str, value: str) -> str:
    """`{code="405",method="get"}` → `405 get`, with its value unless it is a time."""
    labels = " ".join(v for _, v in LABEL.findall(key)) or key.partition(" ")[2]
    return labels if value == "·" else f"{labels}={value}"


def differences(go: Observation, gateway: Observation) -> tuple[list[Difference], list[str]]:
    out = answer_differences(go.answers, gateway.answers)
    if go.end != gateway.end:
        out.append(Difference("connection", go.end or "every answer came",
                              gateway.end or "every answer came"))
    out += function_differences(go.function, gateway.function)
    for fact in sorted(go.facts.keys() | gateway.facts.keys()):
        if go.facts.get(fact) != gateway.facts.get(fact):
            out.append(Difference(fact, go.facts.get(fact, "(none)"),
                                  gateway.facts.get(fact, "(none)")))
    metric_out, notes = metric_differences(go.metrics, gateway.metrics)
    return out + metric_out, notes


# --- the cases ------------------------------------------------------------------------

Run = Callable[[Context], Observation]


@dataclass(frozen=True)
class Setup:
    """An fprocess and OpenFaaS variables, on top of the shared environment."""

    name: str
    openfaas: Mapping[str, str]
    metrics: bool = True  # scrape the metrics after its cases (a case of its own)


@dataclass(frozen=True)
class Case:
    name: str
    setup: str
    run: Run
    own: bool = False  # starts and stops its own watchdog


PROBE_CMD = f"sh {PROBE}"  # Go splits fprocess on each space: the path has none


# Values the Go watchdog reads as its default (numbers) or as false (booleans).
LEGACY = [("max_inflight", "abc"), ("max_inflight", "-1"), ("max_inflight", "1.5"),
          ("read_timeout", "-1"), ("write_timeout", "abc"), ("exec_timeout", "1.5"),
          ("healthcheck_interval", "abc"), ("marshal_request", "1"), ("cgi_headers", "yes"),
          ("combine_output", "TRUE"), ("suppress_lock", "on"), ("write_debug", "yes")]


def setups() -> list[Setup]:
    probe = {"fprocess": PROBE_CMD}
    return [
        Setup("probe", probe),
        Setup("cat", {"fprocess": "cat"}),
        Setup("marshal_request", {**probe, "marshal_request": "true"}),
        Setup("content_type", {**probe, "content_type": "application/json"}),
        Setup("combine_output=false", {**probe, "combine_output": "false"}),
        Setup("cgi_headers=false", {**probe, "cgi_headers": "false"}),
        Setup("exits 1", {"fprocess": f"{PROBE_CMD} exit 1"}),
        Setup("killed", {"fprocess": f"{PROBE_CMD} signal KILL"}),
        Setup("html", {"fprocess": f"{PROBE_CMD} html"}),
        Setup("png", {"fprocess": f"{PROBE_CMD} png"}),
        Setup("exec_timeout", {"fprocess": f"{PROBE_CMD} sleep 3", "exec_timeout": "1"}),
        Setup("write_timeout", {"fprocess": f"{PROBE_CMD} sleep 2", "write_timeout": "1"}),
        Setup("max_inflight=1", {**probe, "max_inflight": "1"}),
        Setup("lifetime", probe),
        Setup("fprocess double space", {"fprocess": f"sh  {PROBE}"}, metrics=False),
        Setup("fprocess leading space", {"fprocess": " cat"}, metrics=False),
        Setup("fprocess trailing space", {"fprocess": "cat "}, metrics=False),
        Setup("fprocess quoted", {"fprocess": "sh -c 'echo quoted'"}, metrics=False),
        Setup("fprocess missing", {"fprocess": "/nonexistent/function"}, metrics=False),
        *(Setup(f"config {name}={value}", {**probe, name: value}, metrics=False)
          for name, value in LEGACY),
        Setup("lifecycle", probe),
        Setup("flags", probe),
    ]


def http(name: str, setup: str, *steps: Step, answers: int = 1,
         heads: Iterable[int] = (), wait: float = 4.0) -> Case:
    head_set = frozenset(heads)

    def run(ctx: Context) -> Observation:
        return exchange(ctx.port, steps, answers=answers, heads=head_set, wait=wait)

    return Case(name, setup, run)


def get(name: str, target: str | bytes = "/", setup: str = "probe", *,
        method: str | bytes = "GET", headers: Sequence[Header] = (), body: bytes = b"",
        version: str = "HTTP/1.1", host: str | None = "x", close: bool = True,
        length: bool | None = None) -> Case:
    """One request (Connection: close unless `close` is false) and its answer."""
    return http(name, setup, request(target, method, headers=headers, body=body,
                                     version=version, host=host, close=close,
                                     length=length))


METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS", "TRACE", "PROPFIND",
           "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK", "SEARCH", "REPORT",
           "MKACTIVITY", "CHECKOUT", "MERGE", "M-SEARCH", "NOTIFY", "SUBSCRIBE",
           "UNSUBSCRIBE", "PURGE", "LINK", "UNLINK", "UPDATE", "ACL", "BIND", "REBIND",
           "UNBIND", "MKCALENDAR", "SOURCE", "QUERY", "FOO", "get", "Post"]


def method_cases() -> list[Case]:
    out = [http(f"method/{m}", "probe", request("/", m), heads=[0] if m == "HEAD" else [])
           for m in METHODS]
    out.append(get("method/CONNECT", "x:443", method="CONNECT"))
    out += [get(f"method/{m} with a body", method=m, body=b"body")
            for m in ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "FOO")]
    return out


PATHS: list[tuple[str, bytes]] = [
    ("root", b"/"), ("nested", b"/a/b/c"), ("percent space", b"/a%20b"),
    ("percent slash", b"/a%2Fb"), ("dot segments", b"/a/../b/./c"), ("double slash", b"//a"),
    ("raw UTF-8", "/café".encode()), ("percent UTF-8", b"/caf%C3%A9"),
    ("raw byte ff", b"/a\xffb"), ("bad percent", b"/a%zzb"), ("semicolon", b"/a;b=c"),
    ("plus", b"/a+b"), ("tilde", b"/~user"), ("colon at", b"/a:b@c"),
    ("sub-delims", b"/!$&'()*,;="), ("quote", b'/a"b'), ("angle brackets", b"/a<b>"),
    ("braces pipe", b"/a{b}|c"), ("backslash", b"/a\\b"), ("caret backtick", b"/a^b`c"),
    ("DEL byte", b"/a\x7fb"), ("control byte", b"/a\x01b"), ("tab", b"/a\tb"),
    ("fragment", b"/a#frag"), ("health subpath", b"/_/health/x"),
    ("health trailing slash", b"/_/health/"), ("healthz", b"/_/healthz"),
    ("ready", b"/_/ready"), ("metrics", b"/metrics"), ("run", b"/run/fn"),
    ("underscore root", b"/_/"), ("asterisk", b"*"), ("no slash", b"abc"),
    ("absolute form", b"http://example.com/abs?q=1"),
    ("absolute form with port", b"http://example.com:8080/abs"),
    ("8,000 bytes", b"/" + b"a" * 7999), ("8,190 bytes", b"/" + b"a" * 8189),
    ("8,191 bytes", b"/" + b"a" * 8190), ("16 KiB", b"/" + b"a" * 16383),
    ("64 KiB", b"/" + b"a" * 65535), ("500 KB", b"/" + b"a" * 500_000),
    ("over 1 MiB", b"/" + b"a" * 1_100_000),
]

QUERIES: list[tuple[str, bytes]] = [
    ("simple", b"/?a=1"), ("two", b"/?a=1&b=2"), ("repeated", b"/?a=1&a=2"),
    ("percent", b"/?a=%20b"), ("equals in value", b"/?a=b=c"), ("empty pairs", b"/?&&"),
    ("raw UTF-8", "/?q=é".encode()), ("percent UTF-8", b"/?q=%C3%A9"),
    ("raw byte ff", b"/?q=\xff"), ("encoded NUL", b"/?q=a%00b"), ("plus", b"/?q=a+b"),
    ("semicolon", b"/?a;b"), ("quote brackets", b'/?q=<">'), ("question marks", b"/??x"),
    ("empty", b"/?"), ("with fragment", b"/?a=1#f"), ("path and query", b"/p/q?x=y"),
    ("9,000 bytes", b"/?q=" + b"x" * 8996), ("100 KB", b"/?q=" + b"x" * 100_000),
]


def path_cases() -> list[Case]:
    out = [get(f"path/{name}", target) for name, target in PATHS]
    out += [get(f"query/{name}", target) for name, target in QUERIES]
    return out


def _many(count: int) -> list[Header]:
    return [(f"X-H-{i}", f"v{i}") for i in range(count)]


HEADER_NAMES = ["X.Dot.Name", "X_Under_Score", "x-lower-case", "X-UPPER-CASE", "X--Double",
                "-Leading", "Trailing-", "9digit", "X~Tilde", "X!Bang", "X#Hash", "X$Dollar",
                "X%Percent", "X&Amp", "X'Quote", "X*Star", "X+Plus", "X^Caret", "X`Tick",
                "X|Pipe", "X.", "a", "X_", "Content_Type", "Http-Method"]
BAD_HEADER_NAMES = [b"X(Paren)", b"X,Comma", b"X/Slash", b"X;Semi", b"X<Lt", b"X=Eq",
                    b"X?Q", b"X@At", b"X[Br]", b"X\\Back", b"X{Br}", b"X Space", b"X\tTab",
                    b"", "X-Ümlaut".encode()]


def _printable(name: bytes) -> str:
    return repr(name.decode("utf-8", "backslashreplace"))[1:-1] or "(empty)"


def header_cases() -> list[Case]:
    out = [get(f"headers/{n} fields", headers=_many(n))
           for n in (20, 100, 127, 128, 129, 200, 1000, 5000)]
    sizes = [("8 KiB value", 8192), ("16 KiB-1 value", 16383), ("16 KiB value", 16384),
             ("16 KiB+1 value", 16385), ("64 KiB value", 65536), ("512 KiB value", 524288),
             ("over 1 MiB value", 1_100_000)]
    out += [get(f"headers/{label}", headers=[("X-Big", "v" * size)]) for label, size in sizes]
    out += [get("headers/20 KiB cookie", headers=[("Cookie", "s=" + "c" * 20480)]),
            get("headers/30 KiB bearer token", headers=[("Authorization",
                                                         "Bearer " + "j" * 30720)]),
            get("headers/head just under 1 MiB",
                headers=[(f"X-F-{i}", "f" * 8000) for i in range(130)])]
    out += [get(f"headers/name {name}", headers=[(name, "v")]) for name in HEADER_NAMES]
    out += [get(f"headers/bad name {_printable(name)}", headers=[name + b": v"])
            for name in BAD_HEADER_NAMES]
    values: list[tuple[str, Header]] = [
        ("UTF-8", ("X-V", "héllo".encode())), ("latin-1 byte", ("X-V", b"caf\xe9")),
        ("DEL", ("X-V", b"a\x7fb")), ("NUL", ("X-V", b"a\x00b")), ("empty", b"X-V:"),
        ("padded", b"X-V:   v   "), ("tab inside", ("X-V", b"a\tb")),
        ("obs-fold", b"X-V: a\r\n b"), ("lone CR", ("X-V", b"a\rb")),
        ("colon in value", ("X-V", "a:b:c")), ("no colon", b"NoColon"),
        ("space before colon", b"X-V : v"), ("only a colon", b":"),
    ]
    out += [get(f"headers/value {label}", headers=[header]) for label, header in values]
    dups: list[tuple[str, list[Header]]] = [
        ("X-Dup twice", [("X-Dup", "1"), ("X-Dup", "2")]),
        ("X-Dup in two cases", [("X-Dup", "1"), ("x-dup", "2")]),
        ("Content-Type twice", [("Content-Type", "text/a"), ("Content-Type", "text/b")]),
        ("Cookie twice", [("Cookie", "a=1"), ("Cookie", "b=2")]),
    ]
    out += [get(f"headers/duplicate {label}", headers=h, body=b"body") for label, h in dups]
    out += [
        get("headers/Method header", headers=[("Method", "evil")]),
        get("headers/Query header, no query", headers=[("Query", "evil")]),
        get("headers/Query header and a query", "/?real=1", headers=[("Query", "evil")]),
        get("headers/Path header", headers=[("Path", "/evil")]),
        get("headers/Host with port", host="example.com:8080"),
        get("headers/Host IPv6", host="[::1]:80"),
        get("headers/Host empty", host=""),
        get("headers/Host invalid", host="a b"),
        get("headers/Host twice", headers=[("Host", "y")]),
        get("headers/no Host", host=None),
        get("headers/Content-Length-X", headers=[("Content-Length-X", "y")]),
        get("headers/Connection keep-alive, close",
            headers=[("Connection", "keep-alive, close")], close=False),
        get("headers/Upgrade websocket",
            headers=[("Upgrade", "websocket"), ("Connection", "Upgrade")], close=False),
        get("headers/Upgrade h2c", headers=[("Upgrade", "h2c"),
                                            ("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA"),
                                            ("Connection", "Upgrade, HTTP2-Settings")],
            close=False),
        get("headers/TE trailers", headers=[("TE", "trailers")]),
        get("headers/X-Forwarded-For", headers=[("X-Forwarded-For", "10.0.0.1, 10.0.0.2")]),
    ]
    return out


def _post(*headers: Header, body: bytes = b"", length: bool | None = None,
          version: str = "HTTP/1.1") -> bytes:
    return request("/", "POST", headers=headers, body=body, length=length, version=version)


def body_cases() -> list[Case]:
    hello = b"hello"
    lengths: list[tuple[str, bytes]] = [
        ("empty", _post(length=True)), ("one byte", _post(body=b"x")), ("hello", _post(body=hello)),
        ("plus sign", _post(("Content-Length", "+5"), body=hello)),
        ("negative", _post(("Content-Length", "-1"), body=hello)),
        ("padded", _post(b"Content-Length:  5 ", body=hello)),
        ("list", _post(("Content-Length", "5,5"), body=hello)),
        ("leading zero", _post(("Content-Length", "05"), body=hello)),
        ("hex", _post(("Content-Length", "0x5"), body=hello)),
        ("exponent", _post(("Content-Length", "5e0"), body=hello)),
        ("overflow", _post(("Content-Length", "99999999999999999999"), body=hello)),
        ("empty value", _post(b"Content-Length:", body=hello)),
        ("two values", _post(("Content-Length", "5 5"), body=hello)),
        ("twice, same", _post(("Content-Length", "5"), ("Content-Length", "5"), body=hello)),
        ("twice, differing", _post(("Content-Length", "5"), ("Content-Length", "6"),
                                   body=hello)),
    ]
    out = [http(f"body/Content-Length {label}", "probe", raw) for label, raw in lengths]
    out += [
        http("body/Content-Length longer than the body", "probe",
             _post(("Content-Length", "10"), body=hello), wait=6),
        http("body/Content-Length shorter than the body", "probe",
             _post(("Content-Length", "3"), body=b"abcGET / HTTP/1.1\r\n\r\n"), answers=2),
        http("body/HTTP/1.0 POST without Content-Length", "probe",
             request("/", "POST", version="HTTP/1.0", body=hello, length=False)),
    ]
    chunks: list[tuple[str, bytes]] = [
        ("one chunk", chunked(hello)), ("three chunks", chunked(b"ab", b"cd", b"e")),
        ("empty", chunked()), ("extension", b"5;a=b\r\nhello\r\n0\r\n\r\n"),
        ("trailer", chunked(hello, trailer=[b"X-Trailer: t"])),
        ("trailer Content-Length", chunked(hello, trailer=[b"Content-Length: 5"])),
        ("200 trailer fields", chunked(hello, trailer=[b"X-T-%d: t" % i for i in range(200)])),
        ("uppercase hex", b"A\r\n0123456789\r\n0\r\n\r\n"),
        ("leading zeros", b"0005\r\nhello\r\n0\r\n\r\n"),
        ("bad size", b"zz\r\nhello\r\n0\r\n\r\n"),
        ("size with space", b"5 \r\nhello\r\n0\r\n\r\n"),
        ("size overflow", b"fffffffffffffffff\r\nhello\r\n0\r\n\r\n"),
        ("no CRLF after data", b"5\r\nhelloX0\r\n\r\n"),
        ("bare LF", b"5\nhello\n0\n\n"),
        ("1 MiB in 16 KiB chunks", chunked(*([b"c" * 16384] * 64))),
    ]
    out += [http(f"body/chunked {label}", "probe", _post(TE_CHUNKED) + raw)
            for label, raw in chunks]
    out.append(http("body/chunked never finished", "probe",
                    _post(TE_CHUNKED) + b"5\r\nhello\r\n", wait=6))
    encodings: list[tuple[str, bytes]] = [
        ("chunked and Content-Length", _post(TE_CHUNKED, ("Content-Length", "3"))
         + chunked(hello)),
        ("gzip, chunked", _post(("Transfer-Encoding", "gzip, chunked")) + chunked(hello)),
        ("identity", _post(("Transfer-Encoding", "identity"), body=hello)),
        ("chunked, chunked", _post(("Transfer-Encoding", "chunked, chunked"))
         + chunked(hello)),
        ("Chunked capitalised", _post(("Transfer-Encoding", "Chunked")) + chunked(hello)),
        ("chunked in HTTP/1.0", _post(TE_CHUNKED, version="HTTP/1.0") + chunked(hello)),
    ]
    out += [http(f"body/Transfer-Encoding {label}", "probe", raw) for label, raw in encodings]
    expect = _post(("Expect", "100-continue"), ("Content-Length", "5"))
    out += [
        http("body/Expect 100-continue", "probe", expect, 0.5, hello),
        http("body/Expect 100-continue, chunked", "probe",
             _post(("Expect", "100-continue"), TE_CHUNKED), 0.5, chunked(hello)),
        http("body/Expect 100-Continue capitalised", "probe",
             _post(("Expect", "100-Continue"), ("Content-Length", "5")), 0.5, hello),
        http("body/Expect 100-continue in HTTP/1.0", "probe",
             _post(("Expect", "100-continue"), ("Content-Length", "5"), version="HTTP/1.0"),
             0.5, hello),
        http("body/Expect 100-continue on a GET", "probe",
             request("/", headers=[("Expect", "100-continue")])),
        http("body/Expect foo", "probe", _post(("Expect", "foo"), body=hello)),
    ]
    pattern = bytes(range(256))
    out += [http(f"body/{label}", "probe", _post(body=pattern * (size // 256)), wait=15)
            for label, size in (("64 KiB", 65536), ("1 MiB", 1 << 20), ("8 MiB", 8 << 20))]
    return out


def _keep(target: str = "/", method: str = "GET", body: bytes = b"",
          version: str = "HTTP/1.1", headers: Sequence[Header] = ()) -> bytes:
    return request(target, method, body=body, close=False, version=version, headers=headers)


def connection_cases() -> list[Case]:
    ka: Header = ("Connection", "keep-alive")
    versions = [("HTTP/1.0 without Host", request(version="HTTP/1.0", host=None, close=False)),
                ("HTTP/1.0 with Host", request(version="HTTP/1.0", close=False)),
                ("HTTP/1.0 POST", request("/", "POST", version="HTTP/1.0", body=b"hi",
                                          close=False)),
                ("HTTP/0.9", b"GET /\r\n\r\n"), ("HTTP/1.2", request(version="HTTP/1.2")),
                ("HTTP/2.0", request(version="HTTP/2.0")),
                ("HTTP/3.0", request(version="HTTP/3.0")),
                ("HTTP/1.10", request(version="HTTP/1.10")),
                ("lower-case http/1.1", request(version="http/1.1")),
                ("HTTP/1", request(version="HTTP/1")),
                ("HTTP/01.1", request(version="HTTP/01.1")),
                ("bare LF", b"GET / HTTP/1.1\nHost: x\nConnection: close\n\n"),
                ("HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")]
    out = [http(f"version/{label}", "probe", raw) for label, raw in versions]
    pipelines: list[tuple[str, bytes, int, list[int]]] = [
        ("HTTP/1.0 keep-alive, two", _keep(version="HTTP/1.0", headers=[ka]) * 2
         + request(version="HTTP/1.0"), 3, []),
        ("two GETs", _keep() + request(), 2, []),
        ("three POSTs", _keep("/", "POST", b"one") + _keep("/", "POST", b"two")
         + request("/", "POST", body=b"three"), 3, []),
        ("ten GETs", _keep() * 9 + request(), 10, []),
        ("GET then garbage", _keep() + b"garbage\r\n\r\n", 2, []),
        ("chunked POST then GET", _keep("/", "POST", headers=[TE_CHUNKED])
         + chunked(b"hello") + request(), 2, []),
        ("health between calls", _keep() + _keep("/_/health") + request(), 3, []),
        ("HEAD then GET", _keep("/", "HEAD", body=b"") + request(), 2, [0]),
        ("GET then close", _keep() + request() + _keep(), 2, []),
    ]
    out += [http(f"pipelined/{label}", "probe", raw, answers=n, heads=heads)
            for label, raw, n, heads in pipelines]
    out.append(http("keep-alive/two in turn", "probe", _keep(), 0.3, request(), answers=2))
    return out


def health_cases() -> list[Case]:
    methods = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO"]
    out = [http(f"health/{m}", "probe", request("/_/health", m),
                heads=[0] if m == "HEAD" else []) for m in methods]
    out += [get("health/GET with a query", "/_/health?x=1"),
            get("health/POST with a body", "/_/health", method="POST", body=b"hi"),
            get("health/HTTP/1.0", "/_/health", version="HTTP/1.0", close=False)]
    return out


def bad_head_cases() -> list[Case]:
    heads: list[tuple[str, bytes]] = [
        ("garbage", b"hello\r\n\r\n"), ("blank lines only", b"\r\n\r\n"),
        ("leading CRLF", b"\r\n" + request()), ("method only", b"GET\r\n\r\n"),
        ("double space", b"GET  / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        ("extra word", b"GET / HTTP/1.1 extra\r\nHost: x\r\nConnection: close\r\n\r\n"),
        ("NUL in request line", b"GET /\x00 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
        ("non-ASCII method", request("/", "GÉT".encode())),
        ("1,000-byte method", request("/", "M" * 1000)),
        ("leading space", b" " + request()),
        ("folded first header", b"GET / HTTP/1.1\r\n X-A: b\r\nHost: x\r\n"
         b"Connection: close\r\n\r\n"),
        ("all 256 bytes", bytes(range(256)) + b"\r\n\r\n"),
        ("TLS ClientHello", bytes.fromhex("16030100a5010000a10303") + b"\0" * 32 + b"\r\n\r\n"),
        ("Content-Length and chunked", b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
         b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n"),
    ]
    out = [http(f"bad head/{label}", "probe", raw) for label, raw in heads]
    out.append(http("bad head/never finished", "probe",
                    b"GET / HTTP/1.1\r\nHost: x\r\n", wait=6))
    return out


SNIFF: list[tuple[str, bytes]] = [
    ("text", b"hello world\n"), ("html", b"<html><head></head><body>x</body></html>"),
    ("doctype", b"<!DOCTYPE html><p>x"), ("html after spaces", b"  \n<html>"),
    ("script", b"<script>alert(1)</script>"), ("comment", b"<!-- c -->"),
    ("xml", b'<?xml version="1.0"?><a/>'), ("svg", b"<svg xmlns='x'></svg>"),
    ("pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n"), ("postscript", b"%!PS-Adobe-3.0\n"),
    ("png", b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), ("gif", b"GIF89a\x01\x00\x01\x00"),
    ("jpeg", b"\xff\xd8\xff\xe0\x00\x10JFIF\x00"), ("webp", b"RIFF\x00\x00\x00\x00WEBPVP8 "),
    ("zip", b"PK\x03\x04\x14\x00"), ("gzip", b"\x1f\x8b\x08\x00\x00\x00"),
    ("ogg", b"OggS\x00\x02"), ("wav", b"RIFF\x00\x00\x00\x00WAVEfmt "),
    ("woff", b"wOFF\x00\x01\x00\x00"), ("binary", b"\x00\x01\x02\x03"),
    ("UTF-8 text", "héllo wörld".encode()), ("UTF-8 BOM", b"\xef\xbb\xbfhi"),
    ("UTF-16 BOM", b"\xfe\xff\x00h\x00i"), ("latin-1", b"caf\xe9"),
    ("json", b'{"a": 1}'), ("600 bytes text then binary", b"t" * 600 + b"\x00\x01"),
]


def sniff_cases() -> list[Case]:
    out = [get(f"sniff/{label}", "/", "cat", method="POST", body=body) for label, body in SNIFF]
    out += [get("sniff/GET, empty body", "/", "cat"),
            get("sniff/request Content-Type echoed", "/", "cat", method="POST",
                body=b"<html>", headers=[("Content-Type", "application/x-custom")]),
            get("sniff/empty request Content-Type", "/", "cat", method="POST",
                body=b"<html>", headers=[b"Content-Type:"])]
    out += [http(f"cat/{label}", "cat", _post(body=b"z" * size), wait=20)
            for label, size in (("1 MiB", 1 << 20), ("16 MiB", 16 << 20))]
    return out


def marshal_cases() -> list[Case]:
    s = "marshal_request"
    return [
        get("marshal/GET", setup=s), get("marshal/POST text", setup=s, method="POST",
                                         body=b"hello"),
        get("marshal/POST binary", setup=s, method="POST", body=bytes(range(256))),
        get("marshal/POST empty", setup=s, method="POST", length=True),
        get("marshal/header <>&", setup=s, headers=[("X-Html", "<a href='x'>&amp;</a>")]),
        get("marshal/duplicate header", setup=s, headers=[("X-Dup", "1"), ("X-Dup", "2")]),
        get("marshal/UTF-8 header", setup=s, headers=[("X-U", "é€".encode())]),
        get("marshal/dotted header", setup=s, headers=[("X.Dot", "d")]),
        http("marshal/chunked", s, _post(TE_CHUNKED) + chunked(b"hel", b"lo")),
        http("marshal/1 MiB", s, _post(body=b"m" * (1 << 20)), wait=15),
    ]


def variant_cases() -> list[Case]:
    s = "content_type"
    out = [get("content_type/GET", setup=s),
           get("content_type/POST with a type", setup=s, method="POST", body=b"<html>",
               headers=[("Content-Type", "text/plain")]),
           get("content_type/a failing call", "/?exit=1", setup=s),
           http("content_type/HEAD", s, request("/", "HEAD"), heads=[0])]
    out += [get("combine_output=false/stderr", "/?stderr", "combine_output=false"),
            get("combine_output=false/exit 2", "/?exit=2", "combine_output=false",
                method="POST", body=b"out"),
            get("cgi_headers=false/GET", "/?q=1", "cgi_headers=false",
                headers=[("X-A", "b")]),
            get("cgi_headers=false/POST", "/", "cgi_headers=false", method="POST",
                body=b"b")]
    out += [get("stderr/combined", "/?stderr")]
    out += [get(f"exit/{code}", f"/?exit={code}", method="POST", body=b"out")
            for code in (0, 1, 2, 127, 255)]
    out += [get(f"signal/{name}", f"/?signal={name}")
            for name in ("KILL", "SEGV", "TERM", "INT", "HUP", "ABRT", "USR1", "PIPE")]
    out += [get("exits 1/GET", setup="exits 1"),
            get("exits 1/POST with a type", setup="exits 1", method="POST", body=b"x",
                headers=[("Content-Type", "text/html")]),
            get("killed/GET", setup="killed"),
            get("killed/POST", setup="killed", method="POST", body=b"x"),
            get("html/GET", setup="html"),
            get("html/POST with a type", setup="html", method="POST", body=b"x",
                headers=[("Content-Type", "text/plain")]),
            http("html/HEAD", "html", request("/", "HEAD"), heads=[0]),
            get("png/GET", setup="png"),
            get("png/POST", setup="png", method="POST", body=b"x")]
    out += [http("exec_timeout/GET", "exec_timeout", request(), wait=8),
            http("exec_timeout/POST", "exec_timeout", request("/", "POST", body=b"x"), wait=8),
            http("write_timeout/GET", "write_timeout", request(), wait=6)]
    for setup in ("fprocess double space", "fprocess leading space", "fprocess trailing space",
                  "fprocess quoted", "fprocess missing"):
        out.append(get(f"{setup}/POST", setup=setup, method="POST", body=b"input"))
    return out


def legacy_cases() -> list[Case]:
    out = []
    for name, value in LEGACY:
        setup = f"config {name}={value}"
        out += [get(f"{setup}/call", "/?stderr", setup, method="POST", body=b"in"),
                get(f"{setup}/health", "/_/health", setup)]
    return out


def merged(observations: Iterable[Observation]) -> Observation:
    out = Observation()
    for index, each in enumerate(observations):
        out.answers += each.answers
        if each.end:
            out.end += f"{'; ' if out.end else ''}connection {index + 1}: {each.end}"
    return out


def saturated(ctx: Context) -> Observation:
    """max_inflight=1 held by a slow call; meanwhile a GET, a POST, /_/health, /_/ready."""
    slow: list[Observation] = []
    holder = threading.Thread(target=lambda: slow.append(
        exchange(ctx.port, [request("/?sleep=1.5")], wait=6)))
    holder.start()
    time.sleep(0.5)
    meanwhile = [exchange(ctx.port, [raw]) for raw in
                 (request(), request("/", "POST", body=b"x"), request("/_/health"),
                  request("/_/ready"))]
    holder.join(8)
    return merged([*meanwhile, *slow])


def hang_up(ctx: Context) -> Observation:
    """A client that sends a call to a 1 s function and goes away after 0.3 s."""
    with socket.create_connection(("127.0.0.1", ctx.port), timeout=2) as sock:
        sock.sendall(request("/?sleep=1"))
        time.sleep(0.3)
    time.sleep(1.5)
    return Observation()  # the probe's record says whether it ran to its end


def background(ctx: Context) -> Observation:
    """A function that leaves `(sleep 1; touch …) &` behind and exits at once."""
    got = exchange(ctx.port, [request("/?background")])
    time.sleep(1.6)
    done = (ctx.probe_dir / "background.done").exists()
    got.facts["its background child"] = "finished" if done else "did not finish"
    return got


def scenario_cases() -> list[Case]:
    return [Case("max_inflight=1/saturated", "max_inflight=1", saturated),
            get("max_inflight=1/after", setup="max_inflight=1"),
            Case("lifetime/client hangs up", "lifetime", hang_up),
            Case("lifetime/background child", "lifetime", background)]


def status_of(ctx: Context, raw: bytes) -> str:
    got = exchange(ctx.port, [raw], wait=3)
    return got.answers[-1].status if got.answers else (got.end or "no answer")


def _lock_state(ctx: Context) -> str:
    if not ctx.lock.exists():
        return "absent"
    return f"present, mode {oct(ctx.lock.stat().st_mode & 0o777)}"


def sigterm(ctx: Context) -> Observation:
    """The shutdown sequence, healthcheck_interval=1: what health, the lock file and a
    call say in the interval, and how it ends."""
    out = Observation()
    with ctx.serving() as running:
        out.facts["lock file at start"] = _lock_state(ctx)
        out.facts["health at start"] = status_of(ctx, request("/_/health"))
        running.send(signal.SIGTERM)
        time.sleep(0.4)
        out.facts["health in the interval"] = status_of(ctx, request("/_/health"))
        out.facts["lock file in the interval"] = _lock_state(ctx)
        out.facts["a call in the interval"] = status_of(ctx, request())
        out.facts["exit"] = running.wait_exit(8)
    return out


def sigterm_in_flight(ctx: Context) -> Observation:
    """SIGTERM while a 2 s call runs: it is answered, then the watchdog exits."""
    calls: list[Observation] = []
    with ctx.serving() as running:
        caller = threading.Thread(target=lambda: calls.append(
            exchange(ctx.port, [request("/?sleep=2")], wait=8)))
        caller.start()
        time.sleep(0.4)
        running.send(signal.SIGTERM)
        caller.join(10)
        out = merged(calls)
        out.facts["exit"] = running.wait_exit(8)
    return out


def sigterm_twice(ctx: Context) -> Observation:
    """healthcheck_interval=5, SIGTERM twice: does the second cut the wait short?"""
    with ctx.serving(healthcheck_interval="5") as running:
        running.send(signal.SIGTERM)
        time.sleep(0.3)
        running.send(signal.SIGTERM)
        return Observation(facts={"exit": running.wait_exit(2.5)})


def sigterm_interval_zero(ctx: Context) -> Observation:
    with ctx.serving(healthcheck_interval="0") as running:
        running.send(signal.SIGTERM)
        return Observation(facts={"exit": running.wait_exit(3)})


def sigint(ctx: Context) -> Observation:
    with ctx.serving() as running:
        running.send(signal.SIGINT)
        exit_text = running.wait_exit(3)
        return Observation(facts={"exit": exit_text, "lock file after": _lock_state(ctx)})


def suppress_lock(ctx: Context) -> Observation:
    out = Observation()
    try:
        with ctx.serving(suppress_lock="true"):
            out.facts["lock file"] = _lock_state(ctx)
            out.facts["health"] = status_of(ctx, request("/_/health"))
    except NotServing as why:
        out.end = str(why)
    return out


def flag(args: Sequence[str], *, lock: bool = False) -> Run:
    def run(ctx: Context) -> Observation:
        if lock:
            ctx.lock.touch()
        running = ctx.start(args=args)
        try:
            return Observation(facts={"exit": running.wait_exit(3)})
        finally:
            running.stop()
            ctx.clean()

    return run


def lifecycle_cases() -> list[Case]:
    runs: list[tuple[str, Run]] = [
        ("SIGTERM", sigterm), ("SIGTERM with a call in flight", sigterm_in_flight),
        ("SIGTERM twice", sigterm_twice),
        ("SIGTERM, healthcheck_interval=0", sigterm_interval_zero), ("SIGINT", sigint),
        ("suppress_lock=true", suppress_lock)]
    out = [Case(f"lifecycle/{name}", "lifecycle", run, own=True) for name, run in runs]
    flags: list[tuple[str, Run]] = [
        ("-run-healthcheck, no lock file", flag(["-run-healthcheck"])),
        ("-run-healthcheck, lock file", flag(["-run-healthcheck"], lock=True)),
        ("--run-healthcheck, lock file", flag(["--run-healthcheck"], lock=True)),
        ("-version", flag(["-version"])), ("--version", flag(["--version"])),
        ("-h", flag(["-h"])), ("-help", flag(["-help"])), ("--help", flag(["--help"])),
        ("-no-such-flag", flag(["-no-such-flag"])),
        ("healthcheck, lock file", flag(["healthcheck"], lock=True)),
    ]
    out += [Case(f"flags/{name}", "flags", run, own=True) for name, run in flags]
    return out


def all_cases() -> list[Case]:
    """Every case, in a fixed order (the setups' order, then as listed)."""
    listed = [*method_cases(), *path_cases(), *header_cases(), *body_cases(),
              *connection_cases(), *health_cases(), *bad_head_cases(), *sniff_cases(),
              *marshal_cases(), *variant_cases(), *scenario_cases(), *legacy_cases(),
              *lifecycle_cases()]
    order = {setup.name: index for index, setup in enumerate(setups())}
    return sorted(listed, key=lambda case: order[case.setup])  # stable: keeps the listing


# --- running and reporting --------------------------------------------------------------


@dataclass
class Result:
    name: str
    setup: str
    differences: list[Difference]
    notes: list[str]
    go: Observation
    gateway: Observation


def shared_env(folder: Path, port: int, metrics_port: int) -> dict[str, str]:
    """What both sides get (each setup adds its fprocess and variables). No LANG or
    LC_*: a function's locale is the pod's, and here the pod sets none. Timeouts that
    keep every case short: read_timeout 3 s, and 1 s of healthcheck_interval at stop."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(folder),
           "TMPDIR": str(folder), "PROBE_DIR": str(folder / "probe"), "port": str(port),
           "read_timeout": "3s", "healthcheck_interval": "1",
           # Go listens on every interface whatever it is told; the gateway need not.
           "WATCHDOG_BIND_ADDRESS": "127.0.0.1"}
    if metrics_port != GO_METRICS_PORT:  # two gateways compared: Go cannot move its own
        env["WATCHDOG_METRICS_PORT"] = str(metrics_port)
    return env


def run_setup(ctx: Context, setup: Setup, cases: Sequence[Case]) -> dict[str, Observation]:
    """One side's observations of a setup's cases (and of its metrics after them)."""
    out: dict[str, Observation] = {}
    served = [case for case in cases if not case.own]
    if served:
        running = ctx.start()
        try:
            why = running.ready(ctx.port, ctx.metrics_port)
            if why:
                print(f"{setup.name}: {ctx.side.name} {why}", file=sys.stderr)
            for case in served:
                out[case.name] = Observation(end=why) if why else run_case(ctx, case)
            if setup.metrics:
                out[f"metrics/{setup.name}"] = (Observation(end=why) if why else
                                                Observation(metrics=scrape(ctx.metrics_port)))
        finally:
            running.stop()
            ctx.clean()
    for case in cases:
        if case.own:
            out[case.name] = run_case(ctx, case)
    return out


def run_case(ctx: Context, case: Case) -> Observation:
    take_records(ctx.probe_dir)  # nothing from an earlier case
    try:
        observation = case.run(ctx)
    except NotServing as why:
        observation = Observation(end=str(why))
    except OSError as error:  # refused, say: what the side did, compared as such
        observation = Observation(end=f"{type(error).__name__}: {error}")
    observation.function = take_records(ctx.probe_dir)
    return observation


def compare(go: Side, gateway: Side, cases: Sequence[Case], *, metrics_port: int,
            wait_port: float, folder: Path) -> list[Result]:
    port = free_port()
    known = {setup.name: setup for setup in setups()}
    by_setup: dict[str, list[Case]] = {}
    for case in cases:
        by_setup.setdefault(case.setup, []).append(case)
    results = []
    for name, setup_cases in by_setup.items():
        seen: dict[str, dict[str, Observation]] = {}
        for side in (go, gateway):
            started = time.monotonic()
            # The same folder for both sides' functions: $TMPDIR is in what they see.
            ctx = Context(side, {**shared_env(folder, port, metrics_port),
                                 **known[name].openfaas}, port, metrics_port, folder,
                          wait_port)
            (folder / "probe").mkdir(exist_ok=True)
            seen[side.name] = run_setup(ctx, known[name], setup_cases)
            print(f"{name}: {side.name}, {len(seen[side.name])} cases in "
                  f"{time.monotonic() - started:.1f} s", file=sys.stderr)
        for case_name, go_seen in seen[go.name].items():
            gateway_seen = seen[gateway.name][case_name]
            found, notes = differences(go_seen, gateway_seen)
            notes += [f"{side} did not start under setup '{name}'" for side, seen_by in
                      ((go.name, go_seen), (gateway.name, gateway_seen))
                      if seen_by.end.startswith("did not start")]
            results.append(Result(case_name, name, found, notes, go_seen, gateway_seen))
    return results


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def report(results: Sequence[Result], go: Side, gateway: Side, seconds: float) -> str:
    groups: dict[Difference, list[str]] = {}
    order: dict[Difference, int] = {}
    for index, result in enumerate(results):
        for difference in result.differences:
            groups.setdefault(difference, []).append(result.name)
            order.setdefault(difference, index)
    lines = ["# This gateway against the Go classic watchdog (bench/compare_go.py)", "",
             f"Go side: `{shlex.join(go.argv)}`; gateway: `{shlex.join(gateway.argv)}`; "
             f"{seconds:.0f} s.", ""]
    if groups:
        lines += ["## Differences, grouped: one row per difference, with the cases that "
                  "show it", "", "| difference | Go | gateway | cases |", "|---|---|---|---|"]
        ranked = sorted(groups, key=lambda d: (re.sub(r"^answer \d+: ", "", d.what),
                                               order[d]))
        for difference in ranked:
            names = groups[difference]
            lines.append(f"| {_cell(difference.what)} | {_cell(difference.go)} | "
                         f"{_cell(difference.gateway)} | {len(names)}: "
                         f"{_cell(', '.join(names))} |")
        lines.append("")
    notes = sorted({note for result in results for note in result.notes})
    lines += [f"Note: {note}." for note in notes]
    lines += ["Ignored: Date; how an answer is framed (Content-Length or chunked: the "
              "body itself is compared); loopback port numbers in a body; the value of "
              "X-Duration-Seconds; a function run ended before it wrote its argv; "
              "metric values "
              "that are times (sums, creation times, bucket counts); the runtimes' metric "
              f"families ({', '.join(RUNTIME_METRICS)}).", ""]
    different = sum(1 for result in results if result.differences)
    lines.append(f"{len(results)} cases, {len(results) - different} same, "
                 f"{different} different")
    return "\n".join(lines)


def _jsonable(value: object) -> object:
    if isinstance(value, bytes):
        return short(value, 200)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def select(cases: Sequence[Case], only: Sequence[str], count: int | None) -> list[Case]:
    chosen = [case for case in cases if not only or any(text in case.name for text in only)]
    return chosen[:count] if count is not None else chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--go", required=True,
                        help="the Go classic watchdog: a path, or a command line")
    parser.add_argument("--gateway", default="python -m watchdog",
                        help="this gateway's command line ('python' is this interpreter)")
    parser.add_argument("--cases", type=int, help="only the first N cases (after --only); "
                        "each setup run also compares its metrics, as a case of its own")
    parser.add_argument("--only", action="append", default=[],
                        help="only cases whose name contains this (repeatable)")
    parser.add_argument("--list", action="store_true", help="print the case names and exit")
    parser.add_argument("--json", type=Path, help="write every case, observed and compared")
    parser.add_argument("--metrics-port", type=int, default=GO_METRICS_PORT,
                        help="both sides' metrics port: Go's is 8081, fixed; another only "
                        "when --go is not Go")
    parser.add_argument("--wait-port", type=float, default=120,
                        help="seconds to wait for the metrics port to be free")
    options = parser.parse_args(argv)
    cases = select(all_cases(), options.only, options.cases)
    if options.list:
        print("\n".join(case.name for case in cases))
        return 0
    go, gateway = Side("Go", side_argv(options.go)), Side("gateway", side_argv(options.gateway))
    # Started in the background, we may have SIGINT ignored, and the watchdogs would
    # inherit that: the SIGINT case needs them to start with its default action.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="compare-go-") as folder:
        results = compare(go, gateway, cases, metrics_port=options.metrics_port,
                          wait_port=options.wait_port, folder=Path(folder))
    print(report(results, go, gateway, time.monotonic() - started))
    if options.json:
        rows = [{"name": r.name, "setup": r.setup, "same": not r.differences,
                 "differences": [asdict(d) for d in r.differences], "notes": r.notes,
                 "go": _jsonable(asdict(r.go)), "gateway": _jsonable(asdict(r.gateway))}
                for r in results]
        options.json.write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
