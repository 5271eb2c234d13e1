"""The OSCAR bundle (`make oscar-bin`) in the images OSCAR runs it in.

Each test builds the bundle (or reuses a fresh one), then runs it as a pod would:
chrooted into a root file system built from Debian's packages (bundle/rootfs.sh:
busybox-only with no libc at all, bullseye with glibc 2.31, trixie with curl), in its
own mount and PID namespace (the gateway is PID 1), as uid 1000, the bundle
bind-mounted read-only at /oscar/bin and a function's script read-only at
/oscar/config. Needs root (namespaces, chroot, debootstrap).
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LISTENING

ROOT = Path(__file__).resolve().parent.parent
ROOTFS = ("busybox", "bullseye", "trixie")
BAD_PREFIXES = ("LD_", "PYTHON", "_PYI_", "GCONV_", "LOCPATH")

pytestmark = [
    pytest.mark.skipif(platform.machine() != "x86_64", reason="the bundle is amd64"),
    pytest.mark.skipif(os.geteuid() != 0, reason="namespaces and chroot need root"),
    pytest.mark.skipif(not shutil.which("unshare") or not shutil.which("chroot"),
                       reason="needs unshare and chroot (util-linux, coreutils)"),
    # the first test to need a root file system builds it (debootstrap: 30-40 s here)
    pytest.mark.timeout(600),
]

# Run by the host's /bin/sh inside `unshare --mount --pid --fork`: what the kubelet
# gives a container (a private /proc, /dev and /tmp, the volumes), then the
# container command with exactly the pod's environment (`env -i`).
POD = r"""
set -e
root=$1 bundle=$2 config=$3 user=$4 envbin=$5 chroot=$6
shift 6
mount --make-rprivate /
mount --bind "$bundle" "$root/oscar/bin"
mount -o remount,bind,ro "$root/oscar/bin"
mount --bind "$config" "$root/oscar/config"
mount -o remount,bind,ro "$root/oscar/config"
mount -t proc proc "$root/proc"
mount -t tmpfs -o mode=1777 tmpfs "$root/tmp"
mount -t tmpfs -o mode=755 tmpfs "$root/dev"
for d in null zero random urandom; do
  : >"$root/dev/$d"
  mount --bind "/dev/$d" "$root/dev/$d"
done
mkdir "$root/dev/shm"
mount -t tmpfs -o mode=1777 tmpfs "$root/dev/shm"
exec "$envbin" -i "$@" "$chroot" --userspec="$user" "$root" /oscar/bin/fwatchdog
"""

# The function: what it is asked for comes in the path, as CGI gives it.
FUNCTION = r"""
case "$Http_Path" in
  /env) env ;;
  /id) id -u ;;
  /curl) curl -sS --max-time 5 "$Http_X_Target" ;;
  /apt) apt-config dump >/dev/null && echo apt-config ok ;;
  *) tr a-z A-Z ;;
esac
"""


@pytest.fixture(scope="module")
def bundle() -> Path:
    out = ROOT / "dist" / "oscar-bin"
    subprocess.run([sys.executable, str(ROOT / "bundle" / "build.py"), "--out", str(out)],
                   check=True, capture_output=True, timeout=600)
    return out


def rootfs(name: str) -> Path:
    if name != "busybox" and not shutil.which("debootstrap"):
        pytest.skip("needs debootstrap (apt-get install debootstrap)")
    done = subprocess.run(["bash", str(ROOT / "bundle" / "rootfs.sh"), name],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip().splitlines()[-1])


def snapshot(top: Path) -> dict[str, tuple[int, int, int]]:
    """Every path under top with its mode, size and mtime (not following links)."""
    found = {}
    for folder, dirs, files in os.walk(top):
        for name in dirs + files:
            path = Path(folder, name)
            st = path.lstat()
            found[str(path.relative_to(top))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return found


class Pod:
    """One gateway started as a container command in `root`; its host pid is `pid`."""

    def __init__(self, root: Path, bundle: Path, tmp: Path, env: dict[str, str]) -> None:
        config = tmp / "config"
        config.mkdir()
        (config / "fn.sh").write_text(FUNCTION)
        self.env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/",
            "fprocess": "/bin/sh /oscar/config/fn.sh",
            "WATCHDOG_BIND_ADDRESS": "127.0.0.1",
            "WATCHDOG_PORT": "0",
            "WATCHDOG_METRICS_PORT": "0",
            "healthcheck_interval": "0",
            **env,
        }
        self.root = root
        self.log_path = tmp / "pod.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        tools = [shutil.which("env") or "/usr/bin/env", shutil.which("chroot") or "chroot"]
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--pid", "--fork", "--kill-child", "/bin/sh", "-c", POD,
             "pod", str(root), str(bundle), str(config), "1000:1000", *tools,
             *(f"{k}={v}" for k, v in self.env.items())],
            env={"PATH": self.env["PATH"]}, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL)
        try:
            self.port = self._wait_listening()
            self.pid = self._gateway_pid()
        except BaseException:
            self.stop()
            raise
        self.url = f"http://127.0.0.1:{self.port}"

    def _wait_listening(self, timeout: float = 20.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = LISTENING.search(self.log())
            if match:
                return int(match.group(2))
            if self.proc.poll() is not None:
                raise RuntimeError(f"pod exited {self.proc.returncode}:\n{self.log()}")
            time.sleep(0.02)
        raise RuntimeError(f"gateway did not start:\n{self.log()}")

    def _gateway_pid(self) -> int:
        """unshare's only child: the shell that became env, chroot, the launcher, the
        loader and Python in turn (each by exec, so one pid), PID 1 inside."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return int(children.split()[0])

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def get(self, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None) -> tuple[int, str]:
        request = urllib.request.Request(self.url + path, data=body, headers=headers or {})
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read().decode()

    def stop(self) -> int:
        """SIGTERM to the gateway; when PID 1 exits the kernel ends the namespace."""
        if self.proc.poll() is None:
            with_pid = getattr(self, "pid", None)
            if with_pid is not None:
                os.kill(with_pid, signal.SIGTERM)
            else:
                self.proc.terminate()
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()  # --kill-child: SIGKILL to PID 1, and so to all of it
            return self.proc.wait(10)
        finally:
            self._log.close()


@pytest.fixture(params=ROOTFS)
def pod(request: pytest.FixtureRequest, bundle: Path, tmp_path: Path) -> Iterator[Pod]:
    root = rootfs(request.param)
    before = snapshot(bundle), snapshot(root)
    started = Pod(root, bundle, tmp_path, {})
    try:
        yield started
    finally:
        status = started.stop()
    assert status == 0, started.log()
    # Read-only or not: the bundle is exactly as built, the image exactly as it was.
    assert (snapshot(bundle), snapshot(root)) == before


def env_lines(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_healthy_and_a_classic_function_answers(pod: Pod) -> None:
    assert pod.get("/_/health") == (200, "OK")
    assert pod.get("/", b"hello bundle") == (200, "HELLO BUNDLE")
    assert pod.get("/id", b"") == (200, "1000\n")  # read-only volume, non-root user


def test_functions_get_the_pods_environment_untouched(pod: Pod) -> None:
    status, text = pod.get("/env", b"")
    assert status == 200
    env = env_lines(text)
    assert [k for k in env if k.startswith(BAD_PREFIXES)] == []
    # exactly the pod's variables, plus the request's (classic CGI: Http_*) and those
    # the function's own shell sets
    shell = {"PWD", "SHLVL", "OLDPWD", "_"}
    assert {k: v for k, v in env.items() if not k.startswith("Http_") and k not in shell} \
        == pod.env


def test_nothing_written_and_nothing_loaded_from_the_image(pod: Pod) -> None:
    assert pod.get("/_/health") == (200, "OK")
    # /tmp is the pod's own tmpfs: after the start it holds the lock file, as the Go
    # watchdog's does, and nothing else (no extraction, no cache)
    tmp = Path(f"/proc/{pod.pid}/root/tmp")
    assert [p.name for p in tmp.iterdir()] == [".lock"]
    assert (tmp / ".lock").stat().st_size == 0
    # no code of the image's: every shared object the gateway maps is the bundle's.
    # (The image's locale data may be read: Python's C-locale coercion, PEP 538, asks
    # glibc for C.UTF-8, and glibc reads it where the image keeps it.) maps names
    # files as the reader, here outside the chroot, sees them.
    lines = Path(f"/proc/{pod.pid}/maps").read_text().splitlines()
    files = {fields[5] for fields in (line.split(None, 5) for line in lines)
             if len(fields) == 6 and fields[5].startswith("/")}
    own = f"{pod.root}/oscar/bin/fwatchdog.d/"
    assert any(f.startswith(own + "lib/libc.so") for f in files), files
    assert {f for f in files if not f.startswith(own) and ".so" in Path(f).name} == set()


def test_the_images_own_curl_works_in_a_function(bundle: Path, tmp_path: Path) -> None:
    root = rootfs("trixie")
    pod = Pod(root, bundle, tmp_path, {})
    try:
        target = {"X-Target": f"{pod.url}/_/health"}
        assert pod.get("/curl", b"", target) == (200, "OK")
        assert pod.get("/apt", b"") == (200, "apt-config ok\n")  # libstdc++ of the image's
    finally:
        assert pod.stop() == 0, pod.log()


def test_python_ignores_the_image_and_the_environment(bundle: Path, tmp_path: Path) -> None:
    """The bundled interpreter, started as the launcher starts it but with PYTHON*
    variables set: prefix, path and modules all from the bundle."""
    root = rootfs("busybox")
    d = "/oscar/bin/fwatchdog.d"
    code = ("import sys, ssl, aiohttp, uvloop, watchdog._spawn as s; "
            "print(sys.prefix); print(sys.flags.isolated, sys.flags.dont_write_bytecode); "
            "print(*sys.path, sep='\\n'); print(s.__file__, aiohttp.__file__, ssl.__file__)")
    python = (f"{d}/lib/ld-linux-x86-64.so.2 --inhibit-cache --library-path {d}/lib"
              f" --argv0 {d}/bin/python3.11 {d}/bin/python3.11 -I -B")
    script = POD.replace('"$root" /oscar/bin/fwatchdog', f'"$root" {python} -c "$code"')
    done = subprocess.run(
        ["unshare", "--mount", "--pid", "--fork", "--kill-child", "/bin/sh", "-c", script,
         "pod", str(root), str(bundle), str(tmp_path), "1000:1000",
         shutil.which("env") or "/usr/bin/env", shutil.which("chroot") or "chroot",
         "PYTHONHOME=/nowhere", "PYTHONPATH=/nowhere", "PYTHONDONTWRITEBYTECODE="],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "code": code},
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == d
    assert lines[1] == "1 1"
    assert all(line.startswith(d + "/") for line in lines[2:]), lines


def test_every_module_has_bytecode_valid_whatever_the_mtimes(bundle: Path) -> None:
    """Unchecked hash-based .pyc beside every .py: a copy that loses mtimes still
    starts without compiling (and on a read-only volume nothing could be saved)."""
    sources = list((bundle / "fwatchdog.d" / "lib").rglob("*.py"))
    assert len(sources) > 300
    tag = sys.implementation.cache_tag
    for source in sources:
        pyc = source.parent / "__pycache__" / f"{source.stem}.{tag}.pyc"
        with pyc.open("rb") as f:
            header = f.read(8)
        (flags,) = struct.unpack("<I", header[4:8])
        assert flags == 0b01, f"{pyc}: flags {flags:#b}, not unchecked-hash"
