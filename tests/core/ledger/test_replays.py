"""§7: a replay is a replay on every channel.

A cashier enters a payment at the counter (CLI) and, unsure it went through, again on the
SCADA screen (OPC UA TopUp). It used to be refused as "already used for a different top-up
... use a new reference" — and a cashier who followed that advice credited the payment
twice. The same reference, account and amount is the same payment whatever the channel:
it returns the original result and changes nothing. Only another account or amount under
the reference is refused, and the answer says never to re-enter it under a new one.
Against a running service with its OPC UA server, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from asyncua import ua

from openprepay.core.db import Database
from tests.core.served import cli, method, served
from tests.opcua_server.conftest import OpcUaSite

__all__ = ["served"]  # the fixture, imported for pytest

NEVER_AGAIN = "Do not enter it again under a new reference"


def money(amount: float, reference: str) -> tuple[ua.Variant, ua.Variant]:
    return ua.Variant(amount, ua.VariantType.Double), ua.Variant(reference, ua.VariantType.String)


def orders(db_url: str) -> dict[str, list[tuple[str, int]]]:
    """Top-up and refund orders as the ledger holds them."""
    db = Database(db_url)
    try:
        with db.read() as conn:
            out = {}
            for table in ("topup", "refund"):
                rows = conn.execute(
                    sa.text(f"SELECT reference, account_id, amount_fen FROM {table}")
                )
                out[table] = sorted((r[0], r[1], int(r[2])) for r in rows)
            return out
    finally:
        db.dispose()


def messages(result: Any) -> str:
    return " ".join(i.AdditionalInfo or "" for i in result.InputArgumentDiagnosticInfos or [])


async def test_the_same_payment_on_the_cli_and_then_opc_ua_is_a_replay(
    served: OpcUaSite, db_url: str
) -> None:
    done = await cli(served, "topup", "SITE", "A-101", "50.00", "--ref", "pay-1")
    assert done.exit_code == 0, done.output
    async with served.connect("cashier1") as client:
        # The cashier retries on the SCADA screen: the same payment, another channel.
        again = await method(client, "Account:A-101", "TopUp", *money(50.0, "pay-1"))
        assert again.StatusCode.is_good(), messages(again)
        assert again.OutputArguments[1].Value is True  # Replayed
        # Another amount or account under the same reference: refused, never "use a new one".
        for account, amount in (("A-101", 80.0), ("A-102", 50.0)):
            other = await method(client, f"Account:{account}", "TopUp", *money(amount, "pay-1"))
            assert not other.StatusCode.is_good()
            assert NEVER_AGAIN in messages(other) and "new reference" in messages(other)
            assert "use a new reference" not in messages(other)

        # The other way round: first OPC UA, then the counter.
        first = await method(client, "Account:A-102", "TopUp", *money(20.0, "pay-2"))
        assert first.StatusCode.is_good() and first.OutputArguments[1].Value is False
    replay = await cli(served, "topup", "SITE", "A-102", "20", "--ref", "pay-2")
    assert replay.exit_code == 0, replay.output
    assert "already recorded; nothing changed" in replay.output and "via opcua" in replay.output
    refused = await cli(served, "topup", "SITE", "A-102", "25.00", "--ref", "pay-2")
    assert refused.exit_code == 1 and NEVER_AGAIN in refused.output

    assert orders(db_url)["topup"] == [("pay-1", "A-101", 5000), ("pay-2", "A-102", 2000)]
    verify = await cli(served, "ledger", "verify", "SITE")
    assert verify.exit_code == 0 and "all invariants hold" in verify.output


async def test_the_same_refund_on_the_cli_and_then_opc_ua_is_a_replay(
    served: OpcUaSite, db_url: str
) -> None:
    assert (await cli(served, "topup", "SITE", "A-101", "60", "--ref", "pay-3")).exit_code == 0
    done = await cli(served, "refund", "SITE", "A-101", "10.00", "--ref", "rf-1")
    assert done.exit_code == 0, done.output
    async with served.connect("cashier1") as client:
        again = await method(client, "Account:A-101", "Refund", *money(10.0, "rf-1"))
        assert again.StatusCode.is_good(), messages(again)
        assert again.OutputArguments[2].Value is True  # Replayed
        other = await method(client, "Account:A-101", "Refund", *money(12.0, "rf-1"))
        assert not other.StatusCode.is_good() and NEVER_AGAIN in messages(other)
    assert orders(db_url)["refund"] == [("rf-1", "A-101", 1000)]
    verify = await cli(served, "ledger", "verify", "SITE")
    assert verify.exit_code == 0 and "all invariants hold" in verify.output


# -- the ledger's rule, channel by channel ----------------------------------------------------


def test_a_top_up_replayed_through_another_channel_returns_the_original(
    db, account, make_account, snapshot, check
) -> None:
    from openprepay.core import ledger
    from openprepay.core.ledger import IdempotencyConflict

    make_account("A-201", meters=())
    with db.begin() as conn:
        first = ledger.topup(conn, "A-101", 2500, "wx-42", channel="wechat", requested_by="cli:a")
    before = snapshot()
    for channel in ("opcua", "cash", "wechat"):
        with db.begin() as conn:
            again = ledger.topup(conn, "A-101", 2500, "wx-42", channel=channel)
        assert again.replayed and again.journal_id == first.journal_id
        assert (again.channel, again.amount_fen, again.balance_fen) == ("wechat", 2500, 2500)
    assert snapshot() == before
    for account_id, amount in (("A-101", 2600), ("A-201", 2500)):
        with pytest.raises(IdempotencyConflict) as refused, db.begin() as conn:
            ledger.topup(conn, account_id, amount, "wx-42", channel="opcua")
        assert refused.value.field == "reference"
        assert NEVER_AGAIN in refused.value.message
        assert "25.00 for account A-101" in refused.value.message
    assert snapshot() == before
    check()


def test_a_reversal_retried_with_other_words_is_the_same_reversal(db, account, check) -> None:
    from openprepay.core import ledger

    with db.begin() as conn:
        topup = ledger.topup(conn, "A-101", 1000, "r-1")
    with db.begin() as conn:
        first = ledger.reverse(conn, topup.journal_id, reason="entered twice")
    with db.begin() as conn:
        again = ledger.reverse(conn, topup.journal_id, reason="duplicate entry (retry)")
    assert again.replayed and again.journal.id == first.journal.id
    check()
