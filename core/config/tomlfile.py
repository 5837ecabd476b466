"""Reading a TOML file someone else wrote: UTF-8 checked, nesting bounded, one-line errors.

`read_toml(path)` returns the parsed document or raises `TomlFileError`, whose text is one
line naming the file and the position (`site.toml: line 3, column 7: not UTF-8 (byte 0xb0)
...`), never a traceback. The standard parser recurses once per nested array or inline
table, so a few thousand `[` end in a RecursionError; a file is therefore scanned first and
refused where its nesting passes `MAX_DEPTH`, which no real site file comes near. Dotted
keys nest without recursion in the parser but in every consumer after it, so the parsed
document is bounded the same way.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import ConfigError, FieldError

#: Arrays, inline tables and table levels deeper than this are refused.
MAX_DEPTH = 32


class TomlFileError(ConfigError):
    """The file cannot be read as TOML at all; `str()` is one line: file, position, reason."""

    def __init__(self, source: str, message: str) -> None:
        super().__init__(source, [FieldError("", message)])
        self.args = (f"{source}: {message}",)

    def __str__(self) -> str:
        return str(self.args[0])


def read_toml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    source = str(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise TomlFileError(source, f"cannot read the file: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line, column = _position(raw, exc.start)
        raise TomlFileError(
            source,
            f"line {line}, column {column}: not UTF-8 (byte 0x{raw[exc.start]:02x}); "
            "save the file as UTF-8",
        ) from None
    return parse_toml(text, source)


def parse_toml(text: str, source: str) -> dict[str, Any]:
    deep = _too_deep_at(text)
    if deep is not None:
        raise TomlFileError(
            source,
            f"line {deep[0]}, column {deep[1]}: nested deeper than {MAX_DEPTH} levels of "
            "arrays and tables; a site file needs a handful",
        )
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise TomlFileError(source, f"not valid TOML: {exc}") from None
    except RecursionError:  # the scan above should make this unreachable
        raise TomlFileError(source, f"nested deeper than {MAX_DEPTH} levels") from None
    path = _deep_key(data)
    if path is not None:
        raise TomlFileError(source, f"key {path}: nested deeper than {MAX_DEPTH} levels of tables")
    return data


def _position(raw: bytes, offset: int) -> tuple[int, int]:
    """1-based (line, column) of a byte offset; the column counts characters."""
    before = raw[:offset]
    line_start = before.rfind(b"\n") + 1
    column = len(before[line_start:].decode("utf-8", errors="replace")) + 1
    return before.count(b"\n") + 1, column


def _too_deep_at(text: str) -> tuple[int, int] | None:
    """(line, column) of the first `[` or `{` that opens level MAX_DEPTH + 1, outside
    strings and comments; None when the file stays shallower."""
    depth = 0
    for i, ch in _structure(text):
        if ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                line = text.count("\n", 0, i) + 1
                return line, i - (text.rfind("\n", 0, i) + 1) + 1
        elif ch in "]}":
            depth = max(depth - 1, 0)
    return None


def _structure(text: str) -> Iterator[tuple[int, str]]:
    """The bracket characters of a TOML text with their offsets, skipping basic and literal
    strings (single- and multi-line) and comments."""
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "#":
            end = text.find("\n", i)
            i = n if end < 0 else end
            continue
        if ch in "\"'":
            i = _string_end(text, i)
            continue
        if ch in "[]{}":
            yield i, ch
        i += 1


def _string_end(text: str, start: int) -> int:
    """The offset after the string that starts at `start` (or the end of the text)."""
    quote = text[start]
    if text.startswith(quote * 3, start):
        end = start + 3
        while True:
            end = text.find(quote * 3, end)
            if end < 0:
                return len(text)
            if quote == '"' and _escaped(text, end):
                end += 1
                continue
            # A multi-line string may end in up to two more quotes ("""a"""" is a"").
            while text.startswith(quote, end + 3):
                end += 1
            return end + 3
    end = start + 1
    while end < len(text):
        ch = text[end]
        if ch == "\n":
            return end  # unterminated: the parser reports it
        if ch == "\\" and quote == '"':
            end += 2
            continue
        if ch == quote:
            return end + 1
        end += 1
    return end


def _escaped(text: str, at: int) -> bool:
    """Whether the character at `at` is preceded by an odd number of backslashes."""
    count = 0
    while at - count - 1 >= 0 and text[at - count - 1] == "\\":
        count += 1
    return count % 2 == 1


def _deep_key(data: dict[str, Any]) -> str | None:
    """The dotted path of a table nested deeper than MAX_DEPTH (walked without recursion)."""
    stack: list[tuple[Any, tuple[str, ...]]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if len(path) > MAX_DEPTH:
            shown = ".".join(path[:4])
            return f"{shown}... ({len(path)} levels)"
        if isinstance(value, dict):
            stack.extend((v, (*path, str(k))) for k, v in value.items())
        elif isinstance(value, list):
            stack.extend((v, (*path, f"[{n}]")) for n, v in enumerate(value))
    return None
