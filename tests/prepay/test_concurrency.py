"""Concurrent writers on SQLite and PostgreSQL: top-ups from several processes all land
exactly once (no lost update of the cached balance), and one payment reference delivered
by several threads at once is applied once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

from openprepay.core import ledger
from openprepay.core.model import MeterKind
from openprepay.core.site import ControlMode

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
    from openprepay.core.feecontrol import FeeThresholds

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
                results.append(ledger.topup(conn, "A-102", 5000, "wx-callback-1"))
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
