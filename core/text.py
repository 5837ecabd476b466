"""Text from outside (names, references, reasons): which characters are control characters,
and how they are refused or made visible.

A control character is one that changes how text around it is shown or split rather than
being shown itself: the C0 and C1 controls and DEL (newline, carriage return, tab, the
ESC that starts an ANSI sequence...), the Unicode line and paragraph separators, and the
bidirectional overrides and isolates that make text read in a different order than it is
stored. In a log line they forge lines or repaint a terminal; in a name they hide what an
operator sees. Imports refuse them (`first_control`); logs escape them (`escape_controls`).
"""

from __future__ import annotations

import re

_CONTROLS = re.compile(
    "[\x00-\x1f\x7f-\x9f\u2028\u2029\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def first_control(text: str) -> tuple[int, str] | None:
    """(1-based position, escaped character) of the first control character, or None."""
    found = _CONTROLS.search(text)
    if found is None:
        return None
    return found.start() + 1, _escape_one(found.group())


def escape_controls(text: str) -> str:
    """`text` with every control character written as an escape (`\\n`, `\\x1b`, `\\u202e`),
    so it stays on one line and shows what it holds. Backslashes are doubled only where a
    control character was escaped, so ordinary text (paths on Windows) reads as before."""
    if _CONTROLS.search(text) is None:
        return text
    return _CONTROLS.sub(lambda m: _escape_one(m.group()), text.replace("\\", "\\\\"))


def json_line_safe(document: str) -> str:
    """A JSON text with the control characters `json.dumps(ensure_ascii=False)` leaves as
    they are (DEL, C1 such as NEL, line separators, bidi controls) written as `\\uXXXX`
    escapes: the same JSON value, but always one line and shown in order."""
    return _CONTROLS.sub(lambda m: f"\\u{ord(m.group()):04x}", document)


def _escape_one(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"
