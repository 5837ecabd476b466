"""Group commit on both databases: concurrent top-ups share commits; a request that fails
(refused, or a database error) rolls back alone; a failed commit changes nothing."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from openprepay.core import ledger
from openprepay.core.db import Database
from openprepay.core.db.group import GroupCommit
from openprepay.core.ledger import RequestError
from openprepay.core.prepay import accounts as acc


def in_parallel(n: int, call: Callable[[int], Any]) -> list[Any]:
    results: list[Any] = [None] * n
    start = threading.Barrier(n)

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = call(i)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_topups_share_commits_and_failures_roll_back_alone(
    db: Database, account: acc.Account, check: Callable[[], ledger.VerifyReport]
) -> None:
    writer = GroupCommit(db)

    def call(i: int) -> Any:
        if i == 3:  # refused by the ledger
            return writer.run(
                lambda conn: ledger.topup(conn, account.id, -1, "bad", channel="cash")
            )
        if i == 5:  # a database error half-way through its own work

            def clash(conn: Any) -> None:
                ledger.topup(conn, account.id, 700, "clash", channel="cash")
                conn.execute(
                    sa.text("INSERT INTO ledger_account (code, type) VALUES ('x', 'asset')")
                )
                conn.execute(
                    sa.text("INSERT INTO ledger_account (code, type) VALUES ('x', 'asset')")
                )

            return writer.run(clash)
        return writer.run(
            lambda conn: ledger.topup(conn, account.id, 100, f"pay-{i}", channel="cash")
        )

    results = in_parallel(24, call)
    writer.close()
    assert isinstance(results[3], RequestError) and results[3].field == "amount"
    assert isinstance(results[5], sa.exc.IntegrityError)
    assert all(isinstance(r, ledger.TopUpResult) for i, r in enumerate(results) if i not in (3, 5))
    with db.read() as conn:
        assert ledger.balances(conn, account.id).energy_fen == 22 * 100  # "clash" left nothing
    assert check().ok
    assert writer.commits < 22  # the answered requests were grouped


def test_a_failed_commit_answers_every_request_with_the_error(
    db: Database, account: acc.Account, snapshot: Callable[[], dict[str, Any]]
) -> None:
    before = snapshot()
    writer = GroupCommit(db)

    def broken(conn: Any) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        writer.run(broken)
    writer.close()
    assert snapshot() == before
