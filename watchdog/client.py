"""`fwatchdog run`: what `oscar-cli service run` does, with oscar-cli's own flags and
config file, against a gateway in oscar mode or an OSCAR cluster: base64 in,
base64-decoded out, plain words for every error.

    fwatchdog run SERVICE -f/--file-input/--input FILE | -i/--text-input TEXT
                  [-o/--output FILE] [-c/--cluster ID] [--config FILE]
                  [-e/--endpoint URL] [-t/--token TOKEN] [--timeout SECONDS]

Where the call goes and with which token, most explicit first:
- the endpoint: `--endpoint`, `$OSCAR_ENDPOINT`, the cluster's (`--cluster`, else the
  config's default), else http://127.0.0.1:8080;
- the token: `--token`, `$OSCAR_SERVICE_TOKEN`, else, when a cluster is named or gives
  the endpoint, the one the cluster keeps for the service, asked for as oscar-cli 1.9
  does (`GET /system/services/SERVICE` with the cluster's basic auth or OIDC token).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import errno
import json
import os
import pwd
import shutil
import ssl
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Any, BinaryIO, TextIO
from urllib.parse import quote, urlsplit

import aiohttp

from watchdog.oscar_input import Base64Decoder, InputError
from watchdog.oscar_output import ENCODE_CHUNK, OUTPUT_HEADER

PROG = "fwatchdog run"
DEFAULT_ENDPOINT = "http://127.0.0.1:8080"
CONFIG_FILE = os.path.join(".oscar-cli", "config.yaml")  # under the home folder
SERVICES_PATH = "/system/services/"
LOOKUP_WITHIN = 20.0  # oscar-cli's own client timeout for cluster API calls
CONNECT_WITHIN = 30.0  # a silent address (firewall, wrong IP) fails in words, not never
OIDC_TOKEN_WITHIN = 30.0
PROGRESS_FROM = 2**20  # transfers from 1 MiB show progress (on a terminal only)
PROGRESS_EVERY = 0.1  # seconds between redraws: a fast link must not flood the terminal
SPOOL_IN_MEMORY = 8 * 2**20  # an answer of unknown kind is kept here before the disk


class ClientError(Exception):
    """Why the call failed, in one sentence for the user (exit status 1)."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Invoke an OSCAR service synchronously, like `oscar-cli service run`, "
        "with its flags and its config file (~/.oscar-cli/config.yaml): the input is sent "
        "base64-encoded and a base64 answer is decoded.",
        epilog="Without a token, the token is asked of the cluster (--cluster, else the "
        "config's default) with its credentials, as oscar-cli 1.9 does. The endpoint and "
        "the token may also come from $OSCAR_ENDPOINT and $OSCAR_SERVICE_TOKEN.")
    p.add_argument("service", help="the service name (POST /run/SERVICE)")
    source = p.add_mutually_exclusive_group()
    # --input is what OSCAR's documentation shows; -f/--file-input is oscar-cli's flag.
    source.add_argument("-f", "--file-input", "--input", dest="file_input", metavar="FILE",
                        help="send this file")
    source.add_argument("-i", "--text-input", dest="text_input", metavar="TEXT",
                        help="send this text")
    # OSCAR's documentation also spells it `-output`; argparse would read that as
    # `-o utput` (a file named "utput"), so the spelling is accepted as it is.
    p.add_argument("-o", "--output", "-output", dest="output", metavar="FILE",
                   help="write the (decoded) answer here instead of to stdout")
    p.add_argument("-c", "--cluster", metavar="ID",
                   help="a cluster of the config file (default: its default cluster)")
    p.add_argument("--config", metavar="FILE",
                   help=f"oscar-cli's config file, YAML or JSON (default: ~/{CONFIG_FILE})")
    p.add_argument("-e", "--endpoint", metavar="URL",
                   help="the gateway or cluster to call (default: $OSCAR_ENDPOINT, else the "
                   f"cluster's, else {DEFAULT_ENDPOINT})")
    p.add_argument("-t", "--token", help="the service token (default: $OSCAR_SERVICE_TOKEN, "
                   "else asked of the cluster)")
    p.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                   help="seconds to wait for the answer, 0 for ever (default: 300)")
    return p


def main(argv: Sequence[str], environ: Mapping[str, str],
         stderr: TextIO | None = None) -> int:
    args = parser().parse_args(argv)
    stderr = stderr or sys.stderr
    if args.text_input is not None and os.path.isfile(args.text_input):
        # -i was this command's file flag before it took oscar-cli's meaning: say so.
        print(f"{PROG}: note: -i/--text-input sends {args.text_input!r} as text; "
              "-f/--input sends a file", file=stderr)
    try:
        call = plan(args, environ)
        return asyncio.run(invoke(call, input_path=args.file_input, text=args.text_input,
                                  output=args.output, answer_within=args.timeout,
                                  environ=environ,
                                  progress_to=stderr if _is_terminal(stderr) else None))
    except ClientError as exc:
        print(f"{PROG}: {exc}", file=stderr)
        return 1


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream is no terminal
        return False


# --- oscar-cli's config file ---------------------------------------------------------


@dataclass(frozen=True)
class Cluster:
    """One entry of the config's `oscar:` map, with oscar-cli's field names."""

    name: str
    endpoint: str
    auth_user: str = ""
    auth_password: str = ""
    oidc_account_name: str = ""  # an oidc-agent account (oscar-cli 1.9 and later)
    oidc_token: str = ""  # an access token kept in the file (oscar-cli 1.9)
    oidc_refresh_token: str = ""  # oscar-cli after 1.9: refreshed against its issuer
    ssl_verify: bool = True


@dataclass(frozen=True)
class OscarConfig:
    path: str
    clusters: Mapping[str, Cluster]
    default: str


def default_config_path(environ: Mapping[str, str]) -> str:
    # oscar-cli takes the home folder from the user database; $HOME first lets a
    # caller (and a test) point elsewhere, as shells do.
    home = environ.get("HOME") or pwd.getpwuid(os.getuid()).pw_dir
    return os.path.join(home, CONFIG_FILE)


def read_config(path: str) -> OscarConfig:
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as exc:
        raise ClientError(f"cannot read the oscar-cli config {path}: {exc.strerror}; "
                          "create it with `oscar-cli cluster add`") from None
    document: Any
    try:
        # As oscar-cli: YAML by the file's extension, else JSON.
        if path.endswith((".yaml", ".yml")):
            import yaml  # only a config file costs the import

            document = yaml.safe_load(text)
        else:
            document = json.loads(text)
    except Exception as exc:  # ValueError, yaml.YAMLError (yaml is imported late)
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ClientError(f"{path} is not a valid oscar-cli config: {first}") from None
    return _parse_config(path, document)


def _parse_config(path: str, document: Any) -> OscarConfig:
    def invalid(why: str) -> ClientError:
        return ClientError(f"{path} is not a valid oscar-cli config: {why}")

    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise invalid("it is not a mapping")
    entries = document.get("oscar") or {}
    if not isinstance(entries, dict):
        raise invalid("`oscar` is not a mapping of clusters")
    clusters = {}
    for name, entry in entries.items():
        if not isinstance(entry, dict):
            raise invalid(f"cluster {name!r} is not a mapping")
        fields: dict[str, Any] = {"name": str(name)}
        for field in ("endpoint", "auth_user", "auth_password", "oidc_account_name",
                      "oidc_token", "oidc_refresh_token"):
            value = entry.get(field)
            if value is not None and not isinstance(value, str):
                raise invalid(f"{field} of cluster {name!r} is not a string")
            fields[field] = value or ""
        if not fields["endpoint"]:
            raise invalid(f"cluster {name!r} has no endpoint")
        verify = entry.get("ssl_verify", True)  # oscar-cli always writes it; absent: safe
        if not isinstance(verify, bool):
            raise invalid(f"ssl_verify of cluster {name!r} is not true or false")
        fields["ssl_verify"] = verify
        clusters[str(name)] = Cluster(**fields)
    default = document.get("default") or ""
    if not isinstance(default, str):
        raise invalid("`default` is not a cluster name")
    return OscarConfig(path, clusters, default)


def choose_cluster(config: OscarConfig, name: str | None, *,
                   endpoint_given: bool = False) -> Cluster | None:
    chosen = name or config.default
    if not chosen:
        if not config.clusters or endpoint_given:
            return None
        raise ClientError(f"no default cluster in {config.path}: name one with -c "
                          f"({', '.join(sorted(config.clusters))}) or give --endpoint")
    try:
        return config.clusters[chosen]
    except KeyError:
        known = ", ".join(sorted(config.clusters)) or "none"
        raise ClientError(f"no cluster {chosen!r} in {config.path} (clusters: {known})"
                          ) from None


# --- where the call goes -------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    service: str
    endpoint: str
    token: str
    token_from: str  # "flag", "environment", "cluster" (asked of it), "" (none)
    cluster: Cluster | None  # asked for the token when there is none
    verify: bool  # TLS certificates checked on the call to `endpoint`


def plan(args: argparse.Namespace, environ: Mapping[str, str]) -> Call:
    """The endpoint, the token (or the cluster to ask for it) and TLS, from the flags,
    the environment and oscar-cli's config file, most explicit first."""
    token, token_from = args.token or "", "flag" if args.token else ""
    if not token and environ.get("OSCAR_SERVICE_TOKEN"):
        token, token_from = environ["OSCAR_SERVICE_TOKEN"], "environment"
    endpoint = args.endpoint or environ.get("OSCAR_ENDPOINT") or ""
    cluster = None
    # A named cluster, or no endpoint yet: the config decides. An endpoint given
    # without a cluster is called as it is (it may be a gateway, not a cluster).
    if args.cluster or args.config or not endpoint:
        path = args.config or default_config_path(environ)
        if args.cluster or args.config or os.path.exists(path):
            cluster = choose_cluster(read_config(path), args.cluster,
                                     endpoint_given=bool(endpoint))
    if not endpoint:
        endpoint = cluster.endpoint if cluster else DEFAULT_ENDPOINT
    _check_url(endpoint)
    if cluster is not None:
        _check_url(cluster.endpoint, f"the endpoint of cluster {cluster.name!r}")
    verify = True
    if cluster is not None and _same_origin(endpoint, cluster.endpoint):
        verify = cluster.ssl_verify  # oscar-cli's ssl_verify covers the cluster's address
    return Call(args.service, endpoint.rstrip("/"), token.strip(), token_from, cluster,
                verify)


def _check_url(url: str, what: str = "the endpoint") -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ClientError(f"{what} {url!r} is not a URL: write it as http(s)://HOST[:PORT]")


def _same_origin(a: str, b: str) -> bool:
    pa, pb = urlsplit(a), urlsplit(b)
    return (pa.scheme, pa.hostname, pa.port) == (pb.scheme, pb.hostname, pb.port)


# --- the call --------------------------------------------------------------------------


async def invoke(call: Call, *, input_path: str | None, text: str | None,
                 output: str | None, answer_within: float, environ: Mapping[str, str],
                 progress_to: TextIO | None = None) -> int:
    if input_path is not None and not os.path.isfile(input_path):
        raise ClientError(f"no input file {input_path!r}")
    timeout = aiohttp.ClientTimeout(total=answer_within or None,
                                    sock_connect=_connect_within(answer_within))
    async with aiohttp.ClientSession(timeout=timeout) as session:
        token = call.token
        if not token and call.cluster is not None:
            token = await service_token(session, call.cluster, call.service, environ)
        url = f"{call.endpoint}/run/{quote(call.service, safe='')}"
        headers = {"Content-Type": "text/plain"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        body: bytes | AsyncIterator[bytes]
        if input_path is not None:
            size = os.path.getsize(input_path)
            sending = Progress(progress_to, f"sending {os.path.basename(input_path)}",
                               size, show=size >= PROGRESS_FROM)
            body = _encode_file(input_path, sending)
        else:
            sending = Progress(None, "", 0, show=False)
            body = base64.b64encode((text or "").encode())
        # Receiving progress shares the terminal with the answer only when the answer
        # goes elsewhere.
        answer_shown = output is None and _is_terminal(sys.stdout)
        receiving = Progress(None if answer_shown else progress_to, "receiving", None,
                             show=False)
        try:
            async with session.post(url, data=body, headers=headers,
                                    ssl=call.verify) as response:
                sending.done()
                if response.status != 200:
                    raise ClientError(_explain(response.status, response.headers,
                                               await response.text(errors="replace"),
                                               call, token))
                await _save(response, output, receiving)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ClientError(_connection_problem(exc, url, answer_within, call.verify)
                              ) from None
        finally:
            sending.done()
            receiving.done()
    return 0


def _connect_within(answer_within: float) -> float:
    return min(CONNECT_WITHIN, answer_within) if answer_within else CONNECT_WITHIN


async def service_token(session: aiohttp.ClientSession, cluster: Cluster, service: str,
                        environ: Mapping[str, str]) -> str:
    """The token the cluster keeps for the service (oscar-cli 1.9's way: the service's
    definition, read with the cluster's own credentials). "" from an OSCAR before 2.2,
    whose services have none, and whose calls then go without one, as oscar-cli's."""
    url = f"{cluster.endpoint.rstrip('/')}{SERVICES_PATH}{quote(service, safe='')}"
    headers, auth = await _credentials(cluster, environ)
    try:
        async with session.get(url, headers=headers, auth=auth, ssl=cluster.ssl_verify,
                               timeout=aiohttp.ClientTimeout(total=LOOKUP_WITHIN)) as response:
            if response.status in (401, 403):
                raise ClientError(
                    f"cluster {cluster.name!r} refused the credentials of {_how(cluster)} "
                    f"({response.status}) when asked for the token of {service!r}: check "
                    "the config, or give the service token with --token")
            if response.status == 404:
                raise ClientError(f"no service {service!r} on cluster {cluster.name!r} "
                                  f"({cluster.endpoint}, 404)")
            if response.status != 200:
                text = (await response.text(errors="replace")).strip()[:500]
                raise ClientError(f"cluster {cluster.name!r} could not give the token of "
                                  f"{service!r} ({response.status}): {text}")
            try:
                definition = await response.json(content_type=None)
            except ValueError:
                definition = None
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise ClientError(_connection_problem(exc, url, LOOKUP_WITHIN, cluster.ssl_verify)
                          ) from None
    if not isinstance(definition, dict):
        raise ClientError(f"cluster {cluster.name!r} answered {SERVICES_PATH}{service} with "
                          "something that is not a service definition")
    token = definition.get("token") or ""
    return token.strip() if isinstance(token, str) else ""


def _how(cluster: Cluster) -> str:
    if cluster.oidc_account_name:
        return f"oidc-agent account {cluster.oidc_account_name!r}"
    if cluster.oidc_token:
        return "its oidc_token"
    return f"user {cluster.auth_user!r}" if cluster.auth_user else "no user"


async def _credentials(cluster: Cluster, environ: Mapping[str, str]
                       ) -> tuple[dict[str, str], aiohttp.BasicAuth | None]:
    """oscar-cli's order: an oidc-agent account, else an OIDC token, else basic auth."""
    if cluster.oidc_account_name:
        return {"Authorization": f"Bearer {await _oidc_agent_token(cluster, environ)}"}, None
    if cluster.oidc_token:
        return {"Authorization": f"Bearer {cluster.oidc_token.strip()}"}, None
    if cluster.oidc_refresh_token:
        raise ClientError(f"cluster {cluster.name!r} signs in with an OIDC refresh token, "
                          "which this client cannot exchange: give the service token with "
                          "--token (`oscar-cli service get` shows it)")
    if cluster.auth_user or cluster.auth_password:
        return {}, aiohttp.BasicAuth(cluster.auth_user, cluster.auth_password)
    return {}, None


async def _oidc_agent_token(cluster: Cluster, environ: Mapping[str, str]) -> str:
    """An access token from oidc-agent, through its own `oidc-token` command (its
    socket is found through $OIDC_SOCK, which the command reads)."""
    account = cluster.oidc_account_name
    command = ["oidc-token", "--time=600", account]  # valid 10 more minutes, as oscar-cli
    if shutil.which(command[0], path=environ.get("PATH")) is None:
        raise ClientError(f"cluster {cluster.name!r} signs in with the oidc-agent account "
                          f"{account!r}, and `oidc-token` is not installed: install "
                          "oidc-agent, or give the service token with --token")
    process = await asyncio.create_subprocess_exec(
        *command, env=dict(environ), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(process.communicate(), OIDC_TOKEN_WITHIN)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise ClientError(f"`oidc-token {account}` gave no token within "
                          f"{OIDC_TOKEN_WITHIN:g} s") from None
    token = out.decode(errors="replace").strip()
    if process.returncode != 0 or not token:
        why = err.decode(errors="replace").strip().splitlines()
        raise ClientError(f"`oidc-token {account}` failed"
                          + (f": {why[-1]}" if why else f" (exit {process.returncode})"))
    return token


# --- progress --------------------------------------------------------------------------


class Progress:
    """One status line on stderr, redrawn at most every PROGRESS_EVERY seconds, and
    wiped when done; silent unless given a terminal and the transfer is large."""

    def __init__(self, stream: TextIO | None, label: str, total: int | None, *,
                 show: bool) -> None:
        self._stream = stream
        self._label = label
        self._total = total
        self._show = show and stream is not None
        self._count = 0
        self._drawn_at = 0.0
        self._drawn = False

    def advance(self, count: int) -> None:
        if self._stream is None:
            return
        self._count += count
        if not self._show and self._count >= PROGRESS_FROM:
            self._show = True  # an answer of unknown size turned out large
        now = time.monotonic()
        if self._show and now - self._drawn_at >= PROGRESS_EVERY:
            self._drawn_at = now
            self._draw(self._line())

    def _line(self) -> str:
        done = _mib(self._count)
        if self._total:
            share = min(100, self._count * 100 // self._total)
            return f"{self._label}: {done} of {_mib(self._total)} ({share}%)"
        return f"{self._label}: {done}"

    def _draw(self, line: str) -> None:
        assert self._stream is not None
        self._stream.write(f"\r\x1b[K{PROG}: {line}")
        self._stream.flush()
        self._drawn = True

    def done(self) -> None:
        """Wipe the line (only the answer stays on the screen); said twice, once."""
        if self._drawn and self._stream is not None:
            with contextlib.suppress(OSError, ValueError):
                self._stream.write("\r\x1b[K")
                self._stream.flush()
        self._drawn = False
        self._stream = None


def _mib(count: int) -> str:
    return f"{count / 2**20:.1f} MiB"


async def _encode_file(path: str, progress: Progress) -> AsyncIterator[bytes]:
    """The file, base64-encoded as it is read: never held whole."""
    with open(path, "rb") as f:
        while data := await asyncio.to_thread(f.read, ENCODE_CHUNK):
            progress.advance(len(data))
            yield base64.b64encode(data)


# --- the answer -----------------------------------------------------------------------


async def _save(response: aiohttp.ClientResponse, output: str | None,
                progress: Progress) -> None:
    """Decode a base64 answer as it streams; an answer that is the script's own
    output (or, from a server that does not say, is not base64) is kept as is."""
    kind = response.headers.get(OUTPUT_HEADER, "")
    sink: BinaryIO = open(output, "wb") if output else sys.stdout.buffer  # noqa: SIM115
    try:
        if kind.startswith(("file", "zip")):
            decoder = Base64Decoder()
            async for chunk in response.content.iter_any():
                progress.advance(len(chunk))
                sink.write(decoder.feed(chunk))
            sink.write(decoder.finish())
        elif kind:  # the script's own output
            async for chunk in response.content.iter_any():
                progress.advance(len(chunk))
                sink.write(chunk)
        else:
            await _save_unannounced(response, sink, progress)
    except InputError as exc:
        raise ClientError(f"the answer was announced as base64 but is not: {exc}") from None
    finally:
        if output:
            sink.close()
        else:
            sink.flush()


async def _save_unannounced(response: aiohttp.ClientResponse, sink: BinaryIO,
                            progress: Progress) -> None:
    """Not our gateway (OSCAR's own chain): decode if the whole answer is base64, as
    oscar-cli does, else keep it. Both kept aside (memory, then disk) until known."""
    with tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY) as raw, \
            tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY) as decoded:
        blank = True
        decoder = Base64Decoder()
        is_base64 = True
        async for chunk in response.content.iter_any():
            progress.advance(len(chunk))
            raw.write(chunk)
            blank = blank and not chunk.strip()
            if is_base64:
                try:
                    decoded.write(decoder.feed(chunk))
                except InputError:
                    is_base64 = False
        if is_base64:
            try:
                decoded.write(decoder.finish())
            except InputError:
                is_base64 = False
        chosen: IO[bytes] = decoded if is_base64 and not blank else raw
        chosen.seek(0)
        shutil.copyfileobj(chosen, sink)


# --- errors in words --------------------------------------------------------------------


def _explain(status: int, headers: Mapping[str, str], text: str, call: Call,
             token: str) -> str:
    text = text.strip()[:2000]
    if status == 401:
        if not token:
            return ("the service token was refused (401): none was sent; give --token, set "
                    "OSCAR_SERVICE_TOKEN, or name a cluster of ~/.oscar-cli/config.yaml "
                    "with -c")
        if call.token_from == "environment":
            return "the service token was refused (401): check OSCAR_SERVICE_TOKEN"
        if call.token_from == "flag":
            return "the service token was refused (401): check --token"
        name = call.cluster.name if call.cluster else "?"
        return (f"the service token was refused (401): cluster {name!r} gave it; is "
                f"{call.endpoint} that cluster (or a pod of it)?")
    if status == 404:
        return f"no service {call.service!r} at {call.endpoint} (404)"
    if status == 429:
        running = headers.get("X-Watchdog-Inflight", "?")
        limit = headers.get("X-Watchdog-Max-Inflight", "?")
        retry = headers.get("Retry-After", "a few")
        return (f"the service is busy (429): {running} of {limit} invocations running; "
                f"retry in {retry} s")
    if status == 502 and not text:
        return "the service is not ready yet (502): retry when its pod is up"
    if status >= 500:
        return f"the service failed ({status}):\n{text}"
    return f"the request was refused ({status}): {text}"


def _connection_problem(exc: BaseException, url: str, within: float, verify: bool) -> str:
    """One line for each way a connection fails, saying what to check."""
    parts = urlsplit(url)
    where = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        why = getattr(exc.certificate_error, "verify_message", "") or exc.certificate_error
        return (f"TLS: {where} has a certificate this machine does not trust ({why}); if "
                "the cluster's certificate is self-signed, set `ssl_verify: false` for it "
                "in the oscar-cli config")
    if isinstance(exc, aiohttp.ClientSSLError | ssl.SSLError):
        reason = getattr(getattr(exc, "os_error", exc), "reason", None) or exc
        if reason == "WRONG_VERSION_NUMBER":  # what a plain-HTTP server answers
            return f"TLS: {where} does not speak TLS: is it an http:// address?"
        return f"TLS with {where} failed: {reason}"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return (f"cannot find the address of {parts.hostname!r} (DNS: "
                f"{_strerror(exc.os_error)}): check the endpoint's spelling and the network")
    if isinstance(exc, aiohttp.ClientConnectorError):
        error = exc.os_error
        if isinstance(error, ConnectionRefusedError) or error.errno == errno.ECONNREFUSED:
            return (f"nothing is listening at {where} (connection refused): is the gateway "
                    "or cluster running there, and is the endpoint right?")
        return f"cannot connect to {where}: {_strerror(error)}"
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return (f"{where} did not accept a connection within "
                f"{_connect_within(within):g} s: is the address right, or a firewall "
                "in the way?")
    if isinstance(exc, TimeoutError):
        return f"no answer from {where} within {within:g} s (see --timeout)"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return f"{where} closed the connection before it answered"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return f"the answer from {where} was cut off: {exc}"
    if isinstance(exc, aiohttp.ClientOSError):
        return f"the connection to {where} broke: {_strerror(exc)}"
    return f"cannot talk to {where}: {exc}"


def _strerror(error: OSError) -> str:
    return error.strerror or str(error) or type(error).__name__
