"""The Content-Type of an answer nobody typed, as Go's net/http gives it (and so the
Go classic watchdog, whose function answers carry no type of their own): the WHATWG
MIME Sniffing standard's "rules for identifying an unknown MIME type" (HTML and XML
included; JSON is text), with the signatures Go recognises, in its order, over the
first 512 bytes only.

Pure and bounded: whatever the body's size, at most `SNIFF_LENGTH` bytes are looked
at, and the caller reads no more than that of a body held in a file.
"""

from __future__ import annotations

SNIFF_LENGTH = 512

HTML = "text/html; charset=utf-8"
TEXT = "text/plain; charset=utf-8"
BINARY = "application/octet-stream"

# The standard's whitespace bytes (0xWS), skipped before an HTML or XML opening, and
# the bytes that may end an HTML tag's name there (0xTT).
_WHITESPACE = b"\t\n\x0c\r "
_TAG_END = b" >"

# Matched case-insensitively after leading whitespace, and followed by a 0xTT byte.
_HTML_OPENINGS = tuple(b"<" + name for name in (
    b"!DOCTYPE HTML", b"HTML", b"HEAD", b"SCRIPT", b"IFRAME", b"H1", b"DIV", b"FONT",
    b"TABLE", b"A", b"STYLE", b"TITLE", b"B", b"BODY", b"BR", b"P", b"!--"))
_LONGEST_OPENING = max(map(len, _HTML_OPENINGS))
_XML_OPENING = b"<?xml"  # after leading whitespace, exactly (no 0xTT needed)

# A signature: the least length the data must have, the (offset, bytes) that must be
# there (the bytes between are anything), and the type. In Go's order: where two
# could match (an icon and a font both start with NULs), the first wins.
Signature = tuple[int, tuple[tuple[int, bytes], ...], str]


def _at_start(pattern: bytes, content_type: str) -> Signature:
    return len(pattern), ((0, pattern),), content_type


def _riff(form: bytes, content_type: str) -> Signature:
    """`RIFF`, a size (anything), then the form's name."""
    return 8 + len(form), ((0, b"RIFF"), (8, form)), content_type


SIGNATURES: tuple[Signature, ...] = (
    _at_start(b"%PDF-", "application/pdf"),
    _at_start(b"%!PS-Adobe-", "application/postscript"),
    # Byte order marks: Go asks for four bytes of data, although the mark has fewer
    # (two bytes alone are text by the last rule: neither is a binary byte).
    (4, ((0, b"\xfe\xff"),), "text/plain; charset=utf-16be"),
    (4, ((0, b"\xff\xfe"),), "text/plain; charset=utf-16le"),
    (4, ((0, b"\xef\xbb\xbf"),), TEXT),
    # Images.
    _at_start(b"\x00\x00\x01\x00", "image/x-icon"),
    _at_start(b"\x00\x00\x02\x00", "image/x-icon"),  # a cursor
    _at_start(b"BM", "image/bmp"),
    _at_start(b"GIF87a", "image/gif"),
    _at_start(b"GIF89a", "image/gif"),
    _riff(b"WEBPVP", "image/webp"),
    _at_start(b"\x89PNG\r\n\x1a\n", "image/png"),
    _at_start(b"\xff\xd8\xff", "image/jpeg"),
    # Audio and video (MP4 is matched by `_is_mp4`, in its place: after WAVE).
    (12, ((0, b"FORM"), (8, b"AIFF")), "audio/aiff"),
    _at_start(b"ID3", "audio/mpeg"),
    _at_start(b"OggS\x00", "application/ogg"),
    _at_start(b"MThd\x00\x00\x00\x06", "audio/midi"),
    _riff(b"AVI ", "video/avi"),
    _riff(b"WAVE", "audio/wave"),
)
SIGNATURES_AFTER_MP4: tuple[Signature, ...] = (
    _at_start(b"\x1a\x45\xdf\xa3", "video/webm"),
    # Fonts.
    (36, ((34, b"LP"),), "application/vnd.ms-fontobject"),
    _at_start(b"\x00\x01\x00\x00", "font/ttf"),
    _at_start(b"OTTO", "font/otf"),
    _at_start(b"ttcf", "font/collection"),
    _at_start(b"wOFF", "font/woff"),
    _at_start(b"wOF2", "font/woff2"),
    # Archives (RAR as RAR Labs defines its marks, as Go does, not as the standard).
    _at_start(b"\x1f\x8b\x08", "application/x-gzip"),
    _at_start(b"PK\x03\x04", "application/zip"),
    _at_start(b"Rar!\x1a\x07\x00", "application/x-rar-compressed"),
    _at_start(b"Rar!\x1a\x07\x01\x00", "application/x-rar-compressed"),
    _at_start(b"\x00asm", "application/wasm"),
)

# In their place among the signatures, None: the MP4 rule (`_is_mp4`).
_ORDER: tuple[Signature | None, ...] = (*SIGNATURES, None, *SIGNATURES_AFTER_MP4)
# Per first byte of the data, the rules that may match it, in order: most data
# starts with a byte no signature does, and is then tried against two rules, not 33.
_BY_FIRST_BYTE = tuple(
    tuple(rule for rule in _ORDER
          if rule is None or rule[1][0][0] != 0 or rule[1][0][1][0] == first)
    for first in range(256))

# The standard's binary data bytes: control characters but TAB, LF, FF, CR and ESC.
_BINARY_BYTES = bytes([*range(0x00, 0x09), 0x0B, *range(0x0E, 0x1B), *range(0x1C, 0x20)])


def content_type(data: bytes) -> str:
    """The sniffed type of a body that starts with `data` (only its first
    `SNIFF_LENGTH` bytes count). Never empty: `application/octet-stream` when
    nothing more specific fits; an empty body is text (Go's servers do not sniff
    one: they send no type)."""
    data = data[:SNIFF_LENGTH]
    opening = data.lstrip(_WHITESPACE)
    if opening[:1] == b"<":
        if _is_html(opening):
            return HTML
        if opening.startswith(_XML_OPENING):
            return "text/xml; charset=utf-8"
    if data:
        for rule in _BY_FIRST_BYTE[data[0]]:
            if rule is None:
                if _is_mp4(data):
                    return "video/mp4"
                continue
            length, parts, sniffed = rule
            if len(data) >= length and all(
                    data.startswith(pattern, offset) for offset, pattern in parts):
                return sniffed
    # Deleting the binary bytes shortens it if it holds one (faster than a search).
    return BINARY if len(data.translate(None, _BINARY_BYTES)) < len(data) else TEXT


def _is_html(opening: bytes) -> bool:
    """An HTML tag (or comment) opens `opening`, the data after its whitespace."""
    lead = opening[:_LONGEST_OPENING + 1].upper()  # ASCII letters only, as the standard
    return any(len(lead) > len(tag) and lead.startswith(tag) and lead[len(tag)] in _TAG_END
               for tag in _HTML_OPENINGS)


def _is_mp4(data: bytes) -> bool:
    """The standard's MP4 signature: an `ftyp` box, whole within the data, whose major
    brand or one of whose compatible brands starts with `mp4`."""
    if len(data) < 12 or data[4:8] != b"ftyp":
        return False
    box_size = int.from_bytes(data[:4], "big")
    if box_size > len(data) or box_size % 4:
        return False
    # The major brand at 8, its version at 12 (not a brand), compatible brands after.
    return any(data.startswith(b"mp4", offset)
               for offset in range(8, box_size, 4) if offset != 12)
