"""`fwatchdog run` as an oscar-cli user meets it: oscar-cli's flags and the spellings
of OSCAR's docs, the clusters of ~/.oscar-cli/config.yaml, the service token asked
of the cluster, progress on a terminal, connection errors in words. Against a
stand-in OSCAR manager on loopback (and a real gateway behind it where it counts)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import json
import os
import pty
import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.conftest import StartGateway, free_port
from tests.test_oscar_gateway import TOKEN, oscar_gateway, png

ROOT = Path(__file__).parent.parent
USER, PASSWORD = "oscar", "s3cret"
# An OIDC access token is a JWT: three base64url parts.
JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyQGVnaS5ldSJ9.c2lnbmF0dXJl"


@dataclass
class Manager:
    """What the client sees of OSCAR's manager: the service's definition (token
    included) for the cluster's credentials, and /run/NAME for the service token."""

    url: str = ""
    services: tuple[str, ...] = ("svc",)
    upstream: str = ""  # a gateway to proxy /run to, as the manager does to the pod
    hang: bool = False  # /run never answers
    seen: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    released: asyncio.Event = field(default_factory=asyncio.Event)  # set when it stops

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_get("/system/services/{name}", self.service)
        app.router.add_post("/run/{name}", self.run)
        return app

    def _credentials_ok(self, request: web.Request) -> bool:
        basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        return request.headers.get("Authorization") in (basic, f"Bearer {JWT}")

    async def service(self, request: web.Request) -> web.Response:
        self.seen.append(("GET", request.path, dict(request.headers)))
        if not self._credentials_ok(request):
            return web.Response(status=401, text="Unauthorized")
        name = request.match_info["name"]
        if name not in self.services:
            return web.Response(status=404, text="Not Found")
        return web.json_response({"name": name, "image": "bitnami/minideb", "token": TOKEN})

    async def run(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(("POST", request.path, dict(request.headers)))
        if request.headers.get("Authorization") not in (f"Bearer {TOKEN}", f"Bearer {JWT}"):
            return web.Response(status=401, text="Unauthorized")
        if request.match_info["name"] not in self.services:
            return web.Response(status=404, text="Not Found")
        if self.hang:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.released.wait(), 60)
        body = await request.read()
        if not self.upstream:
            # OSCAR's chain answers a file as base64, and says nothing of its kind.
            return web.Response(body=body)
        async with aiohttp.ClientSession() as session, session.post(
                self.upstream + "/", data=body,
                headers={"Authorization": request.headers["Authorization"]}) as answer:
            return web.Response(status=answer.status, body=await answer.read(),
                                headers={k: v for k, v in answer.headers.items()
                                         if k.startswith("X-Watchdog")})


@contextlib.asynccontextmanager
async def serve(manager: Manager, tls: ssl.SSLContext | None = None) -> AsyncIterator[Manager]:
    runner = web.AppRunner(manager.app())
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
    await site.start()
    port = runner.addresses[0][1]
    manager.url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    try:
        yield manager
    finally:
        manager.released.set()
        await runner.cleanup()


def write_config(home: Path, clusters: dict[str, dict[str, Any]], default: str = "",
                 name: str = "config.yaml") -> Path:
    """A config as `oscar-cli cluster add` writes it."""
    folder = home / ".oscar-cli"
    folder.mkdir(parents=True, exist_ok=True)
    document = {"oscar": {key: {"memory": "256Mi", "log_level": "INFO", "ssl_verify": True,
                                **value} for key, value in clusters.items()},
                "default": default}
    path = folder / name
    text = yaml.safe_dump(document) if name.endswith(".yaml") else json.dumps(document)
    path.write_text(text)
    return path


def client_env(home: Path, **extra: str) -> dict[str, str]:
    return {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "HOME": str(home), **extra}


def run_client(home: Path, *args: str, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "watchdog", "run", *args],
                          env=env or client_env(home), capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=60, check=False)


async def client(home: Path, *args: str, env: dict[str, str] | None = None
                 ) -> subprocess.CompletedProcess[bytes]:
    return await asyncio.to_thread(run_client, home, *args, env=env)


def one_line(result: subprocess.CompletedProcess[bytes]) -> str:
    """The error the client printed, checked to be exactly one line."""
    assert result.returncode == 1, result
    lines = result.stderr.decode().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


async def test_oscar_cli_flags_with_endpoint_and_token(tmp_path: Path) -> None:
    image = png(300, 200)
    (tmp_path / "in.png").write_bytes(image)
    async with serve(Manager()) as manager:
        result = await client(tmp_path, "svc", "-f", str(tmp_path / "in.png"),
                              "-o", str(tmp_path / "out.png"), "-e", manager.url, "-t", TOKEN)
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "out.png").read_bytes() == image
        result = await client(tmp_path, "svc", "--file-input", str(tmp_path / "in.png"),
                              "--endpoint", manager.url, "--token", TOKEN)
        assert result.stdout == image
        result = await client(tmp_path, "svc", "-i", "Hello", "-e", manager.url, "-t", TOKEN)
        assert (result.returncode, result.stdout, result.stderr) == (0, b"Hello", b"")
    # No config file, no cluster: never asked; the input went streamed, as oscar-cli's.
    assert [(method, path) for method, path, _ in manager.seen] == [("POST", "/run/svc")] * 3
    _, _, headers = manager.seen[0]
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers.get("Transfer-Encoding") == "chunked"


async def test_the_spellings_of_oscars_docs(tmp_path: Path) -> None:
    image = png()
    (tmp_path / "image3.jpg").write_bytes(image)
    async with serve(Manager()) as manager:
        auth = ("-e", manager.url, "-t", TOKEN)
        # oscar-cli service run plant-classification-sync --input images/image3.jpg
        result = await client(tmp_path, "svc", "--input", str(tmp_path / "image3.jpg"), *auth)
        assert result.stdout == image
        # oscar-cli service run text-to-speech --text-input "Hello everyone" --output ...
        result = await client(tmp_path, "svc", "--text-input", "Hello everyone",
                              "--output", str(tmp_path / "output.mp3"), *auth)
        assert (tmp_path / "output.mp3").read_bytes() == b"Hello everyone"
        # {-o | -output }: the single-dash spelling is not `-o utput`.
        result = await client(tmp_path, "svc", "--text-input", "one dash",
                              "-output", str(tmp_path / "dash.txt"), *auth)
        assert result.returncode == 0, result.stderr
        assert (tmp_path / "dash.txt").read_bytes() == b"one dash"
        assert not (tmp_path / "utput").exists()
        # -i is oscar-cli's text input now; a file's name given to it is sent as text,
        # and the client says so.
        result = await client(tmp_path, "svc", "-i", str(tmp_path / "image3.jpg"), *auth)
        assert result.stdout == str(tmp_path / "image3.jpg").encode()
        assert b"-f/--input sends a file" in result.stderr


async def test_default_cluster_gives_the_endpoint_and_the_token(
        gateway: StartGateway, tmp_path: Path) -> None:
    gw = oscar_gateway(gateway, "copy.sh")
    image = png(300, 200)
    (tmp_path / "in.png").write_bytes(image)
    async with serve(Manager(upstream=gw.url)) as manager:
        write_config(tmp_path, {"oscar-cluster": {
            "endpoint": manager.url, "auth_user": USER, "auth_password": PASSWORD}},
            default="oscar-cluster")
        result = await client(tmp_path, "svc", "--input", str(tmp_path / "in.png"),
                              "--output", str(tmp_path / "out.png"))
        assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.png").read_bytes() == image  # through the real gateway
    (get, get_path, get_headers), (post, post_path, post_headers) = manager.seen
    assert (get, get_path, post, post_path) == ("GET", "/system/services/svc",
                                                "POST", "/run/svc")
    assert get_headers["Authorization"] == "Basic " + base64.b64encode(
        f"{USER}:{PASSWORD}".encode()).decode()
    assert post_headers["Authorization"] == f"Bearer {TOKEN}"  # never the password


async def test_named_cluster_config_file_and_oidc(tmp_path: Path) -> None:
    bin_folder = tmp_path / "bin"
    bin_folder.mkdir()
    oidc_token = bin_folder / "oidc-token"  # oidc-agent's command, for account "egi"
    oidc_token.write_text(f'#!/bin/sh\n[ "$*" = "--time=600 egi" ] && echo {JWT} && exit 0\n'
                          'echo "account not loaded" >&2; exit 1\n')
    oidc_token.chmod(0o755)
    env = client_env(tmp_path, PATH=f"{bin_folder}:{os.environ['PATH']}")
    async with serve(Manager()) as first, serve(Manager(services=("other",))) as second:
        path = write_config(tmp_path, {
            "first": {"endpoint": first.url, "auth_user": USER, "auth_password": PASSWORD},
            "second": {"endpoint": second.url, "oidc_token": JWT},
            "agent": {"endpoint": second.url, "oidc_account_name": "egi"},
            "agent2": {"endpoint": second.url, "oidc_account_name": "not-loaded"},
        }, default="first", name="clusters.json")  # oscar-cli reads JSON too
        result = await client(tmp_path, "other", "-c", "second", "--config", str(path),
                              "-i", "to second", env=env)
        assert (result.returncode, result.stdout) == (0, b"to second"), result.stderr
        result = await client(tmp_path, "other", "--cluster", "agent", "--config", str(path),
                              "-i", "via oidc-agent", env=env)
        assert (result.returncode, result.stdout) == (0, b"via oidc-agent"), result.stderr
        assert "account not loaded" in one_line(await client(
            tmp_path, "other", "-c", "agent2", "--config", str(path), "-i", "x", env=env))
        assert "no cluster 'third'" in one_line(await client(
            tmp_path, "svc", "-c", "third", "--config", str(path), "-i", "x", env=env))
    assert first.seen == []
    assert [(m, p, h["Authorization"]) for m, p, h in second.seen] == [
        ("GET", "/system/services/other", f"Bearer {JWT}"),
        ("POST", "/run/other", f"Bearer {TOKEN}")] * 2


async def test_cluster_refusals_are_explained(tmp_path: Path) -> None:
    async with serve(Manager()) as manager:
        write_config(tmp_path, {"bad": {"endpoint": manager.url, "auth_user": USER,
                                        "auth_password": "wrong"},
                                "good": {"endpoint": manager.url, "auth_user": USER,
                                         "auth_password": PASSWORD}}, default="bad")
        line = one_line(await client(tmp_path, "svc", "-i", "x"))
        assert "cluster 'bad' refused the credentials of user 'oscar' (401)" in line
        line = one_line(await client(tmp_path, "nope", "-c", "good", "-i", "x"))
        assert line.endswith(f"no service 'nope' on cluster 'good' ({manager.url}, 404)")
        line = one_line(await client(tmp_path, "svc", "-e", manager.url, "-i", "x"))
        assert "the service token was refused (401): none was sent" in line
    assert all(method == "GET" or "Authorization" not in headers
               for method, _, headers in manager.seen)


def self_signed(folder: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context with a fresh self-signed certificate for 127.0.0.1."""
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context, cert


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
async def test_tls_untrusted_certificate_and_ssl_verify(tmp_path: Path) -> None:
    context, _ = self_signed(tmp_path)
    async with serve(Manager(), tls=context) as manager:
        cluster = {"endpoint": manager.url, "auth_user": USER, "auth_password": PASSWORD}
        write_config(tmp_path, {"tls": cluster}, default="tls")
        line = one_line(await client(tmp_path, "svc", "-i", "x"))
        assert line.startswith("fwatchdog run: TLS: 127.0.0.1:")
        assert "does not trust" in line
        assert "ssl_verify: false" in line
        write_config(tmp_path, {"tls": {**cluster, "ssl_verify": False}}, default="tls")
        result = await client(tmp_path, "svc", "-i", "self-signed")
        assert (result.returncode, result.stdout) == (0, b"self-signed"), result.stderr
        http_url = manager.url.replace("https://", "http://")
        line = one_line(await client(tmp_path, "svc", "-e", http_url, "-t", TOKEN, "-i", "x"))
        assert "closed the connection" in line or "broke" in line
    assert [m for m, _, _ in manager.seen] == ["GET", "POST"]  # the untrusted one: none


async def test_connection_errors_in_words(tmp_path: Path) -> None:
    port = free_port()
    line = one_line(await client(tmp_path, "svc", "-e", f"http://127.0.0.1:{port}",
                                 "-t", TOKEN, "-i", "x"))
    assert line == (f"fwatchdog run: nothing is listening at 127.0.0.1:{port} (connection "
                    "refused): is the gateway or cluster running there, and is the endpoint "
                    "right?")
    line = one_line(await client(tmp_path, "svc", "-e", f"127.0.0.1:{port}", "-i", "x"))
    assert "is not a URL" in line
    async with serve(Manager(hang=True)) as manager:
        line = one_line(await client(tmp_path, "svc", "-e", manager.url, "-t", TOKEN,
                                     "-i", "x", "--timeout", "0.5"))
        assert line == f"fwatchdog run: no answer from {manager.url[7:]} within 0.5 s " \
                       "(see --timeout)"
        tls_url = manager.url.replace("http://", "https://")
        line = one_line(await client(tmp_path, "svc", "-e", tls_url, "-t", TOKEN, "-i", "x"))
        assert line == (f"fwatchdog run: TLS: {manager.url[7:]} does not speak TLS: is it an "
                        "http:// address?")
    # A name that cannot be resolved, where no DNS query can leave the machine.
    namespaces = await asyncio.to_thread(subprocess.run, ["unshare", "-rn", "true"],
                                         capture_output=True, check=False)
    if namespaces.returncode != 0:
        pytest.skip("no network namespaces here")
    result = await asyncio.to_thread(
        subprocess.run, ["unshare", "-rn", sys.executable, "-m", "watchdog", "run", "svc",
                         "-e", "http://oscar.example.invalid", "-t", TOKEN, "-i", "x"],
        env=client_env(tmp_path), capture_output=True, timeout=60, check=False)
    assert one_line(result).startswith(
        "fwatchdog run: cannot find the address of 'oscar.example.invalid' (DNS: ")


def read_terminal(master: int) -> bytes:
    """All that was written to a pty, until its last writer closed it."""
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError as exc:  # EIO: the other side is closed
            if exc.errno != errno.EIO:
                raise
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


async def test_progress_only_on_a_terminal(tmp_path: Path) -> None:
    big = os.urandom(3 * 2**20)
    (tmp_path / "big.bin").write_bytes(big)
    args = ["svc", "-f", str(tmp_path / "big.bin"), "-o", str(tmp_path / "out.bin")]
    async with serve(Manager()) as manager:
        args += ["-e", manager.url, "-t", TOKEN]
        result = await client(tmp_path, *args)  # stderr a pipe: nothing on it
        assert (result.returncode, result.stderr) == (0, b"")
        assert (tmp_path / "out.bin").read_bytes() == big

        def on_a_terminal() -> tuple[int, bytes]:
            master, slave = pty.openpty()
            try:
                with subprocess.Popen([sys.executable, "-m", "watchdog", "run", *args],
                                      env=client_env(tmp_path), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=slave) as process:
                    os.close(slave)
                    slave = -1
                    seen = read_terminal(master)
                    return process.wait(60), seen
            finally:
                os.close(master)
                if slave >= 0:
                    os.close(slave)

        (tmp_path / "out.bin").unlink()
        status, seen = await asyncio.to_thread(on_a_terminal)
    assert status == 0, seen
    assert (tmp_path / "out.bin").read_bytes() == big
    text = seen.decode()
    assert "fwatchdog run: sending big.bin: " in text
    assert " of 3.0 MiB (" in text
    assert "fwatchdog run: receiving: " in text  # 4 MiB of base64 came back
    assert text.endswith("\r\x1b[K")  # the line is wiped at the end
