"""`watchdog.sniff` against Go's net/http, case by case: every expected type below is
what the Go classic watchdog (built from its public source, Go 1.26) answered for that
output of `cat`, or what `http.DetectContentType` returns for it (measured; these tests
never need Go). The gateway end to end is in tests/test_compat_go.py."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from watchdog import sniff
from watchdog.executor import Result
from watchdog.process import Exit, SpilledOutput

HTML = "text/html; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
BINARY = "application/octet-stream"

CASES = [
    # HTML: after whitespace, case-insensitive, the tag's name ended by a space or `>`.
    ("html", b"<html><body>hi</body></html>", HTML),
    ("upper and lower", b"<HtMl>", HTML),
    ("whitespace first", b"\n\t\x0c\r <!DOCTYPE html>\n<html>", HTML),
    ("comment", b"<!-- c -->", HTML),
    ("comment not ended by 0xTT", b"<!--x-->", TEXT),
    ("h1", b"<h1>x</h1>", HTML),
    ("a with attributes", b"<a href='x'>", HTML),
    ("pre is not p", b"<pre>x</pre>", TEXT),
    ("br/ is not br", b"<br/>", TEXT),
    ("tag at the very end", b"<html", TEXT),
    ("vertical tab is not whitespace", b"\x0b<html>", BINARY),
    ("html past 512", b" " * 507 + b"<html>", TEXT),
    ("html just within 512", b" " * 506 + b"<html>", HTML),
    # XML: after whitespace, exactly.
    ("xml", b"<?xml version='1.0'?><a/>", "text/xml; charset=utf-8"),
    ("xml after whitespace", b"  <?xml version='1.0'?>", "text/xml; charset=utf-8"),
    ("XML in capitals", b"<?XML version='1.0'?>", TEXT),
    # Exact signatures at the start (no whitespace skipped).
    ("pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", "application/pdf"),
    ("pdf after a space", b" %PDF-1.4", TEXT),
    ("postscript", b"%!PS-Adobe-3.0\n", "application/postscript"),
    ("png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "image/png"),
    ("gif87a", b"GIF87a\x01\x00", "image/gif"),
    ("gif89a", b"GIF89a\x01\x00\x01\x00", "image/gif"),
    ("jpeg", b"\xff\xd8\xff\xe0\x00\x10JFIF", "image/jpeg"),
    ("bmp", b"BM\x00\x00", "image/bmp"),
    ("icon", b"\x00\x00\x01\x00\x01\x00", "image/x-icon"),
    ("cursor", b"\x00\x00\x02\x00\x01\x00", "image/x-icon"),
    ("webp", b"RIFF\x10\x00\x00\x00WEBPVP8 ", "image/webp"),
    ("wave", b"RIFF\x10\x00\x00\x00WAVEfmt ", "audio/wave"),
    ("avi", b"RIFF\x10\x00\x00\x00AVI LIST", "video/avi"),
    ("aiff", b"FORM\x00\x00\x00\x00AIFF", "audio/aiff"),
    ("mp3", b"ID3\x03\x00", "audio/mpeg"),
    ("ogg", b"OggS\x00\x02", "application/ogg"),
    ("midi", b"MThd\x00\x00\x00\x06\x00\x01", "audio/midi"),
    ("webm", b"\x1aE\xdf\xa3\x01", "video/webm"),
    ("embedded opentype", b"\x00" * 34 + b"LP\x00\x00", "application/vnd.ms-fontobject"),
    ("icon before embedded opentype", b"\x00\x00\x01\x00" + b"\x00" * 30 + b"LP",
     "image/x-icon"),
    ("ttf", b"\x00\x01\x00\x00\x00\x10", "font/ttf"),
    ("otf", b"OTTO\x00", "font/otf"),
    ("font collection", b"ttcf\x00", "font/collection"),
    ("woff", b"wOFF\x00", "font/woff"),
    ("woff2", b"wOF2\x00", "font/woff2"),
    ("gzip", b"\x1f\x8b\x08\x00\x00\x00\x00\x00", "application/x-gzip"),
    ("zip", b"PK\x03\x04\x14\x00", "application/zip"),
    ("rar 4", b"Rar!\x1a\x07\x00\xcf", "application/x-rar-compressed"),
    ("rar 5", b"Rar!\x1a\x07\x01\x00", "application/x-rar-compressed"),
    ("wasm", b"\x00asm\x01\x00\x00\x00", "application/wasm"),
    # MP4: a whole `ftyp` box with an `mp4` brand; the brand's version is not one.
    ("mp4", b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom", "video/mp4"),
    ("mp4 compatible brand", b"\x00\x00\x00\x18ftypisom\x00\x00\x00\x00mp41mp42", "video/mp4"),
    ("mp4 in the version only", b"\x00\x00\x00\x10ftypisommp41", BINARY),
    ("mp4 box longer than the data", b"\x00\x00\x00\x18ftypmp42", BINARY),
    ("mp4 box not a multiple of 4", b"\x00\x00\x00\x11ftypmp42\x00\x00\x00\x00\x00", BINARY),
    # Byte order marks: four bytes of data at least.
    ("utf-8 bom", b"\xef\xbb\xbfhi", TEXT),
    ("utf-8 bom before a binary byte", b"\xef\xbb\xbf\x00\x01", TEXT),
    ("utf-8 bom alone", b"\xef\xbb\xbf", TEXT),
    ("utf-16le bom", b"\xff\xfeh\x00i\x00", "text/plain; charset=utf-16le"),
    ("utf-16be bom", b"\xfe\xff\x00h\x00i", "text/plain; charset=utf-16be"),
    ("utf-16le bom alone", b"\xff\xfe", TEXT),
    ("utf-16be bom and one byte", b"\xfe\xff\x00", BINARY),
    # Text, unless a binary data byte is among the first 512.
    ("json is text", b'{"a": 1}\n', TEXT),
    ("utf-8 text", "héllo wörld\n".encode(), TEXT),
    ("latin-1 text", b"caf\xe9", TEXT),
    ("escape is text", b"\x1b[1mbold\x1b[0m", TEXT),
    ("form feed is text", b"a\x0cb", TEXT),
    ("vertical tab is binary", b"a\x0bb", BINARY),
    ("NUL is binary", b"abc\x00def", BINARY),
    ("DEL is text", b"a\x7fb", TEXT),
    ("NUL at byte 511", b"a" * 511 + b"\x00", BINARY),
    ("NUL at byte 512", b"a" * 512 + b"\x00", TEXT),
    ("whitespace only", b"  \n", TEXT),
    ("empty", b"", TEXT),  # Go's servers send no type for an empty body
]


@pytest.mark.parametrize(("data", "expected"), [(data, expected) for _, data, expected in CASES],
                         ids=[name for name, _, _ in CASES])
def test_content_type_as_go(data: bytes, expected: str) -> None:
    assert sniff.content_type(data) == expected


def test_only_the_first_512_bytes_count() -> None:
    assert sniff.content_type(b"<html>" + b"\x00" * 10_000) == HTML
    assert sniff.content_type(b"a" * 512 + b"\x00" * 10_000) == TEXT


def _exit(spilled: SpilledOutput | None = None, output: list[bytes] | None = None) -> Exit:
    return Exit(code=1, signal=None, output=output or [], output_size=0, overflowed=False,
                stopped_for=None, duration=0.0, spilled=spilled)


def test_result_head_of_held_pieces() -> None:
    result = Result.output(500, _exit(output=[b"ab", b"cd" * 400]), b"exit status 1\n")
    assert result.head(16) == b"exit status 1\nab"
    assert result.head(512) == (b"exit status 1\nab" + b"cd" * 400)[:512]
    assert Result.output(200, _exit(output=[b"xy"])).head(512) == b"xy"
    assert Result.output(200, _exit()).head(512) == b""


def test_result_head_of_a_spilled_output_reads_only_its_start(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "out", os.O_RDWR | os.O_CREAT, 0o600)
    spilled = SpilledOutput(fd)
    spilled.write(b"\x89PNG\r\n\x1a\n" + b"\x00" * 2000)
    # Claims far more than the file holds: reading past the start would fail.
    spilled.size = 10 * 2**30
    try:
        result = Result.output(500, _exit(spilled), b"exit status 1\n")
        assert result.stream is not None
        assert result.head(22) == b"exit status 1\n\x89PNG\r\n\x1a\n"
        assert len(result.head(512)) == 512
        assert Result.output(200, _exit(spilled)).head(8) == b"\x89PNG\r\n\x1a\n"
    finally:
        spilled.close()


def test_result_head_of_a_stream_it_cannot_peek_at_is_empty() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"x"

    assert Result(200, [], stream=chunks, content_length=1).head(512) == b""
