"""End-to-end emulation of an OSCAR service pod (see pod.py), the manager in front
of it (manager.py) and an S3-compatible server beside it (moto, in the pod's
network namespace, as MinIO is reachable from a real pod)."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

from tests.oscarpod.pod import ROOT, S3_VENV, SUPERVISOR_DIR, TOOLS, Pod, end

LISTENING = re.compile(rb"listening port=(\d+)")
S3_PORT = 9000
S3_KEYS = {"access_key": "oscarpodkey", "secret_key": "oscarpodsecret"}


def supervisor_ready() -> bool:
    return (SUPERVISOR_DIR / "supervisor").exists() and (S3_VENV / "bin/moto_server").exists()


def build_supervisor() -> None:
    subprocess.run(["bash", str(ROOT / "tests/oscarpod/build_supervisor.sh")], check=True,
                   timeout=900)


def rootfs(name: str) -> Path | None:
    """A root file system from bundle/rootfs.sh (busybox, bullseye, trixie), built
    once into .tools/rootfs; None when it cannot be built here."""
    path = TOOLS / "rootfs" / name
    if (path / ".rootfs-complete").exists():
        return path
    done = subprocess.run(["bash", str(ROOT / "bundle/rootfs.sh"), name], capture_output=True,
                          timeout=900, check=False)
    if done.returncode != 0 or not (path / ".rootfs-complete").exists():
        return None
    return path


def gateway_bundle() -> Path | None:
    """The relocatable bundle, built (`make oscar-bin`: a no-op when fresh) into
    dist/oscar-bin; OSCAR_POD_BUNDLE names another folder (a bundle under test).
    None when this tree cannot build one."""
    override = os.environ.get("OSCAR_POD_BUNDLE")
    if override:
        return Path(override)
    builder = ROOT / "bundle/build.py"
    if not builder.exists():
        return None
    out = ROOT / "dist/oscar-bin"
    subprocess.run([sys.executable, str(builder), "--out", str(out)], check=True,
                   timeout=900, capture_output=True)
    return out if (out / "fwatchdog").exists() else None


def venv_fwatchdog(work: Path) -> Path:
    """`fwatchdog` as the venv's gateway, for the host image (where the venv is)."""
    path = work / "venv-fwatchdog"
    # OSCAR_POD_SOURCE: another source tree under the repository (an older commit's
    # `git archive`, to see a test fail on it); the venv's own by default
    source = os.environ.get("OSCAR_POD_SOURCE")
    if source:
        run = (f"import sys, runpy; sys.path.insert(0, {source!r}); "
               "runpy.run_module('watchdog', run_name='__main__', alter_sys=True)")
        path.write_text(f'#!/bin/sh\nexec {ROOT}/.venv/bin/python -c "{run}" "$@"\n')
    else:
        path.write_text(f'#!/bin/sh\nexec {ROOT}/.venv/bin/python -m watchdog "$@"\n')
    path.chmod(0o755)
    return path


def supervisor_entries() -> dict[str, Path]:
    return {"supervisor": SUPERVISOR_DIR / "supervisor", "_internal": SUPERVISOR_DIR / "_internal"}


def bundle_entries(bundle: Path) -> dict[str, Path]:
    """Each top-level entry of the bundle, beside the supervisor's (which win a clash
    only if the bundle has one, which it must not)."""
    entries = {entry.name: entry for entry in bundle.iterdir()}
    clash = set(entries) & set(supervisor_entries())
    assert not clash, f"the bundle clashes with the supervisor's files: {clash}"
    return {**entries, **supervisor_entries()}


class Manager:
    """The manager stand-in, running with the pod's network."""

    def __init__(self, pod: Pod, service: str, token: str, jwt_key: bytes) -> None:
        self.log_path = pod.work / "manager.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.oscarpod.manager", "--netns", pod.netns,
             "--service", service, "--token", token, "--jwt-key-hex", jwt_key.hex()],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=self._log, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        match = LISTENING.search(line)
        if not match:
            self.stop()
            raise RuntimeError(f"manager did not start: {line!r} {self.log_path.read_text()}")
        self.url = f"http://127.0.0.1:{int(match.group(1))}"

    def stop(self) -> None:
        end(self.proc)
        if self.proc.stdout:
            self.proc.stdout.close()
        self._log.close()


class S3Server:
    """moto's S3 server on 127.0.0.1:9000 inside the pod's network namespace."""

    def __init__(self, pod: Pod) -> None:
        self.pod = pod
        self.endpoint = f"http://127.0.0.1:{S3_PORT}"
        self._log = open(pod.work / "s3.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            ["nsenter", f"--net={pod.netns}", str(S3_VENV / "bin/moto_server"),
             "-H", "127.0.0.1", "-p", str(S3_PORT)],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if pod.exec_in_net(["curl", "-s", "-o", "/dev/null", self.endpoint]).returncode == 0:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("S3 server did not start: " + (pod.work / "s3.log").read_text())

    def client(self, *args: str) -> str:
        """Run one boto3 operation (s3client.py) against the server; its stdout."""
        done = self.pod.exec_in_net(
            [str(S3_VENV / "bin/python"), str(ROOT / "tests/oscarpod/s3client.py"),
             self.endpoint, S3_KEYS["access_key"], S3_KEYS["secret_key"], *args])
        if done.returncode != 0:
            raise RuntimeError(done.stderr.decode(errors="replace"))
        return done.stdout.decode()

    def make_bucket(self, bucket: str) -> None:
        self.client("mkbucket", bucket)

    def put(self, bucket: str, key: str, source: Path) -> None:
        self.client("put", bucket, key, str(source))

    def get(self, bucket: str, key: str) -> bytes:
        out = self.client("get", bucket, key)
        return bytes.fromhex(out.strip())

    def keys(self, bucket: str) -> list[str]:
        return list(json.loads(self.client("list", bucket)))

    def stop(self) -> None:
        end(self.proc)
        self._log.close()


def minio_event(bucket: str, key: str) -> dict[str, object]:
    """A MinIO bucket-notification body, in the shape the supervisor parses."""
    return {
        "EventName": "s3:ObjectCreated:Put", "Key": f"{bucket}/{key}",
        "Records": [{
            "eventVersion": "2.0", "eventSource": "minio:s3", "awsRegion": "",
            "eventTime": "2026-12-01T10:23:44.000Z", "eventName": "s3:ObjectCreated:Put",
            "userIdentity": {"principalId": "minio"},
            "requestParameters": {"sourceIPAddress": "10.244.0.1:34852"},
            "responseElements": {"x-amz-request-id": "17D1C7A9B3F5E2AA",
                                 "x-minio-origin-endpoint": "http://10.244.1.3:9000"},
            "s3": {"s3SchemaVersion": "1.0", "configurationId": "Config",
                   "bucket": {"name": bucket, "ownerIdentity": {"principalId": "minio"},
                              "arn": f"arn:aws:s3:::{bucket}"},
                   "object": {"key": key, "size": 1, "eTag": "0", "sequencer": "1",
                              "contentType": "application/octet-stream",
                              "userMetadata": {"content-type": "application/octet-stream"}}},
            "source": {"host": "", "port": "", "userAgent": ""}}],
    }


def copy_tree(source: Path, target: Path) -> None:
    shutil.copytree(source, target, symlinks=True)


def seed_png(width: int = 64, height: int = 48) -> bytes:
    """The seed's input.png: a real PNG (8-bit RGB, a gradient), made with zlib."""
    rows = b"".join(b"\0" + bytes(value for x in range(width)
                                   for value in (x * 4 % 256, y * 5 % 256, (x + y) % 256))
                    for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b""))
