"""An OSCAR service pod, emulated with the kernel's own tools: the watchdog as PID 1
in a PID, network and mount namespace of its own (`unshare`), chrooted into a root
file system (an overlay, so that the cached image stays as it is), with
`/oscar/bin` read-only (the bundle beside the supervisor's `supervisor` and
`_internal/`), `/oscar/config` (script.sh, function_config.yaml) and the
environment that OSCAR's manager writes into the pod (grycap/oscar
pkg/types/service.go: the user's variables, then the watchdog's, then the
service's)."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools"
SUPERVISOR_DIR = TOOLS / "oscar-bin-supervisor"
S3_VENV = TOOLS / "s3-venv"
# The container's PATH of a Debian image, as Docker writes it.
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
PORT = 8080  # the watchdog's default, which OSCAR relies on
HEALTH_PROBE = """
import socket, sys, time
port, deadline = int(sys.argv[1]), time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET /_/health HTTP/1.1\\r\\nHost: pod\\r\\nConnection: close\\r\\n\\r\\n")
            if s.recv(64).startswith(b"HTTP/1.1 200"):
                print(time.time_ns())
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.001)
sys.exit(1)
"""


def oscar_environment(service: str, token: str, user: Mapping[str, str],
                      healthcheck_interval: int = 5,
                      supervisor: str = "/oscar/bin/supervisor") -> dict[str, str]:
    """The pod's variables in OSCAR's order; values as OSCAR's defaults write them."""
    env = {"PATH": IMAGE_PATH, "HOME": "/root", "HOSTNAME": f"{service}-00001-deployment",
           # Knative's own variables in every serving container
           "PORT": str(PORT), "K_SERVICE": service, "K_REVISION": f"{service}-00001",
           "K_CONFIGURATION": service}
    env.update(user)
    env.update({
        "fprocess": supervisor, "max_inflight": "1", "write_debug": "true",
        "exec_timeout": "0", "read_timeout": "300", "write_timeout": "300",
        "healthcheck_interval": str(healthcheck_interval),
        "OSCAR_SERVICE_NAME": service, "OSCAR_SERVICE_TOKEN": token,
        # empty unless the service exposes an API port (Service.GetExposedBasePath)
        "OSCAR_SERVICE_BASE_PATH": "",
    })
    return env


def host_image(work: Path) -> Path:
    """A root file system made of this machine's own (Debian 12, curl, the venv), for
    the runs that need no other image. Returns a folder with a `.binds` list that
    `Pod` mounts read-only; nothing is copied."""
    root = work / "host-image"
    root.mkdir(parents=True, exist_ok=True)
    for name in ("bin", "lib", "lib64", "sbin"):
        link = root / name
        if not link.is_symlink():
            link.symlink_to(f"usr/{name}")
    binds = ["/usr", "/etc", str(ROOT), os.path.realpath(sys.base_prefix)]
    (root / ".binds").write_text("\n".join(binds) + "\n")
    return root


@dataclass
class Pod:
    """One pod. `start()` returns once `/_/health` answers 200 inside the pod."""

    rootfs: Path
    work: Path
    script: str
    env: Mapping[str, str]
    bin_entries: Mapping[str, Path]  # name in /oscar/bin -> file or folder on the host
    fdl: str = "log_level: CRITICAL\n"
    command: Sequence[str] = ("/oscar/bin/fwatchdog",)
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    pid: int = field(default=0, init=False)  # the watchdog (PID 1 inside), host view
    started_at: float = field(default=0.0, init=False)
    healthy_at: float = field(default=0.0, init=False)
    healthy_ns: int = field(default=0, init=False)  # wall clock, as exec-ns

    @property
    def netns(self) -> str:
        return f"/proc/{self.pid}/ns/net"

    def cold_start(self) -> float:
        """Seconds from the exec of the watchdog to its first healthy answer (a
        health probe from outside costs about 5 ms, included)."""
        return (self.healthy_ns - int((self.work / "exec-ns").read_text())) / 1e9

    def cpu_seconds(self) -> float:
        """CPU of PID 1 and of every child it has waited for."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
        return ticks / os.sysconf("SC_CLK_TCK")

    @property
    def log_path(self) -> Path:
        return self.work / "pod.log"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _launch_script(self) -> str:
        config = self.work / "config"
        config.mkdir(parents=True, exist_ok=True)
        (config / "script.sh").write_text(self.script)
        (config / "function_config.yaml").write_text(self.fdl)
        root = self.work / "root"
        lines = [
            "set -eu",
            "ip link set lo up",
            f"mount -t tmpfs -o mode=0755 pod {shlex.quote(str(self.work / 'layers'))}",
            f"mkdir -p {self.work / 'layers/upper'} {self.work / 'layers/work'} {root}",
        ]
        binds = self.rootfs / ".binds"
        bound: list[str] = []  # the host image's folders, bound once its /tmp is mounted
        if binds.exists():
            # the host image: its folders bound read-only into a tmpfs root
            lines += [f"mount -t tmpfs -o mode=0755 root {root}",
                      f"cp -a {self.rootfs}/. {root}/", f"rm -f {root}/.binds"]
            for path in binds.read_text().split():
                target = f"{root}{path}"
                bound += [f"mkdir -p {target}", f"mount --rbind {path} {target}",
                          f"mount -o remount,bind,ro {target}"]
        else:
            lines.append(
                f"mount -t overlay overlay -o lowerdir={self.rootfs},"
                f"upperdir={self.work / 'layers/upper'},workdir={self.work / 'layers/work'}"
                f" {root}")
        bin_dir = f"{root}/oscar/bin"
        lines += [f"mkdir -p {bin_dir} {root}/oscar/config {root}/proc {root}/dev {root}/tmp",
                  # /oscar/bin: a read-only volume holding the bundle and the supervisor
                  f"mount -t tmpfs -o mode=0755 oscar-bin {bin_dir}"]
        for name, source in self.bin_entries.items():
            target = f"{bin_dir}/{name}"
            make = f"mkdir -p {target}" if source.is_dir() else f"touch {target}"
            lines += [make, f"mount --bind {shlex.quote(str(source))} {target}",
                      f"mount -o remount,bind,ro {target}"]
        lines += [
            f"mount -o remount,ro {bin_dir}",
            f"mount --bind {config} {root}/oscar/config",
            f"mount -o remount,bind,ro {root}/oscar/config",
            f"mount -t proc proc {root}/proc",
            f"mount -t tmpfs -o mode=1777 tmp {root}/tmp",
            f"mount -t tmpfs -o mode=0755 dev {root}/dev",
            # After the pod's /tmp: a checkout under the host's /tmp stays visible.
            *bound,
        ]
        for dev in ("null", "zero", "random", "urandom", "full", "tty"):
            lines += [f"touch {root}/dev/{dev}", f"mount --bind /dev/{dev} {root}/dev/{dev}"]
        env = " ".join(shlex.quote(f"{k}={v}") for k, v in self.env.items())
        argv = " ".join(shlex.quote(a) for a in self.command)
        # exec all the way down: the watchdog itself becomes PID 1 (the time of that
        # exec, for the cold-start measurement: the mounts above are not the pod's)
        lines.append(f"date +%s%N > {self.work / 'exec-ns'}")
        lines.append(f"cd /; exec env -i {env} chroot {root} {argv}")
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = 30.0) -> Pod:
        (self.work / "layers").mkdir(parents=True, exist_ok=True)
        script = self.work / "launch.sh"
        script.write_text(self._launch_script())
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            ["unshare", "--pid", "--net", "--mount", "--fork", "--propagation", "private",
             "/bin/sh", str(script)],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            self.pid = self._child_pid(timeout)
            self._wait_healthy(timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def _child_pid(self, timeout: float) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        while time.monotonic() < deadline:
            children = path.read_text().split() if path.exists() else []
            if children:
                return int(children[0])
            if self.proc.poll() is not None:
                raise RuntimeError(f"pod exited {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.002)
        raise RuntimeError(f"pod did not start:\n{self.log()}")

    def _wait_healthy(self, timeout: float) -> None:
        """A probe in the pod's network asks `/_/health` every millisecond and prints
        the wall clock of the first 200: started while the pod still mounts, so that
        the cold start is measured to the millisecond."""
        probe = subprocess.Popen(
            ["nsenter", f"--net={self.netns}", sys.executable, "-c", HEALTH_PROBE,
             str(PORT), str(timeout)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
        assert self.proc is not None
        assert probe.stdout is not None
        try:
            deadline = time.monotonic() + timeout + 5
            # bounded; a pod that dies ends the wait at once
            while probe.poll() is None and self.proc.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.01)
            out = probe.stdout.read() if probe.poll() is not None else b""
        finally:
            if probe.poll() is None:
                probe.kill()
                probe.wait()
            probe.stdout.close()
        if probe.returncode != 0 or not out.strip():
            code = self.proc.poll()
            state = "alive" if code is None else f"exited {code}"
            raise RuntimeError(f"pod never healthy ({state}):\n{self.log()}")
        self.healthy_ns = int(out)
        self.healthy_at = time.monotonic()

    def exec_in_net(self, argv: Sequence[str], **kwargs: object) -> subprocess.CompletedProcess[
            bytes]:
        """Run a host program in the pod's network namespace only (its files are the
        host's)."""
        return subprocess.run(["nsenter", f"--net={self.netns}", *argv],  # type: ignore[call-overload, no-any-return]
                              capture_output=True, timeout=60, check=False, **kwargs)

    def exec_in_pod(self, argv: Sequence[str]) -> subprocess.CompletedProcess[bytes]:
        """Run a program of the pod's image inside every namespace of the pod."""
        return subprocess.run(["nsenter", f"--target={self.pid}", "--pid", "--net", "--mount",
                               "--root", "--wd", *argv],
                              capture_output=True, timeout=60, check=False)

    def processes(self) -> dict[int, str]:
        """The process table of the pod's PID namespace: host pid -> state letter."""
        ns = os.readlink(f"/proc/{self.pid}/ns/pid")
        table = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if os.readlink(entry / "ns/pid") != ns:
                    continue
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            table[int(entry.name)] = stat.rsplit(")", 1)[1].split()[0]
        return table

    def terminate(self) -> None:
        os.kill(self.pid, signal.SIGTERM)

    def wait(self, timeout: float = 30.0) -> int:
        """The watchdog's exit status (unshare passes it on)."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        """SIGKILL to PID 1 ends the whole PID namespace."""
        if self.proc is None:
            return
        if self.pid and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
        end(self.proc, terminate=False)
        self._log.close()


def end(proc: subprocess.Popen[bytes], terminate: bool = True) -> None:
    """A process of the test's own: SIGTERM (unless already signalled), 10 s, SIGKILL."""
    if proc.poll() is not None:
        return
    if terminate:
        proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def new_token() -> str:
    """A service token as OSCAR makes them: 32 random bytes, hex."""
    return os.urandom(32).hex()


def unique_name() -> str:
    return "svc-" + uuid.uuid4().hex[:8]
