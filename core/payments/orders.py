"""The `payment_order` rows: our order number, insert, read, lock, list."""

from __future__ import annotations

import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..db import FastStatement
from ..db import schema as t
from .states import OrderFacts, OrderState

_ALPHABET = string.digits + string.ascii_letters
#: 12 random characters of 62: about 71 bits, so an order number is never guessed.
_RANDOM_CHARS = 12


def new_out_trade_no(prefix: str, now: datetime) -> str:
    """`<prefix><yyMMddHHmmss UTC><12 random>`: at most 8 + 12 + 12 = 32 characters of
    [0-9A-Za-z], the charset and length every provider accepts (WeChat ≤ 32, Alipay ≤ 64)."""
    random = "".join(secrets.choice(_ALPHABET) for _ in range(_RANDOM_CHARS))
    return f"{prefix}{now:%y%m%d%H%M%S}{random}"


@dataclass(frozen=True, slots=True)
class PaymentOrder:
    id: int
    out_trade_no: str
    channel: str
    method: str
    account_id: str
    room: str | None
    amount_fen: int
    currency: str
    state: OrderState
    transaction_id: str | None
    merchant_id: str
    app_id: str
    created_at: datetime
    expires_at: datetime
    paid_at: datetime | None
    credited_at: datetime | None
    closed_at: datetime | None
    refunded_fen: int
    conflict: str | None
    notices: int
    last_notice: Mapping[str, Any] | None
    last_query_at: datetime | None
    requested_by: str

    @property
    def facts(self) -> OrderFacts:
        return OrderFacts(
            self.state,
            self.channel,
            self.amount_fen,
            self.currency,
            self.merchant_id,
            self.app_id,
            self.transaction_id,
        )


def _order(row: Any) -> PaymentOrder:
    values = dict(row._mapping)
    values["state"] = OrderState(values["state"])
    return PaymentOrder(**values)


def insert_order(conn: Connection, values: Mapping[str, Any]) -> PaymentOrder:
    conn.execute(t.payment_order.insert().values(**values))
    order = get_order(conn, values["out_trade_no"])
    assert order is not None
    return order


# Statements built once and run as `FastStatement`s on the driver cursor: a notification
# runs each of them inside the door's transaction, and SQLAlchemy's general path (statement,
# cache key, result object) costs more than SQLite executing it. Values go through each
# column type's own bind/result processors for the dialect, so rows are what `conn.execute`
# would give (timestamps, JSON).
_o = t.payment_order
_COLUMNS = tuple(_o.c.keys())
_BY_NUMBER = sa.select(_o).where(_o.c.out_trade_no == sa.bindparam("no"))
_fast_by_number = FastStatement(_BY_NUMBER)
_fast_by_number_locked = FastStatement(_BY_NUMBER.with_for_update())
_fast_paid_by = FastStatement(
    sa.select(_o.c.out_trade_no).where(_o.c.transaction_id == sa.bindparam("tx"))
)
#: UPDATE statements by the set of columns they write.
_UPDATES: dict[frozenset[str], FastStatement] = {}
#: Per dialect: each column's result processor (in `_COLUMNS` order) and bind processor.
_PROCESSORS: dict[str, tuple[tuple[Any, ...], dict[str, Any]]] = {}


def _processors(conn: Connection) -> tuple[tuple[Any, ...], dict[str, Any]]:
    found = _PROCESSORS.get(conn.dialect.name)
    if found is None:
        dialect = conn.dialect
        results = tuple(_o.c[n].type._cached_result_processor(dialect, None) for n in _COLUMNS)
        binds = {n: _o.c[n].type._cached_bind_processor(dialect) for n in _COLUMNS}
        found = _PROCESSORS[dialect.name] = (results, binds)
    return found


def _fast_order(conn: Connection, row: tuple[Any, ...]) -> PaymentOrder:
    results, _ = _processors(conn)
    values = {
        name: (process(value) if process is not None else value)
        for name, process, value in zip(_COLUMNS, results, row, strict=True)
    }
    values["state"] = OrderState(values["state"])
    return PaymentOrder(**values)


def get_order(conn: Connection, out_trade_no: str, *, lock: bool = False) -> PaymentOrder | None:
    """The order, or None. `lock`: SELECT … FOR UPDATE on PostgreSQL (SQLite's write
    transactions start with BEGIN IMMEDIATE: the writer lock already serialises them)."""
    statement = _fast_by_number_locked if lock else _fast_by_number
    cursor = statement.execute(conn, {"no": out_trade_no})
    try:
        row = cursor.fetchone()
    finally:
        cursor.close()
    return _fast_order(conn, row) if row is not None else None


def order_paid_by(conn: Connection, transaction_id: str | None) -> str | None:
    """The order the provider's transaction already paid (the column is unique)."""
    if transaction_id is None:
        return None
    cursor = _fast_paid_by.execute(conn, {"tx": transaction_id})
    try:
        row = cursor.fetchone()
    finally:
        cursor.close()
    return row[0] if row is not None else None


def update_order(conn: Connection, order_id: int, **values: Any) -> None:
    columns = frozenset(values)
    statement = _UPDATES.get(columns)
    if statement is None:
        unknown = columns - set(_COLUMNS)
        if unknown:
            raise TypeError(f"payment_order has no column {', '.join(sorted(unknown))}")
        statement = _UPDATES[columns] = FastStatement(
            _o.update()
            .where(_o.c.id == sa.bindparam("order_id"))
            .values({name: sa.bindparam(f"v_{name}", type_=_o.c[name].type) for name in columns})
        )
    _, binds = _processors(conn)
    params: dict[str, Any] = {"order_id": order_id}
    for name, value in values.items():
        process = binds[name]
        params[f"v_{name}"] = process(value) if process is not None else value
    statement.execute(conn, params).close()


def list_orders(
    conn: Connection,
    *,
    state: str | None = None,
    account_id: str | None = None,
    before: datetime | None = None,
    limit: int = 200,
) -> list[PaymentOrder]:
    """Newest first; `before`: created before this instant."""
    o = t.payment_order
    q = sa.select(o).order_by(o.c.created_at.desc(), o.c.id.desc()).limit(limit)
    if state is not None:
        q = q.where(o.c.state == state)
    if account_id is not None:
        q = q.where(o.c.account_id == account_id)
    if before is not None:
        q = q.where(o.c.created_at < before)
    return [_order(r) for r in conn.execute(q)]


def orders_in(conn: Connection, state: OrderState, *, limit: int = 500) -> list[PaymentOrder]:
    """Orders in `state`, oldest first (what the service works through)."""
    o = t.payment_order
    q = sa.select(o).where(o.c.state == state.value).order_by(o.c.id).limit(limit)
    return [_order(r) for r in conn.execute(q)]


def notice_record(notice: Any, now: datetime) -> dict[str, Any]:
    """The notice as kept with the order (JSON): what it said, when, and the provider's
    decoded resource."""
    return {
        "received_at": now.isoformat(),
        "state": notice.state,
        "amount_fen": notice.amount_fen,
        "currency": notice.currency,
        "transaction_id": notice.transaction_id,
        "merchant_id": notice.merchant_id,
        "app_id": notice.app_id,
        "paid_at": notice.paid_at.isoformat() if notice.paid_at else None,
        "raw": _jsonable(notice.raw) if notice.raw is not None else None,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)
