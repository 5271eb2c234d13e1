"""Static mode (of-watchdog's `mode=static`): the files under `static_path`, served
with the gateway's limit, health and metrics, the way Go's http.FileServer serves
them: `index.html` for a folder, else the folder's listing; a folder's path without
its `/` and `.../index.html` redirected; Content-Type from the extension, else
sniffed; Last-Modified and If-Modified-Since; one byte range. GET and HEAD only (Go
serves any method the same). Knows nothing of HTTP: a request comes in as its
method, decoded path and the headers it reads.
"""

from __future__ import annotations

import html
import os
import posixpath
import stat
from collections.abc import AsyncIterator, Callable
from email.utils import formatdate, parsedate_to_datetime
from urllib.parse import quote

from watchdog import sniff
from watchdog.executor import Result
from watchdog.process import READ_SIZE

INDEX = "index.html"
# A folder listing's entries at most: a folder of millions must not hold the loop.
LISTING_CAP = 10_000


class StaticFiles:
    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)
        import mimetypes  # static mode only: its tables cost a few milliseconds

        self._types = mimetypes.MimeTypes()

    def serve(self, method: str, path: str, header: Callable[[str], str | None]) -> Result:
        """The answer to `method path`; a file's Result streams it from its descriptor
        (closed by the cleanup, once sent)."""
        if method not in ("GET", "HEAD"):
            return Result.text(405, "Static mode serves GET and HEAD.", Allow="GET, HEAD")
        if "\0" in path:
            return Result.text(400, "Bad path.")
        if path.endswith("/" + INDEX):
            return _redirect("./")
        clean = posixpath.normpath("/" + path)  # no `..` above the root, as Go's path.Clean
        name = os.path.join(self.root, clean.lstrip("/"))
        try:
            fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except FileNotFoundError:
            return _not_found()
        except NotADirectoryError:
            return _not_found()
        except PermissionError:
            return Result.text(403, "403 Forbidden")
        except OSError as exc:
            return Result.text(500, f"Cannot open the file: {exc.strerror}")
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            os.close(fd)
            if not path.endswith("/"):
                return _redirect(posixpath.basename(clean) + "/")
            index = os.path.join(name, INDEX)
            try:
                fd = os.open(index, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError:
                return self._listing(name)
            info = os.fstat(fd)
            name = index
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            return _not_found()
        return self._file(fd, name, info, header)

    def _file(self, fd: int, name: str, info: os.stat_result,
              header: Callable[[str], str | None]) -> Result:
        modified = int(info.st_mtime)
        headers = {"Last-Modified": formatdate(modified, usegmt=True),
                   "Accept-Ranges": "bytes"}
        since = header("if-modified-since")
        if since and _not_after(modified, since):
            os.close(fd)
            return Result(304, [], headers)
        size = info.st_size
        guessed, _ = self._types.guess_type(name, strict=False)
        if guessed is not None and guessed.startswith("text/"):
            guessed += "; charset=utf-8"  # as Go's mime package types text
        headers["Content-Type"] = guessed or sniff.content_type(os.pread(fd, 512, 0)) \
            or "application/octet-stream"
        status, start, end = 200, 0, size
        wanted = header("range")
        if wanted:
            span = _range(wanted, size)
            if span is None:
                os.close(fd)
                return Result(416, [], {"Content-Range": f"bytes */{size}"})
            if span != (0, size):
                status, (start, end) = 206, span
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        return Result(status, [], headers, stream=lambda: _read(fd, start, end),
                      content_length=end - start, cleanup=lambda: os.close(fd))

    def _listing(self, folder: str) -> Result:
        try:
            with os.scandir(folder) as entries:
                names = []
                for entry in entries:
                    names.append(entry.name + ("/" if entry.is_dir() else ""))
                    if len(names) >= LISTING_CAP:
                        break
        except PermissionError:
            return Result.text(403, "403 Forbidden")
        except OSError as exc:
            return Result.text(500, f"Cannot read the folder: {exc.strerror}")
        lines = "".join(f'<a href="{quote(n)}">{html.escape(n)}</a>\n' for n in sorted(names))
        page = ('<!doctype html>\n<meta name="viewport" content="width=device-width">\n'
                f"<pre>\n{lines}</pre>\n")
        return Result(200, [page.encode()], {"Content-Type": "text/html; charset=utf-8"})


async def _read(fd: int, start: int, end: int) -> AsyncIterator[bytes]:
    offset = start
    while offset < end:
        piece = os.pread(fd, min(READ_SIZE, end - offset), offset)
        if not piece:
            return  # shortened meanwhile: the client sees the body cut off
        offset += len(piece)
        yield piece


def _range(text: str, size: int) -> tuple[int, int] | None:
    """One `bytes=` range as (start, end), end excluded; the whole file for a form
    this does not serve (several ranges); None when none of it can be served."""
    unit, _, spec = text.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return (0, size)
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first.isdigit() or last.isdigit()):
        return (0, size)
    if not first:  # the last N bytes
        count = int(last)
        return (max(0, size - count), size) if count and size else None
    start = int(first)
    if start >= size:
        return None
    end = min(size, int(last) + 1) if last.isdigit() else size
    return (start, end) if end > start else None


def _not_after(modified: int, since: str) -> bool:
    try:
        return modified <= int(parsedate_to_datetime(since).timestamp())
    except (TypeError, ValueError, OverflowError):
        return False


def _redirect(location: str) -> Result:
    return Result(301, [], {"Location": location})


def _not_found() -> Result:
    return Result.text(404, "404 page not found")
