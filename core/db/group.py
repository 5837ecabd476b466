"""Group commit: concurrent write transactions share one durable commit.

A durable commit costs one flush of the log to the disk (SQLite with synchronous=FULL,
PostgreSQL's WAL flush); a disk does a few hundred to a few thousand a second, whatever
the transaction holds. Top-ups, refunds and operator actions arrive concurrently (payment
callbacks, OPC UA cashiers, batch jobs). `GroupCommit.run(work)` hands the work to one
writer thread, which runs every piece queued meanwhile in one transaction — each inside its
own SAVEPOINT, so a refused request rolls back alone — commits once, and only then answers
each caller. An answered request is exactly as durable as with a transaction of its own; a
failed commit fails every request of the batch and changes nothing.

A commit whose outcome is unknown — the connection dropped while COMMIT was on its way, as
in a database failover — may or may not have happened. Each request of such a batch that
the caller marked `idempotent` (it carries its own unique key: a payment reference) is run
again alone in a fresh transaction, where the key returns the original row if the first
commit did happen; every other request fails with `CommitOutcomeUnknown`, so its caller
knows to look before trying again.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from sqlalchemy import Connection

    from . import Database

log = logging.getLogger("openprepay.db")

R = TypeVar("R")
Work = Callable[["Connection"], Any]


class CommitOutcomeUnknown(Exception):
    """The connection was lost during COMMIT: the request may or may not be stored."""


def outcome_unknown(exc: BaseException) -> bool:
    """Was `exc` raised because the connection was lost (so a COMMIT sent may have
    happened)? SQLAlchemy marks those errors `connection_invalidated`."""
    return bool(getattr(exc, "connection_invalidated", False))


class GroupCommit:
    def __init__(self, db: Database, *, max_batch: int = 100) -> None:
        self.db = db
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[Work, Future[Any], bool] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        #: Commits done and requests answered, for statistics and tests.
        self.commits = 0
        self.requests = 0
        #: Requests run again after a commit of unknown outcome.
        self.rerun = 0

    def run(self, work: Callable[[Connection], R], *, idempotent: bool = False) -> R:
        """Run `work(conn)` in a transaction shared with concurrent callers; return its
        result once the transaction is committed, or raise what it raised. `idempotent`:
        running `work` again after an unknown commit cannot apply it twice (module
        docstring)."""
        return self.submit(work, idempotent=idempotent).result()

    def submit(self, work: Callable[[Connection], R], *, idempotent: bool = False) -> Future[R]:
        """`run` without waiting: the future is answered once the transaction is
        committed. A caller with many requests at hand (a batch of payment notifications)
        submits them all, then waits, in one thread instead of one thread each."""
        future: Future[R] = Future()
        if threading.current_thread() is self._thread:
            # Called from inside a batch: no waiting on itself.
            try:
                with self.db.begin() as conn:
                    future.set_result(work(conn))
            except Exception as exc:
                future.set_exception(exc)
            return future
        self._ensure_thread()
        self._queue.put((work, future, idempotent))
        return future

    def close(self) -> None:
        with self._lock:
            if self._thread is not None:
                self._queue.put(None)
                self._thread.join(10)
                self._thread = None

    def _ensure_thread(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._serve, name="group-commit", daemon=True
                    )
                    self._thread.start()

    def _serve(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)  # stop after this batch
                    break
                batch.append(more)
            self._commit(batch)

    def _commit(self, batch: list[tuple[Work, Future[Any], bool]]) -> None:
        outcomes: list[tuple[Future[Any], Any, BaseException | None]] = []
        try:
            with self.db.begin() as conn:
                # Plain SQL savepoints on the driver connection: SQLAlchemy's begin_nested()
                # costs more than the top-up it protects.
                driver = conn.connection.driver_connection
                for work, future, _ in batch:
                    driver.execute("SAVEPOINT group_item")
                    try:
                        result = work(conn)
                    except Exception as exc:  # this request alone is rolled back
                        driver.execute("ROLLBACK TO SAVEPOINT group_item")
                        outcomes.append((future, None, exc))
                    else:
                        outcomes.append((future, result, None))
                    driver.execute("RELEASE SAVEPOINT group_item")
        except Exception as exc:
            if outcome_unknown(exc):
                self._after_unknown(batch, exc)
                return
            # The commit failed: nothing of the batch happened.
            log.warning("group commit of %d requests failed: %s", len(batch), exc)
            for _, future, _ in batch:
                future.set_exception(exc)
            return
        self.commits += 1
        self.requests += len(batch)
        for future, result, error in outcomes:
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

    def _after_unknown(self, batch: list[tuple[Work, Future[Any], bool]], exc: Exception) -> None:
        """The connection was lost with the batch in flight: run each idempotent request
        again alone (its key returns what the first commit stored, if it did); the others
        cannot tell, so they fail with `CommitOutcomeUnknown`."""
        log.warning(
            "group commit of %d requests: connection lost, outcome unknown (%s); running the "
            "idempotent ones again",
            len(batch),
            exc,
        )
        for work, future, idempotent in batch:
            if not idempotent:
                future.set_exception(
                    CommitOutcomeUnknown(
                        f"the connection to the database was lost during the commit: the "
                        f"request may or may not be stored ({exc})"
                    )
                )
                continue
            try:
                with self.db.begin() as conn:
                    result = work(conn)
            except Exception as again:
                future.set_exception(again)
            else:
                self.rerun += 1
                future.set_result(result)
