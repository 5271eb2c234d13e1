"""oscar.py on its own: input decoding, output packing, tokens, workspaces."""

from __future__ import annotations

import base64
import os
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from watchdog.oscar import bearer_matches
from watchdog.oscar_input import Base64Decoder, InputError, write_input
from watchdog.oscar_output import (
    Workspace,
    base64_chunks,
    base64_length,
    output_files,
    write_zip,
)


def decode_in_pieces(text: bytes, cuts: list[int]) -> bytes:
    decoder = Base64Decoder()
    out, last = b"", 0
    for cut in sorted(set(c % (len(text) + 1) for c in cuts)):
        out += decoder.feed(text[last:cut])
        last = cut
    return out + decoder.feed(text[last:]) + decoder.finish()


@given(st.binary(max_size=600), st.lists(st.integers(min_value=0), max_size=6),
       st.sampled_from([b"\n", b"\r\n"]))
def test_streaming_decode_of_wrapped_base64_at_any_cut(
        data: bytes, cuts: list[int], newline: bytes) -> None:
    encoded = base64.b64encode(data)
    wrapped = newline.join(encoded[i:i + 76] for i in range(0, len(encoded), 76)) + newline
    assert decode_in_pieces(wrapped, cuts) == data


def test_missing_final_padding_is_accepted() -> None:
    assert decode_in_pieces(b"aGk", []) == b"hi"
    assert decode_in_pieces(b"aGVsbG8", [3]) == b"hello"


@pytest.mark.parametrize("text", [
    b"hello world",      # a space: the supervisor dropped it and garbled the rest
    b"a",                # a lone character
    b"aGk=aGk=",         # data after the padding
    b"aG=k",             # padding in the middle
    b"aGk*",             # outside the alphabet
    b"\xff\xfe",         # not even text
])
def test_invalid_base64_is_an_error_never_garbage(text: bytes) -> None:
    with pytest.raises(InputError) as caught:
        decode_in_pieces(text, [1, 5])
    assert caught.value.status == 400
    assert "base64" in caught.value.reason


async def chunks(*pieces: bytes) -> AsyncIterator[bytes]:
    for piece in pieces:
        yield piece


async def test_json_body_is_written_byte_for_byte(tmp_path: Path) -> None:
    document = b'  {"b": 1,   "a": [1, 2],\n "\xc3\xa9": null}  '
    await write_input(chunks(document[:5], document[5:]), str(tmp_path / "in"), max_bytes=0)
    assert (tmp_path / "in").read_bytes() == document
    await write_input(chunks(b"[1, 2]"), str(tmp_path / "list"), max_bytes=0)
    assert (tmp_path / "list").read_bytes() == b"[1, 2]"


async def test_base64_body_is_decoded_and_empty_body_gives_empty_file(tmp_path: Path) -> None:
    await write_input(chunks(b"aGVs", b"bG8=\n"), str(tmp_path / "in"), max_bytes=0)
    assert (tmp_path / "in").read_bytes() == b"hello"
    await write_input(chunks(), str(tmp_path / "empty"), max_bytes=0)
    assert (tmp_path / "empty").read_bytes() == b""


@pytest.mark.parametrize(("body", "status"), [
    (b"{not json", 400),
    (b'{"a": 1} trailing', 400),
    (b"plain text", 400),
    (b"x" * 2000, 413),
])
async def test_bad_bodies(tmp_path: Path, body: bytes, status: int) -> None:
    with pytest.raises(InputError) as caught:
        await write_input(chunks(body), str(tmp_path / "in"), max_bytes=1000)
    assert caught.value.status == status


def test_bearer_token_check() -> None:
    token = "f" * 64
    assert bearer_matches(f"Bearer {token}", token)
    assert bearer_matches(f"bearer {token}", token)  # the scheme is case-insensitive
    for header in (None, "", token, f"Basic {token}", f"Bearer {token}x", "Bearer ",
                   f"Bearer{token}", f"Token {token}"):
        assert not bearer_matches(header, token), header


@given(st.text(max_size=80))
def test_no_header_but_the_exact_one_matches(header: str) -> None:
    token = "0123456789abcdef" * 4
    assert bearer_matches(header, token) == (header.partition(" ")[0].lower() == "bearer"
                                             and header.partition(" ")[2].strip() == token)


def test_output_files_stay_inside_the_folder(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "a.txt").write_text("a")
    (out / "sub" / "b.bin").write_bytes(b"b")
    (tmp_path / "secret").write_text("secret")
    os.symlink(tmp_path / "secret", out / "escape")
    os.symlink("/", out / "root")
    os.symlink("a.txt", out / "alias")
    os.mkfifo(out / "fifo")
    names = [name for name, _ in output_files(str(out))]
    assert names == ["a.txt", "alias", "sub/b.bin"]


def test_zip_holds_relative_names_only(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "sub").mkdir(parents=True)
    (out / "a.txt").write_text("A")
    (out / "sub" / "b.txt").write_text("B")
    write_zip(output_files(str(out)), str(tmp_path / "z.zip"))
    with zipfile.ZipFile(tmp_path / "z.zip") as archive:
        assert archive.namelist() == ["a.txt", "sub/b.txt"]
        assert archive.read("sub/b.txt") == b"B"


@settings(max_examples=20)
@given(st.binary(max_size=5000))
async def test_streamed_base64_equals_the_encoding(data: bytes) -> None:
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"b64-{os.getpid()}"
    path.write_bytes(data)
    try:
        encoded = b"".join([piece async for piece in base64_chunks(str(path))])
    finally:
        path.unlink()
    assert encoded == base64.b64encode(data)
    assert base64_length(len(data)) == len(encoded)


def test_workspace_is_private_and_removed_by_its_last_holder(tmp_path: Path) -> None:
    workspace = Workspace(str(tmp_path))
    for folder in (workspace.path, workspace.input_dir, workspace.output_dir):
        assert os.stat(folder).st_mode & 0o777 == 0o700
    env = workspace.environment()
    assert Path(env["INPUT_FILE_PATH"]).parent == Path(env["TMP_INPUT_DIR"])
    locked = Path(workspace.output_dir) / "locked"
    locked.mkdir()
    (locked / "f").write_text("x")
    locked.chmod(0o500)  # a script that took its own write permission away
    workspace.hold()
    workspace.release()
    assert Path(workspace.path).exists()
    workspace.release()
    assert list(tmp_path.iterdir()) == []


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)


@settings(max_examples=50)
@given(st.dictionaries(st.text(max_size=8), json_values, max_size=5),
       st.sampled_from([None, 0, 2]), st.integers(min_value=1, max_value=64))
async def test_any_json_object_is_written_verbatim(document: dict[str, object],
                                                   indent: int | None, cut: int) -> None:
    import json
    import tempfile

    body = json.dumps(document, indent=indent, ensure_ascii=False).encode()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in"
        await write_input(chunks(body[:cut], body[cut:]), str(path), max_bytes=0)
        assert path.read_bytes() == body
