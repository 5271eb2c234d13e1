"""The modes side by side, behind the one small interface the HTTP layer, the limiter
and the metrics share: a mode turns a request into an invocation (or a refusal at
once), and may start and stop something of its own. `watchdog.server` calls
`route` for every function request, then answers 429 or runs what it got within
the limit, with the same deadlines, metrics and log line whatever the mode.

A new mode is one new class here and the module that does its work (which knows
nothing of HTTP). A request is seen through `Call`, which `watchdog.http.Request`
is: modes do not import the HTTP layer.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from watchdog.config import Config
from watchdog.executor import Body, Executor, Result

if TYPE_CHECKING:  # each imported by its mode only: not at every start
    from watchdog import oscar, oscar_pod, static, upstream

log = logging.getLogger("watchdog")

# A mode's invocation: (the function's environment, body, arrival) -> the answer.
Invoke = Callable[[Mapping[str, str], Body, float], Awaitable[Result]]

# The methods forked for in classic mode, as the Go watchdog (405 for the rest).
FUNCTION_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH"})


class Call(Protocol):
    """What a mode reads of a request."""

    @property
    def method(self) -> str: ...
    @property
    def path(self) -> str: ...  # decoded
    @property
    def query(self) -> str: ...
    @property
    def target(self) -> str: ...  # as it came, escapes kept
    @property
    def headers(self) -> Sequence[tuple[str, str]]: ...
    @property
    def content_length(self) -> int | None: ...
    @property
    def chunked(self) -> bool: ...
    @property
    def host(self) -> str: ...

    def header(self, name: str) -> str | None: ...


@dataclass(frozen=True)
class Refusal:
    """An answer at once, without a slot or a body: 404, 405, 401."""

    status: int
    text: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)


class Mode(ABC):
    # The function is forked with the request's Http_* variables (cgi_headers).
    forks = True
    # What holds a body whole before the invocation (its setting's name), if any.
    holds_body: str | None = None

    async def start(self) -> None:  # noqa: B027 - a hook most modes do without
        """Before the ports open."""

    async def stop(self) -> None:  # noqa: B027 - a hook most modes do without
        """After the functions are gone."""

    @abstractmethod
    def route(self, call: Call) -> Invoke | Refusal:
        """This request's invocation, or the refusal to answer at once."""

    def ready(self, call: Call, path: str) -> Invoke | None:
        """ready_path: the invocation that answers `GET path` for /_/ready (it is
        given the environment of a request for `path`); None: the gateway answers."""
        return None

    def function_environment(self, environ: Mapping[str, str]) -> Mapping[str, str]:
        """The environment every function (or server) of this mode starts from."""
        return environ

    def environment_headers(self, headers: Sequence[tuple[str, str]]
                            ) -> Sequence[tuple[str, str]]:
        """The request headers the function sees as Http_* variables."""
        return headers


class Classic(Mode):
    """The Go classic watchdog's: the body on the function's stdin, every path."""

    def __init__(self, config: Config, executor: Executor) -> None:
        self._invoke: Invoke = executor.invoke
        self.holds_body = "marshal_request" if config.marshal_request else None

    def route(self, call: Call) -> Invoke | Refusal:
        if call.method not in FUNCTION_METHODS:
            return Refusal(405, headers={"Allow": ", ".join(sorted(FUNCTION_METHODS))})
        return self._invoke

    def ready(self, call: Call, path: str) -> Invoke | None:
        return self._invoke


class Forking(Mode):
    """of-watchdog's streaming and serializing modes: forked for every method."""

    def __init__(self, config: Config, executor: Executor) -> None:
        self.holds_body = "marshal_request" if config.marshal_request else None
        if config.mode == "streaming":
            from watchdog import streaming

            self._invoke: Invoke = streaming.StreamingInvoker(executor).invoke
        else:
            from watchdog import serializing

            self._invoke = serializing.SerializingInvoker(executor, config.content_type).invoke

    def route(self, call: Call) -> Invoke | Refusal:
        return self._invoke

    def ready(self, call: Call, path: str) -> Invoke | None:
        return self._invoke


class Static(Mode):
    """of-watchdog's static mode: the folder's files, within the limit."""

    forks = False

    def __init__(self, config: Config, executor: Executor) -> None:
        from watchdog import static

        self._files: static.StaticFiles = static.StaticFiles(config.static_path)
        self._executor = executor

    def route(self, call: Call) -> Invoke | Refusal:
        files = self._files
        executor = self._executor

        async def serve(_: Mapping[str, str], body: Body, started: float) -> Result:
            refused = executor.admit()
            if refused is not None:
                return refused
            try:
                result = files.serve(call.method, call.path, call.header)
            except BaseException:
                executor.withdraw()
                raise
            closing = result.cleanup

            def sent() -> None:  # the slot is held while the file is sent
                try:
                    if closing is not None:
                        closing()
                finally:
                    executor.withdraw()
            result.cleanup = sent
            return result

        return serve


class Http(Mode):
    """of-watchdog's http mode, and the sidecar: every method and path forwarded to
    the function's own server."""

    forks = False

    def __init__(self, config: Config, executor: Executor, environ: Mapping[str, str],
                 on_exit: Callable[[str], None]) -> None:
        from watchdog import upstream

        self.upstream: upstream.Upstream = upstream.Upstream(config, executor, environ, on_exit)
        self.holds_body = "buffer_http" if config.buffer_http else None

    async def start(self) -> None:
        await self.upstream.start()  # before the ports: not ready until it accepts

    async def stop(self) -> None:
        await self.upstream.stop()

    def route(self, call: Call) -> Invoke | Refusal:
        upstream = self.upstream
        # As it came (percent-escapes kept); an absolute-form one in origin form.
        target = call.target
        if not target.startswith("/"):
            target = _quoted(call.path) + ("?" + call.query if call.query else "")
        has_body = bool(call.content_length or call.chunked)
        # A WebSocket (or another protocol) asked for: the server's 101 hands it over.
        upgrade = call.header("upgrade")
        if upgrade is not None and "upgrade" not in (call.header("connection") or "").lower():
            upgrade = None

        def forward(_: Mapping[str, str], body: Body, started: float) -> Awaitable[Result]:
            return upstream.forward(call.method, target, call.headers, call.host, body,
                                    has_body, started, upgrade)

        return forward

    def ready(self, call: Call, path: str) -> Invoke | None:
        upstream = self.upstream

        def ask(_: Mapping[str, str], body: Body, started: float) -> Awaitable[Result]:
            return upstream.forward("GET", path, call.headers, call.host, b"", False, started)

        return ask


class Oscar(Mode):
    """OSCAR's invocation protocol: POST /run/<service> (and POST /)."""

    def __init__(self, config: Config, executor: Executor, base: Mapping[str, str]) -> None:
        """`base` is the gateway's own environment, where the service's definition
        is looked up."""
        from watchdog import oscar, oscar_pod

        workspaces = os.path.dirname(config.lock_path)
        self._service: oscar_pod.ServiceDefinition = oscar_pod.ServiceDefinition(
            config.oscar_root, base, workspaces, own_script=config.oscar_defaults)
        self._invoker: oscar.OscarInvoker = oscar.OscarInvoker(
            config, executor, workspaces, self._service)
        self._config = config

    async def stop(self) -> None:
        await self._invoker.removals.wait()  # workspaces of the last calls
        self._service.close()

    def function_environment(self, environ: Mapping[str, str]) -> Mapping[str, str]:
        from watchdog import oscar

        return oscar.script_environment(environ, pod=self._config.oscar_pod)

    def route(self, call: Call) -> Invoke | Refusal:
        path = call.path
        if path == "/":
            service = None
        elif path.startswith("/run/") and "/" not in path[5:]:
            service = path[5:]
        else:
            return Refusal(404, "OSCAR mode serves POST /run/<service> and POST /.\n")
        config = self._config
        if call.method != "POST":
            return Refusal(405, headers={"Allow": "POST"})
        if config.check_token and not _bearer_matches(
                _text(call.header("authorization")), config.service_token):
            return Refusal(401, "Missing or invalid service token.\n",
                           {"WWW-Authenticate": 'Bearer realm="oscar"'})
        if service is not None and config.service_name and service != config.service_name:
            return Refusal(404, f"No service {service!r} here.\n")
        return self._invoker.invoke

    def environment_headers(self, headers: Sequence[tuple[str, str]]
                            ) -> Sequence[tuple[str, str]]:
        if self._invoker.strips_credentials:
            # Outside OSCAR's pod the service token is the gateway's, not the script's.
            return [(k, v) for k, v in headers if k.lower() != "authorization"]
        return headers


def make(config: Config, executor: Executor, environ: Mapping[str, str],
         base: Mapping[str, str], on_exit: Callable[[str], None]) -> Mode:
    """The configured mode. `environ` is the function's environment, `base` the
    gateway's own, `on_exit` what to do when http mode's server ends."""
    if config.mode == "oscar":
        return Oscar(config, executor, base)
    if config.mode == "http":
        return Http(config, executor, environ, on_exit)
    if config.mode in ("streaming", "serializing"):
        return Forking(config, executor)
    if config.mode == "static":
        return Static(config, executor)
    return Classic(config, executor)


def _bearer_matches(authorization: str | None, token: str) -> bool:
    from watchdog.oscar import bearer_matches  # loaded with OSCAR mode: a lookup

    return bearer_matches(authorization, token)


def _quoted(path: str) -> str:
    from urllib.parse import quote  # absolute-form targets only: rare

    return quote(path, safe="/:@!$&'()*+,;=-._~", errors="surrogateescape")


def _text(value: str | None) -> str | None:
    """A header's value if it was UTF-8, else None (a header that cannot match)."""
    if value is None:
        return None
    try:
        value.encode()
    except UnicodeEncodeError:  # surrogate escapes of bytes that were not UTF-8
        return None
    return value
