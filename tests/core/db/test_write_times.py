"""The longest write transaction is measured on SQLite and PostgreSQL; reads are not."""

from __future__ import annotations

import logging
import time

import pytest
import sqlalchemy as sa

from openprepay.core.db import Database, write_times
from openprepay.core.db.write_times import WRITES


def test_write_transactions_are_timed_and_reads_are_not(db: Database) -> None:
    WRITES.take_window_max()
    with db.read() as conn:
        conn.execute(sa.text("SELECT 1"))
        time.sleep(0.2)
    assert WRITES.take_window_max() < 0.1
    with db.begin() as conn:
        conn.execute(sa.text("SELECT 1"))
        time.sleep(0.15)
    held = WRITES.take_window_max()
    assert 0.15 <= held < 5
    assert WRITES.longest_s >= held
    assert WRITES.take_window_max() == 0.0  # a new window
    try:
        with db.begin() as conn:
            time.sleep(0.05)
            raise RuntimeError("rolled back")
    except RuntimeError:
        pass
    assert WRITES.take_window_max() >= 0.05


def test_a_slow_write_is_logged_with_who_ran_it(
    db: Database, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(write_times, "SLOW_WRITE_S", 0.05)
    with caplog.at_level(logging.WARNING, logger="openprepay.db"):
        with db.begin() as conn:
            conn.execute(sa.text("SELECT 1"))
        assert not caplog.records  # quick: not logged
        with db.begin() as conn:
            time.sleep(0.1)
    [record] = caplog.records
    assert record.where.startswith(  # type: ignore[attr-defined]
        f"test_a_slow_write_is_logged_with_who_ran_it ({__file__}:"
    )
    assert record.seconds >= 0.1  # type: ignore[attr-defined]
