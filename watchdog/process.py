"""Spawn a function in its own process group, feed it, collect it, stop it, reap it.

Knows nothing of HTTP. The mechanism, and why:

- `os.posix_spawnp` (glibc: clone(CLONE_VM|CLONE_VFORK)) costs the same however
  large the gateway grows, where a real fork() copies its page tables; it also
  leaves the event loop's own child machinery out of it. (`spawn` here starts it on
  the calling thread; launcher.py usually has a C thread start it, and hands the
  result to FunctionProcess.)
- Each child leads a new process group, so a stop reaches its grandchildren too.
- The exit is learnt from a pidfd on the event loop (no thread per child; a
  thread only where the kernel has no pidfd_open) and read with WNOWAIT: the
  leader stays a zombie until the group has been swept with SIGKILL, so its pid,
  which is also the group id, cannot be reused by a stranger in between.
- Pipes are non-blocking and served by loop callbacks (stdout and the pidfd through
  one epoll set, EpollReadiness): writing the body waits for the pipe to drain
  (backpressure); output is bounded by `max_output`.
- Output is held in memory up to a threshold, and past it moved to an unnamed file
  (`Spill`), from which the answer is sent: the gateway's memory stays flat
  whatever the size of its functions' answers.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import fcntl
import logging
import os
import select
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass

from watchdog.logs import FIELDS

log = logging.getLogger("watchdog")

# After the leader exits, how long a grandchild that still holds stdout may go on
# writing before the response is sent without it and the group is swept.
STRAY_OUTPUT_GRACE = 0.1
READ_SIZE = 256 * 1024
# A streamed function's output left in its pipe when its group is swept is read
# up to this much (the largest a pipe grows to unprivileged, fs.pipe-max-size): a
# writer that left the group cannot keep the gateway reading.
PIPE_DRAIN_CAP = 2**20
# The pipes of a streamed function (its stdin and stdout), in bytes.
STREAM_PIPE_SIZE = 2**20

# Python ignores SIGPIPE and SIGXFSZ, and an ignored signal stays ignored across
# exec: give the function the defaults, as subprocess's restore_signals does.
_RESET_SIGNALS = tuple(
    s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP)
)
_HAS_PIDFD = hasattr(os, "pidfd_open")


class SpawnError(OSError):
    """The function could not be started (missing, not executable, no resources)."""


@dataclass(slots=True)
class Exit:
    """How a function ended."""

    code: int | None  # exit status; None when ended by a signal
    signal: int | None
    output: list[bytes]
    output_size: int
    overflowed: bool  # output passed max_output and was dropped
    stopped_for: str | None  # why the gateway stopped it, if it did
    duration: float  # seconds from spawn to exit
    # The output, when it passed the spill threshold: in a file, `output` empty.
    spilled: SpilledOutput | None = None
    core_dumped: bool = False  # ended by a signal that dumped core (CLD_DUMPED)

    @property
    def ok(self) -> bool:
        return self.code == 0 and self.stopped_for is None and not self.overflowed

    @property
    def status_label(self) -> str:
        """`0`..`255` or a signal name: bounded, for a metric label."""
        if self.signal is not None:
            return signal_name(self.signal)
        return str(self.code)

    def describe(self) -> str:
        """As the Go watchdog's body starts: `exit status 3`, `signal: killed`,
        `signal: segmentation fault (core dumped)`."""
        if self.signal is not None:
            dumped = " (core dumped)" if self.core_dumped else ""
            return f"signal: {signal_text(self.signal)}{dumped}"
        return f"exit status {self.code}"


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"SIG{number}"


# How Go names a signal in an exit's text (syscall.Signal's String on Linux): the C
# library's description with its first letter in lower case, from a fixed table, so
# that it does not change with the libc the gateway runs on (musl words some of
# them differently, and numbers the real-time ones). Real-time signals, and any
# other, are `signal N`.
_SIGNAL_TEXT = {
    "SIGHUP": "hangup", "SIGINT": "interrupt", "SIGQUIT": "quit",
    "SIGILL": "illegal instruction", "SIGTRAP": "trace/breakpoint trap",
    "SIGABRT": "aborted", "SIGBUS": "bus error", "SIGFPE": "floating point exception",
    "SIGKILL": "killed", "SIGUSR1": "user defined signal 1",
    "SIGSEGV": "segmentation fault", "SIGUSR2": "user defined signal 2",
    "SIGPIPE": "broken pipe", "SIGALRM": "alarm clock", "SIGTERM": "terminated",
    "SIGSTKFLT": "stack fault", "SIGCHLD": "child exited", "SIGCONT": "continued",
    "SIGSTOP": "stopped (signal)", "SIGTSTP": "stopped", "SIGTTIN": "stopped (tty input)",
    "SIGTTOU": "stopped (tty output)", "SIGURG": "urgent I/O condition",
    "SIGXCPU": "CPU time limit exceeded", "SIGXFSZ": "file size limit exceeded",
    "SIGVTALRM": "virtual timer expired", "SIGPROF": "profiling timer expired",
    "SIGWINCH": "window changed", "SIGIO": "I/O possible", "SIGPWR": "power failure",
    "SIGSYS": "bad system call",
}


def signal_text(number: int) -> str:
    """`killed` for 9, `segmentation fault` for 11, `signal 34` for SIGRTMIN."""
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = ""
    return _SIGNAL_TEXT.get(name, f"signal {number}")


class Spill:
    """Where output past `threshold` bytes goes: an unnamed file (O_TMPFILE, 0600) in
    `folder`, which no name leads to and which is gone with its last descriptor.
    Where the file system has no O_TMPFILE, a file made in a private folder of the
    gateway's (0700, a random name) and unlinked at once."""

    def __init__(self, threshold: int, folder: str) -> None:
        self.threshold = threshold
        self._folder = folder
        self._private: str | None = None
        self._warned = False

    def open(self) -> int:
        try:
            return os.open(self._folder, os.O_TMPFILE | os.O_RDWR, 0o600)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
        import tempfile  # here only: loaded at every start, it was 3% of the start

        if self._private is None:
            self._private = tempfile.mkdtemp(prefix="watchdog-output-", dir=self._folder)
        fd, path = tempfile.mkstemp(dir=self._private)
        os.unlink(path)
        return fd

    def open_or_none(self) -> int | None:
        """`open()`, or None where no file can be made at all ($TMPDIR missing or
        read-only, as with readOnlyRootFilesystem and suppress_lock, or out of
        descriptors): the output is then held in memory up to max_output_bytes, as
        before spilling, rather than a working function answered 500. Said once."""
        try:
            return self.open()
        except OSError as exc:
            if self._warned:
                return None
            self._warned = True
            log.warning("output is held in memory: no file for it under $TMPDIR",
                        extra={FIELDS: {"folder": self._folder, "error": exc.strerror}})
            return None

    def close(self) -> None:
        """Remove the private folder, if one was made (its files had no names)."""
        if self._private is not None:
            import shutil  # as tempfile above

            shutil.rmtree(self._private, ignore_errors=True)
            self._private = None


class SpilledOutput:
    """A function's output in a file only the gateway holds (see `Spill`). Closed by
    whoever sent it; else when dropped, as a file object is."""

    __slots__ = ("fd", "size")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:  # a regular file takes it all, but for an error
            view = view[os.write(self.fd, view):]
        self.size += len(data)

    def head(self, size: int) -> bytes:
        return os.pread(self.fd, min(size, self.size), 0)

    async def chunks(self, prefix: bytes = b"") -> AsyncIterator[bytes]:
        """`prefix`, then exactly `size` bytes: the file is the gateway's alone, so
        it cannot shrink under the answer's Content-Length."""
        if prefix:
            yield prefix
        offset = 0
        while offset < self.size:
            # From the page cache, where it was written a moment ago: as quick as
            # a hop to a thread would be, and the loop waits for each write anyway.
            piece = os.pread(self.fd, min(READ_SIZE, self.size - offset), offset)
            if not piece:
                raise OSError(errno.EIO, "spilled output shorter than written")
            offset += len(piece)
            yield piece

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __del__(self) -> None:
        self.close()


class OutputStream:
    """A function's stdout as it is written (streaming mode). At most about
    `high_water` bytes are held: past it the pipe is not read, the function blocks
    on its writes, and a client that reads slowly slows the function down instead
    of growing the gateway's memory."""

    __slots__ = ("_chunks", "_ended", "_high_water", "_loop", "_resume", "_size", "_waiter",
                 "sent")

    def __init__(self, loop: asyncio.AbstractEventLoop, high_water: int,
                 resume: Callable[[], None]) -> None:
        self._loop = loop
        self._high_water = high_water
        self._resume = resume
        self._chunks: collections.deque[bytes] = collections.deque()
        self._size = 0
        self._ended = False
        self._waiter: asyncio.Future[None] | None = None
        self.sent = 0  # bytes taken out so far

    @property
    def ended(self) -> bool:
        """No more output: the pipe is closed (what is held may remain)."""
        return self._ended

    @property
    def full(self) -> bool:
        return self._size >= self._high_water

    def push(self, data: bytes) -> bool:
        """Hold `data`; False once the stream is full (holds `high_water` or more)."""
        self._chunks.append(data)
        self._size += len(data)
        self._wake()
        return self._size < self._high_water

    def end(self) -> None:
        self._ended = True
        self._wake()

    async def ready(self) -> None:
        """Until some output is held, or there will be none."""
        if not self._chunks and not self._ended:
            self._waiter = self._loop.create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    def take(self) -> bytes:
        """What is held, joined (b"" if nothing); reading resumes below high water."""
        if not self._chunks:
            return b""
        data = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        was_full = self._size >= self._high_water
        self._size = 0
        self.sent += len(data)
        if was_full and not self._ended:
            self._resume()
        return data

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class EpollReadiness:
    """Every function's descriptors in one epoll set, which the loop watches as a
    single reader. Two descriptors a request come and go (stdout and the pidfd):
    uvloop's add_reader makes a libuv handle each time and its remove_reader costs
    three epoll_ctl calls; here each costs one. Callbacks must bear a spurious
    call (an event fetched for a descriptor closed and reused in the meantime)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._epoll = select.epoll()
        self._callbacks: dict[int, Callable[[], object]] = {}
        loop.add_reader(self._epoll.fileno(), self._dispatch)

    def add(self, fd: int, callback: Callable[[], object]) -> None:
        self._epoll.register(fd, select.EPOLLIN)
        self._callbacks[fd] = callback

    def remove(self, fd: int) -> None:
        # Before the descriptor is closed: a child being started holds a copy of it
        # until it execs, which would keep a closed one in the set.
        self._epoll.unregister(fd)
        del self._callbacks[fd]

    def close(self) -> None:
        self._loop.remove_reader(self._epoll.fileno())
        self._epoll.close()

    def _dispatch(self) -> None:
        callbacks = self._callbacks
        for fd, _ in self._epoll.poll(0):
            callback = callbacks.get(fd)
            if callback is not None:
                callback()


class FunctionProcess:
    """One running function. Created by `spawn`; ends in `Exit` once reaped."""

    __slots__ = ("_callbacks", "_exit", "_exit_time", "_kill_grace", "_leave", "_loop",
                 "_max_output", "_output", "_output_size", "_overflowed", "_paused", "_pidfd",
                 "_readiness", "_reaped", "_sink", "_spill", "_spilled", "_started",
                 "_status",
                 "_stdin_fd", "_stdout_fd", "_stopped_for", "_timers", "_writable", "fed",
                 "pid")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        pid: int,
        stdin_fd: int,
        stdout_fd: int,
        *,
        max_output: int,
        kill_grace: float,
        pidfd: int = -1,
        readiness: EpollReadiness,
        fed: int = 0,
        spill: Spill | None = None,
        leave_background: bool = False,
    ) -> None:
        self.pid = pid
        self.fed = fed  # bytes of its stdin that whoever started it wrote already
        self._loop = loop
        self._stdin_fd = stdin_fd
        self._stdout_fd = stdout_fd
        self._max_output = max_output
        self._kill_grace = kill_grace
        self._started = time.monotonic()
        self._output: list[bytes] = []
        self._output_size = 0
        self._overflowed = False
        self._spill = spill
        self._spilled: SpilledOutput | None = None
        self._sink: OutputStream | None = None  # streaming mode: the output goes there
        self._paused = False  # the sink is full: stdout is not watched
        self._stopped_for: str | None = None
        # (code, signal, core dumped), once the leader has exited.
        self._status: tuple[int | None, int | None, bool] | None = None
        # What the function leaves in its group at its exit runs on (the Go
        # watchdog's way): its end is then its output's end, however long a
        # background process holds stdout, and the group is swept only when stopped.
        self._leave = leave_background
        self._exit_time = 0.0
        self._timers: list[asyncio.TimerHandle] = []
        self._writable: asyncio.Future[None] | None = None
        self._pidfd = pidfd
        self._exit: Exit | None = None
        self._reaped: asyncio.Future[None] | None = None  # made on the first wait()
        self._callbacks: list[Callable[[Exit], None]] = []
        self._readiness = readiness
        self._readiness.add(stdout_fd, self._on_output)
        try:
            self._watch_exit()
        except BaseException:
            self._readiness.remove(stdout_fd)  # the caller closes it
            raise

    # --- public ------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self._exit is not None

    async def write(self, data: bytes | memoryview) -> bool:
        """Write to the function's stdin, waiting while the pipe is full.

        False when the function no longer reads (closed stdin, exited, stopped):
        the caller stops sending, as the Go watchdog ignores that write error.
        """
        view = memoryview(data)
        while view:
            if self._stdin_fd < 0:
                return False
            try:
                written = os.write(self._stdin_fd, view)
            except BlockingIOError:
                await self._wait_writable()
                continue
            except (BrokenPipeError, ConnectionResetError):
                self.close_stdin()
                return False
            view = view[written:]
        return True

    def close_stdin(self) -> None:
        if self._stdin_fd >= 0:
            fd, self._stdin_fd = self._stdin_fd, -1
            if self._writable is not None:
                self._loop.remove_writer(fd)
                if not self._writable.done():
                    self._writable.set_result(None)
                self._writable = None
            os.close(fd)

    def stop(self, reason: str) -> None:
        """End the whole group: SIGTERM now, SIGKILL after the grace. The first
        reason given is the one reported."""
        if self._exit is not None:
            return
        self.close_stdin()
        if self._status is not None:
            if self._stopped_for is not None:
                return  # its group is in its grace (below): SIGKILL is on its way
            if self._leave:
                # Its end is its output's, which has not come: it is stopped before
                # it, and what it was to leave running ends with its group, as any
                # stopped function's: SIGTERM, then SIGKILL after the grace (the
                # leader is unreaped, so the group's id is still ours).
                self._leave = False
                self._stopped_for = reason
                self._signal_group(signal.SIGTERM)
                self._timers.append(self._loop.call_later(self._kill_grace, self._finish))
                return
            self._finish()  # it ended on its own; only strays may remain: sweep them
            return
        if self._stopped_for is not None:
            return  # stopping already: SIGKILL is on its way
        self._stopped_for = reason
        self._signal_group(signal.SIGTERM)
        self._timers.append(self._loop.call_later(self._kill_grace, self._kill))

    async def wait(self) -> Exit:
        """The Exit, once the group is gone and the leader reaped. Cancelling the
        wait does not stop the process: call `stop`."""
        if self._exit is not None:
            return self._exit
        if self._reaped is None:
            self._reaped = self._loop.create_future()
        await asyncio.shield(self._reaped)
        assert self._exit is not None
        return self._exit

    def stream_output(self, high_water: int) -> OutputStream:
        """From now on its output goes to the stream returned, as it comes (with
        backpressure), and is not kept in its Exit. What was read already is in it."""
        sink = OutputStream(self._loop, high_water, self._resume_output)
        for fd in (self._stdin_fd, self._stdout_fd):
            if fd >= 0:
                # Larger pipes: a quarter of the turns of the loop a MiB streamed
                # takes with the 64 KiB default (up to fs.pipe-max-size, unprivileged).
                with contextlib.suppress(OSError):
                    fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, STREAM_PIPE_SIZE)
        if self._exit is not None:  # all read: hand it over as it was kept
            for held in self._exit.output:
                sink.push(held)
            self._exit.output = []
            sink.end()
            return sink
        for held in self._output:
            sink.push(held)
        self._output = []
        self._sink = sink
        if self._stdout_fd < 0:
            sink.end()
        elif sink.full:
            self._pause_output()
        return sink

    def add_done_callback(self, callback: Callable[[Exit], None]) -> None:
        if self._exit is not None:
            callback(self._exit)
        else:
            self._callbacks.append(callback)

    # --- exit ----------------------------------------------------------------------

    def _watch_exit(self) -> None:
        if self._pidfd >= 0:  # opened by whoever started it
            self._readiness.add(self._pidfd, self._on_exit)
            return
        if _HAS_PIDFD:
            try:
                self._pidfd = os.pidfd_open(self.pid)
            except OSError as exc:
                if exc.errno not in (errno.ENOSYS, errno.EPERM):
                    raise
            else:
                self._readiness.add(self._pidfd, self._on_exit)
                return
        # Old kernel: one thread waits for this pid only (never waitpid(-1)).
        threading.Thread(target=self._wait_in_thread, daemon=True).start()

    def _wait_in_thread(self) -> None:
        while True:
            try:
                os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
                break
            except InterruptedError:
                continue
            except ChildProcessError:
                break
        with contextlib.suppress(RuntimeError):  # loop closed: nothing left to tell
            self._loop.call_soon_threadsafe(self._on_exit)

    def _on_exit(self) -> None:
        if self._status is not None:
            return
        info = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
        if info is None:  # spurious wake-up
            return
        if self._pidfd >= 0:
            self._readiness.remove(self._pidfd)
        self._exit_time = time.monotonic()
        if info.si_code == os.CLD_EXITED:
            self._status = (info.si_status, None, False)
        else:  # CLD_KILLED, CLD_DUMPED
            self._status = (None, info.si_status, info.si_code == os.CLD_DUMPED)
        self.close_stdin()
        if self._stdout_fd >= 0 and self._stopped_for is None:
            # Usually the output's end is already in the pipe: read it now rather
            # than arm a timer and wait for one more turn of the loop.
            while self._stdout_fd >= 0 and self._on_output():
                pass
        if self._exit is not None:
            return  # the output's end finished it
        if self._stdout_fd < 0 or self._stopped_for is not None:
            self._finish()
        elif not self._leave:
            self._timers.append(self._loop.call_later(STRAY_OUTPUT_GRACE, self._finish))
        # Leaving its background: the output's end finishes it, as Go's Wait for the
        # pipe; the run's deadlines (exec_timeout, write_timeout) bound that wait.

    def _finish(self) -> None:
        if self._exit is not None:
            return
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if not self._leave or self._stopped_for is not None:
            # The leader is a zombie, so the group id is still ours: sweep stragglers.
            self._signal_group(signal.SIGKILL)
        # Else what runs on keeps the group: its id is not reused while it has a
        # member, and once the leader is reaped it is never signalled from here (its
        # members come back to the gateway as orphans, which the OrphanReaper reaps).
        self._close_stdout()
        self.close_stdin()
        assert self._status is not None, "finished before the exit was seen"
        os.waitpid(self.pid, 0)
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
        code, sig, dumped = self._status
        if self._stopped_for is not None:
            self._drop_spilled()  # what a stopped function wrote is never sent
        self._exit = Exit(
            code=code,
            signal=sig,
            output=self._output,
            output_size=self._output_size,
            overflowed=self._overflowed,
            stopped_for=self._stopped_for,
            duration=self._exit_time - self._started,
            spilled=self._spilled,
            core_dumped=dumped,
        )
        if self._reaped is not None and not self._reaped.done():
            self._reaped.set_result(None)
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self._exit)

    def _kill(self) -> None:
        if self._status is None:
            self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig: int) -> None:
        try:  # noqa: SIM105 - not contextlib.suppress: this runs for every request
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass
        if self._status is None and sig == signal.SIGKILL:
            # The leader may have left its group (setsid, job control): it is still
            # our unreaped child, so its pid is safe to signal.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    # --- output ----------------------------------------------------------------------

    def _on_output(self) -> bool:
        """Read once; True if something was read and more may follow."""
        if self._paused:
            return False
        try:
            data = os.read(self._stdout_fd, READ_SIZE)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self._close_stdout()
            if self._status is not None:
                self._finish()
            return False
        self._output_size += len(data)
        if self._sink is not None:
            if self._sink.push(data):
                return True
            self._pause_output()
            return False
        if self._output_size > self._max_output:
            self._overflowed = True
            self._output = []
            self._drop_spilled()
            self._close_stdout()
            self.stop("overflow")
            return False
        try:
            if self._spilled is not None:
                self._spilled.write(data)
            elif self._spill is not None and self._output_size > self._spill.threshold:
                fd = self._spill.open_or_none()
                if fd is None:  # no file to be had: held in memory, as before spilling
                    self._spill = None
                    self._output.append(data)
                    return True
                self._spilled = SpilledOutput(fd)
                for held in (*self._output, data):
                    self._spilled.write(held)
                self._output = []
            else:
                self._output.append(data)
        except OSError:  # no space once spilled: the answer cannot be whole
            self._output = []
            self._drop_spilled()
            self._close_stdout()
            self.stop("spill_failed")
            return False
        return True

    def _drop_spilled(self) -> None:
        if self._spilled is not None:
            self._spilled.close()
            self._spilled = None

    def _close_stdout(self) -> None:
        if self._stdout_fd >= 0:
            fd, self._stdout_fd = self._stdout_fd, -1
            if not self._paused:
                self._readiness.remove(fd)
            self._paused = False
            os.close(fd)
        if self._sink is not None:
            self._sink.end()

    def _pause_output(self) -> None:
        if not self._paused and self._stdout_fd >= 0:
            self._readiness.remove(self._stdout_fd)
            self._paused = True

    def _resume_output(self) -> None:
        if self._paused and self._stdout_fd >= 0:
            self._paused = False
            self._readiness.add(self._stdout_fd, self._on_output)

    def _drain_into_sink(self) -> None:
        """Read what is left in the pipe, past the high water (bounded: the pipe's
        content, PIPE_DRAIN_CAP at most), so that a function that ended while its
        client read slowly still has all its output sent."""
        assert self._sink is not None
        drained = 0
        while self._stdout_fd >= 0 and drained < PIPE_DRAIN_CAP:
            try:
                data = os.read(self._stdout_fd, min(READ_SIZE, PIPE_DRAIN_CAP - drained))
            except (BlockingIOError, OSError):
                return
            if not data:
                return
            drained += len(data)
            self._output_size += len(data)
            self._sink.push(data)

    async def _wait_writable(self) -> None:
        fd = self._stdin_fd
        self._writable = self._loop.create_future()
        self._loop.add_writer(fd, self._on_writable)
        try:
            await self._writable
        finally:
            if self._stdin_fd == fd and self._writable is not None:
                self._loop.remove_writer(fd)
                self._writable = None

    def _on_writable(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)


def spawn(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    combine_output: bool,
    max_output: int,
    kill_grace: float,
    readiness: EpollReadiness,
    nice: int | None = None,
    spill: Spill | None = None,
    leave_background: bool = False,
) -> FunctionProcess:
    """Start `argv` with `env`; its stdin and stdout (and stderr when
    `combine_output`, else the gateway's stderr) are pipes; `nice`, when given, is
    its nice value; its output and end are watched through `readiness`, and output
    past `spill`'s threshold goes to its file; with `leave_background`, what it
    leaves running at its exit runs on (see FunctionProcess). Raises SpawnError."""
    loop = asyncio.get_running_loop()
    stdin_r, stdin_w = os.pipe()
    stdout_r, stdout_w = os.pipe()
    actions = [
        (os.POSIX_SPAWN_DUP2, stdin_r, 0),
        (os.POSIX_SPAWN_DUP2, stdout_w, 1),
    ]
    if combine_output:
        actions.append((os.POSIX_SPAWN_DUP2, stdout_w, 2))
    try:
        pid = os.posix_spawnp(
            argv[0], list(argv), env,
            file_actions=actions,
            setpgroup=0,
            setsigdef=_RESET_SIGNALS,
            setsigmask=(),
        )
    except OSError as exc:
        for fd in (stdin_w, stdout_r):
            os.close(fd)
        raise SpawnError(exc.errno, f"cannot start {argv[0]!r}: {exc.strerror}") from exc
    finally:
        os.close(stdin_r)
        os.close(stdout_w)
    if nice is not None:
        # posix_spawn cannot set it: set it now, as the program starts (what it
        # forks from here on inherits it). Raising a child's nice needs no privilege.
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, pid, nice)
    # Our ends only (the function's stay blocking); a new pipe end has no other
    # status flag to keep, so one F_SETFL does what set_blocking's two calls do.
    fcntl.fcntl(stdin_w, fcntl.F_SETFL, os.O_NONBLOCK)
    fcntl.fcntl(stdout_r, fcntl.F_SETFL, os.O_NONBLOCK)
    return FunctionProcess(
        loop, pid, stdin_w, stdout_r, max_output=max_output, kill_grace=kill_grace,
        readiness=readiness, spill=spill, leave_background=leave_background,
    )


class OrphanReaper:
    """Reaps what functions leave behind.

    A function's grandchildren outlive it when its group is swept (they are
    killed, then orphaned) or when they escape the group. The gateway makes itself
    their subreaper (and is their reaper anyway when it runs as PID 1 in a
    container), so they come back to it as children: this sweeps them by pid,
    never with waitpid(-1), which would steal the exits of tracked functions.
    """

    INTERVAL = 2.0  # for orphans that end on their own, long after their request
    SOON = 0.2  # after a sweep with SIGKILL: long enough for the victims to die

    def __init__(self, is_tracked: Callable[[int], bool]) -> None:
        self._is_tracked = is_tracked
        self._loop: asyncio.AbstractEventLoop | None = None
        self._periodic: asyncio.TimerHandle | None = None
        self._soon: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        set_child_subreaper()
        self._periodic = self._loop.call_later(self.INTERVAL, self._tick)

    def soon(self) -> None:
        if self._loop is not None and self._soon is None:
            self._soon = self._loop.call_later(self.SOON, self._sweep_soon)

    async def stop(self, grace: float = 0.0) -> None:
        """At shutdown no function is tracked any more: whatever child is left
        escaped its group (setsid, a daemon) or was left to run on (a function's
        background work). End it, SIGTERM and `grace` seconds for it to finish
        (and for what it started, which comes back here as it ends), then SIGKILL,
        and reap it."""
        for handle in (self._periodic, self._soon):
            if handle is not None:
                handle.cancel()
        self._periodic = self._soon = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        warned: set[int] = set()
        while loop.time() < deadline:
            self.sweep()
            survivors = [pid for pid in children() if not self._is_tracked(pid)]
            if not survivors:
                break
            for pid in survivors:
                if pid not in warned:
                    warned.add(pid)
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
            await asyncio.sleep(0.02)
        for _ in range(50):
            survivors = [pid for pid in children() if not self._is_tracked(pid)]
            if not survivors:
                break
            for pid in survivors:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            await asyncio.sleep(0.02)
            self.sweep()
        self._loop = None

    def sweep(self) -> int:
        """Reap every exited child that no FunctionProcess owns; returns how many."""
        reaped = 0
        for pid in children():
            if self._is_tracked(pid):
                continue
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                continue
            reaped += done == pid
        return reaped

    def _tick(self) -> None:
        self.sweep()
        if self._loop is not None:
            self._periodic = self._loop.call_later(self.INTERVAL, self._tick)

    def _sweep_soon(self) -> None:
        self._soon = None
        self.sweep()


def children() -> list[int]:
    """The children of the main thread: what `spawn` started on the loop, and what
    comes back to the gateway as an orphan (the kernel hands orphans to the
    subreaper's main thread). Not those of the launcher's C threads: one of them
    may have exited before the launcher has told anyone its pid."""
    try:
        with open(f"/proc/self/task/{os.getpid()}/children") as f:
            return [int(pid) for pid in f.read().split()]
    except OSError:
        return []


def set_child_subreaper() -> None:
    try:
        from watchdog import _spawn  # ctypes, the other way, was 3% of the start

        _spawn.set_child_subreaper()
        return
    except (ImportError, AttributeError):  # built without a C compiler, or before this
        pass
    except OSError:
        return  # not Linux: as below
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        pass  # not Linux: orphans go to init, as with the Go watchdog
