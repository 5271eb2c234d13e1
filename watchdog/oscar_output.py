"""OSCAR output: a request's private workspace, and what the script left in it
brought back (one file base64-encoded, several as a zip), opened safely, framed
exactly, and removed without recursion. Knows nothing of HTTP."""

from __future__ import annotations

import asyncio
import base64
import errno
import logging
import os
import stat
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import AsyncIterator, Callable, Iterator
from typing import BinaryIO
from urllib.parse import quote

from watchdog.logs import FIELDS

log = logging.getLogger("watchdog")

# Base64 works in groups of 3 bytes -> 4 characters: read outputs in multiples of 3
# so that the encoded pieces join into one valid encoding.
ENCODE_CHUNK = 3 * 256 * 1024
OUTPUT_HEADER = "X-Watchdog-Output"  # log | file | zip: how to read the body


# --- the workspace ----------------------------------------------------------------------


class Workspace:
    """A request's private folders (0700): input/ and output/.

    Removed when the last of its holders lets go: the request once its answer is
    sent, and the script once its whole group is gone."""

    def __init__(self, root: str, removals: Removals | None = None,
                 on_removed: Callable[[], None] | None = None) -> None:
        self.path = tempfile.mkdtemp(prefix="oscar-", dir=root)
        self._removals = removals
        self._on_removed = on_removed
        self.input_dir = os.path.join(self.path, "input")
        self.output_dir = os.path.join(self.path, "output")
        os.mkdir(self.input_dir, 0o700)
        os.mkdir(self.output_dir, 0o700)
        # The supervisor's name for it, so that scripts that look at it still work.
        self.input_file = os.path.join(self.input_dir, f"event-file-{uuid.uuid4()}")
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
        """Let go; the last holder's release removes it (through `removals`, off the
        loop, when it was given), then calls `on_removed`."""
        self._holders -= 1
        if self._holders:
            return
        if self._removals is not None:
            self._removals.remove(self.path, self._on_removed)
            return
        remove_tree(self.path)
        if self._on_removed is not None:
            self._on_removed()


class Removals:
    """Workspaces being removed. A tree's removal takes time that grows with what
    the script left in it (20,000 files: 0.19 s here), which the event loop must not
    spend: past SMALL_TREE entries it goes to a thread of the loop's default executor.
    A small one (the usual: an input file, an output or two) is removed at once, so
    that `then` (the call's slot given back) has run before the next request is
    read: a client calling again as soon as it has its answer is not refused.
    `wait()` before the gateway ends, so that no workspace outlives it."""

    def __init__(self) -> None:
        self._pending: set[asyncio.Future[None]] = set()

    def remove(self, path: str, then: Callable[[], None] | None) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop any more (the gateway's end)
            loop = None
        if loop is None or _smaller_than(path, SMALL_TREE):
            remove_tree(path)
            _call(then)
            return
        future = loop.run_in_executor(None, remove_tree, path)
        self._pending.add(future)

        def removed(done: asyncio.Future[None]) -> None:
            self._pending.discard(done)
            _call(then)

        future.add_done_callback(removed)

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def wait(self) -> None:
        while self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)


# Entries a workspace may hold and still be removed on the loop (a bounded cost).
SMALL_TREE = 64


def _smaller_than(path: str, limit: int) -> bool:
    """Whether the tree holds fewer than `limit` entries; at most `limit` are looked
    at (a scandir reads a huge folder a batch at a time)."""
    seen = 0
    folders = [path]
    try:
        while folders:
            with os.scandir(folders.pop()) as entries:
                for entry in entries:
                    seen += 1
                    if seen >= limit:
                        return False
                    if entry.is_dir(follow_symlinks=False):
                        folders.append(entry.path)
    except OSError:
        return False  # unreadable here (a mode the script set): remove_tree copes, off the loop
    return True


def _call(then: Callable[[], None] | None) -> None:
    """`then`, its failure logged: it is bookkeeping (a slot given back) that must
    not be lost in a done-callback."""
    if then is None:
        return
    try:
        then()
    except Exception:
        log.exception("after a workspace's removal")


# Removing a tree holds a descriptor (two, with its listing) per level down to
# here; a folder deeper is moved up to the top of the tree and removed from there.
HELD_LEVELS = 64


def remove_tree(path: str) -> None:
    """Remove a folder and all under it, however deep and whatever the script made
    read-only. Never raises: it is called where bookkeeping follows (a request's
    cleanup, a process group's end), and what it cannot remove is logged."""
    try:
        _remove_tree(path)
    except Exception as exc:  # see above: logged, never raised
        log.warning("cannot remove a workspace",
                    extra={FIELDS: {"path": path, "error": str(exc)}})


def _remove_tree(path: str) -> None:
    parent_fd = os.open(os.path.dirname(path) or ".", _DIRECTORY)
    try:
        name = os.path.basename(path)
        try:
            root_fd = _open_dir(name, parent_fd)
        except FileNotFoundError:
            return
        try:
            moved = _empty(root_fd)
            # What was moved up is at the top now: empty again (each pass takes
            # HELD_LEVELS more levels), until a pass moves nothing.
            while moved:
                moved = _empty(root_fd)
        finally:
            os.close(root_fd)
        os.rmdir(name, dir_fd=parent_fd)
    finally:
        os.close(parent_fd)


_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def _open_dir(name: str, dir_fd: int) -> int:
    """A folder to remove the contents of: opened without following a link, and
    made readable and writable for its owner if the script took that away."""
    try:
        fd = os.open(name, _DIRECTORY, dir_fd=dir_fd)
    except PermissionError:
        os.chmod(name, 0o700, dir_fd=dir_fd)  # a directory: listed as one, not a link
        fd = os.open(name, _DIRECTORY, dir_fd=dir_fd)
    if os.fstat(fd).st_mode & 0o700 != 0o700:
        os.fchmod(fd, 0o700)
    return fd


def _empty(root_fd: int) -> int:
    """Remove what is inside the folder, depth first with a stack of its own (no
    recursion: a tree 100,000 levels deep is as good as a flat one). Returns how
    many folders it moved up to the top instead of going deeper."""
    moved = 0
    failures = 0
    stack: list[tuple[int, Iterator[os.DirEntry[str]], str]] = []
    fd = os.dup(root_fd)
    stack.append((fd, os.scandir(fd), ""))
    while stack:
        fd, entries, name = stack[-1]
        try:
            entry = next(entries, None)
            if entry is None:
                stack.pop()
                entries.close()  # type: ignore[attr-defined]
                os.close(fd)
                if stack:
                    os.rmdir(name, dir_fd=stack[-1][0])
            elif not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.name, dir_fd=fd)
            elif len(stack) >= HELD_LEVELS:
                os.rename(entry.name, f".deep-{uuid.uuid4().hex}", src_dir_fd=fd,
                          dst_dir_fd=root_fd)
                moved += 1
            else:
                child = _open_dir(entry.name, fd)
                stack.append((child, os.scandir(child), entry.name))
        except OSError as exc:
            failures += 1
            if failures == 1:  # once per pass: a tree of errors is not a log flood
                log.warning("cannot remove a workspace file",
                            extra={FIELDS: {"error": str(exc)}})
            if failures > 10_000:  # nothing removable left here: give up
                for fd, entries, _ in reversed(stack):
                    entries.close()  # type: ignore[attr-defined]
                    os.close(fd)
                return 0
    return moved


# --- output ------------------------------------------------------------------------------


def output_files(folder: str) -> list[tuple[str, str]]:
    """Regular files under `folder`, recursively, as (name relative to it, path to
    read), sorted by name. A symlink counts only when it points at a regular file
    inside the folder; FIFOs, devices and sockets are never opened. Walked with a
    stack of its own, not recursion: trees of any depth (a path past the system's
    limit, 4,096 bytes, is left out with a warning). Names that are not UTF-8
    keep their bytes as surrogate escapes (os.fsdecode)."""
    root = os.path.realpath(folder)
    found = []
    folders = [folder]
    while folders:
        dirpath = folders.pop()
        try:
            with os.scandir(dirpath) as entries:
                listed = list(entries)
        except OSError as exc:
            log.warning("output folder skipped", extra={FIELDS: {"error": str(exc)}})
            continue
        for entry in listed:
            path = entry.path
            name = os.path.relpath(path, folder)
            try:
                if entry.is_symlink():
                    target = os.path.realpath(path)
                    if not target.startswith(root + os.sep) or not stat.S_ISREG(
                            os.stat(target).st_mode):
                        log.warning("output symlink ignored: it leaves TMP_OUTPUT_DIR or "
                                    "is not a file", extra={FIELDS: {"name": shown_name(name)}})
                        continue
                    path = target
                elif entry.is_dir(follow_symlinks=False):
                    folders.append(path)
                    continue
                elif not entry.is_file(follow_symlinks=False):
                    continue
            except OSError:
                continue
            found.append((name.replace(os.sep, "/"), path))
    return sorted(found)


class OutputRefused(OSError):
    """An output file that is no longer what the walk saw, or may not be sent."""


_OUTPUT = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def open_output(path: str, folder: str) -> tuple[int, int]:
    """Open an output file for reading: (descriptor, size now). Never blocks (a
    file swapped for a FIFO after the walk opens at once and is refused), never
    follows a link in its last part, and what is opened is checked on the
    descriptor: a regular file, one link only (a hard link can name a file from
    anywhere on the file system), and still inside `folder` (a folder on the way
    swapped for a link is caught here)."""
    fd = os.open(path, _OUTPUT)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OutputRefused(errno.EINVAL, "not a regular file", path)
        if info.st_nlink != 1:
            raise OutputRefused(errno.EMLINK, "a file with more than one hard link", path)
        try:
            where = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:  # no /proc: the path as it resolves now
            where = os.path.realpath(path)
        if not where.startswith(os.path.realpath(folder) + os.sep):
            raise OutputRefused(errno.EXDEV, "no longer inside TMP_OUTPUT_DIR", path)
        os.set_blocking(fd, True)
        return fd, info.st_size
    except BaseException:
        os.close(fd)
        raise


class Stopped(Exception):
    """Packing was given up (write_timeout, or the client left)."""


def write_zip(files: list[tuple[str, str]], destination: str | int,
              folder: str | None = None, stop: threading.Event | None = None) -> int:
    """Zip the files (opened as `open_output` does; refused ones are left out
    with a warning) into `destination`, a path or a descriptor; returns how many
    went in. Each file is
    read up to the size it had when opened, so one that grows cannot grow the
    zip for ever; `stop` is checked between pieces."""
    target: str | BinaryIO = (destination if isinstance(destination, str)
                              else os.fdopen(destination, "w+b", closefd=False))
    written = 0
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, path in files:
            try:
                fd, size = open_output(path, folder or os.path.dirname(path))
            except OSError as exc:
                log.warning("output file left out of the zip",
                            extra={FIELDS: {"name": shown_name(name), "error": exc.strerror}})
                continue
            with os.fdopen(fd, "rb") as source:
                info = _zip_info(name, os.fstat(fd), size)
                with archive.open(info, "w") as entry:
                    left = size
                    while left > 0:
                        if stop is not None and stop.is_set():
                            raise Stopped
                        data = source.read(min(left, ENCODE_CHUNK))
                        if not data:
                            break  # it shrank: the zip says what it held
                        entry.write(data)
                        left -= len(data)
            written += 1
    return written


class _RawNameInfo(zipfile.ZipInfo):
    """An entry named by raw bytes that are not UTF-8 (an output file's name as
    the script wrote it): stored as they are, without the UTF-8 flag."""

    raw_name = b""

    def _encodeFilenameFlags(self) -> tuple[bytes, int]:  # zipfile's hook, zipfile's name
        return self.raw_name, self.flag_bits & ~0x800


def _zip_info(name: str, info: os.stat_result, size: int) -> zipfile.ZipInfo:
    raw = os.fsencode(name)
    try:
        raw.decode("utf-8")
        entry = zipfile.ZipInfo(name)
    except UnicodeDecodeError:
        entry = _RawNameInfo(raw.decode("cp437"))  # what readers show without the flag
        entry.raw_name = raw
    entry.date_time = time.localtime(max(info.st_mtime, 315532800))[:6]  # zip: >= 1980
    entry.external_attr = (info.st_mode & 0xFFFF) << 16
    entry.compress_type = zipfile.ZIP_DEFLATED
    entry.file_size = size  # decides zip64 before the data
    return entry


def shown_name(name: str) -> str:
    """A name for the log: bytes that are not UTF-8 as \\xNN."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def header_name(name: str) -> str:
    """A file name for the X-Watchdog-Output header: its bytes percent-encoded,
    so the header stays ASCII and the name is kept exactly."""
    return quote(os.fsencode(name))


def make_unnamed_file(folder: str) -> int:
    """A new file with no name (the zip): nothing a script plants can be written
    through, nor can it swap the file while the answer is sent. O_TMPFILE where
    the file system has it; else a random name made with O_EXCL|O_NOFOLLOW and
    removed at once."""
    try:
        return os.open(folder, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except (OSError, AttributeError):
        pass
    name = os.path.join(folder, f".oscar-zip-{uuid.uuid4().hex}")
    fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    os.unlink(name)
    return fd


def base64_length(size: int) -> int:
    return 4 * ((size + 2) // 3)


class OutputChanged(Exception):
    """The output shrank while its answer was sent: the answer cannot have the
    length it declared, so the connection is cut (never a short answer on a
    connection a pooling proxy would reuse)."""


async def encode_exactly(fd: int, size: int, deadline: float | None = None,
                         ) -> AsyncIterator[bytes]:
    """The base64 of the first `size` bytes at `fd`, a piece at a time, read off
    the event loop: exactly `base64_length(size)` bytes whatever the file does
    meanwhile (more is not read; less raises OutputChanged). Past `deadline`
    (the loop's clock) it raises TimeoutError, which cuts the connection too."""
    loop = asyncio.get_running_loop()
    offset = 0
    while offset < size:
        if deadline is not None and loop.time() > deadline:
            log.warning("answer cut at write_timeout", extra={FIELDS: {"sent": offset}})
            raise TimeoutError
        data = await asyncio.to_thread(os.pread, fd, min(ENCODE_CHUNK, size - offset),
                                       offset)
        if not data:
            log.warning("output file shrank while sent: connection cut",
                        extra={FIELDS: {"size": size, "sent": offset}})
            raise OutputChanged(f"output shrank to {offset} of {size} bytes")
        offset += len(data)
        yield base64.b64encode(data)


async def base64_chunks(path: str) -> AsyncIterator[bytes]:
    """The file's base64 encoding, a piece at a time (reads off the event loop)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        async for piece in encode_exactly(fd, os.fstat(fd).st_size):
            yield piece
    finally:
        os.close(fd)
