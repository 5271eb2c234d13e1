"""OSCAR's synchronous invocation, in the gateway instead of a FaaS Supervisor.

The body becomes the script's input file (a JSON document verbatim, anything
else strictly base64-decoded as it streams in); the script runs in a private
workspace; what it leaves in $TMP_OUTPUT_DIR comes back base64-encoded (one file
as it is, several as a zip), or its own output when it leaves nothing.

Knows nothing of HTTP; runs the script through the core's Executor, so the
limit, timeouts, process groups and metrics are the ones of classic mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hmac
import logging
import os
import threading
from collections.abc import Callable, Mapping

from watchdog import handover, oscar_events, oscar_pod
from watchdog.config import Config
from watchdog.executor import Body, Executor, Result, as_chunks
from watchdog.logs import FIELDS
from watchdog.oscar_input import Base64Decoder, InputError, write_input
from watchdog.oscar_output import (
    OUTPUT_HEADER,
    Removals,
    Workspace,
    base64_length,
    encode_exactly,
    header_name,
    make_unnamed_file,
    open_output,
    output_files,
    shown_name,
    write_zip,
)

log = logging.getLogger("watchdog")

# Never handed to a script outside OSCAR's pod (in it, only the file's path).
TOKEN_VARIABLES = (oscar_pod.SERVICE_TOKEN, oscar_pod.SERVICE_TOKEN_FILE)




# --- authorisation ---------------------------------------------------------------------


def bearer_matches(authorization: str | None, token: str) -> bool:
    """`Authorization: Bearer <token>`, compared in constant time."""
    if not authorization:
        return False
    scheme, _, credentials = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(credentials.strip().encode(), token.encode())


# --- one invocation ----------------------------------------------------------------------


class OscarInvoker:
    def __init__(self, config: Config, executor: Executor, workspace_root: str,
                 service: oscar_pod.ServiceDefinition | None = None) -> None:
        self._config = config
        self._executor = executor
        self._root = workspace_root
        # The pod's script and FDL, as the supervisor finds them; None: fprocess only.
        self._service = service
        # What the gateway hands over to: OSCAR's supervisor, when fprocess is it.
        self._supervisor = config.supervisor
        # In OSCAR's pod the script sees the caller's Authorization, as OSCAR gives it.
        self.strips_credentials = not config.oscar_pod
        self.removals = Removals()  # awaited by the gateway's stop()

    async def invoke(self, env: Mapping[str, str], body: Body, started: float) -> Result:
        executor = self._executor
        # Before the slot is taken: nothing between admit() and the try below may fail.
        fdl = self._service.fdl() if self._service is not None else oscar_pod.NO_FDL
        rejected = executor.admit()
        if rejected is not None:
            return rejected
        every_call = handover.reason_for_every_call(fdl)
        if self._supervisor and every_call:
            return await self._hand_over(env, body, started, every_call)
        if self._service is not None and self._service.script_error:
            executor.withdraw()
            return Result.text(500, f"Cannot run the service's script: "
                                    f"{self._service.script_error}.")
        # The slot is the workspace's: held by the request, which packs the output
        # and sends it, and by the script's group, and given back once the folder
        # is gone (off the loop): a pod whose removals lag behind takes no more calls.
        loop = asyncio.get_running_loop()
        try:
            workspace = Workspace(self._root, self.removals, on_removed=lambda:
                                  executor.withdraw(loop.time() - started))
        except OSError as exc:
            executor.withdraw()
            return _storage_error(exc)
        finish = _Shares(1, lambda: None)
        try:
            sniffed = handover.Sniffed(as_chunks(body))
            result = await self._receive(sniffed.chunks(), workspace, started,
                                         raw=fdl.file_stage_in)
            plan = result if result is not None else await self._plan(
                workspace, env, fdl, json=sniffed.first == b"{")
            if isinstance(plan, Result):
                result = plan
            else:
                script_env, reason = plan
                workspace.hold()  # the script's share, let go when its group is gone
                result = await executor.run(
                    script_env, handover.file_chunks(workspace.input_file) if reason
                    else None, started,
                    on_gone=workspace.release, keep_slot=True,
                    argv=self._supervisor if reason else self._script(),
                    combine_output=False if reason else None)
                if reason:
                    result.headers[OUTPUT_HEADER] = "supervisor"
                else:
                    result = self._status(result)
                    if result.exit is not None and result.status == 200:
                        result, finish = await self._pack(workspace, result, started)
        except BaseException:
            _each(finish.drop, workspace.release)
            raise
        # The request's share: once the answer is sent (or cannot be); after the
        # result's own (a spilled output's file).
        own = result.cleanup
        result.cleanup = lambda: _each(*(own,) if own else (), finish.drop,
                                       workspace.release)
        return result

    async def _hand_over(self, env: Mapping[str, str], body: Body, started: float,
                         reason: str) -> Result:
        """The whole call to the supervisor, the body streamed to it as it arrives."""
        log.debug("handed over to the supervisor", extra={FIELDS: {"reason": reason}})
        result = await self._executor.run(env, body, started, argv=self._supervisor,
                                          combine_output=False)
        result.headers[OUTPUT_HEADER] = "supervisor"
        return result

    async def _plan(self, workspace: Workspace, env: Mapping[str, str], fdl: oscar_pod.Fdl,
                    *, json: bool) -> tuple[dict[str, str], str] | Result:
        """The received body as the supervisor would take it: the script's
        environment, and why the supervisor should serve it instead (empty: it
        should not), or the answer when the body cannot be an input."""
        script_env = {**env, **workspace.environment()}
        if json:
            try:
                event = await asyncio.to_thread(oscar_events.classify_file,
                                                workspace.input_file)
            except OSError as exc:
                return _storage_error(exc)
            if event.kind == oscar_events.HAND_OVER and self._supervisor:
                log.debug("handed over to the supervisor",
                          extra={FIELDS: {"reason": event.reason}})
                return dict(env), event.reason
            if event.kind == oscar_events.API_GATEWAY:
                script_env.update(event.variables)
                if not fdl.file_stage_in:
                    failed = await self._api_gateway_input(workspace, event)
                    if failed is not None:
                        return failed
        if fdl.file_stage_in:
            # As the supervisor: no input file, INPUT_FILE_PATH unset.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(workspace.input_file)
            del script_env["INPUT_FILE_PATH"]
        return script_env, ""

    async def _api_gateway_input(self, workspace: Workspace,
                                 event: oscar_events.Event) -> Result | None:
        content = event.body
        if not event.body_is_json:
            decoder = Base64Decoder()
            try:
                content = await asyncio.to_thread(
                    lambda: decoder.feed(event.body) + decoder.finish())
            except InputError as exc:
                return Result.text(exc.status, f"API-Gateway event's body: {exc.reason}")
        try:
            await asyncio.to_thread(handover.replace_input, workspace.input_file, content)
        except OSError as exc:
            return _storage_error(exc)
        return None

    def _script(self) -> tuple[str, ...] | None:
        """The pod's SCRIPT when there is one, else fprocess (None)."""
        return self._service.script if self._service is not None else None

    def _status(self, result: Result) -> Result:
        """With oscar_always_200, a script that failed answers as if it had not, as
        the supervisor does (not one the gateway stopped: timeouts keep theirs)."""
        exit = result.exit
        if (self._config.oscar_always_200 and exit is not None and not exit.ok
                and exit.stopped_for is None and not exit.overflowed):
            return Result.output(200, exit)  # held, or spilled
        return result

    async def _receive(self, body: Body, workspace: Workspace,
                       started: float, *, raw: bool = False) -> Result | None:
        """The body to the input file: decoded, or as it is (`raw`: file_stage_in,
        where the supervisor decodes nothing)."""
        config = self._config
        deadline = started + config.read_timeout if config.read_timeout else None
        try:
            async with asyncio.timeout_at(deadline):
                if not raw:
                    await write_input(as_chunks(body), workspace.input_file,
                                      max_bytes=config.max_body_bytes)
                elif not await handover.spool(as_chunks(body), workspace.input_file,
                                              max_bytes=config.max_body_bytes):
                    raise InputError(413, "Request body larger than max_body_bytes "
                                          f"({config.max_body_bytes}).")
        except TimeoutError:
            return Result.text(408, "Request body not received within read_timeout.")
        except InputError as exc:
            return Result.text(exc.status, exc.reason)
        except OSError as exc:
            return _storage_error(exc)
        return None

    async def _pack(self, workspace: Workspace, result: Result,
                    started: float) -> tuple[Result, _Shares]:
        """The output as the answer: walked, opened (and zipped) in a thread, under
        write_timeout; the returned share closes the answer's file when dropped."""
        config = self._config
        deadline = started + config.write_timeout if config.write_timeout else None
        stop = threading.Event()
        work = asyncio.ensure_future(asyncio.to_thread(
            _pack_output, workspace.output_dir, self._root, stop))
        try:
            async with asyncio.timeout_at(deadline):
                packed = await asyncio.shield(work)
        except BaseException as exc:
            # The thread stops at its next piece; what it made is closed then.
            stop.set()
            work.add_done_callback(_close_packed)
            if isinstance(exc, TimeoutError):
                return Result.text(504, "Output not packed within write_timeout."), _NOTHING
            if isinstance(exc, OSError):
                return _storage_error(exc), _NOTHING
            raise
        if packed is None:
            result.headers[OUTPUT_HEADER] = "log"
            return result, _NOTHING
        fd, size, kind = packed
        return Result(
            200, [],
            {"Content-Type": "text/plain; charset=us-ascii", OUTPUT_HEADER: kind},
            exit=result.exit,
            stream=lambda: encode_exactly(fd, size, deadline),
            content_length=base64_length(size),
        ), _Shares(1, lambda: os.close(fd))


def _pack_output(folder: str, spare: str,
                 stop: threading.Event) -> tuple[int, int, str] | None:
    """(descriptor, size, X-Watchdog-Output) of what to send, or None: no files.
    One file is sent as it is; several as a zip in a file with no name, made in
    `spare`, away from the script's folders."""
    files = output_files(folder)
    while len(files) == 1:
        name, path = files[0]
        try:
            fd, size = open_output(path, folder)
        except OSError as exc:
            log.warning("output file refused",
                        extra={FIELDS: {"name": shown_name(name), "error": exc.strerror}})
            files = []
            break
        return fd, size, f"file; name={header_name(name)}"
    if not files:
        return None
    fd = make_unnamed_file(spare)
    try:
        written = write_zip(files, fd, folder, stop)
        return fd, os.fstat(fd).st_size, f"zip; files={written}"
    except BaseException:
        os.close(fd)
        raise


def _close_packed(work: asyncio.Future[tuple[int, int, str] | None]) -> None:
    if work.cancelled() or work.exception() is not None:
        return  # retrieved: nothing was left open
    packed = work.result()
    if packed is not None:
        os.close(packed[0])


class _Shares:
    """Something done once, when the last of its holders lets go."""

    def __init__(self, holders: int, then: Callable[[], None]) -> None:
        self._holders = holders
        self._then = then

    def drop(self) -> None:
        self._holders -= 1
        if self._holders == 0:
            self._then()


_NOTHING = _Shares(0, lambda: None)  # nothing to let go of (dropping it does nothing)


def _each(*steps: Callable[[], None]) -> None:
    """Every step, even when one fails: a cleanup's error must not skip the
    bookkeeping after it (a slot never given back, a folder left for good)."""
    for step in steps:
        try:
            step()
        except Exception:
            log.exception("cleanup step failed")


def _storage_error(exc: OSError) -> Result:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return Result.text(507, f"No space left for the request's files: {exc.strerror}.")
    log.error("workspace failure", extra={FIELDS: {"error": str(exc)}})
    return Result.text(500, f"Cannot prepare the request's files: {exc.strerror}.")


def script_environment(environ: Mapping[str, str], *, pod: bool = False) -> dict[str, str]:
    """The pod's environment as the script sees it. In OSCAR's pod, as the supervisor
    passes it (OSCAR_SERVICE_TOKEN included: scripts call other services with it);
    elsewhere the token is the gateway's and stays with it. A token file's path
    never goes on (the gateway has read the token once)."""
    hidden = (oscar_pod.SERVICE_TOKEN_FILE,) if pod else TOKEN_VARIABLES
    return {k: v for k, v in environ.items() if k not in hidden}
