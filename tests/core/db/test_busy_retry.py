"""A busy database delays a writer, never fails it: `Database.write` runs the transaction
again after a back-off while SQLite's lock is held by another connection, or PostgreSQL
refuses a lock (NOWAIT), and raises any other error at once."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from openprepay.core.db import Database
from openprepay.core.db import schema as t
from openprepay.core.db.bounded import chunks, write_in_chunks
from openprepay.core.db.retry import BACKOFF_MAX_S, BUSY, backoff_s, is_busy


@pytest.fixture
def sqlite_db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'busy.db'}", busy_timeout_ms=20)
    database.upgrade()
    yield database
    database.dispose()


def wait_for(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def _insert_key(conn: Any, key: str) -> str:
    conn.execute(
        sa.text(
            "INSERT INTO ledger_account (code, type, created_at)"
            " VALUES (:c, 'asset', CURRENT_TIMESTAMP)"
        ),
        {"c": key},
    )
    return key


def test_a_locked_sqlite_database_is_waited_out(
    sqlite_db: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    holder = sqlite3.connect(tmp_path / "busy.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock
    before = BUSY.retried
    result: list[Any] = []
    writer = threading.Thread(
        target=lambda: result.append(
            sqlite_db.write(lambda conn: _insert_key(conn, "asset:busy"), what="test write")
        )
    )
    writer.start()
    wait_for(lambda: BUSY.retried >= before + 2, timeout=30)  # it tried, found it busy, waits
    assert not result
    holder.execute("COMMIT")
    holder.close()
    writer.join(30)
    assert result == ["asset:busy"]
    with sqlite_db.read() as conn:
        codes = conn.execute(sa.select(t.ledger_account.c.code)).scalars().all()
    assert "asset:busy" in codes
    retries = [r for r in caplog.records if "the database is busy" in r.getMessage()]
    assert retries and all(isinstance(getattr(r, "attempt", None), int) for r in retries)
    assert retries[0].attempt == 1  # type: ignore[attr-defined]


def test_other_errors_are_raised_at_once_and_change_nothing(sqlite_db: Database) -> None:
    before = BUSY.retried

    def twice(conn: Any) -> None:
        _insert_key(conn, "asset:dup")
        _insert_key(conn, "asset:dup")

    with pytest.raises(sa.exc.IntegrityError):
        sqlite_db.write(twice, what="test write")
    assert BUSY.retried == before
    with sqlite_db.read() as conn:
        assert "asset:dup" not in conn.execute(sa.select(t.ledger_account.c.code)).scalars().all()


def test_a_bounded_number_of_attempts_gives_up_with_the_busy_error(
    sqlite_db: Database, tmp_path: Path
) -> None:
    holder = sqlite3.connect(tmp_path / "busy.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises((sa.exc.OperationalError, sqlite3.OperationalError)) as caught:
            sqlite_db.write(lambda conn: _insert_key(conn, "asset:x"), what="t", attempts=2)
        assert is_busy(caught.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_postgresql_lock_not_available_is_busy(db: Database) -> None:
    if db.dialect != "postgresql":
        pytest.skip("PostgreSQL's NOWAIT lock")
    with db.begin() as conn:
        _insert_key(conn, "asset:row")
    select = sa.text("SELECT code FROM ledger_account WHERE code = 'asset:row' FOR UPDATE")
    holder = db.engine.connect()
    holder.begin()
    holder.execute(select)  # holds the row
    before = BUSY.retried
    result: list[Any] = []

    def work(conn: Any) -> str:
        conn.execute(sa.text(str(select) + " NOWAIT"))
        conn.execute(sa.text("UPDATE ledger_account SET type = 'asset' WHERE code = 'asset:row'"))
        return "done"

    writer = threading.Thread(target=lambda: result.append(db.write(work, what="pg write")))
    writer.start()
    wait_for(lambda: BUSY.retried >= before + 1, timeout=30)
    holder.rollback()
    holder.close()
    writer.join(30)
    assert result == ["done"]


def test_backoff_starts_at_50_ms_and_stops_at_5_s() -> None:
    assert 0.025 <= backoff_s(1) <= 0.05
    assert 0.05 <= backoff_s(2) <= 0.1
    assert all(BACKOFF_MAX_S / 2 <= backoff_s(a) <= BACKOFF_MAX_S for a in (8, 20, 200))


def test_not_busy_errors_are_told_apart() -> None:
    assert is_busy(sqlite3.OperationalError("database is locked"))
    assert not is_busy(sqlite3.OperationalError("no such table: x"))
    assert not is_busy(ValueError("database is locked"))


def test_write_in_chunks_commits_each_part_on_its_own(sqlite_db: Database) -> None:
    keys = [f"asset:k{i}" for i in range(7)]
    sizes = write_in_chunks(
        sqlite_db, keys, 3, lambda conn, part: [_insert_key(conn, k) for k in part], what="t"
    )
    assert [len(s) for s in sizes] == [3, 3, 1]
    assert [list(c) for c in chunks([1, 2, 3], 2)] == [[1, 2], [3]]
    with pytest.raises(ValueError, match="at least 1"):
        list(chunks([1], 0))
