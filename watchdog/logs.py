"""Structured log lines (logfmt) on stderr: `ts=… level=info msg=request status=200 …`."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from typing import Any, TextIO

FIELDS = "fields"  # the `extra=` key that carries a line's key=value pairs


def _quote(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    if text and text.isprintable() and " " not in text and '"' not in text and "=" not in text:
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    if not escaped.isprintable():
        # Control bytes from a request (ESC, BEL, NUL, a byte that was not UTF-8)
        # must not reach a terminal or a log shipper as they are.
        escaped = "".join(c if c.isprintable() else _escape(c) for c in escaped)
    return f'"{escaped}"'


def _escape(char: str) -> str:
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = [
            "ts=" + time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level=" + record.levelname.lower(),
            "msg=" + _quote(record.getMessage()),
        ]
        fields = getattr(record, FIELDS, None)
        if fields:
            parts.extend(f"{key}={_quote(value)}" for key, value in fields.items())
        if record.exc_info:
            parts.append("error=" + _quote(self.formatException(record.exc_info)))
        return " ".join(parts)


def configure(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger("watchdog")
    root.handlers[:] = [handler]
    # NOTSET means everything (as on the root logger, where OSCAR's supervisor sets
    # it); on this logger it would mean "ask the parent", whose level is WARNING.
    root.setLevel(logging.getLevelNamesMapping()[level] or 1)
    root.propagate = False


class AccessLog:
    """The line per request, without the logging module's machinery (a LogRecord,
    a formatter and a locked write cost about 80 µs a request, a fifth of the
    gateway's time per fork), written once per loop iteration however many
    requests ended in it.

    Rejected requests (429) come in bursts of thousands a second: at INFO they are
    summed up in one line a second; at DEBUG each has its own line. Their exact
    count is in the metrics either way."""

    SUMMARY_INTERVAL = 1.0

    def __init__(self, level: str, stream: TextIO | None = None) -> None:
        number = logging.getLevelNamesMapping()[level]
        self.enabled = number <= logging.INFO
        self._each_rejection = number <= logging.DEBUG
        self._stream = stream if stream is not None else sys.stderr
        self._pending: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._second = -1
        self._prefix = ""
        self._rejected = 0
        self._summary: asyncio.TimerHandle | None = None

    def request(self, method: str, path: str, status: int, duration: float, inflight: int,
                exit_status: str, call_id: str | None = None) -> None:
        if not self.enabled:
            return
        if status == 429 and not self._each_rejection:
            self._rejected += 1
            if self._summary is None:
                self._summary = self._get_loop().call_later(self.SUMMARY_INTERVAL, self._sum_up)
            return
        self._add(f"{self._timestamp()} level=info msg=request method={_quote(method)} "
                  f"path={_quote(path)} status={status} duration={duration:.6f} "
                  f"inflight={inflight} exit_status={exit_status}"
                  f"{'' if call_id is None else ' call_id=' + _quote(call_id)}\n")

    def flush(self) -> None:
        if self._summary is not None:
            self._summary.cancel()
            self._sum_up()
        self._write()

    def _sum_up(self) -> None:
        self._summary = None
        if self._rejected:
            count, self._rejected = self._rejected, 0
            self._add(f"{self._timestamp()} level=info msg=rejected count={count} "
                      f"status=429 reason=max_inflight\n")

    def _add(self, line: str) -> None:
        if not self._pending:
            self._get_loop().call_soon(self._write)
        self._pending.append(line)

    def _write(self) -> None:
        if self._pending:
            lines, self._pending = self._pending, []
            self._stream.write("".join(lines))
            self._stream.flush()

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def _timestamp(self) -> str:
        now = time.time()
        second = int(now)
        if second != self._second:  # strftime once a second, not once a line
            self._second = second
            self._prefix = "ts=" + time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((now - second) * 1000):03d}Z"
