"""A frozen process must not hold row locks for ever: with `end_idle_transactions_after`,
PostgreSQL ends a session that sits inside a transaction without a statement, and its
locks go with it (a cluster instance stopped mid-transaction would otherwise keep its
lease rows locked and no other instance could ever take them)."""

from __future__ import annotations

import time
import uuid

import pytest
import sqlalchemy as sa

from openprepay.core.db import Database


def test_a_session_idle_inside_a_transaction_is_ended_and_its_locks_released(
    postgres_database: str,
) -> None:
    table = f"idle_{uuid.uuid4().hex[:8]}"
    frozen_db, other_db = Database(postgres_database), Database(postgres_database)
    frozen_db.end_idle_transactions_after(1.0)
    try:
        with other_db.begin() as conn:
            conn.exec_driver_sql(f"CREATE TABLE {table} (id int primary key)")
            conn.exec_driver_sql(f"INSERT INTO {table} VALUES (1)")
        frozen = frozen_db.engine.connect()
        frozen.begin()
        frozen.exec_driver_sql(f"SELECT id FROM {table} WHERE id = 1 FOR SHARE")
        time.sleep(2.5)  # the holder does nothing (stopped): past the limit
        with other_db.begin() as conn:
            conn.exec_driver_sql("SET LOCAL lock_timeout = '2s'")
            conn.exec_driver_sql(f"UPDATE {table} SET id = 2 WHERE id = 1")  # not blocked
        with pytest.raises(sa.exc.DBAPIError) as ended:  # the frozen session was ended
            frozen.exec_driver_sql("SELECT 1")
        assert ended.value.connection_invalidated  # dropped from the pool, not reused
        frozen.close()
        with frozen_db.begin() as conn:  # the engine goes on with a new session
            assert conn.exec_driver_sql(f"SELECT id FROM {table}").scalar_one() == 2
    finally:
        with other_db.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
        frozen_db.dispose()
        other_db.dispose()


def test_sqlite_is_left_as_it_is(tmp_path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'site.db'}")
    db.end_idle_transactions_after(1.0)  # SQLite has no such setting: nothing changes
    with db.begin() as conn:
        assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1
    db.dispose()
