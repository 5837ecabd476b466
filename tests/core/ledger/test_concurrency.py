"""Concurrent writers on SQLite and PostgreSQL: top-ups from several processes all land
exactly once (no lost update of the cached balance), and one payment reference delivered
by several threads at once is applied once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable

import pytest
from sqlalchemy import Connection

from openprepay.core import ledger
from openprepay.core.config.site import ControlMode
from openprepay.core.model import MeterKind
from openprepay.core.prepay.local_money import LOCAL_MONEY

WORKER = textwrap.dedent(
    """
    import sys
    from openprepay.core.db import Database
    from openprepay.core import ledger

    url, worker, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    db = Database(url)
    for i in range(count):
        with db.begin() as conn:
            ledger.topup(conn, "A-101", 100 + worker, f"w{worker}-{i}", channel="wechat")
        if i % 5 == 0:  # and replay an earlier one now and then
            with db.begin() as conn:
                assert ledger.topup(conn, "A-101", 100 + worker, f"w{worker}-0",
                                    channel="wechat").replayed
    db.dispose()
    """
)


def test_topups_from_several_processes_all_land_once(db, db_url, make_account, check):
    make_account("A-101", meters=(), thresholds=ledger_thresholds())
    workers, count = 4, 40
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, db_url, str(w), str(count)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for w in range(workers)
    ]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()
    expected = sum((100 + w) * count for w in range(workers))
    with db.read() as conn:
        assert ledger.balances(conn, "A-101").energy_fen == expected
    report = check()
    assert report.journals == workers * count


def ledger_thresholds():
    from openprepay.core.prepay.feecontrol import FeeThresholds

    return FeeThresholds(hoard_limit_fen=0)


def test_one_reference_from_many_threads_is_applied_once(db, make_account, check):
    make_account("A-102", meters=(("E-102", MeterKind.ELECTRIC, ControlMode.LOCAL),))
    results: list[ledger.TopUpResult] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(6)

    def deliver() -> None:
        try:
            barrier.wait()
            with db.begin() as conn:
                results.append(
                    ledger.topup(conn, "A-102", 5000, "wx-callback-1", local=LOCAL_MONEY)
                )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=deliver) for _ in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert len({r.journal_id for r in results}) == 1
    assert sum(not r.replayed for r in results) == 1
    assert {(r.buy_count, r.command_id) for r in results} == {(1, results[0].command_id)}
    with db.read() as conn:
        assert ledger.balances(conn, "A-102").energy_fen == 5000
    assert check().journals == 1


def _wait_for_a_lock_waiter(db) -> None:
    """Until a PostgreSQL session waits on a row lock (the request in the other thread)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with db.read() as conn:
            waiting = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            ).scalar()
        if waiting:
            return
        time.sleep(0.02)
    raise AssertionError("the second request never waited for the wallet lock")


def _while_holding(db, first: Callable[[Connection], object], second: Callable[[], object]):
    """Run `first` in a transaction, start `second` in a thread, let it block on the lock
    `first` holds, then commit: `second` sees the committed result only after it had
    checked for a replay."""
    outcome: list[object] = []

    def run_second() -> None:
        try:
            outcome.append(second())
        except BaseException as exc:  # reported to the test
            outcome.append(exc)

    with db.begin() as conn:
        result = first(conn)
        thread = threading.Thread(target=run_second)
        thread.start()
        _wait_for_a_lock_waiter(db)
    thread.join(30)
    return result, outcome[0]


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # SQLite serialises writers
def test_a_request_that_waited_for_the_lock_replays_the_one_that_committed(db, account, check):
    with db.begin() as conn:
        topup = ledger.topup(conn, "A-101", 10_000, "pay-1")

    def grant(conn: Connection) -> ledger.Posted:
        return ledger.grant_emergency_credit(conn, "A-101", 500, "ec-1")

    def grant_again() -> ledger.Posted:
        with db.begin() as conn:
            return grant(conn)

    first, second = _while_holding(db, grant, grant_again)
    assert isinstance(second, ledger.Posted), second
    assert second.replayed and second.journal.id == first.journal.id

    def reverse(conn: Connection) -> ledger.Posted:
        return ledger.reverse(conn, topup.journal_id, reason="wrong account")

    def reverse_again() -> ledger.Posted:
        with db.begin() as conn:
            return reverse(conn)

    first, second = _while_holding(db, reverse, reverse_again)
    assert isinstance(second, ledger.Posted), second
    assert second.replayed and second.journal.id == first.journal.id
    with db.read() as conn:
        assert ledger.balances(conn, "A-101").energy_fen == 500
    assert check().journals == 3


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_second_reversal_under_another_key_waits_and_is_refused(db, account, check):
    with db.begin() as conn:
        topup = ledger.topup(conn, "A-101", 10_000, "pay-1")

    def other_key() -> ledger.Posted:
        with db.begin() as conn:
            return ledger.reverse(conn, topup.journal_id, reason="dup", idempotency_key="r-2")

    first, second = _while_holding(
        db, lambda conn: ledger.reverse(conn, topup.journal_id, reason="wrong account"), other_key
    )
    assert isinstance(second, ledger.RequestError), second
    assert f"already reversed by {first.journal.id}" in str(second)
    assert check().journals == 2
