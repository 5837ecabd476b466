"""Refunds of online payments: the `payment_refund` rows and their state machine.

REQUESTED (the wallet debited, not yet accepted by the provider) → PROCESSING (accepted: the
provider's refund id) → SUCCESS (paid back) | ABNORMAL (the provider could not pay it back,
e.g. the payer's card was closed: for a person at the merchant platform) | CLOSED (refused
or closed by the provider: the money went back to the wallet). A REQUESTED refund may also
end SUCCESS, ABNORMAL or CLOSED at once (Alipay refunds synchronously; a refusal is final).
SUCCESS, ABNORMAL and CLOSED are terminal: a late notice never moves a refund back.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..db import schema as t


class RefundState(StrEnum):
    REQUESTED = "REQUESTED"
    PROCESSING = "PROCESSING"
    SUCCESS = "SUCCESS"
    ABNORMAL = "ABNORMAL"
    CLOSED = "CLOSED"


TERMINAL = frozenset({RefundState.SUCCESS, RefundState.ABNORMAL, RefundState.CLOSED})
#: The refunds that count against what an order can still refund (all but CLOSED: an
#: ABNORMAL refund's money is still out of the wallet).
OUTSTANDING = frozenset(set(RefundState) - {RefundState.CLOSED})

#: A refund notice's state (core/contracts.py `PaymentNotice.state`) → the refund's.
NOTICE_STATES: Mapping[str, RefundState] = {
    "REFUND_PROCESSING": RefundState.PROCESSING,
    "REFUNDED": RefundState.SUCCESS,
    "REFUND_ABNORMAL": RefundState.ABNORMAL,
    "REFUND_FAILED": RefundState.CLOSED,
}

_ALLOWED: Mapping[RefundState, frozenset[RefundState]] = {
    RefundState.REQUESTED: frozenset(set(RefundState) - {RefundState.REQUESTED}),
    RefundState.PROCESSING: TERMINAL,
}


def can_move(state: RefundState, to: RefundState) -> bool:
    """Whether `state` may become `to` (terminal states never move; nothing goes back)."""
    return to in _ALLOWED.get(state, frozenset())


_ALPHABET = string.digits + string.ascii_letters


def new_out_refund_no(out_trade_no: str) -> str:
    """`<out_trade_no>R<8 random>`: at most 41 characters of [0-9A-Za-z], within both
    providers' refund-number rules (WeChat ≤ 64, Alipay ≤ 64)."""
    return f"{out_trade_no}R" + "".join(secrets.choice(_ALPHABET) for _ in range(8))


@dataclass(frozen=True, slots=True)
class PaymentRefund:
    id: int
    out_refund_no: str
    order_id: int
    out_trade_no: str
    channel: str
    account_id: str
    amount_fen: int
    state: RefundState
    refund_id: str | None
    reason: str
    forced: bool
    failure: str | None
    attempts: int
    last_notice: Mapping[str, Any] | None
    created_at: datetime
    sent_at: datetime | None
    last_query_at: datetime | None
    finished_at: datetime | None
    requested_by: str


def _refund(row: Any) -> PaymentRefund:
    values = dict(row._mapping)
    values["state"] = RefundState(values["state"])
    values["forced"] = bool(values["forced"])
    return PaymentRefund(**values)


def insert_refund(conn: Connection, values: Mapping[str, Any]) -> PaymentRefund:
    conn.execute(t.payment_refund.insert().values(**values))
    refund = get_refund(conn, values["out_refund_no"])
    assert refund is not None
    return refund


def get_refund(conn: Connection, out_refund_no: str, *, lock: bool = False) -> PaymentRefund | None:
    q = sa.select(t.payment_refund).where(t.payment_refund.c.out_refund_no == out_refund_no)
    if lock:
        q = q.with_for_update()
    row = conn.execute(q).first()
    return _refund(row) if row is not None else None


def update_refund(conn: Connection, row_id: int, /, **values: Any) -> None:
    """Set `values` on the refund of id `row_id` (`refund_id` is a column: the provider's)."""
    conn.execute(t.payment_refund.update().where(t.payment_refund.c.id == row_id).values(**values))


def refunds_of(conn: Connection, order_id: int) -> list[PaymentRefund]:
    r = t.payment_refund
    return [
        _refund(x)
        for x in conn.execute(sa.select(r).where(r.c.order_id == order_id).order_by(r.c.id))
    ]


def outstanding_fen(conn: Connection, order_id: int) -> int:
    """What the order's refunds took, but for the CLOSED ones (their money went back)."""
    r = t.payment_refund
    q = sa.select(sa.func.coalesce(sa.func.sum(r.c.amount_fen), 0)).where(
        r.c.order_id == order_id, r.c.state.in_([s.value for s in OUTSTANDING])
    )
    return int(conn.execute(q).scalar())


def refunds_in(conn: Connection, state: RefundState, *, limit: int = 500) -> list[PaymentRefund]:
    """Refunds in `state`, oldest first (what the service works through)."""
    r = t.payment_refund
    q = sa.select(r).where(r.c.state == state.value).order_by(r.c.id).limit(limit)
    return [_refund(x) for x in conn.execute(q)]


def list_refunds(
    conn: Connection, *, state: str | None = None, out_trade_no: str | None = None, limit: int = 200
) -> list[PaymentRefund]:
    """Newest first."""
    r = t.payment_refund
    q = sa.select(r).order_by(r.c.created_at.desc(), r.c.id.desc()).limit(limit)
    if state is not None:
        q = q.where(r.c.state == state)
    if out_trade_no is not None:
        q = q.where(r.c.out_trade_no == out_trade_no)
    return [_refund(x) for x in conn.execute(q)]
