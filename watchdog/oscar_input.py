"""OSCAR input: a request body becomes the script's input file, as it streams in.

A JSON document is written byte for byte and validated on the way without being
parsed (bounded memory and bounded work between turns of the loop); anything else
is strictly base64-decoded. Knows nothing of HTTP."""

from __future__ import annotations

import asyncio
import binascii
import codecs
import functools
import os
import re
from collections.abc import AsyncIterator

from watchdog import oscar_pod

# A JSON body is validated in Python as it streams to the input file (never
# parsed, never held): this bounds the CPU it may take unless max_body_bytes is set.
JSON_BODY_CAP = 64 * 2**20
# Deeper documents are refused (400): scripts' own parsers have limits too
# (Python's json gives up near 1,000 levels).
JSON_MAX_DEPTH = 512
JSON_PIECE = 16 * 1024  # validated between turns of the loop


class InputError(Exception):
    """The body cannot become an input file; `status` and `reason` say why."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


# --- input -------------------------------------------------------------------------------


class Base64Decoder:
    """Strict, streaming base64: line breaks are allowed anywhere (the `base64`
    tool wraps at 76), padding only at the very end and optional there; any
    other character is an error, never silently dropped."""

    def __init__(self) -> None:
        self._pending = b""
        self._ended = False  # a padded group was decoded: nothing may follow

    def feed(self, data: bytes) -> bytes:
        data = data.translate(None, b"\r\n")
        if not data:
            return b""
        if self._ended:
            raise InputError(400, "Body is not valid base64: data after the padding.")
        data = self._pending + data
        usable = len(data) - len(data) % 4
        self._pending = data[usable:]
        return self._decode(data[:usable])

    def finish(self) -> bytes:
        pending, self._pending = self._pending, b""
        if not pending:
            return b""
        if len(pending) == 1 or self._ended:
            raise InputError(400, "Body is not valid base64: it ends in the middle of a "
                                  "4-character group.")
        return self._decode(pending + b"=" * (4 - len(pending)))

    def _decode(self, groups: bytes) -> bytes:
        if not groups:
            return b""
        padding = groups.find(b"=")
        if padding >= 0:
            if padding < len(groups) - 4:
                raise InputError(400, "Body is not valid base64: padding in the middle.")
            self._ended = True
        try:
            decoded = binascii.a2b_base64(groups, strict_mode=True)
        except binascii.Error as exc:
            raise InputError(400, f"Body is not valid base64 ({exc}); send a JSON object "
                                  "or base64 (spaces are not allowed).") from None
        return decoded


_NUMBER = rb"-?(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?+(?:[eE][+-]?+[0-9]++)?+"
_STRING = rb'"(?:[^"\\\x00-\x1f]++|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*+"'
_WS = rb"[ \t\n\r]*+"
# Values whose containers nest at most _FLAT_LEVELS deep are matched in one regex
# call, and so are runs of them after commas: a long run of small values costs a
# few C calls, not one Python step per token.
_SCALAR = rb"(?:%s|%s|true|false|null)(?=[ \t\n\r,\]}])" % (_STRING, _NUMBER)
_FLAT_LEVELS = 3


def _nested(item: bytes) -> bytes:
    w, k = _WS, _STRING
    return (rb"(?:%s|\[%s(?:%s(?:%s,%s%s)*+)?+%s\]|\{%s(?:%s%s:%s%s(?:%s,%s%s%s:%s%s)*+)?+%s\})"
            % (_SCALAR, w, item, w, w, item, w, w, k, w, w, item, w, w, k, w, w, item, w))


_FLAT = _SCALAR
for _ in range(_FLAT_LEVELS):
    _FLAT = _nested(_FLAT)


@functools.cache
def _flat_patterns() -> tuple[re.Pattern[bytes], re.Pattern[bytes], re.Pattern[bytes]]:
    """A flat value, a run of them in an array, and in an object. Compiled at the
    first JSON body, not at import: 60-130 ms, a third of the gateway's cold start."""
    return (re.compile(_FLAT), re.compile(rb"(?:%s,%s%s)*+" % (_WS, _WS, _FLAT)),
            re.compile(rb"(?:%s,%s%s%s:%s%s)*+" % (_WS, _WS, _STRING, _WS, _WS, _FLAT)))

_TOKEN = re.compile(rb"[ \t\n\r]*+(.)", re.S)
_WHOLE_STRING = re.compile(_STRING)
_STRING_RUN = re.compile(rb'(?:[^"\\\x00-\x1f]++|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*+')
_ESCAPE = re.compile(rb'\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})')
_WHOLE_NUMBER = re.compile(_NUMBER + rb"(?=[ \t\n\r,\]}])")
_DIGITS = re.compile(rb"[0-9]*+")

# What may come next.
_VALUE, _FIRST_VALUE, _FIRST_KEY, _KEY, _COLON, _NEXT, _END = range(7)
# Inside a token cut by a chunk's end.
_NONE, _IN_STRING = range(2)


class JsonValidator:
    """Checks that bytes fed in pieces form one JSON object or array (RFC 8259,
    UTF-8), nested at most `max_depth` deep, without building it: memory is the
    depth stack and a few bytes of a token cut by a piece's end."""

    def __init__(self, max_depth: int = JSON_MAX_DEPTH) -> None:
        self._max_depth = max_depth
        self._stack = bytearray()  # b"[" or b"{" per open container
        self._expect = _VALUE
        self._lexing = _NONE
        self._carry = b""  # an escape or a literal cut by the piece's end
        self._key = False  # the string being read is an object's key
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._offset = 0
        self._flat_value, self._array_run, self._object_run = _flat_patterns()

    def feed(self, data: bytes) -> None:
        if not data.isascii():
            try:
                self._utf8.decode(data)
            except UnicodeDecodeError as exc:
                self._fail(f"not UTF-8 at byte {self._offset + exc.start}")
        carry, self._carry = self._carry, b""
        if carry:
            data = carry + data
            self._offset -= len(carry)
        self._scan(data)
        self._offset += len(data)

    def finish(self) -> None:
        try:
            self._utf8.decode(b"", final=True)
        except UnicodeDecodeError:
            self._fail("not UTF-8 at its end")
        if self._lexing == _NONE and self._carry[:1] in b"-0123456789" and (
                _FULL_NUMBER.fullmatch(self._carry)):
            self._carry = b""  # a number ending the piece's end can only be inside
            self._after_value()
        if self._lexing != _NONE or self._carry or self._expect != _END:
            self._fail("it ends before the document does")

    def _fail(self, why: str) -> None:
        raise InputError(400, f"Body looks like JSON but is not valid JSON: {why}.")

    def _scan(self, data: bytes) -> None:
        i, n = 0, len(data)
        stack = self._stack
        while i < n:
            if self._lexing == _IN_STRING:
                i = self._string(data, i)
                continue
            if self._expect == _NEXT and stack and len(stack) + _FLAT_LEVELS <= self._max_depth:
                run = self._array_run if stack[-1] == 0x5B else self._object_run
                i = run.match(data, i).end()  # type: ignore[union-attr]  # matches ""
            token = _TOKEN.match(data, i)
            if token is None:
                return  # whitespace to the end
            i = token.start(1)
            c = data[i]
            expect = self._expect
            if c == 0x22:  # "
                if expect in (_VALUE, _FIRST_VALUE):
                    self._key = False
                elif expect in (_FIRST_KEY, _KEY):
                    self._key = True
                else:
                    self._unexpected(c, i)
                if not stack:
                    self._fail("it is a string, not an object or array")
                whole = _WHOLE_STRING.match(data, i)
                if whole is not None:
                    i = whole.end()
                    self._after_string()
                else:
                    self._lexing = _IN_STRING
                    i += 1
            elif c == 0x5B or c == 0x7B:  # [ {
                if expect not in (_VALUE, _FIRST_VALUE):
                    self._unexpected(c, i)
                if stack and len(stack) + _FLAT_LEVELS <= self._max_depth:
                    flat = self._flat_value.match(data, i)
                    if flat is not None:
                        self._after_value()
                        i = flat.end()
                        continue
                if len(stack) >= self._max_depth:
                    self._fail(f"nested deeper than {self._max_depth} levels")
                stack.append(c)
                self._expect = _FIRST_VALUE if c == 0x5B else _FIRST_KEY
                i += 1
            elif c == 0x5D or c == 0x7D:  # ] }
                opener = 0x5B if c == 0x5D else 0x7B
                if not stack or stack[-1] != opener or expect not in (
                        _NEXT, _FIRST_VALUE if c == 0x5D else _FIRST_KEY):
                    self._unexpected(c, i)
                stack.pop()
                self._after_value()
                i += 1
            elif c == 0x2C:  # ,
                if expect != _NEXT or not stack:
                    self._unexpected(c, i)
                self._expect = _VALUE if stack[-1] == 0x5B else _KEY
                i += 1
            elif c == 0x3A:  # :
                if expect != _COLON:
                    self._unexpected(c, i)
                self._expect = _VALUE
                i += 1
            else:
                if expect not in (_VALUE, _FIRST_VALUE):
                    self._unexpected(c, i)
                if not stack:
                    self._fail("it is not an object or array")
                i = self._scalar(data, i)
                if i < 0:
                    return  # cut by the piece's end: carried

    def _scalar(self, data: bytes, i: int) -> int:
        """A number or literal at `i`: the offset after it, or -1 when the piece
        ends inside it (then carried, shortened, to the next piece)."""
        c = data[i]
        if c == 0x2D or 0x30 <= c <= 0x39:  # - 0-9
            whole = _WHOLE_NUMBER.match(data, i)
            if whole is not None:
                self._after_value()
                return whole.end()
            if _NUMBER_CHARS.match(data, i).end() == len(data):  # type: ignore[union-attr]
                # Only its grammar matters: a run of digits keeps its first two.
                self._carry = _DIGIT_RUN.sub(rb"\1\1", data[i:])
                return -1
            self._fail(f"a malformed number at byte {self._offset + i}")
        literal = _LITERALS.get(c)
        if literal is not None:
            if data.startswith(literal, i):
                self._after_value()
                return i + len(literal)
            if literal.startswith(data[i:]):
                self._carry = data[i:]
                return -1
        self._unexpected(c, i)
        return -1  # not reached

    def _string(self, data: bytes, i: int) -> int:
        """Inside a string cut by an earlier piece's end."""
        n = len(data)
        while True:
            i = _STRING_RUN.match(data, i).end()  # type: ignore[union-attr]
            if i == n:
                return i
            c = data[i]
            if c == 0x22:
                self._lexing = _NONE
                self._after_string()
                return i + 1
            if c != 0x5C:  # a control character
                self._fail(f"a control character in a string at byte {self._offset + i}")
            escape = _ESCAPE.match(data, i)
            if escape is not None:
                i = escape.end()
            elif n - i < 6 and _ESCAPE_PREFIX.fullmatch(data, i):
                self._carry = data[i:]
                return n
            else:
                self._fail(f"a bad escape in a string at byte {self._offset + i}")

    def _after_string(self) -> None:
        if self._key:
            self._expect = _COLON
        else:
            self._after_value()

    def _after_value(self) -> None:
        self._expect = _NEXT if self._stack else _END

    def _unexpected(self, c: int, i: int) -> None:
        if self._expect == _END:
            self._fail(f"more data after the document at byte {self._offset + i}")
        self._fail(f"unexpected {chr(c)!r} at byte {self._offset + i}"
                   if 0x20 < c < 0x7F else f"unexpected byte 0x{c:02x} at byte {self._offset + i}")


_LITERALS = {0x74: b"true", 0x66: b"false", 0x6E: b"null"}
_FULL_NUMBER = re.compile(_NUMBER)
_NUMBER_CHARS = re.compile(rb"[-+.eE0-9]*+")
_DIGIT_RUN = re.compile(rb"([0-9])[0-9]+")
_ESCAPE_PREFIX = re.compile(rb'\\(?:u[0-9a-fA-F]{0,3})?')


async def write_input(body: AsyncIterator[bytes], path: str, *, max_bytes: int) -> None:
    """Write the body to a new file at `path`: a JSON object or array byte for byte,
    anything else base64-decoded as it arrives. Raises InputError (400 bad input,
    413 too large)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        received = 0
        validator: JsonValidator | None = None
        decoder: Base64Decoder | None = None
        blank = b""  # which whitespace bytes lead the body
        json_cap = max_bytes or JSON_BODY_CAP
        async for chunk in body:
            received += len(chunk)
            if max_bytes and received > max_bytes:
                raise InputError(413, f"Request body larger than max_body_bytes ({max_bytes}).")
            if decoder is not None:
                oscar_pod.write_all(fd, decoder.feed(chunk))
                continue
            if validator is None:
                start = chunk.lstrip(b" \t\r\n")
                if not start:  # only whitespace so far: undecided, and written in case
                    blank = bytes(set(blank + chunk))  # at most 4 bytes
                    oscar_pod.write_all(fd, chunk)
                    continue
                # `{` and `[` are not in base64's alphabet: no ambiguity.
                if start[:1] not in b"{[":
                    if blank.strip(b"\r\n"):
                        raise InputError(400, "Body is not valid base64: it starts with "
                                              "spaces; send a JSON object or base64.")
                    os.ftruncate(fd, 0)  # the line breaks written in case it was JSON
                    decoder = Base64Decoder()
                    oscar_pod.write_all(fd, decoder.feed(chunk))
                    continue
                validator = JsonValidator()
            if received > json_cap:
                raise InputError(413, f"JSON body larger than {json_cap} bytes; send large "
                                      "inputs base64-encoded.")
            await _check_json(validator, chunk)
            oscar_pod.write_all(fd, chunk)
        if decoder is not None:
            oscar_pod.write_all(fd, decoder.finish())
        elif validator is not None:
            validator.finish()
        else:
            os.ftruncate(fd, 0)  # an empty (or blank) body: an empty input file
    finally:
        os.close(fd)


async def _check_json(validator: JsonValidator, chunk: bytes) -> None:
    """Validate a piece at a time, letting the loop run between pieces: a
    worst-case document validates at about 2 MB/s of one core (measured), so a
    large chunk would otherwise hold every connection for tens of ms."""
    if len(chunk) <= JSON_PIECE:
        validator.feed(chunk)
        return
    view = memoryview(chunk)
    for offset in range(0, len(chunk), JSON_PIECE):
        if offset:
            await asyncio.sleep(0)
        validator.feed(bytes(view[offset:offset + JSON_PIECE]))
