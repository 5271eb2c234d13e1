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
    # Like the Go watchdog: split on spaces, no shell, no quoting.
    argv = tuple(text.split())
    if not argv:
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
MODES = ("auto", "classic", "oscar")
# Where OSCAR mounts a service's script, and how its FaaS Supervisor runs it.
OSCAR_SCRIPT = oscar_pod.script_command("/")
CHECKS = ("auto", "true", "false")


def parse_loop(text: str) -> str:
    return _choice(text, LOOPS)


def parse_mode(text: str) -> str:
    return _choice(text, MODES)


def parse_check(text: str) -> str:
    word = text.strip().lower()
    if word in _TRUE:
        return "true"
    if word in _FALSE:
        return "false"
    return _choice(word, CHECKS)


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

    @property
    def flag(self) -> str:
        return "--" + self.field.replace("_", "-")


DURATION = "whole seconds or a Go duration such as 30s, 1m30s or 500ms"
COUNT = "a whole number >= 0"
BOOL = "true or false"
SIZE = "a whole number of bytes, optionally with a unit: 512k, 10Mi, 1Gi"

SETTINGS: tuple[Setting, ...] = (
    Setting("mode", ("WATCHDOG_MODE", "mode"), "auto", parse_mode,
            "one of " + ", ".join(MODES),
            "classic: the body is the function's stdin; oscar: OSCAR's /run protocol "
            "(input file, output files back as base64); auto: oscar in OSCAR's own pod "
            "(fprocess is OSCAR's supervisor and /oscar/config is mounted), else classic"),
    Setting("fprocess", ("WATCHDOG_FPROCESS", "fprocess"), None, parse_command,
            "a command line (split on spaces, no shell), or CMD ARGS... after --",
            "the command forked for each request (required, except in oscar mode: "
            + " ".join(OSCAR_SCRIPT) + ")"),
    Setting("port", ("WATCHDOG_PORT", "port"), "8080", parse_port,
            "a port number 0-65535 (0: any free port)", "port for function requests"),
    Setting("bind_address", ("WATCHDOG_BIND_ADDRESS",), "", parse_address,
            "an IP address or host name; empty for all interfaces",
            "address to listen on (empty: all interfaces, like fwatchdog)"),
    Setting("metrics_port", ("WATCHDOG_METRICS_PORT",), "8081", parse_port,
            "a port number 0-65535 (0: any free port)", "port for GET /metrics"),
    Setting("metrics_bind_address", ("WATCHDOG_METRICS_BIND_ADDRESS",), None, parse_address,
            "an IP address or host name; empty for all interfaces",
            "address for the metrics listener", fallback="bind_address"),
    Setting("read_timeout", ("WATCHDOG_READ_TIMEOUT", "read_timeout"), "30s", parse_duration,
            DURATION, "longest time to receive a request body (0: no limit); then 408"),
    Setting("write_timeout", ("WATCHDOG_WRITE_TIMEOUT", "write_timeout"), "30s", parse_duration,
            DURATION,
            "longest time from request to response (0: no limit); then 504, group killed; "
            "also the drain deadline on shutdown"),
    Setting("exec_timeout", ("WATCHDOG_EXEC_TIMEOUT", "exec_timeout"), "0", parse_duration,
            DURATION, "kill the function's process group after this long (0: never); then 408"),
    Setting("max_inflight", ("WATCHDOG_MAX_INFLIGHT", "max_inflight"), "0", parse_count,
            COUNT + " (0: no limit)",
            "most functions running at once; more requests get 429 at once"),
    Setting("max_connections", ("WATCHDOG_MAX_CONNECTIONS",), "0", parse_count,
            COUNT + " (0: from RLIMIT_NOFILE)",
            "most client connections open at once, per worker; at the cap the longest "
            "idle is closed, and with none idle a new one is closed unanswered; 0: "
            "RLIMIT_NOFILE less 64 and 4 per max_inflight (without it, a quarter)"),
    Setting("healthcheck_interval", ("WATCHDOG_HEALTHCHECK_INTERVAL", "healthcheck_interval"),
            None, parse_duration, DURATION,
            "on SIGTERM, time to keep serving while reporting unhealthy, before the drain",
            fallback="write_timeout"),
    Setting("write_debug", ("WATCHDOG_WRITE_DEBUG", "write_debug"), "false", parse_bool, BOOL,
            "copy each function's output to the log"),
    Setting("combine_output", ("WATCHDOG_COMBINE_OUTPUT", "combine_output"), "true", parse_bool,
            BOOL, "send the function's stderr in the response with its stdout "
            "(false: stderr goes to the log)"),
    Setting("content_type", ("WATCHDOG_CONTENT_TYPE", "content_type"), "", parse_text,
            "a media type", "Content-Type of responses (empty: echo the request's)"),
    Setting("marshal_request", ("WATCHDOG_MARSHAL_REQUEST", "marshal_request"), "false",
            parse_bool, BOOL,
            'stdin is {"header":{...},"body":{"raw":"<base64>"}} instead of the raw body'),
    Setting("cgi_headers", ("WATCHDOG_CGI_HEADERS", "cgi_headers"), "true", parse_bool, BOOL,
            "pass request headers to the function as Http_* variables"),
    Setting("suppress_lock", ("WATCHDOG_SUPPRESS_LOCK", "suppress_lock"), "false", parse_bool,
            BOOL, "do not write the lock file $TMPDIR/.lock (health then follows shutdown only)"),
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
class Config:
    mode: str
    fprocess: tuple[str, ...]
    port: int
    bind_address: str
    metrics_port: int
    metrics_bind_address: str
    read_timeout: float
    write_timeout: float
    exec_timeout: float
    max_inflight: int
    max_connections: int
    healthcheck_interval: float
    write_debug: bool
    combine_output: bool
    content_type: str
    marshal_request: bool
    cgi_headers: bool
    suppress_lock: bool
    max_body_bytes: int
    max_output_bytes: int
    spill_output_bytes: int
    kill_grace: float
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
                values[setting.field] = setting.parse(raw)
            except _Invalid:
                if setting.secret:
                    raise ConfigError(source, "", setting.accepted,
                                      f"{source}=(hidden): expected {setting.accepted}") from None
                raise ConfigError(source, raw, setting.accepted) from None
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
        if "fprocess" not in values:
            fprocess = SETTINGS_BY_FIELD["fprocess"]
            names = ", ".join(fprocess.variables)
            raise ConfigError(names, "", fprocess.accepted,
                              f"no function to run: set {names} or {fprocess.flag}, "
                              "or give CMD ARGS... after --")
        for setting in SETTINGS:
            if setting.field not in values:
                values[setting.field] = values[setting.fallback]
        if values["workers"] > 1:
            for field in ("port", "metrics_port"):
                if values[field] == 0:
                    name = SETTINGS_BY_FIELD["workers"].variables[0]
                    raise ConfigError(name, str(values["workers"]), "1 with port 0",
                                      f"{name}={values['workers']}: several workers need "
                                      f"a fixed {field}, not 0")
        return cls(**values, lock_path=lock_path(environ), **derived)


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
