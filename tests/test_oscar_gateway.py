"""OSCAR mode end to end: the real gateway, real scripts, curl, base64 and the
client command, as OSCAR's "Invoking services" page uses them."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import struct
import subprocess
import sys
import time
import wave
import zipfile
import zlib
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import FUNCTIONS, Gateway, StartGateway
from tests.test_gateway import fetch, metrics

SCRIPTS = FUNCTIONS / "oscar"
TOKEN = "5f4dcc3b5aa765d61d8327deb882cf99" * 2  # 64 hex characters, as OSCAR makes them
ROOT = Path(__file__).parent.parent


def oscar_gateway(gateway: StartGateway, script: str, **env: str) -> Gateway:
    return gateway([], env={
        "WATCHDOG_MODE": "oscar",
        "fprocess": f"/bin/sh {SCRIPTS / script}",
        "OSCAR_SERVICE_NAME": "svc",
        "OSCAR_SERVICE_TOKEN": TOKEN,
        "PYTHON": sys.executable,
        **env,
    })


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def leftovers(gw: Gateway, within: float = 5.0) -> list[str]:
    """What stays in the gateway's TMPDIR besides its lock file and log (a folder
    goes a moment after its answer is sent, and after its process group)."""
    deadline = time.monotonic() + within
    while True:
        found = sorted(p.name for p in gw.tmp.iterdir()
                       if p.name not in (".lock", "gateway.log"))
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def png(width: int = 64, height: int = 48) -> bytes:
    """A real (small, noisy) PNG image."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    rows = b"".join(b"\x00" + os.urandom(width * 3) for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def client(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "watchdog", "run", *args],
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True, timeout=60, check=False)


async def test_seed_curl_command_line_returns_a_byte_identical_image(
        gateway: StartGateway, tmp_path: Path) -> None:
    gw = oscar_gateway(gateway, "copy.sh")
    image = png()
    (tmp_path / "input.png").write_bytes(image)
    # The page's own command line, word for word but for the address.
    command = (f'base64 input.png | curl -s -X POST -H "Authorization: Bearer {TOKEN}" '
               f"-d @- {gw.url}/run/svc | base64 -d > result.png")
    await asyncio.to_thread(subprocess.run, command, shell=True, cwd=tmp_path, check=True,
                            timeout=60)
    assert (tmp_path / "result.png").read_bytes() == image
    assert leftovers(gw) == []


async def test_client_text_input_to_binary_output_file(gateway: StartGateway,
                                                        tmp_path: Path) -> None:
    gw = oscar_gateway(gateway, "tts.sh")
    result = await asyncio.to_thread(
        client, "svc", "--endpoint", gw.url, "--token", TOKEN,
        "--text-input", "Hello everyone", "--output", str(tmp_path / "output.wav"))
    assert result.returncode == 0, result.stderr
    sys.path.insert(0, str(SCRIPTS))
    try:
        from tts import synthesise  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    synthesise("Hello everyone", str(tmp_path / "expected.wav"))
    assert (tmp_path / "output.wav").read_bytes() == (tmp_path / "expected.wav").read_bytes()
    with wave.open(str(tmp_path / "output.wav")) as speech:
        assert speech.getnframes() == 400 * len("Hello everyone")


async def test_client_input_file_and_token_from_the_environment(gateway: StartGateway,
                                                                 tmp_path: Path) -> None:
    gw = oscar_gateway(gateway, "copy.sh")
    image = png(300, 200)  # ~180 kB: several pieces each way
    (tmp_path / "in.png").write_bytes(image)
    result = await asyncio.to_thread(
        client, "svc", "--input", str(tmp_path / "in.png"), "-o", str(tmp_path / "out.png"),
        env={"OSCAR_ENDPOINT": gw.url, "OSCAR_SERVICE_TOKEN": TOKEN})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.png").read_bytes() == image


async def test_two_output_files_come_back_as_one_zip(gateway: StartGateway) -> None:
    gw = oscar_gateway(gateway, "two_files.sh")
    status, headers, body = await fetch("POST", gw.url + "/run/svc",
                                        base64.b64encode(b"some text"), auth())
    assert status == 200
    assert headers["X-Watchdog-Output"].startswith("zip")
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(body, validate=True))) as archive:
        assert sorted(archive.namelist()) == ["sub/size.txt", "upper.txt"]
        assert archive.read("upper.txt") == b"SOME TEXT"
        assert archive.read("sub/size.txt").strip() == b"9"
    assert leftovers(gw) == []


async def test_no_output_file_gives_the_scripts_own_output(gateway: StartGateway) -> None:
    gw = oscar_gateway(gateway, "log_only.sh", WATCHDOG_LOG_LEVEL="DEBUG")
    status, headers, body = await fetch("POST", gw.url + "/", base64.b64encode(b"hi"), auth())
    assert (status, body) == (200, b"input was: hi\nto stderr\n")
    assert headers["X-Watchdog-Output"] == "log"
    assert b"level=" not in body  # gateway logs never mix in, even at DEBUG
    result = await asyncio.to_thread(client, "svc", "--endpoint", gw.url, "--token", TOKEN,
                                     "--text-input", "plain")
    assert result.stdout == b"input was: plain\nto stderr\n"  # printed as it is


async def test_json_body_reaches_the_script_verbatim(gateway: StartGateway) -> None:
    gw = oscar_gateway(gateway, "copy.sh")
    document = b'{"Records": [{"eventName": "x"}],  "k": "\xc3\xa9"}'
    status, _, body = await fetch("POST", gw.url + "/run/svc", document, auth())
    assert status == 200
    assert base64.b64decode(body) == document
    assert json.loads(base64.b64decode(body))["k"] == "é"


async def test_tokens_wrong_missing_and_not_bearer_get_401(gateway: StartGateway,
                                                           tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    gw = oscar_gateway(gateway, "marker.sh", MARKER=str(marker))
    for headers in ({}, auth("0" * 64), {"Authorization": TOKEN},
                    {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer"}):
        status, answer_headers, _ = await fetch("POST", gw.url + "/run/svc", b"aGk=", headers)
        assert status == 401, headers
        assert answer_headers["WWW-Authenticate"].startswith("Bearer")
    assert not marker.exists()
    assert TOKEN not in gw.log()
    result = await asyncio.to_thread(client, "svc", "--endpoint", gw.url, "--token", "bad",
                                     "--text-input", "x")
    assert result.returncode == 1
    assert b"token was refused (401)" in result.stderr


async def test_other_service_names_and_paths_get_404(gateway: StartGateway) -> None:
    gw = oscar_gateway(gateway, "copy.sh")
    assert (await fetch("POST", gw.url + "/run/other", b"aGk=", auth()))[0] == 404
    assert (await fetch("POST", gw.url + "/elsewhere", b"aGk=", auth()))[0] == 404
    assert (await fetch("GET", gw.url + "/run/svc", None, auth()))[0] == 405
    assert (await fetch("GET", gw.url + "/_/health"))[0] == 200


async def test_bad_base64_gets_400_and_the_script_never_runs(gateway: StartGateway,
                                                              tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    gw = oscar_gateway(gateway, "marker.sh", MARKER=str(marker))
    for body in (b"hello world", b"aGk=aGk=", b"{broken json"):
        status, _, text = await fetch("POST", gw.url + "/run/svc", body, auth())
        assert status == 400, body
        assert b"Traceback" not in text
    assert not marker.exists()
    assert leftovers(gw) == []
    status, _, _ = await fetch("POST", gw.url + "/run/svc", base64.b64encode(b"ok"), auth())
    assert status == 200
    assert marker.exists()


async def test_failing_script_is_500_with_its_output(gateway: StartGateway) -> None:
    gw = oscar_gateway(gateway, "fail.sh")
    status, _, body = await fetch("POST", gw.url + "/run/svc", b"", auth())
    assert (status, body) == (500, b"exit status 4\nsomething broke\n")
    assert leftovers(gw) == []


async def test_scripts_world_private_folders_and_no_token(gateway: StartGateway) -> None:
    gw = oscar_gateway(gateway, "env_dump.sh", USER_VARIABLE="kept")
    status, _, body = await fetch("POST", gw.url + "/run/svc?q=1", b"",
                                  {**auth(), "X-Custom": "v"})
    assert status == 200
    dump = base64.b64decode(body).decode()
    env = dict(line.split("=", 1) for line in dump.splitlines() if "=" in line)
    assert env["USER_VARIABLE"] == "kept"
    assert env["OSCAR_SERVICE_NAME"] == "svc"
    assert env["Http_X_Custom"] == "v"
    assert env["Http_Query"] == "q=1"
    assert env["INPUT_FILE_PATH"].startswith(env["TMP_INPUT_DIR"] + "/")
    assert TOKEN not in dump  # neither OSCAR_SERVICE_TOKEN nor Http_Authorization
    assert [line.split()[0] for line in dump.splitlines() if line[:1].isdigit()] == [
        "700", "700", "700"]


async def test_symlinks_out_of_the_folder_are_not_followed(gateway: StartGateway) -> None:
    gw = oscar_gateway(gateway, "escape.sh")
    status, _, body = await fetch("POST", gw.url + "/run/svc", b"", auth())
    assert status == 200
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(body))) as archive:
        assert sorted(archive.namelist()) == ["inside-link", "inside.txt"]


async def test_limit_and_429_hold_in_oscar_mode(gateway: StartGateway, tmp_path: Path) -> None:
    gw = gateway([sys.executable, str(FUNCTIONS / "concurrency.py")], env={
        "WATCHDOG_MODE": "oscar", "OSCAR_SERVICE_TOKEN": TOKEN, "max_inflight": "2",
        "COUNT_DIR": str(tmp_path), "SLEEP": "1"})
    async with aiohttp.ClientSession() as session:
        async def one() -> int:
            async with session.post(gw.url + "/run/any", data=b"aGk=", headers=auth()) as r:
                await r.read()
                return r.status
        statuses = sorted(await asyncio.gather(*(one() for _ in range(10))))
    assert statuses == [200, 200] + [429] * 8
    assert (tmp_path / "max").read_text() == "2"
    samples = metrics(gw)
    assert samples[("watchdog_rejected_requests_total", ())] == 8
    assert leftovers(gw) == []


async def test_timeout_and_disconnect_leave_no_folder(gateway: StartGateway) -> None:
    gw = gateway(["/bin/sh", "-c", "echo x > $TMP_OUTPUT_DIR/f; sleep 30"], env={
        "WATCHDOG_MODE": "oscar", "exec_timeout": "500ms", "WATCHDOG_KILL_GRACE": "500ms"})
    status, _, body = await fetch("POST", gw.url + "/", b"")
    assert (status, body) == (408, b"Killed process.\n")
    assert leftovers(gw) == []
    with pytest.raises(asyncio.TimeoutError):
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.3)) as s:
            await s.post(gw.url + "/", data=b"")  # and hang up
    assert leftovers(gw) == []
    assert "status=499" in gw.log()


async def test_large_input_and_output_stream_through(gateway: StartGateway) -> None:
    gw = oscar_gateway(gateway, "copy.sh")
    data = os.urandom(8 << 20)
    encoded = base64.encodebytes(data)  # wrapped at 76, as the base64 tool does
    status, headers, body = await fetch("POST", gw.url + "/run/svc", encoded, auth())
    assert status == 200
    assert int(headers["Content-Length"]) == len(body) == 4 * ((len(data) + 2) // 3)
    assert base64.b64decode(body, validate=True) == data
    assert leftovers(gw) == []


def test_workspace_removal_is_off_the_loop_and_holds_the_slot(
        gateway: StartGateway, tmp_path: Path) -> None:
    """A script that leaves 30,000 files: its workspace takes a while to remove. The
    gateway answers its health check meanwhile (the removal is not on the event
    loop), and keeps the call's slot until the folder is gone (max_inflight=1: 429
    while it is removed, then 200), so a pod whose removals lag takes no more calls."""
    script = tmp_path / "many.sh"
    script.write_text('cd "$TMP_INPUT_DIR" && mkdir many && cd many && '
                      'seq 1 30000 | xargs touch && echo done\n')
    gw = gateway([], env={
        "WATCHDOG_MODE": "oscar", "fprocess": f"/bin/sh {script}",
        "OSCAR_SERVICE_NAME": "svc", "OSCAR_SERVICE_TOKEN": TOKEN, "max_inflight": "1",
    })

    async def scenario() -> list[tuple[int, bool]]:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{gw.url}/run/svc", data=b"", headers=auth()) as r:
                assert r.status == 200, await r.text()
                assert b"done" in await r.read()
            seen = []  # (status of a call, was a workspace still there after it)
            deadline = time.monotonic() + 60  # a bound, not a measure
            while time.monotonic() < deadline:
                async with session.get(f"{gw.url}/_/health") as health:
                    assert health.status == 200
                async with session.post(f"{gw.url}/run/svc", data=b"",
                                        headers=auth()) as call:
                    await call.read()
                    present = any(p.name.startswith("oscar-") for p in gw.tmp.iterdir())
                    seen.append((call.status, present))
                    if call.status == 200:
                        break
                await asyncio.sleep(0.005)
            return seen

    seen = asyncio.run(scenario())
    # Answered while the folder was still being removed, refused for the slot...
    assert (429, True) in seen, seen
    # ...and served once it was gone.
    assert seen[-1][0] == 200, seen
    assert leftovers(gw) == [".lock"] or leftovers(gw) == []
