"""OSCAR's synchronous invocation, in the gateway instead of a FaaS Supervisor.

The body becomes the script's input file (a JSON document verbatim, anything
else strictly base64-decoded as it streams in); the script runs in a private
workspace; what it leaves in $TMP_OUTPUT_DIR comes back base64-encoded (one file
as it is, several as a zip), or its own output when it leaves nothing.

Knows nothing of HTTP; runs the script through the core's Executor, so the
limit, timeouts, process groups and metrics are the ones of classic mode.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import errno
import hmac
import json
import logging
import os
import shutil
import stat
import tempfile
import uuid
import zipfile
from collections.abc import AsyncIterator, Mapping
from urllib.parse import quote

from watchdog.config import Config
from watchdog.executor import Body, Executor, Result, as_chunks
from watchdog.logs import FIELDS

log = logging.getLogger("watchdog")

# A JSON body is parsed before it is written, so it is held: this bounds it
# unless max_body_bytes is set.
JSON_BODY_CAP = 64 * 2**20
# Base64 works in groups of 3 bytes -> 4 characters: read outputs in multiples of 3
# so that the encoded pieces join into one valid encoding.
ENCODE_CHUNK = 3 * 256 * 1024
OUTPUT_HEADER = "X-Watchdog-Output"  # log | file | zip: how to read the body
TOKEN_VARIABLES = ("OSCAR_SERVICE_TOKEN",)  # never handed to the script


class InputError(Exception):
    """The body cannot become an input file; `status` and `reason` say why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# --- authorisation ---------------------------------------------------------------------


def bearer_matches(authorization: str | None, token: str) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time."""
    if not authorization:
        return False
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.strip().encode(), token.encode())


# --- input -------------------------------------------------------------------------------


class Base64Decoder:
    """Strict, streaming base64: line breaks are allowed anywhere (the `base64`
    tool wraps at 76), padding only at the very end and optional there; any
    other character is an error, never silently dropped."""

    def __init__(self) -> None:
        self._pending = b""
        self._ended = False  # a padded group was decoded: nothing may follow

    def feed(self, data: bytes) -> bytes:
        data = data.translate(None, b"\r\n")
        if not data:
            return b""
        if self._ended:
            raise InputError(400, "Body is not valid base64: data after the padding.")
        data = self._pending + data
        usable = len(data) - len(data) % 4
        self._pending = data[usable:]
        return self._decode(data[:usable])

    def finish(self) -> bytes:
        pending, self._pending = self._pending, b""
        if not pending:
            return b""
        if len(pending) == 1 or self._ended:
            raise InputError(400, "Body is not valid base64: it ends in the middle of a "
                                  "4-character group.")
        return self._decode(pending + b"=" * (4 - len(pending)))

    def _decode(self, groups: bytes) -> bytes:
        if not groups:
            return b""
        padding = groups.find(b"=")
        if padding >= 0:
            if padding < len(groups) - 4:
                raise InputError(400, "Body is not valid base64: padding in the middle.")
            self._ended = True
        try:
            decoded = binascii.a2b_base64(groups, strict_mode=True)
        except binascii.Error as exc:
            raise InputError(400, f"Body is not valid base64 ({exc}); send a JSON object "
                                  "or base64 (spaces are not allowed).") from None
        return decoded


async def write_input(body: AsyncIterator[bytes], path: str, *, max_bytes: int) -> None:
    """Write the body to a new file at `path`: a JSON object or array byte for byte,
    anything else base64-decoded as it arrives. Raises InputError (400 bad input,
    413 too large)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        received = 0
        held = bytearray()  # leading whitespace, then the whole body if JSON
        is_json = False
        decoder: Base64Decoder | None = None
        json_cap = max_bytes or JSON_BODY_CAP
        async for chunk in body:
            received += len(chunk)
            if max_bytes and received > max_bytes:
                raise InputError(413, f"Request body larger than max_body_bytes ({max_bytes}).")
            if decoder is not None:
                _write_all(fd, decoder.feed(chunk))
                continue
            held += chunk
            if not is_json:
                start = bytes(held.lstrip()[:1])
                if not start:
                    continue  # only whitespace so far: undecided
                # `{` and `[` are not in base64's alphabet: no ambiguity.
                is_json = start in b"{["
                if not is_json:
                    decoder = Base64Decoder()
                    _write_all(fd, decoder.feed(bytes(held)))
                    held.clear()
                    continue
            if len(held) > json_cap:
                raise InputError(413, f"JSON body larger than {json_cap} bytes; send large "
                                      "inputs base64-encoded.")
        if decoder is not None:
            _write_all(fd, decoder.finish())
        elif held.strip():
            _check_json(held)
            _write_all(fd, held)
    finally:
        os.close(fd)


def _check_json(document: bytes | bytearray) -> None:
    try:
        value = json.loads(document)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InputError(400, f"Body looks like JSON but is not valid JSON ({exc}).") from None
    if not isinstance(value, dict | list):
        raise InputError(400, "Body must be a JSON object or array, or base64.")


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# --- the workspace ----------------------------------------------------------------------


class Workspace:
    """A request's private folders (0700): input/, output/, and room for a zip.

    Removed when the last of its holders lets go: the request once its answer is
    sent, and the script once its whole group is gone."""

    def __init__(self, root: str) -> None:
        self.path = tempfile.mkdtemp(prefix="oscar-", dir=root)
        self.input_dir = os.path.join(self.path, "input")
        self.output_dir = os.path.join(self.path, "output")
        os.mkdir(self.input_dir, 0o700)
        os.mkdir(self.output_dir, 0o700)
        # The supervisor's name for it, so that scripts that look at it still work.
        self.input_file = os.path.join(self.input_dir, f"event-file-{uuid.uuid4()}")
        self.zip_file = os.path.join(self.path, "output.zip")
        self._holders = 1

    def environment(self) -> dict[str, str]:
        return {
            "INPUT_FILE_PATH": self.input_file,
            "TMP_INPUT_DIR": self.input_dir,
            "TMP_OUTPUT_DIR": self.output_dir,
        }

    def hold(self) -> None:
        self._holders += 1

    def release(self) -> None:
        self._holders -= 1
        if self._holders == 0:
            remove_tree(self.path)


def remove_tree(path: str) -> None:
    """rmtree that also gets through folders a script made read-only."""

    def make_writable(function: object, failed: str, info: object) -> None:
        try:
            os.chmod(os.path.dirname(failed), 0o700)
            if os.path.isdir(failed) and not os.path.islink(failed):
                os.chmod(failed, 0o700)
                shutil.rmtree(failed, ignore_errors=True)
            else:
                os.unlink(failed)
        except OSError:
            log.warning("cannot remove a workspace file", extra={FIELDS: {"path": failed}})

    shutil.rmtree(path, onerror=make_writable)  # onexc from 3.12; onerror still works


# --- output ------------------------------------------------------------------------------


def output_files(folder: str) -> list[tuple[str, str]]:
    """Regular files under `folder`, recursively, as (name relative to it, path to
    read), sorted by name. A symlink counts only when it points at a regular file
    inside the folder; FIFOs, devices and sockets are never opened."""
    root = os.path.realpath(folder)
    found = []
    for dirpath, _, filenames in os.walk(folder, followlinks=False):
        for filename in filenames:
            path = os.path.join(dirpath, filename)
            name = os.path.relpath(path, folder)
            try:
                mode = os.lstat(path).st_mode
                if stat.S_ISLNK(mode):
                    target = os.path.realpath(path)
                    if not target.startswith(root + os.sep) or not stat.S_ISREG(
                            os.stat(target).st_mode):
                        log.warning("output symlink ignored: it leaves TMP_OUTPUT_DIR or "
                                    "is not a file", extra={FIELDS: {"name": name}})
                        continue
                    path = target
                elif not stat.S_ISREG(mode):
                    continue
            except OSError:
                continue
            found.append((name.replace(os.sep, "/"), path))
    return sorted(found)


def write_zip(files: list[tuple[str, str]], destination: str) -> None:
    with zipfile.ZipFile(destination, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, path in files:
            archive.write(path, arcname=name)


def base64_length(size: int) -> int:
    return 4 * ((size + 2) // 3)


async def base64_chunks(path: str) -> AsyncIterator[bytes]:
    """The file's base64 encoding, a piece at a time (reads off the event loop)."""
    with open(path, "rb") as f:
        while True:
            data = await asyncio.to_thread(f.read, ENCODE_CHUNK)
            if not data:
                return
            yield base64.b64encode(data)


# --- one invocation ----------------------------------------------------------------------


class OscarInvoker:
    def __init__(self, config: Config, executor: Executor, workspace_root: str) -> None:
        self._config = config
        self._executor = executor
        self._root = workspace_root

    async def invoke(self, env: Mapping[str, str], body: Body, started: float) -> Result:
        executor = self._executor
        rejected = executor.admit()
        if rejected is not None:
            return rejected
        try:
            workspace = Workspace(self._root)
        except OSError as exc:
            executor.withdraw()
            return _storage_error(exc)
        started_script = False
        try:
            result = await self._receive(body, workspace, started)
            if result is None:
                workspace.hold()  # the script's share, let go when its group is gone
                started_script = True
                result = await executor.run({**env, **workspace.environment()}, None,
                                            started, on_gone=workspace.release)
                if result.exit is not None and result.exit.ok:
                    result = await self._pack(workspace, result)
        except BaseException:
            workspace.release()
            raise
        finally:
            if not started_script:
                executor.withdraw()
        result.cleanup = workspace.release  # the request's share: once the answer is sent
        return result

    async def _receive(self, body: Body, workspace: Workspace,
                       started: float) -> Result | None:
        config = self._config
        deadline = started + config.read_timeout if config.read_timeout else None
        try:
            async with asyncio.timeout_at(deadline):
                await write_input(as_chunks(body), workspace.input_file,
                                  max_bytes=config.max_body_bytes)
        except TimeoutError:
            return Result.text(408, "Request body not received within read_timeout.")
        except InputError as exc:
            return Result.text(exc.status, exc.reason)
        except OSError as exc:
            return _storage_error(exc)
        return None

    async def _pack(self, workspace: Workspace, result: Result) -> Result:
        try:
            files = await asyncio.to_thread(output_files, workspace.output_dir)
            if not files:
                result.headers[OUTPUT_HEADER] = "log"
                return result
            if len(files) == 1:
                name, path = files[0]
                kind = f"file; name={quote(name)}"
            else:
                path = workspace.zip_file
                await asyncio.to_thread(write_zip, files, path)
                kind = f"zip; files={len(files)}"
            size = os.stat(path).st_size
        except OSError as exc:
            return _storage_error(exc)
        return Result(
            200, [],
            {"Content-Type": "text/plain; charset=us-ascii", OUTPUT_HEADER: kind},
            exit=result.exit,
            stream=lambda: base64_chunks(path),
            content_length=base64_length(size),
        )


def _storage_error(exc: OSError) -> Result:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return Result.text(507, f"No space left for the request's files: {exc.strerror}.")
    log.error("workspace failure", extra={FIELDS: {"error": str(exc)}})
    return Result.text(500, f"Cannot prepare the request's files: {exc.strerror}.")


def script_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """The pod's environment as the script sees it: without the service token."""
    return {k: v for k, v in environ.items() if k not in TOKEN_VARIABLES}
