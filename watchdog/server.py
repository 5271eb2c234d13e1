"""The HTTP layer: routes, health and readiness, metrics listener, and the
lifecycle `start -> serve -> drain -> stop` of a `Watchdog`.

Everything that decides what happens to a request lives in the executor; this
module only translates between HTTP (`watchdog.http`, on the function port and
the metrics port) and it. aiohttp is not imported here: it is the client's (`fwatchdog
run`), and importing it was half of the gateway's cold start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any

from watchdog import cgi, modes, sniff, waitqueue
from watchdog.config import Config
from watchdog.executor import Body, Executor, Result
from watchdog.http import (
    AnswerCutOff,
    BodyError,
    HttpServer,
    Outcome,
    Request,
    Response,
    default_max_connections,
)
from watchdog.limiter import Limiter, SharedSlots
from watchdog.logs import FIELDS, AccessLog
from watchdog.metrics import CONTENT_TYPE, Metrics, Registry, SharedRegistry

log = logging.getLogger("watchdog")

Invoke = modes.Invoke
# Client closed the connection before the answer (nginx's convention), for
# metrics and logs only: nobody receives it.
CLIENT_CLOSED = 499
# Idle keep-alive connections (and unfinished request heads) are closed after
# read_timeout, or this when read_timeout is 0.
IDLE_WITHOUT_READ_TIMEOUT = 75.0
# At the end of a drain, how long answers already decided may take to be written.
WRITE_OUT_GRACE = 5.0
# marshal_request must hold the body; without max_body_bytes, this bounds it.
MARSHAL_BODY_CAP = 64 * 2**20
# Connections at once on the metrics port (scrapers, probes): the longest idle is
# shed beyond it. Within watchdog.http's RESERVED_DESCRIPTORS.
METRICS_MAX_CONNECTIONS = 16


class Watchdog:
    """The gateway. `serve()` runs until `request_shutdown()` (a signal, or a test)."""

    def __init__(
        self,
        config: Config,
        environ: Mapping[str, str],
        *,
        registry: Registry | None = None,
        handle_signals: bool = False,
        shared: SharedSlots | None = None,
    ) -> None:
        self.config = config
        self.environ = dict(environ)  # the function's base environment
        self.worker = shared.index if shared is not None else None
        self.limiter: Limiter
        if shared is None:
            self.limiter = Limiter(config.max_inflight)
        else:
            self.limiter = shared.limiter(config.max_inflight)
        if registry is None:
            # With several workers, /metrics adds up every worker's numbers.
            registry = Registry() if shared is None else SharedRegistry(shared.metrics_dir)
        self.registry = registry
        # The limiter's count is every worker's when it is shared.
        self.metrics = Metrics(registry, max_inflight=config.max_inflight,
                               inflight=lambda: self.limiter.inflight)
        self.executor = Executor(config, self.limiter, self.metrics)
        # The mode: what a request becomes (watchdog.modes), the rest being shared.
        self.mode = modes.make(config, self.executor, self.environ, environ,
                               self._upstream_exited)
        self.environ = dict(self.mode.function_environment(self.environ))
        # Over the limit, a request waits here for a slot (max_queue), else gets 429.
        self.queue = (waitqueue.WaitQueue(self.limiter, config.max_queue, config.queue_timeout)
                      if config.max_queue else None)
        self.access_log = AccessLog(config.log_level)
        self.accepting = False
        self.exit_status = 0  # of the process: 1 when the upstream server died
        self.addresses: dict[str, tuple[str, int]] = {}
        self._handle_signals = handle_signals
        self._should_exit = asyncio.Event()
        self._hurry = asyncio.Event()  # a second signal: skip the waits
        self._requests = 0  # function requests being handled
        self._idle = asyncio.Event()
        self._idle.set()
        self._http: HttpServer | None = None
        self._metrics_http: HttpServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle ---------------------------------------------------------------

    async def serve(self) -> None:
        try:
            await self.start()
        except BaseException:
            # Whatever did start (listeners, the reaper) stops without a word: the
            # error that stopped the start, which the caller logs, is the last one.
            await self.stop()
            raise
        try:
            await self._should_exit.wait()
        finally:
            await self.drain()
            await self.stop()
            log.info("stopped")

    def request_shutdown(self) -> None:
        """Record a shutdown request; the work happens in `serve`."""
        if self._should_exit.is_set():
            log.warning("second shutdown request: ending running functions now")
            self._hurry.set()
        self._should_exit.set()

    async def start(self) -> None:
        config = self.config
        if self._handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_shutdown)
        self.executor.start()
        await self.mode.start()  # before the ports: http mode's server accepts first
        # The idle deadline also runs from a connection's start until a request's
        # head is complete: it bounds a client that sends its headers a byte at a
        # time (as Go's http.Server uses ReadTimeout for idle connections).
        idle = config.read_timeout or IDLE_WITHOUT_READ_TIMEOUT
        self._loop = asyncio.get_running_loop()
        max_connections = config.max_connections or default_max_connections(
            config.max_inflight)
        self._http = HttpServer(self._dispatch, idle_timeout=idle,
                                max_connections=max_connections)
        self.addresses["function"] = await self._listen(
            self._http, "function", config.bind_address, config.port)
        # Not drained with the function port: scrapes go on until stop().
        self._metrics_http = HttpServer(self._metrics, idle_timeout=idle,
                                        max_connections=METRICS_MAX_CONNECTIONS)
        self.addresses["metrics"] = await self._listen(
            self._metrics_http, "metrics", config.metrics_bind_address, config.metrics_port)
        if not config.suppress_lock:
            # 0660 less the umask (0640 under 022), as the Go watchdog writes it.
            os.close(os.open(config.lock_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o660))
        self.accepting = True
        log.info("listening", extra={FIELDS: {
            "address": _show(self.addresses["function"]),
            "metrics_address": _show(self.addresses["metrics"]),
            "fprocess": " ".join(config.fprocess),
            "max_inflight": config.max_inflight,
            "max_connections": max_connections,
            **({"worker": self.worker} if self.worker is not None else {}),
            "mode": config.mode,
            "reason": config.mode_reason,
            **({"supervisor": " ".join(config.supervisor)} if config.supervisor else {}),
        }})

    async def drain(self) -> None:
        """The Go watchdog's sequence: unhealthy -> keep serving for
        healthcheck_interval -> stop accepting and wait for in-flight requests up to
        write_timeout -> end what is left, whole process groups."""
        config = self.config
        self.accepting = False
        self._remove_lock()
        if self.queue is not None:
            self.queue.close()  # who waits for a slot gets its 503 now
        waits = config.healthcheck_interval > 0 or self._requests > 0
        log.info("shutting down", extra={FIELDS: {
            "healthcheck_interval": config.healthcheck_interval,
            "drain_timeout": config.write_timeout,
            "inflight": self._requests,
            # Ctrl-C on a terminal would otherwise seem ignored for healthcheck_interval.
            **({"hint": "a second Ctrl-C (or SIGTERM) skips the waits and ends running "
                        "functions"} if self._handle_signals and waits else {}),
        }})
        await self._wait_unless_hurried(asyncio.sleep(config.healthcheck_interval))
        if self._http is not None:
            self._http.stop_listening()
            self._http.close_idle()  # and the others once answered
        drained = await self._wait_unless_hurried(
            self._idle.wait(), within=config.write_timeout or None)
        if not drained and self._requests:
            log.warning("drain deadline passed: ending running functions",
                        extra={FIELDS: {"inflight": self._requests}})
        # Whatever is still running gets a 503 once its group is gone. A handler
        # still waiting for a slow client's body is cancelled by the cleanup.
        self.executor.stop_all("shutdown")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(config.kill_grace + WRITE_OUT_GRACE):
                await self._idle.wait()

    async def stop(self) -> None:
        if self._http is not None:
            await self._http.shutdown(WRITE_OUT_GRACE)
        if self._metrics_http is not None:  # the last listener closed, as it was opened
            await self._metrics_http.shutdown(WRITE_OUT_GRACE)
            self._metrics_http = None
        await self.executor.stop()  # functions of clients that hung up, and orphans
        await self.mode.stop()  # its server, its workspaces
        self._remove_lock()
        if self._handle_signals:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        self.access_log.flush()

    # --- handlers ----------------------------------------------------------------------

    def _dispatch(self, request: Request) -> Outcome:
        path = request.path
        if path.startswith("/_/"):
            if path == "/_/health":
                return self._health(request)
            if path == "/_/ready":
                return self._ready(request)
        routed = self.mode.route(request)
        if isinstance(routed, modes.Refusal):
            headers = dict(routed.headers)
            return self._refuse(request, Response.text(routed.status, routed.text, **headers)
                                if routed.text else Response(routed.status, headers=headers))
        return self._invoke(request, routed)

    def _upstream_exited(self, reason: str) -> None:
        log.error("the function's server ended: stopping, as of-watchdog does",
                  extra={FIELDS: {"reason": reason}})
        self.exit_status = 1
        self._hurry.set()
        self.request_shutdown()

    def _refuse(self, request: Request, response: Response) -> Response:
        self._account(request, response.status, 0.0, None)
        return response

    def _invoke(self, request: Request, invoke: Invoke) -> Outcome:
        """The path every function request takes: 429 and 413 at once (no task, no
        body), else the mode's invocation, then the answer, metrics and the log line."""
        began = time.perf_counter()
        executor = self.executor
        result: Result | None
        queue = self.queue
        if self.limiter.at_capacity:
            if queue is None:
                result = executor.rejected()  # at once: no env, no body, no fork
            elif not queue.has_room:
                result = executor.rejected("queue_full", queue.depth)
            else:
                result = executor.reject_body_size(request.content_length)
        else:
            result = executor.reject_body_size(request.content_length)
        if result is None and queue is not None:
            return self._take_slot_then_run(request, invoke, began)
        if result is not None:
            # Not invited to send its body, a client holding it back for a 100 is not
            # waited for: the HTTP layer closes the connection after this.
            self._account(request, result.status, time.perf_counter() - began, result)
            return Response(result.status, result.body, result.headers)
        if request.header("expect") is not None:
            refused = self._expect(request)
            if refused is not None:
                return refused
        # The loop's clock for deadlines (uvloop's ticks in milliseconds), a fine one
        # for durations.
        assert self._loop is not None
        return self._run(request, invoke, self._loop.time(), began)

    async def _take_slot_then_run(self, request: Request, invoke: Invoke,
                                  began: float) -> Response:
        """With the queue: a slot now, else a wait for one (its body not yet
        invited) while the queue has room, else 429; then run as any request, the
        deadlines counting from its arrival. The slot is taken here, in the
        request's task, so that requests of one turn of the loop are queued, not
        refused by their invocation's admit, and a task cancelled before it ran
        holds none."""
        queue = self.queue
        assert queue is not None
        assert self._loop is not None
        started = self._loop.time()
        reason: str | None = None
        if self.limiter.try_acquire():
            waitqueue.GRANTED.set(True)  # the invocation's admit takes this slot
        elif not queue.has_room:
            rejected = self.executor.rejected("queue_full", queue.depth)
            self._account(request, 429, time.perf_counter() - began, None)
            return Response(rejected.status, rejected.body, rejected.headers)
        else:
            self._requests += 1  # the drain sees it, and answers it 503
            self._idle.clear()
            self.metrics.queue_depth.set(queue.depth + 1)
            try:
                reason = await queue.wait()
            finally:
                self.metrics.queue_depth.set(queue.depth)
                self._requests -= 1
                if not self._requests:
                    self._idle.set()
            self.metrics.observe_queue_wait(time.perf_counter() - began)
        try:
            if reason is not None:
                if reason == waitqueue.SHUTDOWN:
                    self.metrics.observe_rejection(reason)
                    refused = Response.text(503, "Gateway shutting down: the request "
                                            "waited for a slot and got none.\n")
                else:
                    rejected = self.executor.rejected(reason, queue.depth)
                    refused = Response(rejected.status, rejected.body, rejected.headers)
                self._account(request, refused.status, time.perf_counter() - began, None)
                return refused
            if request.header("expect") is not None:
                expected = self._expect(request)
                if expected is not None:
                    return expected
            return await self._run(request, invoke, started, began)
        finally:
            waitqueue.settle(self.limiter)  # a slot granted that nothing took

    async def _run(self, request: Request, invoke: Invoke, started: float,
                   began: float) -> Response:
        self._requests += 1
        self._idle.clear()
        result: Result | None = None
        try:
            try:
                body = await self._body(request, started)
                if isinstance(body, Result):
                    result = body
                else:
                    result = await invoke(self._environment(request), body, started)
            except asyncio.CancelledError:
                self._account(request, CLIENT_CLOSED, time.perf_counter() - began, None)
                raise
            except (BodyError, ConnectionError) as exc:
                # The body broke off or was malformed while the gateway read it (the
                # function, if it started, was ended by the executor on the way out).
                result = Result.text(400, f"Bad request body: {exc}")
            except Exception:
                # A bug of ours must not take the gateway down, nor go unanswered.
                log.exception("request failed")
                result = Result.text(500, "Gateway error: see the gateway's log.")
            return self._answer(request, result, began)
        finally:
            try:
                if result is not None and result.cleanup is not None:
                    result.cleanup()
            finally:  # a failing cleanup must not leak the in-flight count (drain waits on it)
                self._requests -= 1
                if not self._requests:
                    self._idle.set()

    def _answer(self, request: Request, result: Result, began: float) -> Response:
        headers = result.headers
        duration = time.perf_counter() - began
        if result.exit is not None and result.status == 200:  # timed as by Go
            headers["X-Duration-Seconds"] = f"{duration:f}"
        if (result.exit is not None or result.live) and "Content-Type" not in headers:
            content_type = self._content_type(request, result)
            if content_type:
                headers["Content-Type"] = content_type
        if result.stream is None:
            self._account(request, result.status, duration, result)
            tunnel_ended = None
            if result.tunnel is not None:  # its slot and connection: until it ends
                tunnel_ended, result.cleanup = result.cleanup, None
            return Response(result.status, result.body, headers,
                            content_length=result.content_length or 0,
                            more_headers=result.more_headers, tunnel=result.tunnel,
                            on_sent=tunnel_ended)
        # Made while it is sent, from what the cleanup would remove: the cleanup
        # waits for the answer to have left.
        on_sent, result.cleanup = result.cleanup, None
        stream = result.stream
        if result.live:
            # Its run ends after the head: counted (and logged with its exit) then.
            stream = _cut_off_when_incomplete(stream)
            on_sent = self._account_when_sent(request, result, began, on_sent)
        else:
            self._account(request, result.status, duration, result)
        return Response(result.status, headers=headers, stream=stream,
                        content_length=result.content_length, on_sent=on_sent,
                        more_headers=result.more_headers)

    def _account_when_sent(self, request: Request, result: Result, began: float,
                           then: Callable[[], None] | None) -> Callable[[], None]:
        def sent() -> None:
            try:
                if then is not None:
                    then()
            finally:
                self._account(request, result.status, time.perf_counter() - began, result)
        return sent

    async def _body(self, request: Request, started: float) -> Body | Result:
        body = request.body
        config = self.config
        holder = self.mode.holds_body  # marshal_request, buffer_http, or None
        if holder is None or (body.complete and holder == "buffer_http"):
            # Most bodies have all arrived with the head: hand them over whole.
            return body.take() if body.complete else body.chunks()
        cap = config.max_body_bytes or MARSHAL_BODY_CAP
        raw = bytearray()
        try:
            async with asyncio.timeout_at(
                    started + config.read_timeout if config.read_timeout else None):
                async for chunk in body.chunks():
                    raw += chunk
                    if len(raw) > cap:
                        return Result.text(413, f"Request body larger than {cap} bytes "
                                           f"({holder} holds the whole body).")
        except TimeoutError:
            return Result.text(408, "Request body not received within read_timeout.")
        if holder == "buffer_http":
            return bytes(raw)
        return cgi.marshal_request(request.headers, bytes(raw))

    def _environment(self, request: Request, path: str | None = None) -> Mapping[str, str]:
        if not self.config.cgi_headers or not self.mode.forks:
            return self.environ
        transfer_encoding = request.header("transfer-encoding")
        content_length = request.content_length
        if content_length is None:
            content_length = -1 if transfer_encoding else 0
        headers = self.mode.environment_headers(request.headers)
        return cgi.function_environment(
            self.environ,
            method=request.method,
            path=request.path if path is None else path,
            raw_query=request.query,
            host=request.host,
            headers=headers,
            content_length=content_length,
            transfer_encoding=transfer_encoding,
        )

    def _account(self, request: Request, status: int, duration: float,
                 result: Result | None) -> None:
        self.metrics.observe_request(status, request.method, duration)
        if self.access_log.enabled:
            exit = result.exit if result is not None else None
            self.access_log.request(request.method, request.path, status, duration,
                                    self.limiter.inflight,
                                    exit.status_label if exit is not None else "-",
                                    (request.header("x-call-id") or "none")
                                    if self.config.log_callid else None)

    def _expect(self, request: Request) -> Response | None:
        """`Expect: 100-continue`, once the request is admitted: the body is invited
        only when it will be used, so that a client refused (429, 413, 401, 404, 405)
        never uploads it (curl asks for bodies over 1 MiB, as OSCAR's base64 inputs
        are)."""
        expect = (request.header("expect") or "").lower()
        if expect != "100-continue":  # in HTTP/1.0 too, as Go
            # Echoed as ASCII: a value that is not UTF-8 would not encode.
            return self._refuse(request, Response.text(417, f"Unknown Expect: {expect!a}\n"))
        if request.awaits_continue:  # HTTP/1.1 only: a 1.0 client sends its body anyway
            request.send_continue()
        return None

    def _content_type(self, request: Request, result: Result) -> str | None:
        """The Go watchdog's: on a 200, the content_type setting, else the request's;
        otherwise (and on a 500) the type net/http sniffs from the body's first bytes,
        read from its file when it was spilled. None for an empty body, as Go."""
        if result.status == 200:
            given = self.config.content_type or request.header("content-type")
            if given:
                return given
        head = result.head(sniff.SNIFF_LENGTH)
        return sniff.content_type(head) if head else None

    def _health(self, request: Request) -> Response:
        """GET only, as the Go watchdog (HEAD too is 405 there). Neither counted nor
        logged: a probe is not a function request."""
        if request.method != "GET":
            return Response(405, headers={"Allow": "GET"})
        healthy = self.accepting and (
            self.config.suppress_lock or os.path.exists(self.config.lock_path))
        if healthy:
            return Response.text(200, "OK")
        return Response(503)

    def _ready(self, request: Request) -> Outcome:
        """GET and HEAD (the Go watchdog has no such path: its function gets it)."""
        if request.method not in ("GET", "HEAD"):
            return Response(405, headers={"Allow": "GET, HEAD"})
        if not self.accepting:
            return Response(503)
        if self.limiter.at_capacity:
            return Response(429)
        path = self.config.ready_path
        check = self.mode.ready(request, path) if path else None
        if check is not None:
            return self._ask_function(request, check, path)
        return Response.text(200, "OK")

    async def _ask_function(self, request: Request, check: Invoke, path: str) -> Response:
        """ready_path, as of-watchdog asks it: the function's own answer to GET
        ready_path is the readiness (taking a slot while it runs, so that probes
        never run beyond the limit; neither counted nor logged as a request)."""
        assert self._loop is not None
        result = await check(self._environment(request, path), b"", self._loop.time())
        try:
            if result.stream is not None:  # only its status: the rest is not awaited
                return Response(result.status, headers=result.headers)
            return Response(result.status, result.body, result.headers)
        finally:
            if result.cleanup is not None:
                result.cleanup()

    def _metrics(self, request: Request) -> Response:
        """The metrics port: GET and HEAD /metrics, nothing else (not logged, not
        counted: a scrape is not a function request)."""
        if request.path != "/metrics":
            return Response.text(404, "Not found: the metrics port serves /metrics.\n")
        if request.method not in ("GET", "HEAD"):
            return Response(405, headers={"Allow": "GET, HEAD"})
        return Response(200, [self.registry.expose()], {"Content-Type": CONTENT_TYPE})

    # --- helpers ---------------------------------------------------------------------

    async def _listen(self, server: HttpServer, name: str, host: str,
                      port: int) -> tuple[str, int]:
        try:
            return await server.listen(host or None, port, reuse_port=self.worker is not None)
        except OSError as error:
            raise ListenError(name, host, port, error) from error

    async def _wait_unless_hurried(self, waiting: Coroutine[Any, Any, Any],
                                   within: float | None = None) -> bool:
        """Await `waiting` unless a second signal comes first or `within` seconds
        pass; True if it finished."""
        task = asyncio.ensure_future(waiting)
        hurry = asyncio.ensure_future(self._hurry.wait())
        done, _ = await asyncio.wait({task, hurry}, timeout=within,
                                     return_when=asyncio.FIRST_COMPLETED)
        for pending in (task, hurry):
            pending.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(task, hurry, return_exceptions=True)
        return task in done

    def _remove_lock(self) -> None:
        if not self.config.suppress_lock:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.config.lock_path)


def _cut_off_when_incomplete(
        stream: Callable[[], AsyncIterator[bytes]]) -> Callable[[], AsyncIterator[bytes]]:
    """A live output whose function failed after the head: the HTTP layer ends the
    answer without the end of its body, as the client must see it."""
    from watchdog.streaming import OutputIncomplete

    async def pieces() -> AsyncIterator[bytes]:
        try:
            async for piece in stream():
                yield piece
        except OutputIncomplete as exc:
            raise AnswerCutOff(str(exc)) from exc
    return pieces








class ListenError(OSError):
    """A port the gateway cannot listen on, named with its address and the reason
    (the event loop's own words differ between asyncio and uvloop)."""

    def __init__(self, name: str, host: str, port: int, cause: OSError) -> None:
        reason = os.strerror(cause.errno) if cause.errno else str(cause)
        # All interfaces (an empty bind address) shown as `ss` shows them.
        super().__init__(cause.errno, f"cannot listen on {_show((host or '*', port))} "
                                      f"({name} port): {reason}")

    def __str__(self) -> str:
        return str(self.strerror)


def _show(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
