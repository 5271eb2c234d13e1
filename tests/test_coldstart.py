"""Cold start: the serving gateway never loads aiohttp (only `fwatchdog run`, the
client, uses it), and the metrics port, now on watchdog.http, answers as before."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from tests.conftest import Gateway, StartGateway, free_port
from tests.test_gateway import fetch, metrics
from tests.test_workers import _second_listening, worker_pids

# What the Go watchdog's metrics port answers with (client_golang's text format).
GO_METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8; escaping=underscores"
# aiohttp and the packages only aiohttp brings in: each ships compiled extensions,
# which the dynamic loader maps into a process that imports it.
AIOHTTP_PACKAGES = ("aiohttp", "yarl", "multidict")
# The compiled halves of standard modules the serving path once loaded at every start
# and does not use (issue 14): prometheus-client's http.server, email and urllib.request
# (_datetime, _hashlib), tempfile's random (_random), shutil's compressors (zlib, _bz2,
# _lzma), ctypes for one prctl, OSCAR's uuid and zipfile, json for marshal_request.
UNUSED_EXTENSIONS = ("_ctypes", "_datetime", "_hashlib", "_random", "zlib", "_bz2", "_lzma",
                     "_uuid", "_json")


def mapped_packages(pid: int) -> set[str]:
    """The site-packages folders of aiohttp's family with a file mapped in `pid`."""
    found = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)  # address perms offset dev inode [path]
        if len(fields) == 6:
            found.update(set(AIOHTTP_PACKAGES) & set(Path(fields[5]).parts))
    return found


def mapped_extensions(pid: int) -> set[str]:
    """The names of the standard library's extension modules mapped in `pid`."""
    found = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and "/lib-dynload/" in fields[5]:
            found.add(Path(fields[5]).name.split(".")[0])
    return found


def raw(port: int, request: bytes) -> bytes:
    """One request on its own connection, the whole answer (the server closes)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_serving_gateway_never_loads_aiohttp(gateway: StartGateway,
                                                    workers: str) -> None:
    gw = gateway(["cat"], env={"WATCHDOG_WORKERS": workers, "WATCHDOG_PORT": str(free_port()),
                               "WATCHDOG_METRICS_PORT": str(free_port())})
    # Every port used first: a late import (on a request, a scrape) would show too.
    status, _, body = await fetch("POST", gw.url, b"hello")
    assert (status, body) == (200, b"hello")
    assert metrics(gw)[("http_requests_total", (("code", "200"), ("method", "post")))] == 1
    if workers != "1":
        await _second_listening(gw)
    pids = {gw.proc.pid} | (worker_pids(gw) if workers != "1" else set())
    assert len(pids) == int(workers) + (workers != "1")
    assert {pid: mapped_packages(pid) for pid in pids} == {pid: set() for pid in pids}


async def test_serving_gateway_loads_only_what_serving_uses(gateway: StartGateway) -> None:
    gw = gateway(["cat"])
    status, _, body = await fetch("POST", gw.url, b"hello")  # every port used first
    assert (status, body) == (200, b"hello")
    assert metrics(gw)[("http_requests_total", (("code", "200"), ("method", "post")))] == 1
    loaded = mapped_extensions(gw.proc.pid)
    assert "_asyncio" in loaded  # the maps are read right
    assert loaded & set(UNUSED_EXTENSIONS) == set()


async def test_metrics_port_serves_get_and_head_metrics_only(gateway: StartGateway) -> None:
    """What aiohttp's router answered on this port, kept (this passes on it too)."""
    gw: Gateway = gateway(["cat"])
    port = gw.metrics_port
    get = raw(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = get.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert f"\r\nContent-Type: {GO_METRICS_CONTENT_TYPE}\r\n".encode() in head + b"\r\n"
    assert b"http_requests_in_flight" in body
    answer = raw(port, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert body == b""
    answer = raw(port, b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                       b"Connection: close\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 405 ")
    allow = next(line for line in answer.split(b"\r\n") if line.startswith(b"Allow:"))
    assert {m.strip() for m in allow[6:].split(b",")} == {b"GET", b"HEAD"}
    for path in (b"/", b"/_/health", b"/metrics/x"):
        answer = raw(port, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 404 "), path
    # Keep-alive: two scrapes on one connection, as Prometheus does.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for _ in range(2):
            writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200 ")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await asyncio.wait_for(reader.readexactly(length), 5)
    finally:
        writer.close()
