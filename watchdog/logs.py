"""Structured log lines (logfmt) on stderr: `ts=… level=info msg=request status=200 …`."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

FIELDS = "fields"  # the `extra=` key that carries a line's key=value pairs


def _quote(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    if text and all(c.isprintable() and c not in ' "=' for c in text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    escaped = escaped.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{escaped}"'


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
    root.setLevel(level)
    root.propagate = False
    # aiohttp's own complaints (bad requests, handler errors) in the same format.
    server = logging.getLogger("aiohttp.server")
    server.handlers[:] = [handler]
    server.setLevel(max(logging.getLevelName(level), logging.WARNING))
    server.propagate = False
