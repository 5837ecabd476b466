"""The payment order's compiled statements (core/payments/orders.py) read and write the
same values as SQLAlchemy's general path, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from openprepay.core.db import Database
from openprepay.core.db import schema as t
from openprepay.core.payments import orders as po
from openprepay.core.payments.states import OrderState

NOW = datetime(2026, 3, 1, 8, 30, 15, 123456, tzinfo=UTC)


def _insert(conn: sa.Connection, no: str) -> po.PaymentOrder:
    conn.execute(
        t.account.insert().values(
            id=f"acc-{no}",
            name=no,
            state="OPEN",
            alarm1_fen=0,
            alarm2_fen=0,
            overdraft_limit_fen=0,
            close_limit_fen=0,
            hoard_limit_fen=10**9,
            notify={},
            created_at=NOW,
            updated_at=NOW,
        )
    )
    return po.insert_order(
        conn,
        {
            "out_trade_no": no,
            "channel": "wechat",
            "method": "native",
            "account_id": f"acc-{no}",
            "amount_fen": 1234,
            "currency": "CNY",
            "state": "CREATED",
            "merchant_id": "1900000109",
            "app_id": "wx1",
            "created_at": NOW,
            "expires_at": NOW + timedelta(hours=2),
            "requested_by": "test",
        },
    )


def _general(conn: sa.Connection, no: str) -> po.PaymentOrder:
    row = conn.execute(sa.select(t.payment_order).where(t.payment_order.c.out_trade_no == no)).one()
    return po._order(row)


def test_compiled_statements_match_the_general_path(db: Database) -> None:
    with db.begin() as conn:
        order = _insert(conn, "T1")
        assert order == _general(conn, "T1")
        assert order.state is OrderState.CREATED
        assert order.created_at == NOW and order.created_at.tzinfo is not None
        assert order.paid_at is None and order.last_notice is None

        notice = {"state": "SUCCESS", "raw": {"amount": {"total": 1234}, "list": [1, "二"]}}
        po.update_order(
            conn,
            order.id,
            notices=order.notices + 1,
            last_notice=notice,
            state=OrderState.CREDITED.value,
            transaction_id="4200001",
            paid_at=NOW + timedelta(seconds=1),
            credited_at=NOW + timedelta(seconds=2),
        )
        fast = po.get_order(conn, "T1", lock=True)
        assert fast == _general(conn, "T1")
        assert fast is not None
        assert fast.state is OrderState.CREDITED
        assert fast.last_notice == notice
        assert fast.paid_at == NOW + timedelta(seconds=1)
        assert fast.credited_at == NOW + timedelta(seconds=2)
        assert fast.notices == 1

        assert po.order_paid_by(conn, "4200001") == "T1"
        assert po.order_paid_by(conn, "4200002") is None
        assert po.order_paid_by(conn, None) is None
        assert po.get_order(conn, "nope") is None


def test_update_refuses_an_unknown_column(db: Database) -> None:
    with db.begin() as conn:
        order = _insert(conn, "T2")
        with pytest.raises(TypeError, match="no column colour"):
            po.update_order(conn, order.id, colour="red")
