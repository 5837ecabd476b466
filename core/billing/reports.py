"""Finance and energy reports (AcrelCloud §4.4, §4.5), reconciled with the ledger.

Finance (from the journal and its postings, nothing else):

- `orders` — every order in a span: top-ups, refunds, emergency credit, charges, common-area
  shares, bill payments, reversals, one row per journal and customer; usage deductions
  summed per account, day and commodity. Columns are the changes of the energy wallet, the
  general wallet and what is owed (`asset:ar:<account>`); their totals are exactly the net
  postings of those ledger accounts in the span.
- `revenue` — revenue by day, month, year or the whole span, and its composition
  (electricity, water, common area, property, rent, services, late fees): the credits to
  `rev:*` net of reversals. Its total is exactly the net `rev:*` postings of the span.

Energy (from the consumption the engine keeps per meter and day, `meter_usage_day`, and for
meters without an account — main and public meters — from their registers at the capture
instants):

- `monthly` — the comprehensive monthly report per room: total and 尖/峰/平/谷 energy, the
  cost of each (the month's usage postings of the room's meters — exactly the ledger's —
  split over the rates in proportion to the exact tariff amounts of the month's energy by
  `rating.largest_remainder`, tier surcharges in their own column), and the same month of
  the previous year with the change;
- `meter_energy` — energy per meter by day, month or year (electricity or water).

Every report is a `export.Table`: printed on the command line, written as CSV or XLSX (with
a chart). Times are bucketed in the site's time zone by the journal's time.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Mapping, Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..config.site import Site
from ..db import schema as t
from ..ledger import RequestError
from ..model import DeviceModel, MeterKind
from ..prepay.binding import tariff_for
from ..rating.engine import (
    DEFAULT_REGISTER_RATES,
    ENERGY_SCALE,
    RatingError,
    bill_usage,
    largest_remainder,
)
from ..rating.tariffs import SINGLE_RATE, TariffCatalogue
from .export import Chart, Table, yuan
from .periods import Calendar, parse_period
from .readings import readings_between

#: Revenue streams in report order (the rest goes to "other").
STREAMS = (
    ("electricity", "electricity"),
    ("water", "water"),
    ("public_energy", "common area"),
    ("property", "property"),
    ("rent", "rent"),
    ("service", "services"),
    ("late_fee", "late fees"),
)
BY = ("day", "month", "year", "range")

ORDER_NAMES = {
    "topup": "top-up",
    "refund_request": "refund",
    "refund_settle": "refund paid out",
    "emergency_credit": "emergency credit",
    "emergency_repay": "emergency credit repaid",
    "opening_balance": "opening balance",
    "allocation": "common area",
    "charge": "charge",
    "settlement": "payment",
    "adjustment": "adjustment",
    "reversal": "reversal",
}


def energy(units: int) -> Decimal:
    """0.001 kWh or m³ as exact Decimal kWh or m³ with three decimals (display)."""
    return Decimal(int(units)).scaleb(-3)


def parse_day(text: str, field: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except (TypeError, ValueError):
        raise RequestError(field, f"expected a date such as 2025-03-01, got {text!r}") from None


class Reports:
    def __init__(
        self,
        site: Site,
        models: Mapping[str, DeviceModel],
        catalogue: TariffCatalogue,
        *,
        calendar: Calendar,
        register_rates: Mapping[str, Sequence[str]] | None = None,
        default_tariffs: Mapping[str, str] | None = None,
    ) -> None:
        self.site = site
        self.models = models
        self.catalogue = catalogue
        self.calendar = calendar
        self.tz = site.info.tz
        self.register_rates = dict(register_rates or {})
        self.default_tariffs = dict(default_tariffs or {})

    # -- buckets ---------------------------------------------------------------------------
    def _midnight(self, day: dt.date) -> dt.datetime:
        return dt.datetime.combine(day, dt.time(), tzinfo=self.tz).astimezone(dt.UTC)

    def buckets(self, start: dt.date, end: dt.date, by: str) -> list[tuple[str, dt.date]]:
        """(label, first day) of each bucket of [start, end)."""
        if by not in BY:
            raise RequestError("by", f"expected one of {', '.join(BY)}; got {by!r}")
        if end <= start:
            raise RequestError("to", f"the span must end after it starts ({start} → {end})")
        if by == "range":
            return [(f"{start}..{end - dt.timedelta(days=1)}", start)]
        out = []
        day = start
        while day < end:
            if by == "day":
                out.append((day.isoformat(), day))
                day += dt.timedelta(days=1)
            elif by == "month":
                out.append((f"{day:%Y-%m}", day))
                day = (day.replace(day=1) + dt.timedelta(days=32)).replace(day=1)
            else:
                out.append((f"{day:%Y}", day))
                day = dt.date(day.year + 1, 1, 1)
        return out

    def _bucket(self, column: Any, bounds: Sequence[dt.datetime]) -> Any:
        return sa.case(
            *[(column < bounds[i + 1], sa.literal(i)) for i in range(len(bounds) - 1)],
            else_=sa.literal(-1),
        )

    # -- finance ---------------------------------------------------------------------------
    def revenue(self, conn: Connection, start: dt.date, end: dt.date, by: str = "month") -> Table:
        buckets = self.buckets(start, end, by)
        bounds = [self._midnight(d) for _, d in buckets] + [self._midnight(end)]
        j, p = t.journal, t.posting
        b = self._bucket(j.c.created_at, bounds).label("b")
        rows = conn.execute(
            sa.select(b, p.c.ledger_account, sa.func.sum(p.c.amount_fen))
            .join(j, j.c.id == p.c.journal_id)
            .where(
                p.c.ledger_account.like("rev:%"),
                j.c.created_at >= bounds[0],
                j.c.created_at < bounds[-1],
            )
            .group_by(b, p.c.ledger_account)
        ).all()
        streams = [s for s, _ in STREAMS]
        grid = [[0] * (len(streams) + 1) for _ in buckets]
        for bucket, code, total in rows:
            stream = code.split(":", 1)[1]
            col = streams.index(stream) if stream in streams else len(streams)
            grid[int(bucket)][col] += -int(total)
        table = Table(
            f"Revenue {start} to {end - dt.timedelta(days=1)} by {by}",
            [by, *[name for _, name in STREAMS], "other", "total"],
            sheet="Revenue",
            chart=Chart(
                "stacked", 0, tuple(range(1, len(streams) + 2)), "Revenue by stream", "CNY"
            ),
            notes=[
                "Revenue = credits to rev:* net of reversals, by journal time "
                f"({self.site.info.timezone}); CNY."
            ],
        )
        for (label, _), cells in zip(buckets, grid, strict=True):
            table.rows.append([label, *[yuan(c) for c in cells], yuan(sum(cells))])
        sums = [sum(g[i] for g in grid) for i in range(len(streams) + 1)]
        table.total = ["total", *[yuan(s) for s in sums], yuan(sum(sums))]
        return table

    def orders(
        self,
        conn: Connection,
        start: dt.date,
        end: dt.date,
        *,
        account: str | None = None,
    ) -> Table:
        j, p = t.journal, t.posting
        lo, hi = self._midnight(start), self._midnight(end)
        customer = sa.or_(
            p.c.ledger_account.like("liab:wallet:%"), p.c.ledger_account.like("asset:ar:%")
        )
        q = (
            sa.select(
                j.c.id,
                j.c.kind,
                j.c.created_at,
                j.c.idempotency_key,
                j.c.memo,
                p.c.ledger_account,
                sa.func.sum(p.c.amount_fen),
            )
            .join(j, j.c.id == p.c.journal_id)
            .where(customer, j.c.kind != "usage", j.c.created_at >= lo, j.c.created_at < hi)
            .group_by(
                j.c.id, j.c.kind, j.c.created_at, j.c.idempotency_key, j.c.memo, p.c.ledger_account
            )
            .order_by(j.c.id)
        )
        per: dict[tuple[int, str], dict[str, Any]] = {}
        for jid, kind, created, key, memo, code, total in conn.execute(q).all():
            who, col = _customer(code)
            if account is not None and who != account:
                continue
            row = per.setdefault(
                (jid, who),
                {
                    "at": created,
                    "kind": kind,
                    "key": key,
                    "memo": memo,
                    "energy": 0,
                    "general": 0,
                    "owed": 0,
                },
            )
            row[col] += -int(total) if col != "owed" else int(total)
        days = self.buckets(start, end, "day")
        bounds = [self._midnight(d) for _, d in days] + [hi]
        b = self._bucket(j.c.created_at, bounds).label("b")
        usage_q = (
            sa.select(
                b, j.c.account_id, p.c.ledger_account, sa.func.sum(p.c.amount_fen), sa.func.count()
            )
            .join(j, j.c.id == p.c.journal_id)
            .where(
                j.c.kind == "usage",
                p.c.ledger_account.like("rev:%"),
                j.c.created_at >= lo,
                j.c.created_at < hi,
            )
            .group_by(b, j.c.account_id, p.c.ledger_account)
        )
        if account is not None:
            usage_q = usage_q.where(j.c.account_id == account)
        usage = conn.execute(usage_q).all()
        table = Table(
            f"Orders {start} to {end - dt.timedelta(days=1)}"
            + (f", account {account}" if account else ""),
            [
                "time",
                "order",
                "account",
                "reference",
                "energy wallet",
                "general wallet",
                "owed",
                "detail",
            ],
            sheet="Orders",
            notes=[
                "Changes in CNY: energy and general wallets (+ = more money for the tenant), "
                "owed (+ = more owed). Usage deductions are summed per account and day."
            ],
        )
        rows: list[tuple[Any, list[Any]]] = []
        for (jid, who), r in per.items():
            local = r["at"].astimezone(self.tz)
            rows.append(
                (
                    (r["at"], jid),
                    [
                        f"{local:%Y-%m-%d %H:%M:%S}",
                        ORDER_NAMES.get(r["kind"], r["kind"]),
                        who,
                        r["key"],
                        yuan(r["energy"]),
                        yuan(r["general"]),
                        yuan(r["owed"]),
                        r["memo"],
                    ],
                )
            )
        for bucket, who, code, total, n in usage:
            day = days[int(bucket)][1]
            stream = code.split(":", 1)[1]
            rows.append(
                (
                    (self._midnight(day) + dt.timedelta(hours=23, minutes=59), 0),
                    [
                        f"{day} (day)",
                        f"usage {stream}",
                        who,
                        "",
                        yuan(int(total)),  # Dr wallet = Cr revenue: −revenue posting
                        yuan(0),
                        yuan(0),
                        f"{n} deduction(s)",
                    ],
                )
            )
        rows.sort(key=lambda x: x[0])
        table.rows = [r for _, r in rows]
        sums = [sum((r[i] for r in table.rows), Decimal(0)) for i in (4, 5, 6)]
        table.total = ["total", f"{len(table.rows)} rows", "", "", *sums, ""]
        return table

    # -- energy ----------------------------------------------------------------------------
    def _meters(self, commodity: str) -> list[str]:
        kind = MeterKind.WATER if commodity == "water" else MeterKind.ELECTRIC
        out = []
        for d in self.site.devices.values():
            model = self.models.get(d.model)
            if model is not None and model.kind is kind:
                out.append(d.id)
        return sorted(out)

    def _usage_days(
        self, conn: Connection, meters: Sequence[str], start: dt.date, end: dt.date
    ) -> list[Any]:
        u = t.meter_usage_day
        return list(
            conn.execute(
                sa.select(u.c.meter_id, u.c.day, u.c.energy, u.c.by_rate).where(
                    u.c.meter_id.in_(list(meters)),
                    u.c.day >= start.isoformat(),
                    u.c.day < end.isoformat(),
                )
            ).all()
        )

    def meter_energy(
        self,
        conn: Connection,
        start: dt.date,
        end: dt.date,
        by: str = "day",
        commodity: str = "electricity",
        meters: Sequence[str] | None = None,
    ) -> Table:
        if commodity not in ("electricity", "water"):
            raise RequestError("commodity", f"expected electricity or water, got {commodity!r}")
        buckets = self.buckets(start, end, by)
        starts = [d for _, d in buckets]
        chosen = list(meters) if meters else self._meters(commodity)
        unknown = [m for m in chosen if m not in self.site.devices]
        if unknown:
            raise RequestError("meter", f"unknown meter {unknown[0]!r}")

        def bucket_of(day: dt.date) -> int:
            i = 0
            while i + 1 < len(starts) and starts[i + 1] <= day:
                i += 1
            return i

        grid: dict[tuple[str, int], dict[str, int]] = {}
        seen = set()
        for meter, day, units, by_rate in self._usage_days(conn, chosen, start, end):
            seen.add(meter)
            cell = grid.setdefault((meter, bucket_of(dt.date.fromisoformat(day))), {})
            cell["total"] = cell.get("total", 0) + int(units)
            for k, v in (by_rate or {}).items():
                cell[k] = cell.get(k, 0) + int(v)
        # Meters without an account (main, public): from their registers, day by day.
        rest = [m for m in chosen if m not in seen]
        if rest:
            series = readings_between(
                conn, rest, self.calendar.capture_on(start), self.calendar.capture_on(end)
            )
            for meter, readings in series.items():
                for a, b in itertools.pairwise(readings):
                    if b.at - a.at != dt.timedelta(days=1) or b.energy < a.energy:
                        continue
                    day = a.at.astimezone(self.tz).date()
                    cell = grid.setdefault((meter, bucket_of(day)), {})
                    cell["total"] = cell.get("total", 0) + b.energy - a.energy
        rates = _rate_order({k for c in grid.values() for k in c if k != "total"})
        unit = "m³" if commodity == "water" else "kWh"
        table = Table(
            f"{commodity.capitalize()} per meter by {by}, "
            f"{start} to {end - dt.timedelta(days=1)} ({unit})",
            ["meter", "room", by, "total", *rates],
            sheet=f"{commodity} by {by}"[:31],
        )
        per_bucket = [0] * len(buckets)
        for (meter, i), cell in sorted(grid.items()):
            room = self.site.devices[meter].room or self.site.devices[meter].building or ""
            table.rows.append(
                [
                    meter,
                    room,
                    buckets[i][0],
                    energy(cell.get("total", 0)),
                    *[energy(cell.get(r, 0)) for r in rates],
                ]
            )
            per_bucket[i] += cell.get("total", 0)
        table.total = ["total", "", "", energy(sum(per_bucket)), *["" for _ in rates]]
        table.notes.extend(unbilled_notes(conn, chosen))
        return table

    def energy_by_bucket(self, table: Table) -> Table:
        """A chartable summary of `meter_energy`: total energy per bucket."""
        by = table.columns[2]
        sums: dict[str, Decimal] = {}
        for row in table.rows:
            sums[str(row[2])] = sums.get(str(row[2]), Decimal(0)) + Decimal(row[3])  # type: ignore[arg-type]
        out = Table(
            f"{table.title}: total",
            [by, "total"],
            [[k, v] for k, v in sorted(sums.items())],
            chart=Chart("bar", 0, (1,), "Total energy"),
            sheet=f"total by {by}",
        )
        return out

    def _tariff_for(self, kind: str, tariff_id: str | None) -> str | None:
        return tariff_for(self.catalogue, self.default_tariffs, kind, tariff_id)

    def monthly(self, conn: Connection, month: str, commodity: str = "electricity") -> Table:
        """The comprehensive monthly report per room (see the module docstring)."""
        year, mon = parse_period(month, "month")
        first = dt.date(year, mon, 1)
        nxt = (first + dt.timedelta(days=32)).replace(day=1)
        last_year = (
            dt.date(year - 1, mon, 1),
            (dt.date(year - 1, mon, 1) + dt.timedelta(days=32)).replace(day=1),
        )
        meters = self._meters(commodity)
        kind = "water" if commodity == "water" else "electric"
        rooms: dict[str, list[str]] = {}
        for m in meters:
            room = self.site.devices[m].room
            if room is not None:
                rooms.setdefault(room, []).append(m)
        usage = self._usage_days(conn, meters, first, nxt)
        prior = self._usage_days(conn, meters, *last_year)
        this: dict[str, dict[str, int]] = {}
        for meter, _day, units, by_rate in usage:
            cell = this.setdefault(meter, {})
            cell["total"] = cell.get("total", 0) + int(units)
            for k, v in (by_rate or {}).items():
                cell[k] = cell.get(k, 0) + int(v)
        before: dict[str, int] = {}
        for meter, _day, units, _ in prior:
            before[meter] = before.get(meter, 0) + int(units)
        # What the ledger took for the month's usage of each meter (prepaid), and what the
        # month's confirmed bills charged (post-paid).
        lo, hi = self._midnight(first), self._midnight(nxt)
        j, p = t.journal, t.posting
        cost = {
            meter: int(total)
            for meter, total in conn.execute(
                sa.select(j.c.meter_id, sa.func.sum(p.c.amount_fen))
                .join(j, j.c.id == p.c.journal_id)
                .where(
                    j.c.kind == "usage",
                    p.c.ledger_account.like("liab:wallet:%"),
                    j.c.created_at >= lo,
                    j.c.created_at < hi,
                    j.c.meter_id.in_(meters),
                )
                .group_by(j.c.meter_id)
            ).all()
        }
        billed: dict[str, int] = {}
        room_meters = {m for ms in rooms.values() for m in ms}
        for lines in conn.execute(
            sa.select(t.bill.c.lines).where(
                t.bill.c.period == month, t.bill.c.state.not_in(["DRAFT", "VOID"])
            )
        ).scalars():
            for ln in lines or ():
                if ln.get("kind") in ("electricity", "water") and ln.get("meter") in room_meters:
                    billed[ln["meter"]] = billed.get(ln["meter"], 0) + int(ln["amount_fen"])
        accounts = {
            m: (a, tariff, name)
            for m, a, tariff, name in conn.execute(
                sa.select(
                    t.account_meter.c.meter_id,
                    t.account.c.id,
                    t.account.c.tariff_id,
                    t.account.c.name,
                )
                .join(t.account, t.account.c.id == t.account_meter.c.account_id)
                .where(
                    t.account_meter.c.meter_id.in_(meters), t.account_meter.c.detached_at.is_(None)
                )
            ).all()
        }
        rates = _rate_order(
            {k for c in this.values() for k in c if k != "total"} - {SINGLE_RATE, "total"}
        )
        unit = "m³" if commodity == "water" else "kWh"
        table = Table(
            f"Monthly {commodity} report {month} per room",
            [
                "room",
                "account",
                "tenant",
                f"total {unit}",
                *[f"{r} {unit}" for r in rates],
                *[f"{r} CNY" for r in rates],
                "tier surcharge CNY",
                "total CNY",
                f"{year - 1}-{mon:02d} {unit}",
                "change %",
            ],
            sheet=f"{commodity} {month}",
            chart=Chart("bar", 0, (3,), f"{commodity} {month} per room", unit),
            notes=[
                "Cost = the month's usage deductions of the room's meters (ledger), and the "
                "usage lines of the month's confirmed post-paid bills, split over the rates in "
                "proportion to the tariff's exact amounts for the month's energy.",
                *unbilled_notes(conn, meters),
            ],
        )
        totals = [0] * (len(rates) + 1)
        cost_totals = [0] * (len(rates) + 2)
        prior_total = 0
        for room in sorted(rooms):
            ms = rooms[room]
            e = {k: sum(this.get(m, {}).get(k, 0) for m in ms) for k in ["total", *rates]}
            money = sum(cost.get(m, 0) + billed.get(m, 0) for m in ms)
            owner = next((accounts[m] for m in ms if m in accounts), (None, None, None))
            split = self._split(conn, ms, owner[1], kind, first, nxt, rates, e, money)
            last = sum(before.get(m, 0) for m in ms)
            change: Decimal | None = None  # a number, so a spreadsheet can sort and chart it
            if last:
                pct = Fraction(e["total"] - last, last) * 100
                change = (Decimal(pct.numerator) / Decimal(pct.denominator)).quantize(
                    Decimal("0.1")
                )
            table.rows.append(
                [
                    room,
                    owner[0] or "",
                    owner[2] or "",
                    energy(e["total"]),
                    *[energy(e[r]) for r in rates],
                    *[yuan(f) for f in split],
                    yuan(money),
                    energy(last),
                    change,
                ]
            )
            for i, k in enumerate(["total", *rates]):
                totals[i] += e[k]
            for i, f in enumerate([*split, money]):
                cost_totals[i] += f
            prior_total += last
        table.total = [
            "total",
            "",
            "",
            *[energy(x) for x in totals],
            *[yuan(x) for x in cost_totals],
            energy(prior_total),
            "",
        ]
        return table

    def _split(
        self,
        conn: Connection,
        meters: Sequence[str],
        tariff_id: str | None,
        kind: str,
        first: dt.date,
        nxt: dt.date,
        rates: Sequence[str],
        e: Mapping[str, int],
        money: int,
    ) -> list[int]:
        """`money` split over [rates..., tier surcharge] by largest remainder, in
        proportion to the tariff's exact amounts for the month's energy per rate (tiers
        continuing from the tier cycle's earlier consumption). Without time-of-use rates
        there is nothing to split: all zeros (the total column holds the cost)."""
        parts = len(rates) + 1
        key = self._tariff_for(kind, tariff_id)
        if not money or key is None or not e["total"] or not rates:
            return [0] * parts
        tariff = self.catalogue.get(key)
        version = tariff.version_on(first)
        if not version.time_of_use:
            return [0] * parts
        before = Fraction(0)
        if version.tiers is not None:
            c0, _ = version.tiers.cycle_bounds(self._midnight(first), self.tz)
            c0_day = c0.astimezone(self.tz).date()
            if c0_day < first:
                ytd = sum(int(r[2]) for r in self._usage_days(conn, meters, c0_day, first))
                before = Fraction(ytd, ENERGY_SCALE)
        usage = {r: Fraction(e[r], ENERGY_SCALE) for r in rates if e[r] and r in version.rates}
        if not usage:
            return [0] * parts
        try:
            bill = bill_usage(tariff, usage, period=(first, nxt), cycle_energy_before=before)
        except RatingError:
            return [0] * parts
        exact = [Fraction(0)] * parts
        for ln in bill.lines:
            label = ln.label.split(" (")[0]
            exact[rates.index(label) if label in rates else parts - 1] += ln.amount_exact_fen
        whole = sum(exact, Fraction(0))
        if not whole:
            return [0] * parts
        return largest_remainder(money, [x * money / whole for x in exact])


def unbilled_notes(conn: Connection, meters: Sequence[str]) -> list[str]:
    """A note counting the meters of open accounts that are not billed now (billing
    alarms), each with why: their consumption is missing from the money columns."""
    pm = t.prepay_meter
    rows = conn.execute(
        sa.select(pm.c.meter_id, pm.c.billing_problem, pm.c.billing_problem_at)
        .where(pm.c.billing_problem.is_not(None), pm.c.meter_id.in_(list(meters)))
        .order_by(pm.c.meter_id)
    ).all()
    if not rows:
        return []
    listed = "; ".join(
        f"{r.meter_id} since {r.billing_problem_at:%Y-%m-%d %H:%M} UTC: {r.billing_problem}"
        for r in rows
    )
    return [f"NOT BILLED: {len(rows)} meter(s) of open accounts — {listed}"]


def _rate_order(names: set[str]) -> list[str]:
    known = [r for r in DEFAULT_REGISTER_RATES if r in names]
    return known + sorted(names - set(known) - {"total"})


def _customer(code: str) -> tuple[str, str]:
    """(account, column) of a wallet or receivable ledger account."""
    if code.startswith("asset:ar:"):
        return code.split(":", 2)[2], "owed"
    _, _, rest = code.partition("liab:wallet:")
    account, _, kind = rest.rpartition(":")
    return account, kind
