"""`fwatchdog run`: what `oscar-cli service run` does, against a gateway in oscar
mode (or an OSCAR cluster): base64 in, base64-decoded out, plain words for errors.

    fwatchdog run SERVICE --input FILE | --text-input TEXT [--output FILE]
                  [--endpoint URL] [--token TOKEN]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import BinaryIO
from urllib.parse import quote

import aiohttp

from watchdog.oscar import ENCODE_CHUNK, OUTPUT_HEADER, Base64Decoder, InputError

DEFAULT_ENDPOINT = "http://127.0.0.1:8080"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fwatchdog run",
        description="Invoke an OSCAR service synchronously, like `oscar-cli service run`: "
        "the input is sent base64-encoded and a base64 answer is decoded.")
    p.add_argument("service", help="the service name (POST /run/SERVICE)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("-i", "--input", metavar="FILE", help="send this file")
    source.add_argument("-t", "--text-input", metavar="TEXT", help="send this text")
    p.add_argument("-o", "--output", metavar="FILE",
                   help="write the (decoded) answer here instead of to stdout")
    p.add_argument("--endpoint", metavar="URL",
                   help=f"the gateway or cluster (default: $OSCAR_ENDPOINT or {DEFAULT_ENDPOINT})")
    p.add_argument("--token", help="the service token (default: $OSCAR_SERVICE_TOKEN)")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="seconds to wait for the answer (default: 300)")
    return p


def main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    args = parser().parse_args(argv)
    endpoint = args.endpoint or environ.get("OSCAR_ENDPOINT") or DEFAULT_ENDPOINT
    token = args.token or environ.get("OSCAR_SERVICE_TOKEN") or ""
    try:
        return asyncio.run(invoke(args.service, endpoint, token, input_path=args.input,
                                  text=args.text_input, output=args.output,
                                  answer_within=args.timeout))
    except ClientError as exc:
        print(f"fwatchdog run: {exc}", file=sys.stderr)
        return 1


class ClientError(Exception):
    pass


async def invoke(service: str, endpoint: str, token: str, *, input_path: str | None,
                 text: str | None, output: str | None, answer_within: float) -> int:
    url = f"{endpoint.rstrip('/')}/run/{quote(service, safe='')}"
    headers = {"Content-Type": "text/plain"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    body: bytes | AsyncIterator[bytes]
    if input_path is not None:
        if not os.path.isfile(input_path):
            raise ClientError(f"no input file {input_path!r}")
        body = _encode_file(input_path)
    else:
        body = base64.b64encode((text or "").encode())
    client_timeout = aiohttp.ClientTimeout(total=answer_within or None)
    try:
        async with aiohttp.ClientSession(timeout=client_timeout) as session, session.post(
                url, data=body, headers=headers) as response:
            if response.status != 200:
                raise ClientError(_explain(response.status, response.headers,
                                           await response.text(errors="replace"),
                                           service, endpoint))
            await _save(response, output)
    except aiohttp.ClientConnectionError as exc:
        raise ClientError(f"cannot reach {endpoint}: {exc}") from None
    except TimeoutError:
        raise ClientError(f"no answer from {endpoint} within {answer_within:g} s") from None
    return 0


async def _encode_file(path: str) -> AsyncIterator[bytes]:
    with open(path, "rb") as f:
        while data := await asyncio.to_thread(f.read, ENCODE_CHUNK):
            yield base64.b64encode(data)


async def _save(response: aiohttp.ClientResponse, output: str | None) -> None:
    """Decode a base64 answer as it streams; an answer that is the script's own
    output (or, from a server that does not say, is not base64) is kept as is."""
    kind = response.headers.get(OUTPUT_HEADER, "")
    sink: BinaryIO = open(output, "wb") if output else sys.stdout.buffer  # noqa: SIM115
    try:
        if kind.startswith(("file", "zip")):
            decoder = Base64Decoder()
            async for chunk in response.content.iter_any():
                sink.write(decoder.feed(chunk))
            sink.write(decoder.finish())
            return
        raw = await response.read()
        if not kind:  # not our gateway: decode if it is base64, as oscar-cli does
            try:
                decoder = Base64Decoder()
                decoded = decoder.feed(raw) + decoder.finish()
            except InputError:
                pass
            else:
                raw = decoded if raw.strip() else raw
        sink.write(raw)
    except InputError as exc:
        raise ClientError(f"the answer was announced as base64 but is not: {exc}") from None
    finally:
        if output:
            sink.close()
        else:
            sink.flush()


def _explain(status: int, headers: Mapping[str, str], text: str, service: str,
             endpoint: str) -> str:
    text = text.strip()[:2000]
    if status == 401:
        return "the service token was refused (401): give --token or set OSCAR_SERVICE_TOKEN"
    if status == 404:
        return f"no service {service!r} at {endpoint} (404)"
    if status == 429:
        running = headers.get("X-Watchdog-Inflight", "?")
        limit = headers.get("X-Watchdog-Max-Inflight", "?")
        retry = headers.get("Retry-After", "a few")
        return (f"the service is busy (429): {running} of {limit} invocations running; "
                f"retry in {retry} s")
    if status >= 500:
        return f"the service failed ({status}):\n{text}"
    return f"the request was refused ({status}): {text}"
