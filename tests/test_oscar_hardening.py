"""OSCAR input and output under attack (issue 11, items 2, 3, 4, 6, 10, 11, 12): the
real gateway, scripts that misbehave, and what comes back."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import re
import socket
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import Gateway, StartGateway
from tests.test_gateway import fetch
from tests.test_oscar_gateway import leftovers
from watchdog.oscar_input import JSON_MAX_DEPTH, InputError, JsonValidator
from watchdog.oscar_output import (
    OutputRefused,
    open_output,
    output_files,
    remove_tree,
    write_zip,
)


def oscar(gateway: StartGateway, script: str, **env: str) -> Gateway:
    """A gateway in OSCAR mode (no token) running `script` with /bin/sh."""
    return gateway(["/bin/sh", "-c", script],
                   env={"WATCHDOG_MODE": "oscar", "PYTHON": sys.executable, **env})


def peak_rss(pid: int) -> int:
    """The process's highest resident set so far, in bytes (VmHWM)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]


# --- item 2: JSON is validated as it streams, never parsed -------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False,
                                                            allow_infinity=False)
    | st.text(max_size=6),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20)


def validates(document: bytes, cuts: list[int]) -> bool:
    validator = JsonValidator()
    last = 0
    try:
        for cut in sorted({c % (len(document) + 1) for c in cuts}):
            validator.feed(document[last:cut])
            last = cut
        validator.feed(document[last:])
        validator.finish()
    except InputError:
        return False
    return True


def loads_as_container(document: bytes) -> bool:
    try:
        return isinstance(json.loads(document), dict | list)
    except ValueError:
        return False


@settings(max_examples=300)
@given(st.lists(json_values, max_size=3) | st.dictionaries(st.text(max_size=4), json_values),
       st.sampled_from([None, 0, 2]), st.booleans(), st.lists(st.integers(0), max_size=5),
       st.integers(0), st.sampled_from(list(b'[]{},:"0e.-+tfn \\\x01\xff')))
def test_validator_agrees_with_json_loads_at_any_cut(
        value: object, indent: int | None, ascii_only: bool, cuts: list[int],
        where: int, damage: int) -> None:
    document = json.dumps(value, indent=indent, ensure_ascii=ascii_only).encode()
    assert validates(document, cuts)
    broken = bytearray(document)
    broken[where % len(broken)] = damage  # one byte changed: valid or not, both agree
    assert validates(bytes(broken), cuts) == loads_as_container(bytes(broken)), broken


def test_validator_refuses_what_json_loads_is_lenient_about() -> None:
    for document in (b"[NaN]", b"[Infinity]", b"[1] [2]", b'"a"', b"1", b"[1,]"):
        assert not validates(document, [1, 3])
    assert validates(b"[" * JSON_MAX_DEPTH + b"]" * JSON_MAX_DEPTH, [7, 300])
    assert not validates(b"[" * (JSON_MAX_DEPTH + 1) + b"]" * (JSON_MAX_DEPTH + 1), [])


def post_whole(gw: Gateway, body: bytes) -> tuple[int, bytes]:
    """POST / with the whole body sent first, then the answer read: (status, body)."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        answer = b""
        while piece := sock.recv(65536):
            answer += piece
    head, _, text = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), text


async def test_json_bodies_too_deep_or_broken_get_400_and_a_reason(
        gateway: StartGateway) -> None:
    gw = oscar(gateway, 'wc -c < "$INPUT_FILE_PATH"')
    deep = JSON_MAX_DEPTH + 1
    for body in (b"[" * 100_000, b"[" * deep + b"]" * deep, b'{"a": [1, 2}',
                 b'["\xff\xfe"]', b"[1] x"):
        # All sent before the answer is read: it may come before the body is in.
        status, text = await asyncio.to_thread(post_whole, gw, body)
        assert status == 400, body[:20]
        assert text.startswith(b"Body looks like JSON but is not valid JSON: "), text
        assert b"Traceback" not in text
    status, _, text = await fetch("POST", gw.url + "/", b"[" * 500 + b"]" * 500)
    assert (status, text) == (200, b"1000\n")
    assert "Traceback" not in gw.log()
    assert leftovers(gw) == []


async def test_a_json_body_of_many_empty_arrays_takes_no_memory_nor_the_loop(
        gateway: StartGateway) -> None:
    gw = oscar(gateway, 'wc -c < "$INPUT_FILE_PATH"')
    body = b"[" + b"[]," * (8 << 20) + b"[]]"  # 24 MiB; json.loads made it ~640 MB
    assert (await fetch("POST", gw.url + "/", b"[]"))[0] == 200
    before = peak_rss(gw.proc.pid)
    stalls: list[float] = []

    async def probe() -> None:
        while True:
            began = time.perf_counter()
            await fetch("GET", gw.url + "/_/health")
            stalls.append(time.perf_counter() - began)
            await asyncio.sleep(0.02)

    prober = asyncio.create_task(probe())
    try:
        status, _, text = await fetch("POST", gw.url + "/", body)
    finally:
        prober.cancel()
    assert (status, text) == (200, b"%d\n" % len(body))  # written byte for byte
    assert peak_rss(gw.proc.pid) - before < 48 << 20
    assert len(stalls) >= 3
    assert max(stalls) < 0.5, stalls  # loaded machine; a whole-body parse held it seconds


# --- item 3: deep trees ------------------------------------------------------------------

DEEP_TREE = """
nest='import os
for _ in range(1100): os.mkdir("d"); os.chdir("d")
open("f", "w").write("deep")'
cd "$TMP_INPUT_DIR" && "$PYTHON" -c "$nest"
mkdir "$TMP_OUTPUT_DIR/x" && cd "$TMP_OUTPUT_DIR/x" && "$PYTHON" -c "$nest"
chmod 500 "$TMP_INPUT_DIR/d/d/d"
echo top > "$TMP_OUTPUT_DIR/top.txt"
"""


async def test_a_deep_folder_tree_gives_the_output_and_leaves_nothing(
        gateway: StartGateway) -> None:
    gw = oscar(gateway, DEEP_TREE, write_timeout="0")
    status, headers, body = await fetch("POST", gw.url + "/", b"")
    assert status == 200, body
    assert headers["X-Watchdog-Output"] == "zip; files=2"
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(body))) as archive:
        assert archive.namelist() == ["top.txt", "x/" + "d/" * 1100 + "f"]
        assert archive.read("x/" + "d/" * 1100 + "f") == b"deep"
    assert leftovers(gw) == []
    began = time.monotonic()
    assert gw.stop(timeout=15) == 0  # with write_timeout=0 a leaked count never exits
    assert time.monotonic() - began < 5


def test_remove_tree_has_no_depth_limit(tmp_path: Path) -> None:
    top = tmp_path / "w"
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        os.mkdir("w", dir_fd=fd)
        os.close(fd)
        fd = os.open(top, os.O_RDONLY)
        for level in range(3000):  # deeper than any path the kernel takes
            os.mkdir("level-directory", dir_fd=fd)
            child = os.open("level-directory", os.O_RDONLY, dir_fd=fd)
            if level == 1500:
                os.mkfifo("fifo", dir_fd=child)
                os.chmod(child, 0o500)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)
    remove_tree(str(top))
    assert list(tmp_path.iterdir()) == []


# --- item 4: exactly the declared length ------------------------------------------------

BIG = 'head -c 25165824 /dev/zero > "$TMP_OUTPUT_DIR/big"'  # 24 MiB -> 32 MiB of base64


def send_slowly_read(gw: Gateway, request: bytes) -> tuple[socket.socket, int, bytes]:
    """Send `request` on a socket with a small receive buffer; (socket, declared
    length, what of the body came with the head)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", gw.port))
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))  # type: ignore[union-attr]
    return sock, length, rest


def output_file(gw: Gateway) -> Path:
    found = list(gw.tmp.glob("oscar-*/output/big"))
    assert len(found) == 1
    return found[0]


POST = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"


def test_an_output_that_grows_while_sent_is_cut_at_its_length(gateway: StartGateway) -> None:
    gw = oscar(gateway, BIG)
    sock, length, body = send_slowly_read(gw, POST)
    with sock:
        assert length == 4 * 24 * 2**20 // 3
        with output_file(gw).open("ab") as grow:
            grow.write(b"\x01" * 2**20)
        while len(body) < length:
            piece = sock.recv(1 << 20)
            assert piece, "connection closed early"
            body += piece
        sock.sendall(b"GET /_/health HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.3)
        sock.settimeout(5)
        after = sock.recv(65536)
    assert body[:length] == base64.b64encode(b"\0" * (24 * 2**20))
    assert body[length:] + after[:12] == b"HTTP/1.1 200"  # the next answer, nothing between


def test_an_output_that_shrinks_while_sent_cuts_the_connection(gateway: StartGateway) -> None:
    gw = oscar(gateway, BIG)
    sock, length, body = send_slowly_read(gw, POST)
    with sock:
        os.truncate(output_file(gw), 2**20)
        closed = False
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                piece = sock.recv(1 << 20)
            except ConnectionResetError:
                closed = True
                break
            except TimeoutError:
                break  # nothing more, and still open
            if not piece:
                closed = True
                break
            body += piece
    assert closed, "the connection stayed open with the answer short of its length"
    assert len(body) < length
    assert "output file shrank while sent" in gw.log()


# --- item 6: FIFOs, the slot and write_timeout while packing -----------------------------


def test_a_file_swapped_for_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "a").write_text("a")
    (out / "b").write_text("b")
    files = output_files(str(out))
    (out / "b").unlink()
    os.mkfifo(out / "b")  # after the walk, as a process left behind would
    with pytest.raises(OutputRefused):
        open_output(str(out / "b"), str(out))
    done = threading.Event()

    def zip_them() -> None:
        write_zip(files, str(tmp_path / "z.zip"))
        done.set()

    threading.Thread(target=zip_them, daemon=True).start()
    finished = done.wait(5)
    if not finished:  # free the stuck reader: open the FIFO's other end
        with contextlib.suppress(OSError):
            os.close(os.open(out / "b", os.O_WRONLY | os.O_NONBLOCK))
    assert finished, "zipping blocked on a FIFO"
    with zipfile.ZipFile(tmp_path / "z.zip") as archive:
        assert archive.namelist() == ["a"]


async def test_packing_holds_the_slot(gateway: StartGateway, tmp_path: Path) -> None:
    marker = tmp_path / "done"
    gw = oscar(gateway, f"""
        [ -s "$INPUT_FILE_PATH" ] && exit 0
        for i in 1 2 3; do head -c 33554432 /dev/urandom > "$TMP_OUTPUT_DIR/$i"; done
        touch {marker}
        """, max_inflight="1")
    first = asyncio.create_task(fetch("POST", gw.url + "/", b""))
    for _ in range(200):
        if marker.exists():
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # the script is gone; 96 MiB of noise take seconds to zip
    status, _, _ = await fetch("POST", gw.url + "/", base64.b64encode(b"second"))
    assert status == 429
    status, headers, _ = await first
    assert (status, headers["X-Watchdog-Output"]) == (200, "zip; files=3")


async def test_packing_past_write_timeout_gets_504(gateway: StartGateway) -> None:
    gw = oscar(gateway, """
        for i in 1 2 3 4; do head -c 50331648 /dev/urandom > "$TMP_OUTPUT_DIR/$i"; done
        """, write_timeout="2s")
    began = time.monotonic()
    status, _, text = await fetch("POST", gw.url + "/", b"")
    assert (status, text) == (504, b"Output not packed within write_timeout.\n")
    assert time.monotonic() - began < 3.5
    assert leftovers(gw, within=10) == []


# --- items 10, 11, 12: hard links, the gateway's own files, names ------------------------


async def test_a_hard_link_out_of_the_folder_is_refused(gateway: StartGateway,
                                                        tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("secret")
    gw = oscar(gateway, f'ln {secret} "$TMP_OUTPUT_DIR/stolen"; echo ok > "$TMP_OUTPUT_DIR/ok"')
    status, headers, body = await fetch("POST", gw.url + "/", b"")
    assert (status, headers["X-Watchdog-Output"]) == (200, "zip; files=1")
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(body))) as archive:
        assert archive.namelist() == ["ok"]
    assert "output file left out of the zip" in gw.log()


async def test_the_zip_is_never_written_through_a_planted_link(gateway: StartGateway,
                                                               tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    gw = oscar(gateway, f"""
        for name in output.zip .oscar-zip; do ln -s {victim} "$TMP_OUTPUT_DIR/../$name"; done
        echo a > "$TMP_OUTPUT_DIR/a"; echo b > "$TMP_OUTPUT_DIR/b"
        """)
    status, _, body = await fetch("POST", gw.url + "/", b"")
    assert status == 200
    assert victim.read_text() == "keep"
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(body))) as archive:
        assert archive.namelist() == ["a", "b"]


async def test_names_that_are_not_utf8_come_back(gateway: StartGateway) -> None:
    one = oscar(gateway, """echo x > "$TMP_OUTPUT_DIR/$(printf 'caf\\351.txt')" """)
    status, headers, body = await fetch("POST", one.url + "/", b"")
    assert (status, headers["X-Watchdog-Output"]) == (200, "file; name=caf%E9.txt")
    assert base64.b64decode(body) == b"x\n"
    two = oscar(gateway, """
        mkdir "$TMP_OUTPUT_DIR/$(printf '\\377')"
        echo y > "$TMP_OUTPUT_DIR/$(printf '\\377')/$(printf 'n\\351')"
        echo z > "$TMP_OUTPUT_DIR/caf\u00e9"
        """)
    status, headers, body = await fetch("POST", two.url + "/", b"")
    assert (status, headers["X-Watchdog-Output"]) == (200, "zip; files=2")
    with zipfile.ZipFile(io.BytesIO(base64.b64decode(body))) as archive:
        raw = {(info.filename.encode("cp437") if not info.flag_bits & 0x800
                else info.filename.encode()): archive.read(info) for info in archive.infolist()}
    assert raw == {b"\xff/n\xe9": b"y\n", "café".encode(): b"z\n"}
