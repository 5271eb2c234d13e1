"""The function's environment, as the Go watchdog gives it: the one the gateway was
exec'd with (`exec_environment`), plus a request's facts as `Http_*` variables.

Pure but for `exec_environment`: it takes plain strings, not a request object, so
OSCAR mode and the tests use it as it is.
"""

from __future__ import annotations

import base64
import functools
import os
import re
from collections.abc import Iterable, Mapping

# An HTTP token (RFC 9110's tchar): every header name the Go watchdog serves (its
# server answers 400 to any other), and a legal environment name for execve: no
# '=', no NUL. Shells see only the [A-Za-z0-9_] ones; programs see them all.
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")
# Go moves these out of Request.Header (into Request.Host / TransferEncoding).
_PROMOTED = frozenset({"host", "transfer-encoding"})


def exec_environment() -> dict[str, str]:
    """The environment this process was exec'd with, which is the function's: read
    from /proc/self/environ, which no setenv changes. Python's own start changes
    os.environ: with LC_ALL unset and the C locale in effect (no LC_CTYPE/LANG, or
    C/POSIX, or a locale the image lacks), PEP 538 sets LC_CTYPE=C.UTF-8, which
    would change `wc -m`, `tr`, `sort` and regex classes in the function. A
    LC_CTYPE the pod set itself is in /proc/self/environ and stays, as it was.
    As os.environ: the first of two same names wins, an entry without '=' is not
    one. Without /proc (not Linux), os.environ as it is."""
    try:
        with open("/proc/self/environ", "rb") as f:
            block = f.read()
    except OSError:
        return dict(os.environ)
    environ: dict[str, str] = {}
    for entry in block.split(b"\0"):
        name, equals, value = entry.partition(b"=")
        if equals and name:
            environ.setdefault(os.fsdecode(name), os.fsdecode(value))
    return environ


@functools.lru_cache(maxsize=1024)
def variable_for(header: str) -> str | None:
    """`x-custom-header` -> `Http_X_Custom_Header`, `X.Dot.Name` -> `Http_X.dot.name`,
    as the Go watchdog names them; None for a name that is not an HTTP token (none
    reaches here from the HTTP layer; it is dropped, never injected)."""
    if header.lower() in _PROMOTED or not _TOKEN.fullmatch(header):
        return None
    return "Http_" + canonical_header(header).replace("-", "_")


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
    if transfer_encoding:  # the one Go accepts, `chunked`, as Go keeps it: lower case
        env["Http_Transfer_Encoding"] = transfer_encoding.lower()
    if host:  # as Go: no variable for an empty Host (an HTTP/1.0 request has none)
        env["Http_Host"] = host
    for key in ("Http_Query", "Http_Path", "Http_Host"):
        # A NUL cannot cross exec; drop rather than fail the request.
        if "\0" in env.get(key, ""):
            del env[key]
    return env


# What Go's json.Marshal writes as an escape where Python's json writes the character:
# the HTML-safe escapes, U+2028/U+2029 (line ends to JavaScript), and U+FFFD for a
# byte that is not UTF-8 (here a surrogate escape, one per byte, as Go's per byte).
_GO_ESCAPES = re.compile("[<>&\u2028\u2029\ud800-\udfff]")


def _go_escape(match: re.Match[str]) -> str:
    char = match.group()
    return "\\ufffd" if "\ud800" <= char <= "\udfff" else f"\\u{ord(char):04x}"


def marshal_request(headers: Iterable[tuple[str, str]], body: bytes) -> bytes:
    """The Go watchdog's marshal_request stdin, byte for byte as its json.Marshal
    writes it: `{"header":{Name:[values]},"body":{"raw":"<base64>"}}`, names sorted
    (a Go map), UTF-8 as it is, `<>&` and U+2028/U+2029 escaped."""
    grouped: dict[str, list[str]] = {}
    for name, value in headers:
        if name.lower() not in _PROMOTED:
            grouped.setdefault(canonical_header(name), []).append(value)
    document = {"header": dict(sorted(grouped.items())),
                "body": {"raw": base64.b64encode(body).decode("ascii")}}
    import json  # with marshal_request only: every start imports this module

    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False)
    return _GO_ESCAPES.sub(_go_escape, text).encode()
