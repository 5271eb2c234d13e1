"""A request's facts -> the `Http_*` variables the Go watchdog gives its function.

Pure: it takes plain strings, not an aiohttp request, so OSCAR mode and the
tests use it as it is.
"""

from __future__ import annotations

import base64
import functools
import json
import re
from collections.abc import Iterable, Mapping

_VALID_NAME = re.compile(r"[A-Za-z0-9_]+")
# Go moves these out of Request.Header (into Request.Host / TransferEncoding).
_PROMOTED = frozenset({"host", "transfer-encoding"})


@functools.lru_cache(maxsize=1024)
def variable_for(header: str) -> str | None:
    """`x-custom-header` -> `Http_X_Custom_Header`; None for a name that would not
    make a plain variable name (it is dropped, never injected)."""
    if header.lower() in _PROMOTED:
        return None
    name = canonical_header(header).replace("-", "_")
    if not _VALID_NAME.fullmatch(name):
        return None
    return "Http_" + name


def canonical_header(header: str) -> str:
    """Go's CanonicalMIMEHeaderKey: upper-case the first letter and each letter after
    a hyphen, lower-case the rest."""
    return "-".join(part[:1].upper() + part[1:].lower() for part in header.split("-"))


def function_environment(
    base: Mapping[str, str],
    *,
    method: str,
    path: str,
    raw_query: str,
    host: str,
    headers: Iterable[tuple[str, str]],
    content_length: int,
    transfer_encoding: str | None,
) -> dict[str, str]:
    """The environment for one request: `base` plus the Http_* variables, in the
    Go watchdog's order, so that its later entries win over a header of the same
    name (a client cannot forge `Http_Method` with a `Method:` header)."""
    env = dict(base)
    seen: set[str] = set()
    for name, value in headers:
        variable = variable_for(name)
        if variable is None or variable in seen or "\0" in value:
            continue
        seen.add(variable)  # first value only, as Go's v[0]
        env[variable] = value
    env["Http_Method"] = method
    env["Http_ContentLength"] = str(content_length)
    env["Http_Content_Length"] = str(content_length)
    if raw_query:
        env["Http_Query"] = raw_query
    if path:
        env["Http_Path"] = path
    if transfer_encoding:
        env["Http_Transfer_Encoding"] = transfer_encoding
    env["Http_Host"] = host
    for key in ("Http_Query", "Http_Path", "Http_Host"):
        # A NUL cannot cross exec; drop rather than fail the request.
        if "\0" in env.get(key, ""):
            del env[key]
    return env


def marshal_request(headers: Iterable[tuple[str, str]], body: bytes) -> bytes:
    """The Go watchdog's marshal_request stdin: `{"header": {Name: [values]},
    "body": {"raw": "<base64>"}}` (Go marshals []byte as base64)."""
    grouped: dict[str, list[str]] = {}
    for name, value in headers:
        if name.lower() not in _PROMOTED:
            grouped.setdefault(canonical_header(name), []).append(value)
    document = {"header": grouped, "body": {"raw": base64.b64encode(body).decode("ascii")}}
    return json.dumps(document, separators=(",", ":")).encode()
