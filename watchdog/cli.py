"""`fwatchdog`: flags from the settings table, `--help` from the same table, and the
subcommands (serve is the default, `healthcheck` for container health checks)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence

from watchdog import __version__, logs
from watchdog.config import SETTINGS, Config, ConfigError, default_text, lock_path
from watchdog.limiter import SharedSlots

PROG = "fwatchdog"
EXIT_CONFIG = 2  # as argparse's usage errors
EXIT_START = 1

log = logging.getLogger("watchdog")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} [options] [-- CMD ARGS...]\n       {PROG} healthcheck\n"
        f"       {PROG} run SERVICE -f/--input FILE | -i/--text-input TEXT [-o FILE] "
        "[-c CLUSTER] ...",
        description="A concurrency gateway that forks CMD for each HTTP request: the body "
        "is its stdin, its stdout the response. Each setting is taken from its flag, "
        "else its WATCHDOG_* variable, else its OpenFaaS variable, else the default.",
        epilog="`healthcheck` exits 0 while the lock file $TMPDIR/.lock exists "
        "(for a container's exec health check). `run` invokes an OSCAR service like "
        "`oscar-cli service run`, with its flags and ~/.oscar-cli/config.yaml (see "
        "`fwatchdog run --help`).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    for setting in SETTINGS:
        parser.add_argument(
            setting.flag, dest=setting.field, metavar="VALUE", default=None,
            help=f"{setting.meaning}. Variables: {', '.join(setting.variables)}. "
            f"Default: {default_text(setting)}. Accepts {setting.accepted}.",
        )
    return parser


def parse_args(argv: Sequence[str], environ: Mapping[str, str]) -> Config:
    """Raises SystemExit(2) on bad flags or settings, with a one-line reason."""
    argv = list(argv)
    command: tuple[str, ...] = ()
    if "--" in argv:
        split = argv.index("--")
        argv, command = argv[:split], tuple(argv[split + 1:])
        if not command:
            _fail("-- must be followed by a command")
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
    environ = os.environ if environ is None else environ
    if argv[:1] == ["healthcheck"]:
        return healthcheck(environ)
    if argv[:1] == ["run"]:
        from watchdog import client  # only the client needs it

        return client.main(argv[1:], environ)
    if argv[:1] == ["serve"]:
        argv = argv[1:]
    config = parse_args(argv, environ)
    return serve(config, environ)


def healthcheck(environ: Mapping[str, str]) -> int:
    return 0 if os.path.exists(lock_path(environ)) else 1


def serve(config: Config, environ: Mapping[str, str]) -> int:
    logs.configure(config.log_level)
    _protect_descriptors()
    if shutil.which(config.fprocess[0], path=environ.get("PATH")) is None:
        log.warning("fprocess not found or not executable; requests will get 500",
                    extra={logs.FIELDS: {"fprocess": config.fprocess[0]}})
    if config.workers > 1:
        from watchdog import workers  # prometheus-client must not be imported before

        return workers.supervise(config, environ, run)
    return run(config, environ, None)


def run(config: Config, environ: Mapping[str, str], shared: SharedSlots | None) -> int:
    """One gateway process, until it is told to stop."""
    from watchdog.server import Watchdog  # imports prometheus-client

    watchdog = Watchdog(config, environ, handle_signals=True, shared=shared)
    with asyncio.Runner(loop_factory=_loop_factory(config.loop)) as runner:
        try:
            runner.run(watchdog.serve())
        except OSError as exc:  # a port in use, no permission, no lock file folder
            log.error("cannot start", extra={logs.FIELDS: {"error": str(exc)}})
            return EXIT_START
    return 0


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
