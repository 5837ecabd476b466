"""How long write transactions hold the site database (`WRITES`).

Every engine a `Database` makes reports here: a write transaction is timed from BEGIN
(IMMEDIATE on SQLite: the writer lock is taken there) to COMMIT or ROLLBACK; read
transactions (`Database.read`, DEFERRED) are not. The service's vital signs publish the
longest of each statistics window as `db_write_max_ms`: the bound the bounded batches keep
(core/db/bounded.py), measured where it runs — on PostgreSQL as on SQLite. A transaction
held longer than `SLOW_WRITE_S` is logged with the code that ran it, so the one that broke
the bound can be named.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

log = logging.getLogger("openprepay.db")

#: A write transaction held longer than this is logged (the bounded batches aim at ~1 s).
SLOW_WRITE_S = 1.0
#: Frames of files under these are the database plumbing, not the code that ran it.
_PLUMBING = tuple(
    os.path.dirname(m.__file__) + os.sep if m is not contextlib else m.__file__
    for m in (sa, contextlib, sys.modules[__package__])
    if m.__file__
)


class WriteTimes:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: The longest write transaction since the last `take_window_max()`, and since start.
        self.window_max_s = 0.0
        self.longest_s = 0.0

    def watch(self, engine: Engine) -> None:
        sa.event.listen(engine, "begin", _began)
        sa.event.listen(engine, "commit", self._ended)
        sa.event.listen(engine, "rollback", self._ended)

    def _ended(self, conn: Connection) -> None:
        if conn.invalidated:
            return  # the connection is gone (its `info` cannot be reached without it)
        began = conn.info.pop("write_began", None)
        if began is None:
            return
        held = time.perf_counter() - began
        with self._lock:
            if held > self.window_max_s:
                self.window_max_s = held
            if held > self.longest_s:
                self.longest_s = held
        if held > SLOW_WRITE_S:
            where = _caller()
            log.warning(
                "a write transaction held the database %.2f s (%s)",
                held,
                where,
                extra={"seconds": round(held, 3), "where": where},
            )

    def take_window_max(self) -> float:
        """The longest write transaction since the last call (a new window starts)."""
        with self._lock:
            held, self.window_max_s = self.window_max_s, 0.0
        return held


def _began(conn: Connection) -> None:
    if conn.get_execution_options().get("sqlite_begin", "IMMEDIATE") == "IMMEDIATE":
        conn.info["write_began"] = time.perf_counter()
    else:  # a read: no start left over from a write whose end was not seen
        conn.info.pop("write_began", None)


WRITES = WriteTimes()


def _caller() -> str:
    """The first frame outside the database plumbing: who committed (function, file:line)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename.startswith(_PLUMBING):
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:
        return "?"
    code = frame.f_code
    return f"{code.co_qualname} ({code.co_filename}:{frame.f_lineno})"
