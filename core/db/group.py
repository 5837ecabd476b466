"""Group commit: concurrent write transactions share one durable commit.

A durable commit costs one flush of the log to the disk (SQLite with synchronous=FULL,
PostgreSQL's WAL flush); a disk does a few hundred to a few thousand a second, whatever
the transaction holds. Top-ups, refunds and operator actions arrive concurrently (payment
callbacks, OPC UA cashiers, batch jobs). `GroupCommit.run(work)` hands the work to one
writer thread, which runs every piece queued meanwhile in one transaction — each inside its
own SAVEPOINT, so a refused request rolls back alone — commits once, and only then answers
each caller. An answered request is exactly as durable as with a transaction of its own; a
failed commit fails every request of the batch and changes nothing.
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


class GroupCommit:
    def __init__(self, db: Database, *, max_batch: int = 100) -> None:
        self.db = db
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[Work, Future[Any]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        #: Commits done and requests answered, for statistics and tests.
        self.commits = 0
        self.requests = 0

    def run(self, work: Callable[[Connection], R]) -> R:
        """Run `work(conn)` in a transaction shared with concurrent callers; return its
        result once the transaction is committed, or raise what it raised."""
        if threading.current_thread() is self._thread:
            with self.db.begin() as conn:  # called from inside a batch: no waiting on itself
                return work(conn)
        future: Future[R] = Future()
        self._ensure_thread()
        self._queue.put((work, future))
        return future.result()

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

    def _commit(self, batch: list[tuple[Work, Future[Any]]]) -> None:
        outcomes: list[tuple[Future[Any], Any, BaseException | None]] = []
        try:
            with self.db.begin() as conn:
                # Plain SQL savepoints on the driver connection: SQLAlchemy's begin_nested()
                # costs more than the top-up it protects.
                driver = conn.connection.driver_connection
                for work, future in batch:
                    driver.execute("SAVEPOINT group_item")
                    try:
                        result = work(conn)
                    except Exception as exc:  # this request alone is rolled back
                        driver.execute("ROLLBACK TO SAVEPOINT group_item")
                        outcomes.append((future, None, exc))
                    else:
                        outcomes.append((future, result, None))
                    driver.execute("RELEASE SAVEPOINT group_item")
        except Exception as exc:  # the commit failed: nothing of the batch happened
            log.warning("group commit of %d requests failed: %s", len(batch), exc)
            for _, future in batch:
                future.set_exception(exc)
            return
        self.commits += 1
        self.requests += len(batch)
        for future, result, error in outcomes:
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)
