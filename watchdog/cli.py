"""`fwatchdog`: flags from the settings table, `--help` from the same table, the
subcommands (serve is the default, `healthcheck` for container health checks), and
the Go watchdog's flags as its flag package reads them (-run-healthcheck, -version)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from watchdog import __version__, cgi, logs
from watchdog.config import (
    SETTINGS,
    Config,
    ConfigError,
    default_text,
    lock_path,
    parse_bool,
)
from watchdog.limiter import SharedSlots

if TYPE_CHECKING:
    import argparse

PROG = "fwatchdog"
EXIT_CONFIG = 2  # as argparse's usage errors
EXIT_START = 1

log = logging.getLogger("watchdog")


def _parser() -> argparse.ArgumentParser:
    import argparse  # with flags only: a pod is configured by its environment

    parser = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} [options] [-- CMD ARGS...]\n"
        f"       {PROG} healthcheck | -run-healthcheck | -version\n"
        f"       {PROG} run SERVICE -f/--input FILE | -i/--text-input TEXT [-o FILE] "
        "[-c CLUSTER] ...",
        description="A concurrency gateway that forks CMD for each HTTP request: the body "
        "is its stdin, its stdout the response. Each setting is taken from its flag, "
        "else its WATCHDOG_* variable, else its OpenFaaS variable, else the default. "
        "A bad value stops start-up, except in an OpenFaaS variable that the Go "
        "watchdog reads: that is read as the Go watchdog reads it, with a warning "
        "(WATCHDOG_STRICT_CONFIG=true: it stops start-up too). Flags may be written with one dash, "
        "as Go's: -port 8080, -write-debug=true.",
        epilog="`healthcheck` (or Go's -run-healthcheck) exits 0 while the lock file "
        "$TMPDIR/.lock exists (for a container's exec health check). -version prints "
        "the Go watchdog's version line on stderr. `run` invokes an OSCAR service like "
        "`oscar-cli service run`, with its flags and ~/.oscar-cli/config.yaml (see "
        "`fwatchdog run --help`).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                        help="print `fwatchdog VERSION` on stdout and exit (-version: the "
                        "Go watchdog's version line, on stderr)")
    for setting in SETTINGS:
        parser.add_argument(
            setting.flag, dest=setting.field, metavar="VALUE", default=None,
            help=f"{setting.meaning}. Variables: {', '.join(setting.variables)}. "
            f"Default: {default_text(setting)}. Accepts {setting.accepted}.",
        )
    return parser


def parse_args(argv: Sequence[str], environ: Mapping[str, str]) -> Config:
    """`argv` in argparse's spelling (see go_flags). Raises SystemExit(2) on bad flags
    or settings, with a one-line reason."""
    argv = list(argv)
    command: tuple[str, ...] = ()
    if "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], tuple(argv[split + 1:])
        if not command:
            _fail("-- must be followed by a command")
    flags = {}
    if argv:  # without flags (`-- CMD`, or none at all) there is no parser to build
        namespace = _parser().parse_args(argv)
        flags = {k: v for k, v in vars(namespace).items() if v is not None}
    try:
        return Config.from_env(environ, flags, command)
    except ConfigError as exc:
        _fail(str(exc))
        raise  # unreachable: _fail exits


def _fail(message: str) -> None:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_CONFIG)


def main(argv: Sequence[str] | None = None,
         environ: Mapping[str, str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # As exec'd: the functions' environment, without what Python's start added.
    environ = cgi.exec_environment() if environ is None else environ
    if argv[:1] == ["healthcheck"]:
        return healthcheck(environ)
    if argv[:1] == ["run"]:
        from watchdog import client  # only the client needs it

        return client.main(argv[1:], environ)
    if argv[:1] == ["serve"]:
        argv = argv[1:]
    argv, switches = go_flags(argv)
    if switches.get("run-healthcheck"):  # first, as Go: a probe never starts a server
        return healthcheck(environ)
    if switches.get("version"):
        print_go_version()
        return 0
    config = parse_args(argv, environ)
    return serve(config, environ)


# The Go watchdog's own flags are two booleans, -run-healthcheck and -version (which
# it spells with one dash or two; `--version` alone stays ours, on stdout, as GNU's).
# strconv.ParseBool's words, which Go's boolean flags take after `=`, and ours.
_GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_GO_FALSE = ("0", "f", "F", "FALSE", "false", "False")
_LONG_WITH_VALUE = {setting.flag[2:] for setting in SETTINGS}


def go_flags(argv: Sequence[str]) -> tuple[list[str], dict[str, bool]]:
    """Read flags as Go's flag package does, up to `--`: `-name` is `--name`, and a
    value is the next argument even when it starts with a dash (`-exec-timeout -5s`);
    `-run-healthcheck` and `-version` (also `=true` and the like) are taken out.
    Returns the arguments in argparse's spelling (`--name=value`) and those switches."""
    out: list[str] = []
    switches: dict[str, bool] = {}
    rest = list(argv)
    while rest:
        token = rest.pop(0)
        if token == "--" or not token.startswith("-") or token == "-":
            out.append(token)
            if token == "--":
                out += rest
                break
            continue
        dashes = 2 if token.startswith("--") else 1
        name, equals, value = token[dashes:].partition("=")
        go_spelled = dashes == 1 or bool(equals)  # bare --version is ours
        if name == "run-healthcheck" or (name == "version" and go_spelled):
            switches[name] = _switch(token, value) if equals else True
        elif name in _LONG_WITH_VALUE or name == "help":
            if name != "help" and not equals and rest and rest[0] != "--":
                value, equals = rest.pop(0), "="
            out.append(f"--{name}{equals}{value}")
        else:
            out.append(token)  # -h, --version, or argparse's error to give
    return out, switches


def _switch(token: str, value: str) -> bool:
    if value in _GO_TRUE:
        return True
    if value in _GO_FALSE:
        return False
    try:
        return parse_bool(value)
    except ValueError:
        name = token.partition("=")[0]
        _fail(f"{name}={value!r}: expected a boolean: true/false, t/f, 1/0, yes/no or on/off")
        raise  # unreachable: _fail exits


def print_go_version() -> None:
    """The Go watchdog's line, in its log format on stderr; no commit is known here."""
    stamp = time.strftime("%Y/%m/%d %H:%M:%S")
    print(f"{stamp} Version: {__version__}\tSHA: unknown", file=sys.stderr)


def _runnable(program: str, path: str | None) -> bool:
    """As shutil.which finds it (no PATH: the default search path, as execvp): without
    importing shutil (with zlib, bz2 and lzma, 3% of the start) for this one check."""
    if os.sep in program:
        folders = [""]
    elif path == "":
        folders = []  # finds nothing, as shutil.which
    else:
        folders = (os.defpath if path is None else path).split(os.pathsep)
    for folder in folders:
        candidate = os.path.join(folder, program)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return True
    return False


def healthcheck(environ: Mapping[str, str]) -> int:
    if os.path.exists(lock_path(environ)):
        return 0
    print("unable to find lock file.", file=sys.stderr)  # the Go watchdog's words
    return 1


def serve(config: Config, environ: Mapping[str, str]) -> int:
    logs.configure(config.log_level)
    for legacy in config.legacy_values:
        log.warning("bad value read as the Go watchdog reads it "
                    "(WATCHDOG_STRICT_CONFIG=true: an error)",
                    extra={logs.FIELDS: {"variable": legacy.variable, "value": legacy.value,
                                         "used": legacy.used, "expected": legacy.accepted}})
    _protect_descriptors()
    if config.fprocess and not _runnable(config.fprocess[0], environ.get("PATH")):
        log.warning("fprocess not found or not executable; requests will get 500",
                    extra={logs.FIELDS: {"fprocess": config.fprocess[0]}})
    if config.workers > 1:
        from watchdog import workers

        return workers.supervise(config, environ, run)
    return run(config, environ, None)


def run(config: Config, environ: Mapping[str, str], shared: SharedSlots | None) -> int:
    """One gateway process, until it is told to stop."""
    from watchdog.server import Watchdog  # the serving path: not for `run`, `healthcheck`

    watchdog = Watchdog(config, environ, handle_signals=True, shared=shared)
    with asyncio.Runner(loop_factory=_loop_factory(config.loop)) as runner:
        try:
            runner.run(watchdog.serve())
        except OSError as exc:  # a port in use, no permission, no lock file folder
            log.error("cannot start", extra={logs.FIELDS: {"error": str(exc)}})
            return EXIT_START
    return watchdog.exit_status


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def _protect_descriptors() -> None:
    """Keep the functions' world clean: stdin/stdout/stderr exist (a pipe never
    lands on 0-2 by accident), and nothing inherited from our own parent leaks
    into every function (Python's own descriptors are close-on-exec already)."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    try:
        inherited = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return
    for fd in inherited:
        if fd > 2:
            with contextlib.suppress(OSError):  # the listing's own, already closed
                os.set_inheritable(fd, False)
