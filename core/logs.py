"""Structured logging: every line says which meter, link and account it is about.

Code logs with `extra={"meter": ..., "link": ..., "account": ...}`; the formatter appends
those fields as `key=value` (or emits one JSON object per line with `--log-format json`).

One record is one line, whatever its fields hold: a reason, a name or a reference typed by
someone else may carry a newline, a carriage return or an ANSI escape, which would forge a
log line or repaint an operator's terminal. The formatters escape control characters in
the message and every field (`\\n`, `\\x1b`, see `core.text`); a traceback follows its
record on lines that start with blanks, so no continuation line can pass for a record.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from .text import escape_controls, json_line_safe

CONTEXT_FIELDS = (
    "site", "link", "unit", "meter", "account", "command", "plugin", "job", "service", "attempt",
)  # fmt: skip


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        parts = [ts[:-4] + "Z", f"{record.levelname:<7}", record.name, _one_line(record)]
        context = [
            f"{k}={escape_controls(str(getattr(record, k)))}"
            for k in CONTEXT_FIELDS
            if hasattr(record, k)
        ]
        line = " ".join(parts + context)
        if record.exc_info:
            line += "\n" + _indented(self.formatException(record.exc_info))
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update({k: getattr(record, k) for k in CONTEXT_FIELDS if hasattr(record, k)})
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        # json.dumps escapes C0 controls; the rest (NEL, U+2028, bidi) are escaped here.
        return json_line_safe(json.dumps(doc, ensure_ascii=False, default=str))


def _one_line(record: logging.LogRecord) -> str:
    return escape_controls(record.getMessage())


def _indented(text: str) -> str:
    """A traceback under its record: every line (also those a message inside it breaks on)
    starts with two blanks and has its control characters escaped."""
    return "\n".join("  " + escape_controls(line) for line in text.splitlines())


def setup_logging(level: str = "INFO", fmt: str = "text", stream=None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # pymodbus logs every unanswered request at error level; the arbiter reports those.
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
