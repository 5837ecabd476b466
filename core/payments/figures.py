"""The payment figures operators watch (OPC UA `Payments`, `openprepay payments figures`):
orders by state, what was credited since site-local midnight by channel, conflicts, when the
last provider notification arrived, and the latest reconciliation.

Read-only and cheap: one grouped count, one grouped sum over today's credited orders (the
state index), the newest `payment_notice` audit row, and the newest reconciliation row.

The reconciliation is a seam: `payment_reconciliation` is created by a later migration
(refunds and trade-bill reconciliation). Until that table exists, or while it is empty,
`latest_reconciliation` answers None and OPC UA shows BadWaitingForInitialData.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..db import schema as t
from .states import OrderState

#: The table the reconciliation migration adds (read by reflection: not in this schema yet).
RECONCILIATION_TABLE = "payment_reconciliation"
#: Columns read from it, the first present of each: when it ran, its outcome, differences.
_WHEN = ("finished_at", "created_at", "ran_at", "at", "day")
_RESULT = ("state", "result", "status")
_DIFFERENCES = ("differences", "difference_count", "discrepancies")


@dataclass(frozen=True, slots=True)
class ChannelFigures:
    """What one channel credited since site-local midnight."""

    channel: str
    credited_today: int = 0
    credited_today_fen: int = 0


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """The newest reconciliation: when, its outcome ("OK", "DIFFERENCES"...), how many
    differences it found."""

    at: datetime
    result: str
    differences: int


@dataclass(frozen=True, slots=True)
class PaymentFigures:
    at: datetime
    #: Orders in each state (every `OrderState`, 0 included).
    by_state: Mapping[str, int]
    #: Per channel (every configured channel, and any other that credited today).
    channels: Mapping[str, ChannelFigures] = field(default_factory=dict)
    #: When a provider's callback was last stored (None: never).
    last_notification_at: datetime | None = None
    reconciliation: Reconciliation | None = None

    @property
    def conflicts(self) -> int:
        return self.by_state.get(OrderState.CONFLICT.value, 0)

    @property
    def credited_today(self) -> int:
        return sum(c.credited_today for c in self.channels.values())

    @property
    def credited_today_fen(self) -> int:
        return sum(c.credited_today_fen for c in self.channels.values())


def read_figures(
    conn: Connection,
    now: datetime,
    day_start: datetime,
    channels: tuple[str, ...] = (),
) -> PaymentFigures:
    """The figures at `now`; "today" is from `day_start` (site-local midnight, aware)."""
    o = t.payment_order
    by_state = {s.value: 0 for s in OrderState}
    for state, count in conn.execute(
        sa.select(o.c.state, sa.func.count()).group_by(o.c.state)
    ).all():
        by_state[state] = int(count)
    per_channel = {c: ChannelFigures(c) for c in channels}
    rows = conn.execute(
        sa.select(o.c.channel, sa.func.count(), sa.func.coalesce(sa.func.sum(o.c.amount_fen), 0))
        .where(
            o.c.credited_at.is_not(None),
            o.c.credited_at >= day_start,
            # Credited then refunded still counts: money came in today.
            o.c.state.in_((OrderState.CREDITED.value, OrderState.REFUNDED.value)),
        )
        .group_by(o.c.channel)
    ).all()
    for channel, count, fen in rows:
        per_channel[channel] = ChannelFigures(channel, int(count), int(fen))
    return PaymentFigures(
        now,
        by_state,
        dict(sorted(per_channel.items())),
        last_notification(conn),
        latest_reconciliation(conn),
    )


def last_notification(conn: Connection) -> datetime | None:
    """When a provider's callback was last stored: the newest `payment_notice` audit row
    written by the web route (actor `web:<channel>`; query answers are not notifications)."""
    a = t.audit_log
    return conn.execute(
        sa.select(a.c.at)
        .where(a.c.action == "payment_notice", a.c.actor.like("web:%"), a.c.ok.is_(True))
        .order_by(a.c.id.desc())
        .limit(1)
    ).scalar()


def latest_reconciliation(conn: Connection) -> Reconciliation | None:
    """The newest row of `payment_reconciliation`, or None (no table yet, or no row)."""
    if not sa.inspect(conn).has_table(RECONCILIATION_TABLE):
        return None
    table = sa.Table(RECONCILIATION_TABLE, sa.MetaData(), autoload_with=conn)
    when = _first(table, _WHEN)
    if when is None:
        return None
    order = [when.desc()]
    if "id" in table.c:
        order.append(table.c.id.desc())
    row = conn.execute(sa.select(table).order_by(*order).limit(1)).first()
    if row is None:
        return None
    values = row._mapping
    result = _first(table, _RESULT)
    differences = _first(table, _DIFFERENCES)
    return Reconciliation(
        _instant(values[when.name]),
        str(values[result.name]) if result is not None else "",
        _count(values[differences.name]) if differences is not None else 0,
    )


def _first(table: sa.Table, names: tuple[str, ...]) -> Any:
    for name in names:
        if name in table.c:
            return table.c[name]
    return None


def _instant(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime.combine(value, time.min, tzinfo=UTC)
    at = datetime.fromisoformat(str(value))
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _count(value: Any) -> int:
    """A count column, or a JSON list/object of differences (its length)."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    if isinstance(value, list | dict):
        return len(value)
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except ValueError:
            return 0
        return _count(decoded) if not isinstance(decoded, str) else 0
    return int(value)
