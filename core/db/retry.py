"""A busy database is waited out, never fatal.

Under load a write can find the database busy: on SQLite another connection holds the
write lock past `busy_timeout_ms` ("database is locked", "database is busy"); on PostgreSQL
a transaction loses a serialization check (SQLSTATE 40001), is chosen as a deadlock victim
(40P01) or cannot take a lock it asked for without waiting (55P03). None of these says the
work was wrong: the transaction was rolled back whole and running it again is correct.

`run_retrying(work, ...)` (and `Database.write`, which every background writer uses) runs
the work in a transaction and, when the database was busy, runs it again after a jittered
back-off that starts at 50 ms and doubles up to 5 s — the jitter keeps writers that collided
from colliding again in step. A busy database never kills a task: the command executor,
readings capture, batch jobs and month-end wait until the lock is free. Any other error is
raised at once. Every retry counts in `BUSY.retried` (published by the service's vital signs
as `db_busy_retried`) and is logged with the field `attempt`.
"""

from __future__ import annotations

import logging
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from . import Database

log = logging.getLogger("openprepay.db")

R = TypeVar("R")

#: First and longest pause between two tries of a transaction that found the database busy.
BACKOFF_INITIAL_S = 0.05
BACKOFF_MAX_S = 5.0

#: SQLite's messages for a lock it could not take within busy_timeout.
_SQLITE_BUSY = ("database is locked", "database is busy", "database table is locked")
#: PostgreSQL: serialization_failure, deadlock_detected, lock_not_available.
_PG_BUSY = frozenset({"40001", "40P01", "55P03"})


class Flag(Protocol):
    """What says the service is stopping: a `threading.Event` or an `asyncio.Event`."""

    def is_set(self) -> bool: ...


@dataclass(slots=True)
class BusyCounter:
    """Process-wide count of transactions run again because the database was busy."""

    retried: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self) -> None:
        with self._lock:
            self.retried += 1


BUSY = BusyCounter()


def is_busy(exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps: SQLAlchemy's `.orig`, the cause chain) says the
    database was busy rather than that the work was wrong."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, sqlite3.OperationalError):
            text = str(e).lower()
            if any(m in text for m in _SQLITE_BUSY):
                return True
        state = getattr(e, "sqlstate", None) or getattr(e, "pgcode", None)
        if isinstance(state, str) and state in _PG_BUSY:
            return True
        orig = getattr(e, "orig", None)
        todo.extend([orig if isinstance(orig, BaseException) else None, e.__cause__])
        todo.append(e.__context__)
    return False


def backoff_s(attempt: int, rng: random.Random | None = None) -> float:
    """The pause before try `attempt + 1` (attempt 1 is the first try): 50 ms doubling to
    5 s, with full jitter over the upper half (25–50 ms, 50–100 ms, ... 2.5–5 s)."""
    ceiling = min(BACKOFF_MAX_S, BACKOFF_INITIAL_S * 2 ** max(attempt - 1, 0))
    return ceiling * (0.5 + 0.5 * (rng or random).random())


def run_retrying(
    db: Database,
    work: Callable[[Connection], R],
    *,
    what: str,
    attempts: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
    stop: Flag | None = None,
) -> R:
    """Run `work(conn)` in one write transaction; when the database is busy, roll back and
    run it again after the back-off. `attempts` None: until it succeeds (what a writer
    that must not lose its work wants); a number: the busy error after that many tries.
    `stop` set: the busy error at once (the service is stopping). `what` names the work
    in the log line."""
    attempt = 1
    while True:
        try:
            with db.begin() as conn:
                return work(conn)
        except Exception as exc:
            if not is_busy(exc):
                raise
            if (attempts is not None and attempt >= attempts) or (
                stop is not None and stop.is_set()
            ):
                raise
            pause = backoff_s(attempt)
            BUSY.add()
            log.warning(
                "%s: the database is busy (%s); trying again in %.2f s",
                what,
                _short(exc),
                pause,
                extra={"attempt": attempt},
            )
            attempt += 1
            sleep(pause)


def _short(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0][:200] if text else type(exc).__name__
