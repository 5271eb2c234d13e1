"""Request facts -> Http_* variables, as the Go watchdog's getAdditionalEnvs."""

from __future__ import annotations

import json
import os
import re
from base64 import b64decode

from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import StartGateway
from tests.test_gateway import fetch
from watchdog.cgi import exec_environment, function_environment, marshal_request, variable_for


def env_for(headers: list[tuple[str, str]], **overrides: object) -> dict[str, str]:
    facts: dict[str, object] = {
        "method": "POST", "path": "/p", "raw_query": "", "host": "h:1",
        "headers": headers, "content_length": 3, "transfer_encoding": None,
    }
    facts.update(overrides)
    return function_environment({"BASE": "1"}, **facts)  # type: ignore[arg-type]


def test_header_names_are_canonicalised() -> None:
    assert variable_for("x-custom-header") == "Http_X_Custom_Header"
    assert variable_for("CONTENT-TYPE") == "Http_Content_Type"
    assert variable_for("x_under") == "Http_X_under"  # Go upper-cases only after '-'
    # Any token is a name Go serves and passes on, '-' -> '_' only (execve takes it).
    assert variable_for("X.Dot.Name") == "Http_X.dot.name"
    assert variable_for("x.y-z_w.V") == "Http_X.y_Z_w.v"
    assert variable_for("weird!#$%&'*+.^_`|~") == "Http_Weird!#$%&'*+.^_`|~"
    assert variable_for("a=b") is None  # not a token: never reaches here, never injected
    assert variable_for("a b") is None
    assert variable_for("x-\xe9") is None
    assert variable_for("Host") is None
    assert variable_for("Transfer-Encoding") is None


def test_first_value_wins_and_explicit_variables_cannot_be_forged() -> None:
    env = env_for([("X-A", "1"), ("x-a", "2"), ("Method", "GET"), ("Path", "/evil"),
                   ("Content-Length", "999")])
    assert env["Http_X_A"] == "1"
    assert env["Http_Method"] == "POST"
    assert env["Http_Path"] == "/p"
    assert env["Http_Content_Length"] == env["Http_ContentLength"] == "3"
    assert env["BASE"] == "1"
    assert "Http_Query" not in env


def test_query_and_transfer_encoding_only_when_present() -> None:
    env = env_for([], raw_query="a=1&b=%20", transfer_encoding="chunked", content_length=-1)
    assert env["Http_Query"] == "a=1&b=%20"
    assert env["Http_Transfer_Encoding"] == "chunked"
    assert env["Http_ContentLength"] == "-1"


@given(st.lists(st.tuples(st.text(min_size=1, max_size=12), st.text(max_size=12)),
                max_size=8))
def test_no_injection_through_header_names_or_values(headers: list[tuple[str, str]]) -> None:
    env = env_for(headers)
    for key, value in env.items():
        assert "=" not in key
        assert "\0" not in key
        assert "\n" not in key
        assert "\0" not in value
        if key.startswith("Http_"):
            assert re.fullmatch(r"Http_[A-Za-z0-9!#$%&'*+.^_`|~]+", key)


def test_marshal_request_matches_go_json() -> None:
    raw = marshal_request([("x-a", "1"), ("X-A", "2"), ("Host", "h")], b"\x00body")
    document = json.loads(raw)
    assert document == {"header": {"X-A": ["1", "2"]},
                        "body": {"raw": "AGJvZHk="}}
    assert b64decode(document["body"]["raw"]) == b"\x00body"


def test_marshal_request_is_gos_bytes() -> None:
    # As Go's json.Marshal writes it (measured against the Go watchdog): names
    # sorted, UTF-8 as it is, HTML-safe and line-separator escapes, and each byte
    # that is not UTF-8 (a surrogate escape here) as an escaped U+FFFD.
    value = "\u2028 \u2029 \u00e9 " + b"\xff \xe2\x82 x\tq\\\"".decode("utf-8", "surrogateescape")
    raw = marshal_request([("Z-Last", "<a&b>"), ("A-First", value), ("x-multi", "1"),
                           ("X-Multi", "2")], b"a<b")
    assert raw == (b'{"header":{"A-First":["\\u2028 \\u2029 \xc3\xa9 \\ufffd \\ufffd\\ufffd '
                   b'x\\tq\\\\\\""],"X-Multi":["1","2"],"Z-Last":["\\u003ca\\u0026b\\u003e"]},'
                   b'"body":{"raw":"YTxi"}}')
    assert json.loads(raw)["header"]["Z-Last"] == ["<a&b>"]  # still the same JSON


def test_the_base_environment_is_the_exec_one() -> None:
    # This process's own: /proc/self/environ, as execve gave it, whatever Python's
    # start did to os.environ (PEP 538's LC_CTYPE).
    with open("/proc/self/environ", "rb") as f:
        entries = [e for e in f.read().split(b"\0") if b"=" in e]
    first: dict[bytes, bytes] = {}
    for entry in entries:
        name, _, value = entry.partition(b"=")
        first.setdefault(name, value)
    assert {os.fsencode(k): os.fsencode(v) for k, v in exec_environment().items()} == {
        k: v for k, v in first.items() if k}


async def test_a_query_header_gives_http_query_only_without_a_url_query(
        gateway: StartGateway) -> None:
    # The Go watchdog's behaviour, kept for drop-in (README: what the function sees):
    # Http_Query is set only when the URL has a query, so a header fills the gap.
    assert env_for([("Query", "h=1")])["Http_Query"] == "h=1"
    assert env_for([("Query", "h=1")], raw_query="u=2")["Http_Query"] == "u=2"
    gw = gateway(["/bin/sh", "-c", 'printf "%s|%s|%s" "$Http_Query" "$Http_Path" "$Http_Method"'])
    forged = {"Query": "h=1", "Path": "/evil", "Method": "DELETE"}
    assert (await fetch("POST", gw.url + "/p", b"", forged))[2] == b"h=1|/p|POST"
    assert (await fetch("POST", gw.url + "/p?u=2", b"", forged))[2] == b"u=2|/p|POST"
