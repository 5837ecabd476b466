"""What an operator screen shows of accounts and meters (reads: not audited)."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import ledger
from ..billing.bills.paying import receivable
from ..db import schema as t
from ..db.among import among
from ..ledger.codes import emergency_code
from ..model import MeterKind
from ..prepay import accounts as acc
from ..prepay.failed_commands import open_failures
from ..prepay.feecontrol import FeeState, FeeThresholds
from ..rating.units import ENERGY_SCALE
from .door import Door


@dataclass(frozen=True, slots=True)
class MeterSnapshot:
    meter_id: str
    #: electric / water.
    kind: str
    #: REMOTE / LOCAL / POSTPAID.
    control_mode: str
    #: Supply on (relay closed, valve open) as last read back; None while unknown.
    supply_on: bool | None
    #: A trip the policy gate deferred to this instant (UTC), if any.
    trip_due_at: datetime | None
    #: Consumption since site-local midnight, in `unit` (kWh or m³).
    today: Decimal
    unit: str
    buy_count: int
    confirmed_buy_count: int
    #: The supply state the platform decided (None: never switched by the platform).
    desired_on: bool | None = None
    #: Times the decision had to be re-asserted because the meter read otherwise, and
    #: whether it disobeys now (an active SupplyMismatch).
    mismatch_count: int = 0
    mismatch_active: bool = False
    #: Why the meter is not billed (None: it is).
    billing_problem: str | None = None
    #: Purchase counts in the meter's own numbering (the platform's minus its offset).
    meter_buy_count: int = 0
    #: True while its purchase count is to be read and aligned with.
    align_pending: bool = False


@dataclass(frozen=True, slots=True)
class AccountSnapshot:
    """An account as an operator screen shows it."""

    account_id: str
    name: str
    room: str | None
    #: PREREGISTERED / OPEN / CLOSED.
    state: str
    tariff_id: str | None
    protected: bool
    #: Energy wallet (what fee control reads) and general wallet, fen.
    balance_fen: int
    general_fen: int
    emergency_outstanding_fen: int
    fee_state: FeeState
    thresholds: FeeThresholds
    meters: tuple[MeterSnapshot, ...]
    energy_today_kwh: Decimal
    water_today_m3: Decimal
    #: Usage deducted from the energy wallet since site-local midnight, fen.
    cost_today_fen: int
    at: datetime
    #: What the tenant owes, fen: energy arrears (beyond emergency credit), general-wallet
    #: arrears, and billed charges and post-paid bills not paid (`asset:ar`).
    receivable_fen: int = 0
    #: FAILED RECHARGE/REFUND commands nobody retried or refunded yet (open alarms).
    failed_commands: tuple[int, ...] = ()

    @property
    def owed_fen(self) -> int:
        energy = max(0, self.emergency_outstanding_fen - self.balance_fen)
        return energy + max(0, -self.general_fen) + max(0, self.receivable_fen)

    @property
    def billing_problems(self) -> dict[str, str]:
        """Meter → why it is not billed, for the meters that are not."""
        return {m.meter_id: m.billing_problem for m in self.meters if m.billing_problem}

    @property
    def desired_supply_on(self) -> bool:
        """True unless the platform decided to cut a meter of the account."""
        return all(m.desired_on is not False for m in self.meters)

    @property
    def general_balance_fen(self) -> int:
        return self.general_fen

    @property
    def alarm_level(self) -> int:
        """0 normal, 1 alarm1, 2 alarm2, 3 over zero, 4 overdraft."""
        return self.fee_state.severity

    @property
    def supply_on(self) -> bool:
        """True while no meter of the account is known to be cut."""
        return all(m.supply_on is not False for m in self.meters)


class SnapshotReads(Door):
    def account_snapshot(self, account_id: str) -> AccountSnapshot:
        """Balances, fee state, supply and today's consumption of one account."""
        with self.db.read() as conn:
            account = acc.get_account(conn, account_id)
            return self._snapshots(conn, [account])[0]

    def list_accounts(self) -> list[AccountSnapshot]:
        """Every account (ordered by id) as `AccountSnapshot`s."""
        with self.db.read() as conn:
            return self._snapshots(conn, acc.list_accounts(conn))

    def account_ids(self) -> list[str]:
        """Every account's id, ordered (what a reader that pages through the accounts'
        snapshots, `account_snapshots` a part at a time, starts from)."""
        with self.db.read() as conn:
            return list(conn.execute(sa.select(t.account.c.id).order_by(t.account.c.id)).scalars())

    def account_snapshots(self, account_ids: Collection[str]) -> list[AccountSnapshot]:
        """The snapshots of these accounts (ordered by id; unknown ids left out), in one
        read transaction of a few queries."""
        with self.db.read() as conn:
            return self._snapshots(conn, acc.list_accounts(conn, ids=set(account_ids)))

    def _snapshots(self, conn: Connection, accounts: list[acc.Account]) -> list[AccountSnapshot]:
        now = self.clock()
        local = now.astimezone(self.site.info.tz)
        midnight = datetime.combine(local.date(), datetime.min.time(), tzinfo=self.site.info.tz)
        day = local.date().isoformat()
        facts = _read_facts(conn, accounts, midnight.astimezone(now.tzinfo), day)
        return [self._account_snapshot(a, facts, day, now) for a in accounts]

    def _account_snapshot(
        self, a: acc.Account, facts: _Facts, day: str, now: datetime
    ) -> AccountSnapshot:
        meters = tuple(self._meter_snapshot(m, facts, day) for m in a.meters)
        water = [m.today for m in meters if m.kind == MeterKind.WATER.value]
        electric = [m.today for m in meters if m.kind != MeterKind.WATER.value]
        return AccountSnapshot(
            a.id,
            a.name,
            a.room,
            a.state.value,
            a.tariff_id,
            a.protected,
            a.energy_fen,
            a.general_fen,
            facts.emergency.get(a.id, 0),
            FeeState(a.fee_state),
            a.thresholds,
            meters,
            sum(electric, Decimal(0)),
            sum(water, Decimal(0)),
            facts.cost.get(a.id, 0),
            now,
            receivable_fen=facts.owed.get(a.id, 0),
            failed_commands=tuple(facts.failures.get(a.id, ())),
        )

    def _meter_snapshot(self, m: acc.AccountMeter, facts: _Facts, day: str) -> MeterSnapshot:
        row = facts.prepay_meters.get(m.meter_id)
        units = int(facts.usage.get(m.meter_id, 0)) + self.unsaved_energy(m.meter_id, day)
        water = m.kind == MeterKind.WATER.value
        offset = int(facts.offsets.get(m.meter_id) or 0)
        return MeterSnapshot(
            m.meter_id,
            m.kind,
            m.control_mode,
            row.supply_on if row is not None else None,
            row.trip_due_at if row is not None else None,
            Decimal(units) / ENERGY_SCALE,
            "m³" if water else "kWh",
            m.buy_count,
            m.confirmed_buy_count,
            desired_on=row.desired_on if row is not None else None,
            mismatch_count=int(row.mismatch_count) if row is not None else 0,
            mismatch_active=row is not None and row.mismatch_since is not None,
            billing_problem=row.billing_problem if row is not None else None,
            meter_buy_count=m.confirmed_buy_count - offset,
            align_pending=m.meter_id in facts.aligning,
        )


@dataclass(frozen=True, slots=True)
class _Facts:
    """What the snapshots of a set of accounts need, read in a few queries."""

    prepay_meters: dict[str, Any]
    offsets: dict[str, int]
    aligning: set[str]
    owed: dict[str, int]
    failures: dict[str, list[int]]
    #: Today's energy per meter (0.001 units), as saved.
    usage: dict[str, int]
    cost: dict[str, int]
    emergency: dict[str, int]


def _read_facts(
    conn: Connection, accounts: list[acc.Account], midnight: datetime, day: str
) -> _Facts:
    ids = [a.id for a in accounts]
    meters = [m.meter_id for a in accounts for m in a.meters]
    p = t.prepay_meter.c
    columns = (p.supply_on, p.trip_due_at, p.desired_on, p.mismatch_count, p.mismatch_since)
    prepay_meters = {
        r.meter_id: r
        for r in conn.execute(
            sa.select(p.meter_id, *columns, p.billing_problem).where(
                among(conn, p.meter_id, meters)
            )
        )
    }
    offsets = dict(
        conn.execute(
            sa.select(t.meter.c.id, t.meter.c.count_offset).where(among(conn, t.meter.c.id, meters))
        ).all()
    )
    aligning = set(
        conn.execute(
            sa.select(t.meter.c.id).where(
                among(conn, t.meter.c.id, meters), t.meter.c.align_requested_at.is_not(None)
            )
        ).scalars()
    )
    failures: dict[str, list[int]] = {}
    for f in open_failures(conn, account_ids=ids):
        failures.setdefault(f.account_id or "", []).append(f.id)
    usage = dict(
        conn.execute(
            sa.select(t.meter_usage_day.c.meter_id, t.meter_usage_day.c.energy).where(
                among(conn, t.meter_usage_day.c.meter_id, meters),
                t.meter_usage_day.c.day == day,
            )
        ).all()
    )
    # By these accounts' codes (an index lookup), not every emergency posting of the site:
    # a refresh reads the accounts 500 at a time.
    codes = {emergency_code(a): a for a in ids}
    emergency = {
        codes[code]: int(total)
        for code, total in conn.execute(
            sa.select(t.posting.c.ledger_account, sa.func.sum(t.posting.c.amount_fen))
            .where(among(conn, t.posting.c.ledger_account, codes))
            .group_by(t.posting.c.ledger_account)
        ).all()
    }
    return _Facts(
        prepay_meters,
        offsets,
        aligning,
        receivable(conn, ids),
        failures,
        usage,
        ledger.usage_fen_since(conn, ids, midnight),
        emergency,
    )
