"""The gateway where OSCAR runs its watchdog, end to end: `/oscar/bin/fwatchdog` as
PID 1 of a pod emulated with namespaces and chroot (tests/oscarpod/pod.py), in
OSCAR's unchanged pod environment, behind a stand-in for OSCAR's manager, beside
the real FaaS Supervisor (PyPI faas-supervisor 1.5.8, frozen as OSCAR ships it)
and an S3-compatible server.

Images: (a) busybox only, (b) Debian bullseye minbase (glibc 2.31), (c) Debian trixie with
curl, from .tools/rootfs (bundle/rootfs.sh; they need the relocatable bundle,
`make oscar-bin`); and `host`, this machine's own files with the venv's gateway
as fwatchdog, which needs neither."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.oscarpod import (
    S3_KEYS,
    Manager,
    S3Server,
    build_supervisor,
    bundle_entries,
    gateway_bundle,
    minio_event,
    rootfs,
    seed_png,
    supervisor_entries,
    venv_fwatchdog,
)
from tests.oscarpod.manager import make_jwt
from tests.oscarpod.pod import ROOT, Pod, host_image, new_token, oscar_environment

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                       reason="pods need root (namespaces, mounts, chroot)"),
    pytest.mark.timeout(300),
]

IMAGES = ("busybox", "bullseye", "trixie", "host")
# The real supervisor built here needs glibc >= 2.35 (as OSCAR's own build needs the
# glibc of Debian 10 it is built on, and its musl build lives under alpine/): it runs
# in (c) and in the host image.
SUPERVISOR_IMAGES = ("trixie", "host")
SERVICE = "grayify"
USER_VARIABLE = ("MODEL_SIZE", "small size")
BUCKET = "oscar-pod"

# Hands the input back; with `X-Dump-Env: 1` also every variable it sees (env(1) is
# in every image), so that the answer is a zip of both.
SCRIPT = """\
cp "$INPUT_FILE_PATH" "$TMP_OUTPUT_DIR/result.png"
if [ -n "${Http_X_Dump_Env:-}" ]; then env > "$TMP_OUTPUT_DIR/env.txt"; fi
"""


@dataclass
class Running:
    pod: Pod
    manager: Manager
    token: str
    jwt_key: bytes
    image: str

    def post(self, body: bytes, bearer: str | None = None, dump_env: bool = False,
             timeout: float = 60) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {bearer or self.token}"}
        if dump_env:
            headers["X-Dump-Env"] = "1"
        request = urllib.request.Request(
            f"{self.manager.url}/run/{SERVICE}", data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()


def image_root(image: str, work: Path) -> Path:
    if image == "host":
        return host_image(work)
    found = rootfs(image)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"root file system {image!r} could not be built (bundle/rootfs.sh)")
        pytest.skip(f"root file system {image!r} cannot be built here (bundle/rootfs.sh)")
    return found


def bin_entries(image: str, work: Path) -> dict[str, Path]:
    """The host image runs the venv's gateway; the others the bundle."""
    if image == "host":
        return {**supervisor_entries(), "fwatchdog": venv_fwatchdog(work)}
    bundle = BUNDLE.get("path") or gateway_bundle()
    if bundle is None:
        if os.environ.get("CI"):
            pytest.fail("no relocatable bundle: bundle/build.py is missing")
        pytest.skip("the relocatable bundle cannot be built here (bundle/build.py)")
    BUNDLE["path"] = bundle
    return bundle_entries(bundle)


BUNDLE: dict[str, Path] = {}  # built once a session


@pytest.fixture(scope="session")
def supervisor() -> None:
    build_supervisor()  # cached in .tools/: a no-op once built


def start(image: str, work: Path, script: str = SCRIPT, fdl: str = "log_level: CRITICAL\n",
          healthcheck_interval: int = 5) -> Running:
    work.mkdir(parents=True, exist_ok=True)
    token = new_token()
    env = oscar_environment(SERVICE, token, dict([USER_VARIABLE]),
                            healthcheck_interval=healthcheck_interval)
    pod = Pod(rootfs=image_root(image, work), work=work, script=script, env=env,
              bin_entries=bin_entries(image, work), fdl=fdl).start()
    try:
        jwt_key = os.urandom(32)
        return Running(pod, Manager(pod, SERVICE, token, jwt_key), token, jwt_key, image)
    except BaseException:
        pod.kill()
        raise


def stop(running: Running) -> None:
    running.manager.stop()
    running.pod.kill()


@pytest.fixture(scope="module", params=IMAGES)
def pod(request: pytest.FixtureRequest, supervisor: None,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    running = start(request.param, tmp_path_factory.mktemp(f"pod-{request.param}"))
    yield running
    stop(running)


def test_seed_curl_png_byte_identical(pod: Running, tmp_path: Path) -> None:
    """OSCAR's documented call, `base64 input.png | curl … | base64 -d > result.png`,
    through the manager, with a script that hands the image back."""
    image = seed_png()
    (tmp_path / "input.png").write_bytes(image)
    command = (f'base64 input.png | curl -s -X POST -H "Authorization: Bearer {pod.token}" '
               f'-d @- {pod.manager.url}/run/{SERVICE} | base64 -d > result.png')
    subprocess.run(command, shell=True, cwd=tmp_path, check=True, timeout=60)
    assert (tmp_path / "result.png").read_bytes() == image


def zip_member(answer: bytes, name: str) -> bytes:
    import io
    import zipfile

    with zipfile.ZipFile(io.BytesIO(base64.b64decode(answer))) as archive:
        return archive.read(name)


def test_oidc_bearer_accepted_and_forged_refused(pod: Running) -> None:
    """A JWT the manager accepts reaches the script (no second check in the pod);
    the stand-in does check: a JWT signed with another key is refused before."""
    jwt = make_jwt(pod.jwt_key, "user@example.org")
    body = base64.b64encode(b"via oidc")
    status, answer = pod.post(body, bearer=jwt, dump_env=True)
    assert status == 200, answer[:500]
    env = zip_member(answer, "env.txt").decode()
    assert f"Http_Authorization=Bearer {jwt}\n" in env
    assert zip_member(answer, "result.png") == b"via oidc"
    forged = make_jwt(os.urandom(32), "user@example.org")
    assert pod.post(body, bearer=forged)[0] == 401
    assert pod.post(body, bearer="0" * 64)[0] == 401


def test_script_environment_is_the_supervisors(pod: Running) -> None:
    status, answer = pod.post(base64.b64encode(b"x"), dump_env=True)
    assert status == 200, answer[:500]
    lines = zip_member(answer, "env.txt").decode().splitlines()
    env = dict(line.split("=", 1) for line in lines if "=" in line)
    assert env["OSCAR_SERVICE_TOKEN"] == pod.token
    assert env["OSCAR_SERVICE_NAME"] == SERVICE
    assert env["Http_Authorization"] == f"Bearer {pod.token}"
    assert env[USER_VARIABLE[0]] == USER_VARIABLE[1]
    assert env["Http_Method"] == "POST"
    assert env["Http_Host"] == f"{SERVICE}.oscar-svc"
    for name in ("INPUT_FILE_PATH", "TMP_INPUT_DIR", "TMP_OUTPUT_DIR"):
        assert env[name].startswith("/"), name
    assert env["INPUT_FILE_PATH"].startswith(env["TMP_INPUT_DIR"] + "/")
    leaked = sorted(name for name in env if name in ("LD_LIBRARY_PATH", "LD_PRELOAD")
                    or name.startswith(("PYTHON", "_PYI_", "_MEI", "_PYINSTALLER")))
    assert leaked == []


def test_no_zombie_after_50_calls(pod: Running) -> None:
    for index in range(50):
        status, answer = pod.post(base64.b64encode(b"call %d" % index))
        # one call at a time, each sent as soon as the last was answered, as Knative's
        # queue-proxy does with OSCAR's containerConcurrency 1: max_inflight=1 must
        # never answer 429 to that (the slot is free once the answer is out)
        assert status == 200, (index, answer[:500])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        table = pod.pod.processes()
        if list(table) == [pod.pod.pid]:
            break
        time.sleep(0.05)
    # only PID 1 is left in the pod's PID namespace, and it is not a zombie
    others = {pid: (state, Path(f"/proc/{pid}/cmdline").read_bytes()[:200])
              for pid, state in table.items() if pid != pod.pod.pid}
    assert others == {}
    assert table[pod.pod.pid] in ("S", "R")


def test_users_curl_works_in_debian_with_curl(supervisor: None, tmp_path: Path) -> None:
    """The image's own curl (libcurl, libssl of the image) runs from the script and
    reaches the pod's own health endpoint."""
    script = ('curl -sS -o /dev/null -w "%{http_code}" http://127.0.0.1:8080/_/health '
              '> "$TMP_OUTPUT_DIR/curl.txt" 2>&1\n')
    running = start("trixie", tmp_path, script=script)
    try:
        status, answer = running.post(base64.b64encode(b"x"))
        assert status == 200, answer[:500]
        assert base64.b64decode(answer).strip() == b"200"
    finally:
        stop(running)


STORAGE_SCRIPT = """\
name=$(basename "$INPUT_FILE_PATH")
tr a-z A-Z < "$INPUT_FILE_PATH" > "$TMP_OUTPUT_DIR/$name.upper.txt"
echo "processed $STORAGE_OBJECT_KEY as $name at $EVENT_TIME"
"""


def storage_fdl() -> str:
    provider = {"endpoint": "http://127.0.0.1:9000", "region": "us-east-1",
                "verify": False, **S3_KEYS}
    return json.dumps({  # YAML is a superset of JSON
        "log_level": "CRITICAL",
        "storage_providers": {"minio": {"default": provider}},
        "input": [{"storage_provider": "minio.default", "path": f"{BUCKET}/in"}],
        "output": [{"storage_provider": "minio.default", "path": f"{BUCKET}/out",
                    "suffix": [".txt"]}],
    }) + "\n"


@pytest.mark.parametrize("image", SUPERVISOR_IMAGES)
def test_storage_event_and_fdl_output_handed_to_the_supervisor(
        image: str, supervisor: None, tmp_path: Path) -> None:
    """A MinIO webhook body: the object is downloaded, the script runs on it, its
    outputs go to the FDL's `output` bucket; a plain base64 call to the same service
    uploads its outputs too while the answer still carries them."""
    running = start(image, tmp_path / "pod", script=STORAGE_SCRIPT, fdl=storage_fdl())
    s3 = S3Server(running.pod)
    try:
        s3.make_bucket(BUCKET)
        source = tmp_path / "photo.txt"
        source.write_bytes(b"hello storage\n")
        s3.put(BUCKET, "in/photo.txt", source)
        status, answer = running.post(json.dumps(minio_event(BUCKET, "in/photo.txt")).encode())
        assert status == 200, answer[:2000]
        assert b"processed in/photo.txt as photo.txt at 2026-12-01T10:23:44.000Z" in answer
        assert s3.get(BUCKET, "out/photo.txt.upper.txt") == b"HELLO STORAGE\n"

        status, answer = running.post(base64.b64encode(b"direct call\n"))
        assert status == 200, answer[:2000]
        assert base64.b64decode(answer) == b"DIRECT CALL\n"  # the answer carries the file
        uploaded = [key for key in s3.keys(BUCKET)
                    if key.startswith("out/event-file-") and key.endswith(".upper.txt")]
        assert len(uploaded) == 1
        assert s3.get(BUCKET, uploaded[0]) == b"DIRECT CALL\n"
    finally:
        s3.stop()
        stop(running)


@pytest.mark.parametrize("image", IMAGES)
def test_sigterm_exits_zero_after_healthcheck_interval(image: str, supervisor: None,
                                                       tmp_path: Path) -> None:
    """OSCAR's healthcheck_interval=5: unhealthy at once, serving for 5 s, then 0."""
    running = start(image, tmp_path)
    try:
        sent = time.monotonic()
        running.pod.terminate()
        probe = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2",
                 "http://127.0.0.1:8080/_/health"]
        deadline = sent + 2
        health = b""
        while time.monotonic() < deadline:
            health = running.pod.exec_in_net(probe).stdout
            if health == b"503":
                break
            time.sleep(0.05)
        assert health == b"503"
        status, answer = running.post(base64.b64encode(b"still served"))
        assert status == 200, answer[:500]
        assert running.pod.wait(30) == 0, running.pod.log()
        assert 5.0 <= time.monotonic() - sent < 12.0
    finally:
        stop(running)


def test_bench_oscar_pod_smoke(supervisor: None, tmp_path: Path) -> None:
    """bench/oscar_pod.py end to end, briefly; the venv's gateway stands in for the Go
    binary (CI has none), so that the script cannot rot."""
    stand_in = venv_fwatchdog(tmp_path)
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench/oscar_pod.py"), "--go", str(stand_in),
         "--runs", "1", "--calls", "2"],
        capture_output=True, timeout=240, check=False)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    table = done.stdout.decode()
    assert "| this gateway |" in table
    assert "| Go classic + FaaS Supervisor |" in table
