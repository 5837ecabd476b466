"""Fee control's view of accounts: the few columns it decides on, loaded in bulk, and the
wallet balances it reads (the energy wallet only ever decides supply)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..db import FastStatement
from ..db import schema as t
from .feecontrol import FeeState, FeeThresholds


@dataclass(frozen=True, slots=True)
class AccountRow:
    """What fee control needs of an account (one query)."""

    id: str
    state: str
    fee_state: FeeState
    thresholds: FeeThresholds
    protected: bool
    notify: tuple[str, ...]
    #: (meter id, kind, control mode) of the meters attached now.
    meters: tuple[tuple[str, str, str], ...]


_a = t.account
_m = t.account_meter
#: One account's row and its attached meters, compiled once: fee control reads them after
#: every top-up (core/db FastStatement).
_fast_account = FastStatement(
    sa.select(
        _a.c.id,
        _a.c.state,
        _a.c.fee_state,
        _a.c.alarm1_fen,
        _a.c.alarm2_fen,
        _a.c.overdraft_limit_fen,
        _a.c.close_limit_fen,
        _a.c.hoard_limit_fen,
        _a.c.protected,
        _a.c.notify,
    ).where(_a.c.id == sa.bindparam("id"))
)
_fast_meters = FastStatement(
    sa.select(_m.c.meter_id, _m.c.kind, _m.c.control_mode)
    .where(_m.c.account_id == sa.bindparam("id"), _m.c.detached_at.is_(None))
    .order_by(_m.c.id)
)


def load_account_row(conn: Connection, account_id: str) -> AccountRow | None:
    cursor = _fast_account.execute(conn, {"id": account_id})
    row = cursor.fetchone()
    cursor.close()
    if row is None:
        return None
    cursor = _fast_meters.execute(conn, {"id": account_id})
    meters = tuple((m[0], m[1], m[2]) for m in cursor.fetchall())
    cursor.close()
    notify = row[9]
    if isinstance(notify, str | bytes):  # SQLite's JSON is text; psycopg decodes it
        notify = json.loads(notify)
    return AccountRow(
        row[0],
        row[1],
        FeeState(row[2]),
        FeeThresholds(int(row[3]), int(row[4]), int(row[5]), int(row[6]), int(row[7])),
        bool(row[8]),
        tuple(notify or ()),
        meters,
    )


def load_account_rows(conn: Connection, account_ids: Iterable[str]) -> dict[str, AccountRow]:
    """`load_account_row` for several accounts in two queries."""
    ids = sorted(set(account_ids))
    if not ids:
        return {}
    a = t.account
    rows = conn.execute(
        sa.select(
            a.c.id,
            a.c.state,
            a.c.fee_state,
            a.c.alarm1_fen,
            a.c.alarm2_fen,
            a.c.overdraft_limit_fen,
            a.c.close_limit_fen,
            a.c.hoard_limit_fen,
            a.c.protected,
            a.c.notify,
        ).where(a.c.id.in_(ids))
    ).all()
    meters: dict[str, list[tuple[str, str, str]]] = {}
    for m in conn.execute(
        sa.select(
            t.account_meter.c.account_id,
            t.account_meter.c.meter_id,
            t.account_meter.c.kind,
            t.account_meter.c.control_mode,
        )
        .where(t.account_meter.c.account_id.in_(ids), t.account_meter.c.detached_at.is_(None))
        .order_by(t.account_meter.c.id)
    ).all():
        meters.setdefault(m.account_id, []).append((m.meter_id, m.kind, m.control_mode))
    return {
        row.id: AccountRow(
            row.id,
            row.state,
            FeeState(row.fee_state),
            FeeThresholds(
                int(row.alarm1_fen),
                int(row.alarm2_fen),
                int(row.overdraft_limit_fen),
                int(row.close_limit_fen),
                int(row.hoard_limit_fen),
            ),
            bool(row.protected),
            tuple(row.notify or ()),
            tuple(meters.get(row.id, ())),
        )
        for row in rows
    }


def energy_balances(conn: Connection, account_id: str) -> tuple[int, int]:
    """(energy, general) wallet balances in fen."""
    rows = dict(
        conn.execute(
            sa.select(t.wallet.c.kind, t.wallet.c.balance_fen).where(
                t.wallet.c.account_id == account_id
            )
        ).all()
    )
    return int(rows.get("energy", 0)), int(rows.get("general", 0))
