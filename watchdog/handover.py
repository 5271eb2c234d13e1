"""Handing a call to OSCAR's FaaS Supervisor, for what the gateway does not do
itself (storage and delegated events, uploads to the FDL's `output` providers).

The supervisor is forked through the same executor as a script: the same slot,
deadlines, output cap and group kill. It gets the body the caller sent, byte for
byte, on stdin, and the call's `Http_*` environment; its stdout is the answer
(its logs, on stderr, go to the gateway's log).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

from watchdog.oscar_pod import Fdl, write_all

CHUNK = 256 * 1024
WHITESPACE = b" \t\r\n"


def reason_for_every_call(fdl: Fdl) -> str:
    """Why every call of this service goes to the supervisor (empty: it does not)."""
    if fdl.outputs:
        return "the FDL has output providers"
    if fdl.error:
        return "the FDL is unusable here"
    return ""


class Sniffed:
    """Passes a body's chunks on, noting its first byte that is not whitespace (a
    JSON body starts with `{` or `[`; base64 never does)."""

    def __init__(self, body: AsyncIterator[bytes]) -> None:
        self._body = body
        self.first = b""

    async def chunks(self) -> AsyncIterator[bytes]:
        async for chunk in self._body:
            if not self.first:
                self.first = chunk.lstrip(WHITESPACE)[:1]
            yield chunk


async def spool(body: AsyncIterator[bytes], path: str, *, max_bytes: int) -> bool:
    """Write the body as it is to a new file; False when it passes `max_bytes`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        received = 0
        async for chunk in body:
            received += len(chunk)
            if max_bytes and received > max_bytes:
                return False
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
    finally:
        os.close(fd)
    return True


async def file_chunks(path: str) -> AsyncIterator[bytes]:
    """A file as a body, read off the event loop."""
    with open(path, "rb") as f:
        while True:
            data = await asyncio.to_thread(f.read, CHUNK)
            if not data:
                return
            yield data


def replace_input(path: str, content: bytes) -> None:
    """The input file's new content (an API-Gateway event's body). Blocking."""
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        write_all(fd, content)
    finally:
        os.close(fd)
