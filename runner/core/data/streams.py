"""Data files read as streams: text decoded as it is read, JSON values parsed one at a time, each
with the line it starts on. A file of any size is read in bounded memory, and a bad byte or a broken
value is still reported by line and column, as when files were decoded whole.

Only what stops a file is raised here (BadText: a message and a line); records.py names the file
and the dataset. Plain Python, for the host-side CLI too.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, TextIO

CHUNK = 1 << 20  # characters read at a time by the JSON parser
_MARGIN = 64  # a decode error this close to the end of what is read may be the cut, not the file
_WS = re.compile(r"[ \t\r\n]*")
_DECODER = json.JSONDecoder()
# Encodings worth suggesting when a file does not decode as the one given.
_GUESSES = ("utf-8", "gbk", "gb18030", "big5", "shift_jis")


class BadText(Exception):
    """A file that cannot be read on: what is wrong, and the line (1-based) where, when known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        self.message, self.line = message, line
        super().__init__(message)


class Cursor:
    """How far reading has come through a dataset's files: bytes behind it, of `total`. The
    position of the file being read is asked only when someone looks (a progress line)."""

    def __init__(self, total: int = 0) -> None:
        self.total, self._base, self._file = total, 0, None
        self._at: float = 0

    def follow(self, f: IO[bytes] | None) -> None:
        self._file, self._at = f, 0

    def at(self, nbytes: float) -> None:
        """Bytes read of the current file, for readers that do not read it as a stream (parquet)."""
        self._at = nbytes

    def finish(self, size: int) -> None:
        self._base += size
        self._file, self._at = None, 0

    @property
    def done(self) -> int:
        here = self._at
        if self._file is not None:
            with contextlib.suppress(ValueError, OSError):
                here = self._file.tell()
        return int(self._base + here)

    def fraction(self) -> float | None:
        return min(1.0, self.done / self.total) if self.total else None


# --- text -------------------------------------------------------------------------------------


@contextlib.contextmanager
def open_text(path: Path, encoding: str, newline: str | None = None) -> Iterator[TextIO]:
    """The file as text, decoded as it is read (a UTF-8 byte order mark is accepted). A byte that
    does not decode raises BadText with its line and column and an encoding that would work."""
    codec = codecs.lookup(encoding).name
    with open(path, encoding="utf-8-sig" if codec == "utf-8" else encoding, newline=newline) as f:
        try:
            yield f
        except UnicodeDecodeError:
            raise undecodable(path, codec) from None


def undecodable(path: Path, codec: str) -> BadText:
    line, col, byte = _first_bad_byte(path, codec)
    works = _guess(path, codec)
    if works:
        hint = f"; it decodes as {works}: set encoding: {works} on this dataset"
    else:
        hint = "; set this dataset's encoding: to the one the file was saved in"
    return BadText(f"is not valid {codec} text (byte 0x{byte:02x} at column {col}){hint}", line)


def _line_safe(codec: str) -> bool:
    """Whether a line break byte always ends a character, so lines decode on their own."""
    return not codec.startswith(("utf-16", "utf-32", "utf-7")) and "\n".encode(codec) == b"\n"


def _first_bad_byte(path: Path, codec: str) -> tuple[int, int, int]:
    """(line, byte column, byte) of the first byte that does not decode."""
    if _line_safe(codec):
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                skip = 3 if lineno == 1 and codec == "utf-8" and raw.startswith(codecs.BOM_UTF8) else 0
                try:
                    raw[skip:].decode(codec)
                except UnicodeDecodeError as e:
                    return lineno, skip + e.start + 1, raw[skip + e.start]
    raw = path.read_bytes()  # UTF-16 and UTF-32: rare, and located in the whole file
    try:
        raw.decode("utf-8-sig" if codec == "utf-8" else codec)
    except UnicodeDecodeError as e:
        return (
            raw.count(b"\n", 0, e.start) + 1,
            e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1,
            raw[e.start],
        )
    return 1, 1, raw[0] if raw else 0  # decodes after all (a codec that decides late): the start


def _guess(path: Path, tried: str) -> str | None:
    with open(path, "rb") as f:
        if f.read(2) in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
            return "utf-16"
    for name in _GUESSES:
        if codecs.lookup(name).name != tried and _decodes(path, name):
            return name
    return None


def _decodes(path: Path, name: str) -> bool:
    decoder = codecs.getincrementaldecoder("utf-8-sig" if name == "utf-8" else name)()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


# --- JSON -------------------------------------------------------------------------------------

# The JSON decoder's words, and what they mean for a person fixing the file.
_JSON = {
    "Expecting value": "a value is missing here",
    "Expecting ',' delimiter": "a ',' is missing between two items",
    "Expecting ':' delimiter": "a ':' is missing after a key",
    "Expecting property name enclosed in double quotes": "a key must be in double quotes (or a ',' is left "
    "before a closing '}')",
    "Unterminated string starting at": "a string is never closed (a '\"' is missing)",
    "Invalid control character at": "a raw tab or line break inside a string; write it as \\t or \\n",
    "Invalid \\escape": "a backslash that starts no escape; write \\\\ for a backslash",
    "Extra data": "more text after the JSON value",
}


def plain_json(msg: str, at_end: bool = False) -> str:
    """A json.JSONDecodeError message in plain words; `at_end`: the text stops where it failed."""
    if at_end and msg in ("Expecting value", "Expecting ',' delimiter", "Expecting ':' delimiter",
                          "Expecting property name enclosed in double quotes"):  # fmt: skip
        return "the line ends before the record does (is it cut short?)"
    return next((plain for raw, plain in _JSON.items() if msg.startswith(raw)), msg)


class Window:
    """The stretch of a JSON text the parser is at. More is read when a value runs past its end
    (twice as much each time, so one huge value is still read in linear time); what lies before
    the value being parsed is dropped then. `line` is the line of text[mark]; `col` the characters
    before text[0] on its line, for columns in messages."""

    def __init__(self, f: TextIO) -> None:
        self.f, self.text, self.eof = f, "", False
        self.line, self.mark, self.col = 1, 0, 0
        self.end = 0  # where the last array() ended
        self._more()

    def _more(self) -> int:
        """Read on; returns how far indices moved (the text before `mark` is dropped)."""
        if self.eof:
            return 0
        chunk = self.f.read(max(CHUNK, len(self.text) - self.mark))
        if not chunk:
            self.eof = True
            return 0
        k = self.mark
        nl = self.text.rfind("\n", 0, k)
        self.col = k - nl - 1 if nl >= 0 else self.col + k
        self.text, self.mark = self.text[k:] + chunk, 0
        return k

    def skip_ws(self, i: int) -> int:
        """The index of the next character that is not white space (len(text) at the end)."""
        while True:
            i = _WS.match(self.text, i).end()
            if i < len(self.text) or self.eof:
                return i
            i -= self._more()

    def line_at(self, i: int) -> int:
        """The line of text[i], counted on from the last one asked (i only grows)."""
        self.line += self.text.count("\n", self.mark, i)
        self.mark = i
        return self.line

    def position(self, pos: int) -> tuple[int, int]:
        """(line, column) of text[pos], pos at or after mark."""
        line = self.line + self.text.count("\n", self.mark, pos)
        nl = self.text.rfind("\n", 0, pos)
        return line, pos - nl if nl >= 0 else self.col + pos + 1

    def value(self, i: int) -> tuple[Any, int]:
        """The JSON value at text[i] (i >= mark) and the index after it, reading on while the end of
        what is read may have cut it short."""
        while True:
            try:
                value, end = _DECODER.raw_decode(self.text, i)
            except json.JSONDecodeError as e:
                cut = e.msg.startswith("Unterminated string") or e.pos >= len(self.text) - _MARGIN
                if self.eof or not cut:
                    raise
                i -= self._more()
                continue
            if end < len(self.text) - _MARGIN or self.eof:  # a number at the end may go on
                return value, end
            i -= self._more()

    def error(self, msg: str, pos: int, in_list: bool = True) -> BadText:
        if in_list and self.eof and pos >= len(self.text.rstrip()):
            msg = "the file ends before the list is closed (is it truncated?)"
        line, col = self.position(pos)
        return BadText(f"invalid JSON at column {col}: {plain_json(msg)}", line)

    def array(self, i: int) -> Iterator[tuple[int, Any]]:
        """(line, value) of each item of the JSON list whose '[' is at text[i]; self.end is the
        index after its ']' once done."""
        i = self.skip_ws(i + 1)
        if self.text[i : i + 1] == "]":
            self.end = i + 1
            return
        while True:
            line = self.line_at(i)
            try:
                value, end = self.value(i)
            except json.JSONDecodeError as e:
                raise self.error(e.msg, e.pos) from None
            yield line, value
            i = self.skip_ws(end)
            if self.text[i : i + 1] == ",":
                i = self.skip_ws(i + 1)
            elif self.text[i : i + 1] == "]":
                self.end = i + 1
                return
            else:
                raise self.error(
                    "Expecting ',' delimiter" if i < len(self.text) else "the list is never closed", i
                )


# {"key": [ ... : a list wrapped in an object, read as the list when the key is all the object holds
_WRAPPER = re.compile(r'\{[ \t\r\n]*("(?:[^"\\]|\\.)*")[ \t\r\n]*:[ \t\r\n]*\[')


def wrapper_key(w: Window, start: int) -> tuple[str, int] | None:
    """The first key of the object at text[start] and the index of its '[', when its value is a list."""
    match = _WRAPPER.match(w.text, start)
    return (json.loads(match.group(1)), match.end() - 1) if match else None


def only_key(w: Window, bracket: int) -> bool:
    """Whether the list at text[bracket] is all the object holds, up to the end of the file: the
    list is read through once (its values are not kept)."""
    try:
        for _ in w.array(bracket):
            pass
    except BadText:
        return False
    i = w.skip_ws(w.end)
    return w.text[i : i + 1] == "}" and w.skip_ws(i + 1) == len(w.text)
