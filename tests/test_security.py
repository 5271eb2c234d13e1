"""The lines of SECURITY.md that the other test modules do not already back."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import StartGateway, free_port
from tests.test_gateway import fetch
from watchdog.oscar_output import output_files, write_zip

TOKEN = "0f" * 32


@pytest.mark.parametrize("authorization", [
    "", "Bearer", "Bearer ", f"Bearer  {TOKEN}x", f"bearer{TOKEN}", f"Basic {TOKEN}",
    f"Bearer {TOKEN[:-1]}", f"Bearer {TOKEN.upper()}", f"{TOKEN}", "Bearer \u00e9", "Digest x",
])
async def test_every_malformed_authorization_gets_401(gateway: StartGateway,
                                                      authorization: str) -> None:
    gw = gateway(["cat"], env={"WATCHDOG_MODE": "oscar", "OSCAR_SERVICE_TOKEN": TOKEN})
    headers = {"Authorization": authorization} if authorization else {}
    status, answer, _ = await fetch("POST", gw.url + "/run/x", b"aGk=", headers)
    assert status == 401
    assert answer["WWW-Authenticate"].startswith("Bearer")
    _, _, exposition = await fetch("GET", gw.metrics_url)
    assert TOKEN.encode() not in exposition
    assert TOKEN not in gw.log()


async def test_metrics_can_listen_apart_from_the_function_port(gateway: StartGateway) -> None:
    metrics_port = free_port()
    gw = gateway(["cat"], env={"WATCHDOG_METRICS_BIND_ADDRESS": "127.0.0.2",
                               "WATCHDOG_METRICS_PORT": str(metrics_port)})
    status, _, body = await fetch("GET", f"http://127.0.0.2:{metrics_port}/metrics")
    assert status == 200
    assert b"http_requests_in_flight" in body
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", metrics_port), timeout=2).close()
    _, _, body = await fetch("GET", f"http://127.0.0.1:{gw.port}/metrics")
    assert b"http_requests_in_flight" not in body  # the function port serves no metrics


names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789._-", min_size=1,
                max_size=12).filter(lambda n: n not in (".", ".."))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(names, min_size=1, max_size=3), min_size=1, max_size=6, unique_by=tuple))
def test_zip_names_are_relative_and_inside(paths: list[list[str]]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        out.mkdir()
        made = set()
        for parts in paths:
            target = out.joinpath(*parts)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.exists():
                    continue
                target.write_text("/".join(parts))
                made.add("/".join(parts))
            except (FileExistsError, NotADirectoryError, IsADirectoryError):
                continue  # a name that is both a file and a folder: skip it
        (out / "escape").symlink_to("/etc/hostname")
        found = output_files(str(out))
        assert {name for name, _ in found} == made
        write_zip(found, str(Path(tmp) / "z.zip"))
        import zipfile

        with zipfile.ZipFile(Path(tmp) / "z.zip") as archive:
            for name in archive.namelist():
                assert not name.startswith("/")
                assert ".." not in name.split("/")
            assert set(archive.namelist()) == made
