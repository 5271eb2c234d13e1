"""OSCAR's service pod, named once: where OSCAR mounts things, what it puts in the
environment, how its FaaS Supervisor finds the script and the service definition
(FDL), and which mode an environment means.

Facts read from grycap/oscar (`pkg/types/service.go`) and grycap/faas-supervisor
(`faassupervisor/faas/binary/supervisor.py`, `utils.py` ConfigUtils). Every path is
under a root (`/` in a pod; a temporary folder in tests: WATCHDOG_OSCAR_ROOT).

Imports nothing of the gateway: config.py asks it which mode to run.
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from watchdog.logs import FIELDS

log = logging.getLogger("watchdog")

# --- the pod, as OSCAR builds it --------------------------------------------------------

# The supervisor's two builds on OSCAR's read-only volume (glibc, and musl for
# services marked `alpine`); OSCAR sets one of them as `fprocess`.
SUPERVISORS = ("oscar/bin/supervisor", "oscar/bin/alpine/supervisor")
CONFIG_DIR = "oscar/config"  # the service's ConfigMap
SCRIPT_FILE = "script.sh"
FDL_FILE = "function_config.yaml"
SHELL = "/bin/sh"  # the supervisor runs `/bin/sh <script>`, whatever its first line

# Variables OSCAR (or the operator) puts in the pod's environment.
SERVICE_NAME = "OSCAR_SERVICE_NAME"
SERVICE_TOKEN = "OSCAR_SERVICE_TOKEN"  # the service's own token; scripts use it
SERVICE_TOKEN_FILE = "OSCAR_SERVICE_TOKEN_FILE"  # the gateway's; never passed on
SCRIPT_VARIABLE = "SCRIPT"  # base64 script, replaces script.sh
FDL_VARIABLE = "FUNCTION_CONFIG"  # base64 FDL, used when the file is absent

# What the supervisor adds for the script.
QUERY_PREFIX = "CONT_VAR_"  # API-Gateway query parameters


def under(root: str, relative: str) -> str:
    return os.path.join(root, relative)


def supervisor_paths(root: str) -> tuple[str, ...]:
    return tuple(under(root, path) for path in SUPERVISORS)


def is_supervisor(fprocess: tuple[str, ...] | None, root: str) -> bool:
    return (fprocess is not None and len(fprocess) == 1
            and os.path.normpath(fprocess[0]) in supervisor_paths(root))


def config_dir(root: str) -> str:
    return under(root, CONFIG_DIR)


def script_command(root: str) -> tuple[str, ...]:
    """The script as the supervisor runs it (without `SCRIPT`)."""
    return (SHELL, os.path.join(config_dir(root), SCRIPT_FILE))


# --- which mode --------------------------------------------------------------------------


@dataclass(frozen=True)
class ModeChoice:
    mode: str  # classic | oscar | of-watchdog's: http, streaming, serializing, static
    reason: str  # for the start-up line
    pod: bool  # OSCAR started the gateway: the manager authenticates, scripts get its env
    supervisor: tuple[str, ...]  # what to hand over to (empty: nothing)


def choose_mode(setting: str, fprocess: tuple[str, ...] | None, root: str,
                is_dir: Callable[[str], bool] = os.path.isdir) -> ModeChoice:
    """`setting` is auto or a mode (config.MODES). OSCAR's pod is recognised by what OSCAR
    always sets: `fprocess` is its supervisor and its ConfigMap is mounted."""
    supervisor = is_supervisor(fprocess, root)
    folder = config_dir(root)
    if setting == "classic":
        reason = "mode is set to classic"
        if supervisor:
            reason += "; fprocess (OSCAR's supervisor) is forked for each request"
        return ModeChoice("classic", reason, False, ())
    if setting in ("http", "streaming", "serializing", "static"):  # of-watchdog's
        return ModeChoice(setting, f"mode is set to {setting}", False, ())
    if setting == "oscar":
        if supervisor:
            assert fprocess is not None
            return ModeChoice("oscar", "mode is set to oscar and fprocess is OSCAR's "
                              "supervisor: the script runs as the supervisor would run "
                              "it, the supervisor takes what the gateway does not do",
                              True, fprocess)
        return ModeChoice("oscar", "mode is set to oscar", False, ())
    if supervisor and is_dir(folder):
        assert fprocess is not None
        return ModeChoice("oscar", f"fprocess is OSCAR's supervisor and {folder} is mounted",
                          True, fprocess)
    if supervisor:
        return ModeChoice("classic", f"fprocess is OSCAR's supervisor but {folder} is not "
                          "mounted: the supervisor is forked for each request", False, ())
    return ModeChoice("classic", "fprocess is not OSCAR's supervisor", False, ())


# --- the service definition (FDL) ------------------------------------------------------


@dataclass(frozen=True)
class Fdl:
    """What of the FDL changes a synchronous call."""

    outputs: bool = False  # `output` providers: the supervisor uploads (sync calls too)
    file_stage_in: bool = False  # no input file, INPUT_FILE_PATH unset
    log_level: str = ""
    error: str = ""  # unreadable: the supervisor would fail on it, not the gateway


NO_FDL = Fdl()


def parse_fdl(text: str | bytes) -> Fdl:
    try:
        import yaml  # only services with an FDL pay for it
    except ImportError:  # a build without it: the supervisor reads the FDL instead
        return Fdl(error="PyYAML is not installed")
    try:
        document: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return Fdl(error=f"not YAML: {exc}".splitlines()[0])
    except (RecursionError, MemoryError, ValueError) as exc:  # a ConfigMap nested too deep
        return Fdl(error=f"cannot be read: {type(exc).__name__}")
    if document is None:
        return NO_FDL
    if not isinstance(document, dict):
        return Fdl(error="not a mapping")
    level = document.get("log_level")
    return Fdl(
        outputs=bool(document.get("output")),
        # The supervisor's test is `is True`: a YAML boolean, not the text "true".
        file_stage_in=document.get("file_stage_in") is True,
        log_level=level if isinstance(level, str) else "",
    )


def decode_variable(value: str) -> bytes:
    """Base64 as the supervisor reads SCRIPT and FUNCTION_CONFIG (leniently: this is
    the operator's configuration, not a caller's input)."""
    return base64.b64decode(value)


class ServiceDefinition:
    """The script and the FDL as the supervisor finds them: `SCRIPT` (base64) before
    `script.sh`; `function_config.yaml` before `FUNCTION_CONFIG` (base64). The FDL
    file is re-read when it changes (a stat a call; a ConfigMap update swaps it)."""

    def __init__(self, root: str, environ: Mapping[str, str], private_root: str,
                 *, own_script: bool) -> None:
        self._fdl_path = os.path.join(config_dir(root), FDL_FILE)
        self._seen: tuple[int, int, int] | None = None
        self._fdl = NO_FDL
        self._from_variable = NO_FDL
        encoded = environ.get(FDL_VARIABLE)
        if encoded:
            try:
                self._from_variable = parse_fdl(decode_variable(encoded))
            except (binascii.Error, ValueError) as exc:
                self._from_variable = Fdl(error=f"{FDL_VARIABLE} is not base64: {exc}")
        self._private: str | None = None
        # None: the configured fprocess. Only OSCAR's default script yields to SCRIPT.
        self.script: tuple[str, ...] | None = None
        self.script_error = ""
        script = environ.get(SCRIPT_VARIABLE)
        if own_script and script is not None:
            self._write_script(script, private_root)

    def _write_script(self, encoded: str, private_root: str) -> None:
        try:
            content = decode_variable(encoded)
        except (binascii.Error, ValueError) as exc:
            self.script_error = f"{SCRIPT_VARIABLE} is not base64: {exc}"
            log.error("cannot use the SCRIPT variable", extra={FIELDS: {
                "error": self.script_error}})
            return
        # Written once, in a folder of the gateway's own (the supervisor wrote it
        # into each call's input folder): read-only, so no call changes the next's.
        import tempfile  # OSCAR mode's only (config imports this module at every start)

        self._private = tempfile.mkdtemp(prefix="oscar-script-", dir=private_root)
        path = os.path.join(self._private, SCRIPT_FILE)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o400)
        try:
            write_all(fd, content)
        finally:
            os.close(fd)
        os.chmod(self._private, 0o500)
        self.script = (SHELL, path)

    def fdl(self) -> Fdl:
        try:
            st = os.stat(self._fdl_path)
        except OSError:
            self._seen = None
            return self._from_variable
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key != self._seen:
            try:
                with open(self._fdl_path, "rb") as f:
                    self._fdl = parse_fdl(f.read())
            except OSError as exc:
                self._fdl = Fdl(error=f"cannot read {self._fdl_path}: {exc.strerror}")
            if self._fdl.error:
                log.error("the service's FDL is unusable", extra={FIELDS: {
                    "path": self._fdl_path, "error": self._fdl.error}})
            self._seen = key
        return self._fdl

    def close(self) -> None:
        if self._private is not None:
            os.chmod(self._private, 0o700)
            for name in os.listdir(self._private):
                os.unlink(os.path.join(self._private, name))
            os.rmdir(self._private)
            self._private = None


def fdl_log_level(root: str, environ: Mapping[str, str]) -> str:
    """The FDL's `log_level` (empty when none), for the gateway's own log."""
    return ServiceDefinition(root, environ, "", own_script=False).fdl().log_level


def write_all(fd: int, data: bytes | bytearray) -> None:
    """All of `data` to a blocking descriptor (os.write may write less)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
