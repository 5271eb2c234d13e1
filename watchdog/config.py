"""The settings table and the frozen `Config` it builds.

One table (`SETTINGS`) drives parsing, `fwatchdog --help` and the README's table.
Each setting is read, in order of precedence, from its command-line flag, its
`WATCHDOG_*` variable, then its OpenFaaS (lower-case) variable; an empty
variable counts as unset, like the Go watchdog's `os.Getenv(...) != ""`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from watchdog import oscar_pod


class ConfigError(ValueError):
    """A setting has a value it cannot take; `str()` is the one line to print."""

    def __init__(self, source: str, value: str, accepted: str, message: str = "") -> None:
        super().__init__(message or f"{source}={value!r}: expected {accepted}")
        self.source = source
        self.value = value
        self.accepted = accepted


class _Invalid(ValueError):
    """Raised by a parser; the caller adds which variable held the value."""


# --- parsers: raw text -> typed value, or _Invalid --------------------------------

_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3,
             "s": 1.0, "m": 60.0, "h": 3600.0}
_GO_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Seconds from `30` (whole seconds) or a Go duration (`5s`, `1m30s`, `250ms`)."""
    text = text.strip()
    if text.isascii() and text.isdigit():
        total = float(text)
    else:
        pos, total = 0, 0.0
        while pos < len(text):
            match = _GO_DURATION.match(text, pos)
            if match is None:
                raise _Invalid
            total += float(match.group(1)) * _GO_UNITS[match.group(2)]
            pos = match.end()
        if pos == 0:
            raise _Invalid
    if not math.isfinite(total):
        raise _Invalid
    return total


def parse_count(text: str) -> int:
    text = text.strip()
    if not text.isdigit() or not text.isascii():
        raise _Invalid
    return int(text)


def parse_positive(text: str) -> int:
    number = parse_count(text)
    if number < 1:
        raise _Invalid
    return number


def parse_nice(text: str) -> int:
    number = parse_count(text)
    if number > 19:
        raise _Invalid
    return number


def parse_spawn_threads(text: str) -> int:
    number = parse_count(text)
    if number > MAX_SPAWN_THREADS:
        raise _Invalid
    return number


def parse_port(text: str) -> int:
    port = parse_count(text)
    if port > 65535:
        raise _Invalid
    return port


_SIZE_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "ki": 2**10, "kib": 2**10,
               "m": 10**6, "mb": 10**6, "mi": 2**20, "mib": 2**20,
               "g": 10**9, "gb": 10**9, "gi": 2**30, "gib": 2**30}
_SIZE = re.compile(r"(\d+)\s*([a-z]*)")


def parse_size(text: str) -> int:
    match = _SIZE.fullmatch(text.strip().lower())
    if match is None or match.group(2) not in _SIZE_UNITS:
        raise _Invalid
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def parse_bool(text: str) -> bool:
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise _Invalid


def parse_text(text: str) -> str:
    return text


def parse_command(text: str) -> tuple[str, ...]:
    # Our own names (WATCHDOG_FPROCESS, --fprocess): split on runs of whitespace,
    # no shell, no quoting.
    argv = tuple(text.split())
    if not argv:
        raise _Invalid
    return argv


def parse_go_command(text: str) -> tuple[str, ...]:
    """The OpenFaaS `fprocess` as the Go watchdog splits it: on each single space, so
    that a pod gets the arguments it got there (`a  b` is `a`, ``, `b`; a tab is
    part of an argument). A program name that is empty (a leading space, or
    spaces only) never ran there either (`exec: no command`): refused."""
    argv = tuple(text.split(" "))
    if not argv[0]:
        raise _Invalid
    return argv


def parse_address(text: str) -> str:
    text = text.strip()
    if text in ("", "*"):
        return ""
    try:
        ipaddress.ip_address(text.strip("[]"))
        return text.strip("[]")
    except ValueError:
        pass
    if re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?", text):
        return text
    raise _Invalid


# Every name Python's logging knows (OSCAR's FaaS Supervisor takes LOG_LEVEL as
# such a name, and its users set NOTSET), each turned into its level's own name:
# WARN -> WARNING, FATAL -> CRITICAL.
LOG_LEVELS = ("NOTSET", "DEBUG", "INFO", "WARN", "WARNING", "ERROR", "CRITICAL", "FATAL")


def parse_log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise _Invalid
    return logging.getLevelName(logging.getLevelNamesMapping()[level])


LOOPS = ("asyncio", "uvloop")
MAX_SPAWN_THREADS = 16  # as watchdog/_spawn.c
MODES = ("auto", "classic", "oscar", "http", "streaming", "serializing", "static")
# of-watchdog's modes: its defaults apply to what is not set (OF_WATCHDOG_DEFAULTS).
OF_WATCHDOG_MODES = frozenset({"http", "streaming", "serializing", "static"})
# Its defaults that differ from the classic watchdog's (of-watchdog's config.go):
# the fields, their values, and the modes they apply to.
OF_WATCHDOG_DEFAULTS: tuple[tuple[str, str, frozenset[str]], ...] = (
    ("exec_timeout", "30s", OF_WATCHDOG_MODES),
    ("combine_output", "false", OF_WATCHDOG_MODES),  # stderr to the log, never the body
    ("content_type", "application/octet-stream", frozenset({"streaming", "serializing"})),
)

# Where OSCAR mounts a service's script, and how its FaaS Supervisor runs it.
OSCAR_SCRIPT = oscar_pod.script_command("/")
CHECKS = ("auto", "true", "false")
HANGUPS = ("stop", "finish")
BACKGROUNDS = ("kill", "leave")


def parse_loop(text: str) -> str:
    return _choice(text, LOOPS)


def parse_upstream_url(text: str) -> str:
    """http://HOST:PORT[/PATH], the path without a trailing slash (it prefixes every
    request's path), or empty."""
    text = text.strip()
    if not text:
        return ""
    match = _UPSTREAM.fullmatch(text)
    if match is None or not 0 < int(match["port"]) < 65536:
        raise _Invalid(text)
    return text.rstrip("/")


_UPSTREAM = re.compile(r"http://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(?P<port>[0-9]{1,5})"
                       r"(?P<path>/[^\s?#]*)?")


def upstream_address(url: str) -> tuple[str, int, str]:
    """(host, port, path prefix) of a URL parse_upstream_url accepted."""
    match = _UPSTREAM.fullmatch(url)
    assert match is not None
    return match["host"].strip("[]"), int(match["port"]), (match["path"] or "").rstrip("/")


def parse_mode(text: str) -> str:
    return _choice(text, MODES)


def parse_check(text: str) -> str:
    word = text.strip().lower()
    if word in _TRUE:
        return "true"
    if word in _FALSE:
        return "false"
    return _choice(word, CHECKS)


def parse_hangup(text: str) -> str:
    return _choice(text, HANGUPS)


def parse_background(text: str) -> str:
    return _choice(text, BACKGROUNDS)


def parse_ready_path(text: str) -> str:
    path = text.strip()
    if path and (not path.startswith("/") or any(c.isspace() or not c.isprintable()
                                                 for c in path)):
        raise _Invalid
    return path


def parse_root(text: str) -> str:
    if not text.startswith("/"):
        raise _Invalid
    return text


def _choice(text: str, choices: tuple[str, ...]) -> str:
    word = text.strip().lower()
    if word not in choices:
        raise _Invalid
    return word


def parse_token(text: str) -> str:
    token = text.strip()
    if any(c.isspace() or not c.isprintable() for c in token):
        raise _Invalid
    return token


def parse_name(text: str) -> str:
    name = text.strip()
    if name and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise _Invalid
    return name


# --- the Go watchdog's readings of its lower-case variables ------------------------
# Used only for a value the parser above refuses, in a variable the Go classic
# watchdog reads: a configuration that ran on Go must start here as it started there
# (not crash-loop the pod), unless WATCHDOG_STRICT_CONFIG is set. Each returns what Go
# uses, None for Go's fallback (the setting's default), or raises _Invalid where Go
# does not serve either.

_GO_INT = re.compile(r"[+-]?[0-9]+")
_GO_INT_RANGE = range(-(2**63), 2**63)  # Go's int on 64-bit platforms
_GO_NS = {"ns": 1, "us": 10**3, "µs": 10**3, "μs": 10**3, "ms": 10**6,
          "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}
_GO_TERM = re.compile(r"([0-9]*)(?:\.([0-9]*))?([^0-9.]*)")


def _go_atoi(text: str) -> int | None:
    """strconv.Atoi: an optional sign and ASCII digits, within int64; no spaces."""
    if not _GO_INT.fullmatch(text) or int(text) not in _GO_INT_RANGE:
        return None
    return int(text)


def _go_parse_duration(text: str) -> float | None:
    """time.ParseDuration, in seconds: `[-+]?([0-9]*(\\.[0-9]*)?unit)+`, or 0."""
    sign, body = (-1, text[1:]) if text[:1] == "-" else (1, text.removeprefix("+"))
    if body == "0":
        return 0.0
    pos, total_ns = 0, 0
    while pos < len(body) or pos == 0:
        match = _GO_TERM.match(body, pos)
        assert match is not None  # every group may be empty
        whole, fraction, unit = match.groups()
        if not (whole or fraction) or unit not in _GO_NS:
            return None  # no digits, a missing unit or one Go does not know
        total_ns += int(whole or "0") * _GO_NS[unit]
        if fraction:
            total_ns += int(int(fraction) * _GO_NS[unit] / 10 ** len(fraction))
        if total_ns > 2**63 - (sign > 0):
            return None  # overflows Go's Duration
        pos = match.end()
    return sign * total_ns / 1e9


def go_duration(text: str) -> float | None:
    """parseIntOrDurationValue: a whole number >= 0 is seconds (a negative one is not,
    and is no duration either), else a Go duration. A negative duration is Go's no
    limit (net/http and the exec timer test `> 0`), which is 0 here."""
    number = _go_atoi(text)
    if number is not None and number >= 0:
        return float(number)
    seconds = _go_parse_duration(text)
    return None if seconds is None else max(seconds, 0.0)


def go_count(text: str) -> int | None:
    """parseIntValue: a whole number >= 0 (a sign allowed), else the fallback."""
    number = _go_atoi(text)
    return number if number is not None and number >= 0 else None


def go_port(text: str) -> int | None:
    port = go_count(text)
    if port is not None and port > 65535:
        raise _Invalid  # Go reads it, then cannot listen: it does not serve either
    return port


def go_parse_bool_or_true(text: str) -> bool:
    """of-watchdog's prefix_logs: strconv.ParseBool, and true when it fails."""
    return text not in ("0", "f", "F", "false", "FALSE", "False")


def go_bool(text: str) -> bool:
    """parseBoolValue: true is exactly `true`; any other word is false."""
    return text == "true"


# --- the table ------------------------------------------------------------------

@dataclass(frozen=True)
class Setting:
    field: str
    variables: tuple[str, ...]  # WATCHDOG_* first, then the OpenFaaS name
    default: str | None  # raw text as a user would write it; None: see `fallback`
    parse: Callable[[str], Any]
    accepted: str
    meaning: str
    fallback: str = ""  # for a default taken from another setting, its field name
    secret: bool = False  # its value is never shown, not even in an error
    # How the Go watchdog reads the last variable (its own lower-case name), for a
    # value `parse` refuses; None: the name is strict (the Go watchdog has no such).
    go: Callable[[str], Any] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")


DURATION = "whole seconds or a Go duration such as 30s, 1m30s or 500ms"
COUNT = "a whole number >= 0"
BOOL = "true/false, 1/0, yes/no or on/off (any case)"
SIZE = "a whole number of bytes, optionally with a unit: 512k, 10Mi, 1Gi"

SETTINGS: tuple[Setting, ...] = (
    Setting("mode", ("WATCHDOG_MODE", "mode"), "auto", parse_mode,
            "one of " + ", ".join(MODES) + " (of-watchdog's inproc runs Go code built "
            "into it; its afterburn is gone from it)",
            "classic: the body is the function's stdin; oscar: OSCAR's /run protocol "
            "(input file, output files back as base64); http: fprocess is started once "
            "and requests are proxied to upstream_url (of-watchdog's mode=http; with no "
            "fprocess, a sidecar in front of a server already running); streaming: "
            "forked per request, its stdout sent as it is written; serializing: forked "
            "per request, its output sent whole; static: the files under static_path; "
            "auto: oscar in OSCAR's own pod (fprocess is OSCAR's supervisor and "
            "/oscar/config is mounted), else classic. In of-watchdog's modes (http, "
            "streaming, serializing, static) its defaults apply: exec_timeout 30s, "
            "combine_output false, content_type application/octet-stream in streaming "
            "and serializing, which fork for every method"),
    Setting("fprocess", ("WATCHDOG_FPROCESS", "fprocess"), None, parse_command,
            "a command line, no shell (WATCHDOG_FPROCESS, --fprocess: split on runs of "
            "whitespace; fprocess: on each space, as the Go watchdog), or CMD ARGS... "
            "after --",
            "the command forked for each request (required, except in oscar mode: "
            + " ".join(OSCAR_SCRIPT) + "); http mode: the server started once (none: "
            "a sidecar)"),
    Setting("upstream_url", ("WATCHDOG_UPSTREAM_URL", "http_upstream_url", "upstream_url"),
            "", parse_upstream_url, "http://HOST:PORT with an optional path, or empty",
            "http mode: where requests are proxied (required in http mode)"),
    Setting("buffer_http", ("WATCHDOG_BUFFER_HTTP", "http_buffer_req_body", "buffer_http"),
            "false", parse_bool, BOOL,
            "http mode: read a request's body whole before it is forwarded, with its "
            "Content-Length (for servers that cannot read a chunked body; bounded by "
            "max_body_bytes, else 64 MiB)", go=go_bool),
    Setting("ready_path", ("WATCHDOG_READY_PATH", "ready_path"), "", parse_ready_path,
            "a path starting with /, or empty",
            "when the gateway is ready, GET /_/ready is answered by the function at this "
            "path (http mode: the server; forking modes: a run with Http_Path set to it), "
            "within the limit; empty: the gateway answers alone"),
    Setting("prefix_logs", ("WATCHDOG_PREFIX_LOGS", "prefix_logs"), "true", parse_bool, BOOL,
            "http mode: the server's output lines become the gateway's log lines, with "
            "its time stamp and upstream=stdout|stderr (false: written to stderr as they "
            "are, for a server that logs JSON)", go=go_parse_bool_or_true),
    Setting("log_buffer_size", ("WATCHDOG_LOG_BUFFER_SIZE", "log_buffer_size"), "64Ki",
            parse_size, SIZE,
            "http mode: the longest line of the server's output relayed (a longer one is "
            "dropped)"),
    Setting("log_callid", ("WATCHDOG_LOG_CALLID", "log_callid"), "false", parse_bool, BOOL,
            "the access line carries call_id= the request's X-Call-Id (none without one), "
            "as OpenFaaS' gateway sets it", go=go_bool),
    Setting("static_path", ("WATCHDOG_STATIC_PATH", "static_path"), "/home/app/public",
            parse_root, "an absolute path",
            "static mode: the folder served (index.html for a folder, else its listing)"),
    Setting("port", ("WATCHDOG_PORT", "port"), "8080", parse_port,
            "a port number 0-65535 (0: any free port)", "port for function requests",
            go=go_port),
    Setting("bind_address", ("WATCHDOG_BIND_ADDRESS",), "", parse_address,
            "an IP address or host name; empty for all interfaces",
            "address to listen on (empty: all interfaces, like fwatchdog)"),
    Setting("metrics_port", ("WATCHDOG_METRICS_PORT",), "8081", parse_port,
            "a port number 0-65535 (0: any free port)", "port for GET /metrics"),
    Setting("metrics_bind_address", ("WATCHDOG_METRICS_BIND_ADDRESS",), None, parse_address,
            "an IP address or host name; empty for all interfaces",
            "address for the metrics listener", fallback="bind_address"),
    Setting("read_timeout", ("WATCHDOG_READ_TIMEOUT", "read_timeout"), "30s", parse_duration,
            DURATION, "longest time to receive a request body (0: no limit); then 408",
            go=go_duration),
    Setting("write_timeout", ("WATCHDOG_WRITE_TIMEOUT", "write_timeout"), "30s", parse_duration,
            DURATION,
            "longest time from request to response (0: no limit); then 504, group killed; "
            "also the drain deadline on shutdown", go=go_duration),
    Setting("exec_timeout", ("WATCHDOG_EXEC_TIMEOUT", "exec_timeout"), "0", parse_duration,
            DURATION, "kill the function's process group after this long (0: never); then 408",
            go=go_duration),
    Setting("max_inflight", ("WATCHDOG_MAX_INFLIGHT", "max_inflight"), "0", parse_count,
            COUNT + " (0: no limit)",
            "most functions running at once; more requests get 429 at once", go=go_count),
    Setting("max_queue", ("WATCHDOG_MAX_QUEUE",), "0", parse_count, COUNT + " (0: no queue)",
            "requests over max_inflight that wait for a slot, first come first served, "
            "instead of a 429 (beyond them: 429 at once, as without a queue); one worker "
            "only"),
    Setting("queue_timeout", ("WATCHDOG_QUEUE_TIMEOUT",), "10s", parse_duration,
            DURATION + " (0: as long as it takes)",
            "longest wait in the queue; then 429 (the wait counts in write_timeout)"),
    Setting("max_connections", ("WATCHDOG_MAX_CONNECTIONS",), "0", parse_count,
            COUNT + " (0: from RLIMIT_NOFILE)",
            "most client connections open at once, per worker; at the cap the longest "
            "idle is closed, and with none idle a new one is closed unanswered; 0: "
            "RLIMIT_NOFILE less 64 and 4 per max_inflight (without it, a quarter)"),
    Setting("healthcheck_interval", ("WATCHDOG_HEALTHCHECK_INTERVAL", "healthcheck_interval"),
            None, parse_duration, DURATION,
            "on SIGTERM, time to keep serving while reporting unhealthy, before the drain",
            fallback="write_timeout", go=go_duration),
    Setting("write_debug", ("WATCHDOG_WRITE_DEBUG", "write_debug"), "false", parse_bool, BOOL,
            "copy each function's output to the log", go=go_bool),
    Setting("combine_output", ("WATCHDOG_COMBINE_OUTPUT", "combine_output"), "true", parse_bool,
            BOOL, "send the function's stderr in the response with its stdout "
            "(false: stderr goes to the log)", go=go_bool),
    Setting("content_type", ("WATCHDOG_CONTENT_TYPE", "content_type"), "", parse_text,
            "a media type",
            "Content-Type of 200 responses (empty: the request's, else sniffed as Go)"),
    Setting("marshal_request", ("WATCHDOG_MARSHAL_REQUEST", "marshal_request"), "false",
            parse_bool, BOOL,
            'stdin is {"header":{...},"body":{"raw":"<base64>"}} instead of the raw body',
            go=go_bool),
    Setting("cgi_headers", ("WATCHDOG_CGI_HEADERS", "cgi_headers"), "true", parse_bool, BOOL,
            "pass request headers to the function as Http_* variables", go=go_bool),
    Setting("suppress_lock", ("WATCHDOG_SUPPRESS_LOCK", "suppress_lock"), "false", parse_bool,
            BOOL, "do not write the lock file $TMPDIR/.lock (health then follows shutdown only)",
            go=go_bool),
    Setting("strict_config", ("WATCHDOG_STRICT_CONFIG",), "false", parse_bool, BOOL,
            "a bad value of an OpenFaaS variable stops start-up, as a bad WATCHDOG_* "
            "value does (false: it is read as the Go watchdog reads it, its default "
            "mostly, with a warning)"),
    Setting("max_body_bytes", ("WATCHDOG_MAX_BODY_BYTES",), "0", parse_size,
            SIZE + " (0: no limit)",
            "largest request body; more gets 413 (before any fork when Content-Length says so)"),
    Setting("max_output_bytes", ("WATCHDOG_MAX_OUTPUT_BYTES",), "64Mi",
            parse_size, SIZE, "largest function output held for a response; more gets 500, "
            "group killed"),
    Setting("spill_output_bytes", ("WATCHDOG_SPILL_OUTPUT_BYTES",), "1Mi", parse_size,
            SIZE + " (0: never)",
            "function output past this size goes to an unnamed file under $TMPDIR instead "
            "of memory, and is sent from there"),
    Setting("kill_grace", ("WATCHDOG_KILL_GRACE",), "2s", parse_duration, DURATION,
            "time between SIGTERM and SIGKILL when a function's group is stopped"),
    Setting("on_hangup", ("WATCHDOG_ON_HANGUP",), "stop", parse_hangup,
            "one of " + ", ".join(HANGUPS),
            "when a client hangs up while its function runs: stop (its group is ended; "
            "counted as 499) or finish (it runs to its end and is counted with its "
            "status, as with the Go watchdog); a body cut off by the hang-up stops it "
            "either way"),
    Setting("background", ("WATCHDOG_BACKGROUND",), "kill", parse_background,
            "one of " + ", ".join(BACKGROUNDS),
            "what a function leaves running in its group when it exits (`cmd &`): kill "
            "(the group is swept at its exit) or leave (it runs on, as with the Go "
            "watchdog: the answer waits until stdout is closed by all, so redirect "
            "what should not hold it; its slot is given back then; timeouts still end "
            "the whole group; ended at shutdown, SIGTERM then SIGKILL after kill_grace)"),
    Setting("function_nice", ("WATCHDOG_FUNCTION_NICE",), "5", parse_nice,
            "an integer from 0 to 19",
            "how much nicer than the gateway its functions run (added to its nice value), "
            "so that health checks and 429s stay fast while functions fill the CPU; 0: "
            "the same priority, as the Go watchdog"),
    Setting("service_name", ("OSCAR_SERVICE_NAME",), "", parse_name,
            "letters, digits, '.', '_' and '-'",
            "oscar mode: the service served at /run/NAME (empty: any name)"),
    Setting("service_token", ("OSCAR_SERVICE_TOKEN",), "", parse_token,
            "a token without spaces",
            "oscar mode: the Bearer token callers must present, when checked (see "
            "--oscar-check-token); the script sees it only in OSCAR's pod", secret=True),
    Setting("service_token_file", ("OSCAR_SERVICE_TOKEN_FILE",), "", parse_text,
            "the path of a readable file holding the token",
            "oscar mode: read the token from this file (a mounted Secret) instead"),
    Setting("oscar_check_token", ("WATCHDOG_OSCAR_CHECK_TOKEN",), "auto", parse_check,
            "one of " + ", ".join(CHECKS),
            "oscar mode: check the Bearer token in the pod (true: always, a token "
            "needed; false: never; auto: when a token is set, except in OSCAR's pod, "
            "where OSCAR's manager authenticates every call)"),
    Setting("oscar_always_200", ("WATCHDOG_OSCAR_ALWAYS_200",), "false", parse_bool, BOOL,
            "oscar mode: a script's exit status is ignored, as the FaaS Supervisor "
            "ignores it (200, its output files packed)"),
    Setting("oscar_root", ("WATCHDOG_OSCAR_ROOT",), "/", parse_root,
            "an absolute path",
            "where OSCAR's paths (/oscar/bin, /oscar/config) are looked up (tests, "
            "chroots)"),
    Setting("log_level", ("WATCHDOG_LOG_LEVEL", "LOG_LEVEL"), "INFO", parse_log_level,
            "one of " + ", ".join(LOG_LEVELS) + " (any case)",
            "least severe log level written to stderr"),
    Setting("loop", ("WATCHDOG_LOOP",), "uvloop", parse_loop, "one of " + ", ".join(LOOPS),
            "event loop implementation"),
    Setting("workers", ("WATCHDOG_WORKERS",), "1", parse_positive, "a whole number >= 1",
            "processes serving the port (SO_REUSEPORT); the limit and the metrics are "
            "shared (needs fixed ports)"),
    Setting("spawn_threads", ("WATCHDOG_SPAWN_THREADS",), "1", parse_spawn_threads,
            f"an integer from 0 to {MAX_SPAWN_THREADS}",
            "C threads that start functions, so that the event loop never waits for a "
            "child's exec; 0 (or no C compiler at install): the event loop starts them"),
)

SETTINGS_BY_FIELD = {setting.field: setting for setting in SETTINGS}


@dataclass(frozen=True)
class LegacyValue:
    """`variable=value` was refused by the table's form and read as the Go watchdog
    reads it: `used` instead."""

    variable: str
    value: str
    used: str
    accepted: str


@dataclass(frozen=True)
class Config:
    mode: str
    fprocess: tuple[str, ...]
    upstream_url: str
    buffer_http: bool
    ready_path: str
    prefix_logs: bool
    log_buffer_size: int
    log_callid: bool
    static_path: str
    port: int
    bind_address: str
    metrics_port: int
    metrics_bind_address: str
    read_timeout: float
    write_timeout: float
    exec_timeout: float
    max_inflight: int
    max_queue: int
    queue_timeout: float
    max_connections: int
    healthcheck_interval: float
    write_debug: bool
    combine_output: bool
    content_type: str
    marshal_request: bool
    cgi_headers: bool
    suppress_lock: bool
    strict_config: bool
    max_body_bytes: int
    max_output_bytes: int
    spill_output_bytes: int
    kill_grace: float
    on_hangup: str
    background: str
    function_nice: int
    service_name: str
    service_token: str = field(repr=False)  # a secret: never in logs or reprs
    service_token_file: str
    log_level: str
    loop: str
    workers: int
    spawn_threads: int
    oscar_check_token: str
    oscar_always_200: bool
    oscar_root: str
    lock_path: str  # derived: $TMPDIR/.lock, as the Go watchdog's os.TempDir()
    # Derived (oscar_pod.choose_mode): the mode's reason, whether OSCAR started the
    # gateway (its pod), what to hand over to, whether the token is checked.
    mode_reason: str = ""
    oscar_pod: bool = False
    supervisor: tuple[str, ...] = ()
    oscar_defaults: bool = False  # the script and FDL are the pod's (SCRIPT applies)
    check_token: bool = False
    # Bad values of the Go watchdog's own variables, read as it reads them (not
    # under strict_config): the CLI warns of each once, at start.
    legacy_values: tuple[LegacyValue, ...] = ()

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str],
        flags: Mapping[str, str] | None = None,
        command: tuple[str, ...] = (),
    ) -> Config:
        """Build from an environment, `flags` (field -> raw text) and `command` (after --).

        Raises ConfigError naming the first bad source (flag or variable).
        """
        flags = flags or {}
        values: dict[str, Any] = {}
        defaulted: set[str] = set()
        strict = _strict(environ, flags)
        legacy: list[tuple[Setting, str, str]] = []  # (setting, value, how Go read it)
        for setting in SETTINGS:
            source, raw = _lookup(setting, environ, flags)
            if setting.field == "fprocess" and command:
                values["fprocess"] = command
                continue
            if raw is None:
                if setting.default is None:
                    continue  # filled from its fallback below
                source, raw = "default", setting.default
                defaulted.add(setting.field)
            try:
                values[setting.field] = _parser(setting, source)(raw)
            except _Invalid:
                if strict or setting.go is None or source != setting.variables[-1]:
                    raise _config_error(setting, source, raw) from None
                legacy.append((setting, raw, _read_as_go(setting, source, raw, values)))
        root = values["oscar_root"]
        choice = oscar_pod.choose_mode(values["mode"], values.get("fprocess"), root)
        derived: dict[str, Any] = {"mode_reason": choice.reason, "oscar_pod": choice.pod,
                                   "supervisor": choice.supervisor}
        values["mode"] = choice.mode
        if choice.mode == "oscar" and ("fprocess" not in values or choice.pod):
            # Never the supervisor as the script: the script, as it would run it.
            values["fprocess"] = oscar_pod.script_command(root)
            derived["oscar_defaults"] = True
        if values["service_token_file"] and not values["service_token"]:
            values["service_token"] = _read_token(values["service_token_file"])
        derived["check_token"] = _check_token(values, choice.pod, environ, flags)
        if choice.mode == "oscar" and "log_level" in defaulted:
            # The FDL's level was the supervisor's, whose logs went into answers
            # unless CRITICAL: here it can only make the log more verbose (DEBUG),
            # never silence the gateway's own warnings.
            with contextlib.suppress(_Invalid):
                level = parse_log_level(oscar_pod.fdl_log_level(root, environ) or "INFO")
                if logging.getLevelNamesMapping()[level] < logging.INFO:
                    values["log_level"] = level
        if choice.mode == "http":
            if not values["upstream_url"]:
                setting = SETTINGS_BY_FIELD["upstream_url"]
                raise ConfigError(", ".join(setting.variables), "", setting.accepted,
                                  "http mode needs the server's address: set "
                                  f"{setting.variables[0]} (or {setting.flag}) to "
                                  f"{setting.accepted.split(' with')[0]}")
            values.setdefault("fprocess", ())  # none: a sidecar
            if values["fprocess"] and values["workers"] > 1:
                # Each worker would start its own server on the one upstream port.
                name = SETTINGS_BY_FIELD["workers"].variables[0]
                raise ConfigError(name, str(values["workers"]), "1 in http mode with "
                                  "fprocess (or no fprocess: a sidecar, any workers)")
        if choice.mode in OF_WATCHDOG_MODES:
            for field_name, default, modes in OF_WATCHDOG_DEFAULTS:
                if field_name in defaulted and choice.mode in modes:
                    values[field_name] = SETTINGS_BY_FIELD[field_name].parse(default)
        if choice.mode == "static":
            values.setdefault("fprocess", ())  # nothing runs: files are served
            if not os.path.isdir(values["static_path"]):
                setting = SETTINGS_BY_FIELD["static_path"]
                raise ConfigError(setting.variables[0], values["static_path"],
                                  "the path of a folder",
                                  f"static_path={values['static_path']!r}: expected "
                                  "the path of a folder, which static mode serves (set "
                                  f"{', '.join(setting.variables)} or {setting.flag})")
        if "fprocess" not in values:
            fprocess = SETTINGS_BY_FIELD["fprocess"]
            names = ", ".join(fprocess.variables)
            raise ConfigError(names, "", fprocess.accepted,
                              f"no function to run: set {names} or {fprocess.flag}, "
                              "or give CMD ARGS... after --")
        for setting in SETTINGS:
            if setting.field not in values:
                values[setting.field] = values[setting.fallback]
        derived["legacy_values"] = tuple(
            LegacyValue(setting.variables[-1], raw, _shown(values[setting.field]) + how,
                        setting.accepted)
            for setting, raw, how in legacy)
        if values["max_queue"] and values["workers"] > 1:
            name = SETTINGS_BY_FIELD["workers"].variables[0]
            raise ConfigError(name, str(values["workers"]), "1 with max_queue",
                              f"{name}={values['workers']}: the wait queue (max_queue) "
                              "serves one worker; set one or the other")
        if values["workers"] > 1:
            for field in ("port", "metrics_port"):
                if values[field] == 0:
                    name = SETTINGS_BY_FIELD["workers"].variables[0]
                    raise ConfigError(name, str(values["workers"]), "1 with port 0",
                                      f"{name}={values['workers']}: several workers need "
                                      f"a fixed {field}, not 0")
        return cls(**values, lock_path=lock_path(environ), **derived)


def _config_error(setting: Setting, source: str, raw: str) -> ConfigError:
    if setting.secret:
        return ConfigError(source, "", setting.accepted,
                           f"{source}=(hidden): expected {setting.accepted}")
    return ConfigError(source, raw, setting.accepted)


def _strict(environ: Mapping[str, str], flags: Mapping[str, str]) -> bool:
    setting = SETTINGS_BY_FIELD["strict_config"]
    source, raw = _lookup(setting, environ, flags)
    try:
        return bool(setting.parse(raw or setting.default or ""))
    except _Invalid:
        raise _config_error(setting, source, raw or "") from None


def _read_as_go(setting: Setting, source: str, raw: str, values: dict[str, Any]) -> str:
    """Put the Go watchdog's reading of `raw` in `values` (left out: its fallback,
    filled later); how it was read, for the warning. ConfigError where Go does not
    serve either."""
    assert setting.go is not None
    try:
        used = setting.go(raw)
    except _Invalid:
        raise _config_error(setting, source, raw) from None
    if used is not None:
        values[setting.field] = used
        return ""
    if setting.default is None:
        return f" (= {setting.fallback})"
    values[setting.field] = setting.parse(setting.default)
    return " (the default)"


def _shown(value: Any) -> str:
    """A value as a user would write it: durations (floats) in seconds with a unit."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}s"
    return str(value)


def _parser(setting: Setting, source: str) -> Callable[[str], Any]:
    """The table's parser, but for the OpenFaaS `fprocess`, which is split as the Go
    watchdog splits it (our own names keep the table's rule)."""
    if setting.field == "fprocess" and source == setting.variables[-1]:
        return parse_go_command
    return setting.parse


def _lookup(setting: Setting, environ: Mapping[str, str],
            flags: Mapping[str, str]) -> tuple[str, str | None]:
    if setting.field in flags:
        return setting.flag, flags[setting.field]
    for name in setting.variables:
        raw = environ.get(name)
        # An empty fprocess is an error, not "unset": it would fork nothing.
        if raw is not None and (raw != "" or setting.field == "fprocess"):
            return name, raw
    return "", None


def _check_token(values: Mapping[str, Any], pod: bool, environ: Mapping[str, str],
                 flags: Mapping[str, str]) -> bool:
    if values["oscar_check_token"] == "true":
        if not values["service_token"]:
            source, raw = _lookup(SETTINGS_BY_FIELD["oscar_check_token"], environ, flags)
            raise ConfigError(source, raw or "", "a token",
                              f"{source}={raw!r}: no token to check; set "
                              "OSCAR_SERVICE_TOKEN or OSCAR_SERVICE_TOKEN_FILE")
        return True
    if values["oscar_check_token"] == "false":
        return False
    # In OSCAR's pod its manager has authenticated every call it proxies (the
    # service token or an OIDC token the pod cannot check).
    return bool(values["service_token"]) and not pod


def _read_token(path: str) -> str:
    setting = SETTINGS_BY_FIELD["service_token_file"]
    try:
        with open(path, encoding="utf-8") as f:
            token = parse_token(f.read())
        if token:
            return token
        raise _Invalid
    except (OSError, ValueError) as exc:  # _Invalid, UnicodeDecodeError, a NUL: ValueError
        reason = getattr(exc, "strerror", None) or "no token in it"
        raise ConfigError(setting.variables[0], path, setting.accepted,
                          f"{setting.variables[0]}={path!r}: {reason}; expected "
                          f"{setting.accepted}") from None


def lock_path(environ: Mapping[str, str]) -> str:
    """Where the Go watchdog writes its lock file: os.TempDir()/.lock."""
    return (environ.get("TMPDIR") or "/tmp").rstrip("/") + "/.lock"


def default_text(setting: Setting) -> str:
    if setting.default is None:
        return f"= {setting.fallback}" if setting.fallback else "(required)"
    return setting.default if setting.default != "" else '""'


def settings_markdown() -> str:
    """The README's settings table, generated so that a test keeps them in sync."""
    lines = ["| flag | variables | default | meaning |", "|---|---|---|---|"]
    for s in SETTINGS:
        names = ", ".join(f"`{v}`" for v in s.variables)
        lines.append(f"| `{s.flag}` | {names} | `{default_text(s)}` | {s.meaning} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # python -m watchdog.config: the README's table
    print(settings_markdown(), end="")
