"""What a tenant sees of their own room (reads for the tenant page; not audited).

The caller (the web plugin's tenant page) has already checked that the request is bound
to `room` — a signed link's session or a payer binding. These reads take the room, never
an account id from the request: the account is the room's open account, found here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

import sqlalchemy as sa

from .. import ledger
from ..billing.bills.model import OPEN_STATES
from ..db import schema as t
from ..model import MeterKind
from ..prepay import accounts as acc
from ..rating.units import ENERGY_SCALE
from .snapshots import AccountSnapshot, SnapshotReads


@dataclass(frozen=True, slots=True)
class Recharge:
    at: datetime
    amount_fen: int
    channel: str


@dataclass(frozen=True, slots=True)
class OpenBill:
    number: str
    period: str
    outstanding_fen: int
    due_date: str | None


@dataclass(frozen=True, slots=True)
class Price:
    """The price of one commodity for the room: `rates` name → yuan per unit."""

    kind: str
    unit: str
    tariff: str
    rates: tuple[tuple[str, Decimal], ...]
    structure: str


@dataclass(frozen=True, slots=True)
class RoomView:
    room: str
    snapshot: AccountSnapshot
    month_kwh: Decimal
    month_m3: Decimal
    #: Usage deducted from the energy wallet this month (site-local), fen.
    month_cost_fen: int
    prices: tuple[Price, ...]
    recharges: tuple[Recharge, ...]
    open_bills: tuple[OpenBill, ...]


class TenantReads(SnapshotReads):
    def room_account(self, room: str) -> str | None:
        """The open account of `room` (by the account's room, else by the account its
        meters in the room are attached to)."""
        with self.db.read() as conn:
            a = t.account.c
            found = conn.execute(
                sa.select(a.id)
                .where(a.room == room, a.state == acc.AccountState.OPEN.value)
                .order_by(a.id)
                .limit(1)
            ).scalar()
            if found is not None:
                return str(found)
            meters = [d.id for d in self.site.devices.values() if d.room == room]
            if not meters:
                return None
            m = t.account_meter.c
            found = conn.execute(
                sa.select(m.account_id)
                .join(t.account, t.account.c.id == m.account_id)
                .where(
                    m.meter_id.in_(meters),
                    m.detached_at.is_(None),
                    a.state == acc.AccountState.OPEN.value,
                )
                .order_by(m.account_id)
                .limit(1)
            ).scalar()
            return str(found) if found is not None else None

    def room_view(self, room: str, account_id: str, *, recharges: int = 10) -> RoomView:
        """Balance, fee state, supply, today's and this month's use with cost, prices,
        recent recharges and open bills of the room's account."""
        snapshot = self.account_snapshot(account_id)
        now = self.clock()
        tz = self.site.info.tz
        local = now.astimezone(tz)
        first = date(local.year, local.month, 1)
        month_start = datetime.combine(first, datetime.min.time(), tzinfo=tz)
        meters = [m.meter_id for m in snapshot.meters]
        kinds = {m.meter_id: m.kind for m in snapshot.meters}
        with self.db.read() as conn:
            u = t.meter_usage_day.c
            usage = conn.execute(
                sa.select(u.meter_id, sa.func.sum(u.energy))
                .where(
                    u.meter_id.in_(meters),
                    u.day >= first.isoformat(),
                    u.day < local.date().isoformat(),
                )
                .group_by(u.meter_id)
            ).all()
            cost = ledger.usage_fen_since(conn, [account_id], month_start.astimezone(now.tzinfo))
            tp = t.topup.c
            topups = conn.execute(
                sa.select(tp.created_at, tp.amount_fen, tp.channel)
                .where(tp.account_id == account_id)
                .order_by(tp.id.desc())
                .limit(recharges)
            ).all()
            b = t.bill.c
            bills = conn.execute(
                sa.select(b.number, b.period, b.total_fen, b.paid_fen, b.due_date)
                .where(
                    b.account_id == account_id,
                    b.state.in_(OPEN_STATES),
                    b.total_fen > b.paid_fen,
                )
                .order_by(b.period, b.id)
            ).all()
        # The days before today as saved, plus today as the snapshot has it (saved and
        # not yet saved).
        before = {meter: int(total or 0) for meter, total in usage}
        kwh = m3 = Decimal(0)
        for m in snapshot.meters:
            value = Decimal(before.get(m.meter_id, 0)) / ENERGY_SCALE + m.today
            if kinds[m.meter_id] == MeterKind.WATER.value:
                m3 += value
            else:
                kwh += value
        return RoomView(
            room,
            snapshot,
            kwh,
            m3,
            cost.get(account_id, 0),
            self._prices(snapshot),
            tuple(Recharge(r.created_at, int(r.amount_fen), r.channel) for r in topups),
            tuple(
                OpenBill(r.number, r.period, int(r.total_fen - r.paid_fen), r.due_date)
                for r in bills
            ),
        )

    def _prices(self, snapshot: AccountSnapshot) -> tuple[Price, ...]:
        found: dict[str, Price] = {}
        now = self.clock()
        for m in snapshot.meters:
            tariff_id = self.binding.effective(m.meter_id, snapshot.tariff_id)
            if tariff_id is None or m.kind in found:
                continue
            tariff = self.catalogue.get(tariff_id)
            version = tariff.version_at(now, self.catalogue.tz)
            found[m.kind] = Price(
                m.kind,
                tariff.unit,
                tariff.name or tariff.id,
                tuple(version.rates.items()),
                version.structure,
            )
        return tuple(found[k] for k in sorted(found))
