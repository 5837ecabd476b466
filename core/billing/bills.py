"""Post-paid bills (domain.md §6): draft → review → confirm → issue, payments and arrears.

A bill covers one account and one billing period (freeze instant to freeze instant, the
same periods as apportionment: the cycle is aligned with the meters' freeze day). Its lines:

- **usage** of each POSTPAID meter of the account: the difference of the meter's own
  registers at the two freeze instants (`readings`), T1..T4 mapped to the tariff's rates,
  billed by `rating.bill_usage` (tiers continue from the energy of the account's earlier
  bills in the same tier cycle; a price change inside the period splits it by days);
- every **billed item** not on a bill yet: common-area shares, property fee, rent and
  service charges in mode `bill`, and charges the general wallet could not pay;
- a **late fee** for each issued bill still unpaid after its due date (optional,
  `late_fee_per_day` of the overdue amount per overdue day in the period, at least
  `late_fee_min`).

`draft` computes and stores drafts (again and again, until they are confirmed); a draft
with problems (a missing reading) cannot be confirmed. `confirm` recomputes each draft,
refuses one that changed since it was reviewed, posts the usage and late fees of all the
bills it confirms in one journal (Dr `asset:ar:<account>` / Cr `rev:electricity`,
`rev:water`, `rev:late_fee`) and attaches the billed items. `issue` sets the due date
(issue date + `due_days`). `pay` applies a payment to the account's bills, oldest first
(Dr `asset:psp_clearing:<channel>` / Cr `asset:ar:<account>`), anything left over going to
the general wallet; its reference is unique, so a replay changes nothing. `arrears` lists
what is overdue. Arrears never trip a relay or close a valve (Civil Code Art. 944).

`void` withdraws a CONFIRMED or ISSUED bill no payment was applied to (a wrong reading, a
wrong charge): one journal reverses what confirming it posted for it (Dr the revenue / Cr
`asset:ar:<account>` of its usage and late-fee lines, key `bill-void:<number>`), the items
confirm made of those lines are voided, the billed items it carried are released for the
next draft, and the bill stays, lines and all, as VOID with its reason, who and when. A bill
with a payment on it is refused: refund or move the payment first (a payment is applied
oldest bill first, so moving it silently would change which bills it paid). The account is
billed again for the period by the next draft, numbered `<number>-R2`, `-R3`... (the
number of a bill is unique; void bills keep theirs).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import ledger
from ..config.site import Site
from ..db import FastStatement, db_time
from ..db import schema as t
from ..ledger import JournalKind, Posting, RequestError, format_fen
from ..model import DeviceModel, MeterKind
from ..prepay.binding import tariff_for
from ..prepay.settings import PrepaySettings
from ..rating.bills import bill_usage
from ..rating.compiled import DEFAULT_REGISTER_RATES
from ..rating.errors import RatingError
from ..rating.layout import RegisterLayout
from ..rating.rounding import Rounding, round_fen
from ..rating.tariffs import SINGLE_RATE, TariffCatalogue
from ..rating.units import ENERGY_SCALE
from .periods import Calendar, parse_period
from .readings import difference, modulus_units, readings_at
from .runs import ar_code, insert_items
from .settings import BillingSettings


class BillState:
    DRAFT = "DRAFT"
    CONFIRMED = "CONFIRMED"
    ISSUED = "ISSUED"
    PAID = "PAID"
    VOID = "VOID"


OPEN_STATES = (BillState.CONFIRMED, BillState.ISSUED)


@dataclass(frozen=True, slots=True)
class BillView:
    number: str
    account_id: str
    period: str
    start_date: str
    end_date: str
    state: str
    total_fen: int
    paid_fen: int
    lines: tuple[Mapping[str, Any], ...]
    problems: tuple[str, ...]
    due_date: str | None
    issued_at: dt.datetime | None
    journal_id: int | None
    void_reason: str | None = None
    voided_by: str | None = None
    voided_at: dt.datetime | None = None
    void_journal_id: int | None = None

    @property
    def outstanding_fen(self) -> int:
        return self.total_fen - self.paid_fen if self.state in OPEN_STATES else 0


def _view(row: Any) -> BillView:
    return BillView(
        row.number,
        row.account_id,
        row.period,
        row.start_date,
        row.end_date,
        row.state,
        int(row.total_fen),
        int(row.paid_fen),
        tuple(row.lines or ()),
        tuple(row.problems or ()),
        row.due_date,
        row.issued_at,
        row.journal_id,
        row.void_reason,
        row.voided_by,
        row.voided_at,
        row.void_journal_id,
    )


@dataclass(frozen=True, slots=True)
class BillSummary:
    """A bill without its lines (what confirming and issuing many bills return)."""

    number: str
    account_id: str
    period: str
    state: str
    total_fen: int
    paid_fen: int
    due_date: str | None
    problems: tuple[str, ...] = ()


def _summaries(conn: Connection, ids: Sequence[int], periods: Iterable[str]) -> list[BillSummary]:
    """The bills `ids` (of `periods`) without their lines, ordered by period and account."""
    wanted = set(ids)
    out = []
    for period in sorted(set(periods)):
        for r in _fetch(conn, _period_summaries, {"p": period}):
            if r[0] in wanted:
                problems = tuple(json.loads(r[8])) if r[8] and r[8] != "[]" else ()
                out.append(
                    BillSummary(r[1], r[2], r[3], r[4], int(r[5]), int(r[6]), r[7], problems)
                )
    return out


@dataclass(frozen=True, slots=True)
class PaymentResult:
    reference: str
    account_id: str
    amount_fen: int
    allocations: Mapping[str, int]
    to_wallet_fen: int
    journal_id: int
    replayed: bool


@dataclass(frozen=True, slots=True)
class VoidResult:
    number: str
    account_id: str
    period: str
    #: What the void journal took off `asset:ar:<account>` (the bill's usage and late fees).
    reversed_fen: int
    #: Billed items released for the account's next draft (common area, charges).
    released_items: int
    journal_id: int | None
    replayed: bool


@dataclass(frozen=True, slots=True)
class Arrear:
    number: str
    account_id: str
    name: str
    room: str | None
    period: str
    due_date: str
    total_fen: int
    paid_fen: int
    days_overdue: int
    #: Late fee accrued so far (not posted: the next bill posts it).
    late_fee_fen: int

    @property
    def outstanding_fen(self) -> int:
        return self.total_fen - self.paid_fen


class _Item(NamedTuple):
    id: int
    account_id: str
    kind: str
    description: str
    quantity: str
    unit_price: str
    amount_fen: int


class _Issued(NamedTuple):
    number: str
    account_id: str
    period: str
    total_fen: int
    paid_fen: int
    due_date: str | None


_i, _b = t.billing_item, t.bill
_open_items = FastStatement(
    sa.select(
        _i.c.id,
        _i.c.account_id,
        _i.c.kind,
        _i.c.description,
        _i.c.quantity,
        _i.c.unit_price,
        _i.c.amount_fen,
    )
    .where(
        _i.c.mode == "bill",
        _i.c.void.is_(False),
        _i.c.period <= sa.bindparam("p"),
        sa.or_(
            _i.c.bill_id.is_(None),
            _i.c.bill_id.in_(sa.select(_b.c.id).where(_b.c.state == "DRAFT")),
        ),
    )
    .order_by(_i.c.account_id, _i.c.id)
)
_issued_before = FastStatement(
    sa.select(
        _b.c.number, _b.c.account_id, _b.c.period, _b.c.total_fen, _b.c.paid_fen, _b.c.due_date
    )
    .where(_b.c.state == "ISSUED", _b.c.period < sa.bindparam("p"))
    .order_by(_b.c.account_id, _b.c.period)
)


_a, _am = t.account, t.account_meter
_account_rows = FastStatement(sa.select(_a.c.id, _a.c.tariff_id, _a.c.state))
_postpaid_meters = FastStatement(
    sa.select(_am.c.account_id, _am.c.meter_id, _am.c.kind).where(
        _am.c.detached_at.is_(None), _am.c.control_mode == "POSTPAID"
    )
)
_confirmed_in = FastStatement(
    sa.select(_b.c.account_id).where(
        _b.c.period == sa.bindparam("p"), _b.c.state != "DRAFT", _b.c.state != "VOID"
    )
)


_period_summaries = FastStatement(
    sa.select(
        _b.c.id,
        _b.c.number,
        _b.c.account_id,
        _b.c.period,
        _b.c.state,
        _b.c.total_fen,
        _b.c.paid_fen,
        _b.c.due_date,
        sa.cast(_b.c.problems, sa.Text),
    )
    .where(_b.c.period == sa.bindparam("p"))
    .order_by(_b.c.account_id)
)


def _fetch(conn: Connection, statement: FastStatement, params: Mapping[str, Any]) -> list[Any]:
    cursor = statement.execute(conn, params)
    try:
        return cursor.fetchall()
    finally:
        cursor.close()


_attach_item = FastStatement(
    _i.update().where(_i.c.id == sa.bindparam("i_id")).values(bill_id=sa.bindparam("bill"))
)
_confirm_bill = FastStatement(
    _b.update()
    .where(_b.c.id == sa.bindparam("b_id"))
    .values(
        state=sa.bindparam("state"),
        paid_fen=sa.bindparam("paid"),
        journal_id=sa.bindparam("journal"),
        confirmed_by=sa.bindparam("by"),
        updated_at=sa.bindparam("at"),
    )
)


class Bills:
    """The post-paid bills of a site (see the module docstring)."""

    def __init__(
        self,
        site: Site,
        models: Mapping[str, DeviceModel],
        settings: BillingSettings,
        prepay: PrepaySettings,
        catalogue: TariffCatalogue,
        default_tariffs: Mapping[str, str] | None = None,
    ) -> None:
        self.site = site
        self.models = models
        self.settings = settings
        self.prepay = prepay
        self.rounding: Rounding = prepay.rounding
        self.catalogue = catalogue
        self.default_tariffs = dict(default_tariffs or {})
        self.calendar = Calendar(site.info.tz, settings.freeze_day, settings.freeze_hour)
        self._layouts: dict[str, RegisterLayout | None] = {}
        self._tariff_hashes: dict[str, str] = {}
        self._tariff_keys: dict[tuple[str, str | None], str | None] = {}
        self._how: dict[tuple[str, str, dt.date], tuple[Any, tuple[str, ...]]] = {}
        #: Settings that change every bill (late fees, rounding, register mapping).
        self._config = repr(
            (settings.bills, prepay.rounding, sorted(prepay.register_rates.items()))
        )

    def number(self, account_id: str, period: str, revision: int = 1) -> str:
        """The bill number; a bill made after `revision - 1` void ones gets `-R<revision>`."""
        base = f"{self.settings.bills.number_prefix}-{period}-{account_id}"
        return base if revision <= 1 else f"{base}-R{revision}"

    # -- reading ---------------------------------------------------------------------------
    def get(self, conn: Connection, number: str) -> BillView:
        row = conn.execute(sa.select(t.bill).where(t.bill.c.number == number)).first()
        if row is None:
            raise RequestError("bill", f"unknown bill {number!r}")
        return _view(row)

    def list(
        self,
        conn: Connection,
        *,
        period: str | None = None,
        state: str | None = None,
        account_id: str | None = None,
    ) -> list[BillView]:
        q = sa.select(t.bill).order_by(t.bill.c.period, t.bill.c.account_id)
        if period is not None:
            parse_period(period)
            q = q.where(t.bill.c.period == period)
        if state is not None:
            q = q.where(t.bill.c.state == state)
        if account_id is not None:
            q = q.where(t.bill.c.account_id == account_id)
        return [_view(r) for r in conn.execute(q).all()]

    # -- drafting --------------------------------------------------------------------------
    def _layout(self, meter: str) -> RegisterLayout | None:
        device = self.site.devices.get(meter)
        if device is None:
            return None
        if device.model not in self._layouts:
            model = self.models.get(device.model)
            try:
                self._layouts[device.model] = RegisterLayout.from_model(model) if model else None
            except RatingError:
                self._layouts[device.model] = None
        return self._layouts[device.model]

    def _tariff_for(self, kind: str, tariff_id: str | None) -> str | None:
        key = (kind, tariff_id)
        if key not in self._tariff_keys:
            self._tariff_keys[key] = self._find_tariff(kind, tariff_id)
        return self._tariff_keys[key]

    def _find_tariff(self, kind: str, tariff_id: str | None) -> str | None:
        return tariff_for(self.catalogue, self.default_tariffs, kind, tariff_id)

    def _gather(
        self, conn: Connection, period: str, accounts: Sequence[str] | None, decode: bool = True
    ) -> tuple[list[str], dict[str, dict[str, Any]], dict[str, Any]]:
        """Everything a bill of `period` depends on, per account (queries only, each one
        pass over its table): the accounts to bill, their inputs, the shared readings.

        An account is billed when it has a POSTPAID meter, a billed item not on a
        confirmed bill, or an issued bill of an earlier period (late fees)."""
        parse_period(period)
        start_at, end_at = self.calendar.bounds(period)
        rows = {r[0]: r for r in _fetch(conn, _account_rows, {})}
        if accounts is not None:
            unknown = sorted(set(accounts) - set(rows))
            if unknown:
                raise RequestError("account", f"unknown account {unknown[0]!r}")
        scope = set(accounts) if accounts is not None else set(rows)
        self._postpaid: dict[str, list[tuple[str, str]]] = {}
        for account_id, meter, kind in _fetch(conn, _postpaid_meters, {}):
            if account_id in scope and rows[account_id][2] == "OPEN":
                self._postpaid.setdefault(account_id, []).append((meter, kind))
        items: dict[str, list[_Item]] = {}
        for row in _fetch(conn, _open_items, {"p": period}):
            if row[1] in scope:
                items.setdefault(row[1], []).append(_Item(*row))
        overdue: dict[str, list[_Issued]] = {}
        for row in _fetch(conn, _issued_before, {"p": period}):
            if row[1] in scope:
                overdue.setdefault(row[1], []).append(_Issued(*row))
        taken = {r[0] for r in _fetch(conn, _confirmed_in, {"p": period})}
        wanted = set(self._postpaid) | set(items)
        if self.settings.bills.late_fee_per_day > 0:
            wanted |= set(overdue)
        ids = sorted(wanted - taken)
        if not ids:
            return [], {}, {}
        meters = [m for a in ids for m, _ in self._postpaid.get(a, [])]
        shared = {
            "start": readings_at(conn, meters, start_at, decode=decode) if meters else {},
            "end": readings_at(conn, meters, end_at, decode=decode) if meters else {},
            "ytd": self._cycle_energy(conn, {a: rows[a][1] for a in ids}, period),
        }
        inputs = {
            a: {
                "tariff": rows[a][1],
                "meters": sorted(self._postpaid.get(a, [])),
                "items": items.get(a, []),
                "overdue": overdue.get(a, []) if self.settings.bills.late_fee_per_day > 0 else [],
            }
            for a in ids
        }
        return ids, inputs, shared

    def _digest(self, period: str, inputs: Mapping[str, Any], shared: Mapping[str, Any]) -> str:
        """What the bill's lines are made of, hashed: a draft whose inputs did not change
        since it was stored needs no recomputing when it is confirmed."""
        parts = [period, self._config]
        start, end, ytd = shared["start"], shared["end"], shared["ytd"]
        for m, kind in inputs["meters"]:
            a, b = start.get(m), end.get(m)
            parts.append(
                f"m|{m}|{kind}|{self._tariff_hash(self._tariff_for(kind, inputs['tariff']))}|"
                f"{a.energy if a else '-'}|{a.registers_text if a else ''}|"
                f"{b.energy if b else '-'}|{b.registers_text if b else ''}|{ytd.get(m, 0)}"
            )
        for i in inputs["items"]:
            parts.append(
                f"i|{i.id}|{i.amount_fen}|{i.kind}|{i.description}|{i.quantity}|{i.unit_price}"
            )
        for b in inputs["overdue"]:
            parts.append(f"o|{b.number}|{b.total_fen}|{b.paid_fen}|{b.due_date}")
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()

    def _tariff_hash(self, key: str | None) -> str:
        if key is None:
            return ""
        if key not in self._tariff_hashes:
            text = repr(self.catalogue.get(key))
            self._tariff_hashes[key] = hashlib.sha256(text.encode()).hexdigest()[:16]
        return self._tariff_hashes[key]

    def digests(
        self, conn: Connection, period: str, accounts: Sequence[str] | None = None
    ) -> dict[str, str]:
        """account → the digest of its bill's inputs now (no rating)."""
        ids, inputs, shared = self._gather(conn, period, accounts, decode=False)
        return {a: self._digest(period, inputs[a], shared) for a in ids}

    def compute(
        self, conn: Connection, period: str, accounts: Sequence[str] | None = None
    ) -> dict[str, tuple[list[dict[str, Any]], list[str], str]]:
        """account → (lines, problems, inputs digest) of its bill for `period` (nothing
        is written)."""
        ids, inputs, shared = self._gather(conn, period, accounts)
        start_at, end_at = self.calendar.bounds(period)
        start_date, end_date = self.calendar.dates(period)
        out: dict[str, tuple[list[dict[str, Any]], list[str], str]] = {}
        for account_id in ids:
            mine = inputs[account_id]
            lines: list[dict[str, Any]] = []
            problems: list[str] = []
            for meter, kind in mine["meters"]:
                self._usage_lines(
                    meter,
                    kind,
                    mine["tariff"],
                    shared["start"].get(meter),
                    shared["end"].get(meter),
                    (start_date, end_date),
                    shared["ytd"].get(meter, Fraction(0)),
                    start_at,
                    end_at,
                    lines,
                    problems,
                )
            for item in mine["items"]:
                lines.append(
                    {
                        "kind": item.kind,
                        "description": item.description,
                        "quantity": item.quantity,
                        "unit_price": item.unit_price,
                        "amount_fen": int(item.amount_fen),
                        "item": int(item.id),
                        "posted": True,
                    }
                )
            for bill_row in mine["overdue"]:
                line = self._late_fee(bill_row, start_date, end_date)
                if line is not None:
                    lines.append(line)
            if lines or problems:
                out[account_id] = (lines, problems, self._digest(period, mine, shared))
        return out

    def _usage_lines(
        self,
        meter: str,
        kind: str,
        tariff_id: str | None,
        start: Any,
        end: Any,
        dates: tuple[dt.date, dt.date],
        before: Fraction,
        start_at: dt.datetime,
        end_at: dt.datetime,
        lines: list[dict[str, Any]],
        problems: list[str],
    ) -> None:
        local = self.site.info.tz
        for reading, at in ((start, start_at), (end, end_at)):
            if reading is None:
                problems.append(
                    f"no reading of {meter} at {at.astimezone(local):%Y-%m-%d %H:%M} "
                    "(record one: openprepay billing reading)"
                )
        if start is None or end is None:
            return
        layout = self._layout(meter)
        delta = difference(start, end, modulus_units(layout) if layout else None)
        if delta is None:
            problems.append(
                f"{meter} reads lower at the end of the period than at its start "
                "(replaced meter? record its readings by hand)"
            )
            return
        tariff_key = self._tariff_for(kind, tariff_id)
        if tariff_key is None:
            problems.append(f"no tariff prices {meter} (set the account's tariff)")
            return
        model = self.site.devices[meter].model
        key = (tariff_key, model, dates[0])
        how = self._how.get(key)
        if how is None:  # the tariff, and which rate each T register counts (per model)
            tariff = self.catalogue.get(tariff_key)
            version = tariff.version_on(dates[0])
            names: tuple[str, ...] = ()
            if version.time_of_use and layout is not None:
                mapping = version.registers or self.prepay.rates_for(model)
                names = tuple(mapping or DEFAULT_REGISTER_RATES)[: len(layout.tou_points)]
            how = self._how[key] = (tariff, names)
        tariff, names = how
        usage: Any
        if names:
            units: dict[str, int] = {}
            assert layout is not None
            for point, name in zip(layout.tou_points, names, strict=False):
                a, b = start.registers.get(point), end.registers.get(point)
                if a is None or b is None or b < a:
                    problems.append(f"{meter}: rate register {point} missing or lower at the end")
                    return
                units[name] = units.get(name, 0) + b - a
            usage = {name: Fraction(u, ENERGY_SCALE) for name, u in units.items()}
        else:
            usage = Fraction(delta, ENERGY_SCALE)
        try:
            bill = bill_usage(
                tariff,
                usage,
                period=dates,
                cycle_energy_before=before,
                rounding=self.rounding,
            )
        except RatingError as exc:
            problems.append(f"{meter}: {exc}")
            return
        revenue = "water" if kind == MeterKind.WATER.value else "electricity"
        for ln in bill.lines:
            if not ln.amount_fen:
                continue
            lines.append(
                {
                    "kind": revenue,
                    "meter": meter,
                    "description": f"{meter} {ln.label}" if ln.label != SINGLE_RATE else meter,
                    "quantity": f"{ln.quantity_text} {ln.unit}",
                    "unit_price": str(ln.unit_price),
                    "amount_fen": ln.amount_fen,
                }
            )
        lines.append(
            {
                "kind": "meter_reading",
                "meter": meter,
                "description": (
                    f"{meter}: {Decimal(start.energy) / ENERGY_SCALE} → "
                    f"{Decimal(end.energy) / ENERGY_SCALE} = "
                    f"{Decimal(delta) / ENERGY_SCALE} {tariff.unit} ({tariff.id})"
                ),
                "energy": delta,
                "amount_fen": 0,
            }
        )

    def _cycle_energy(
        self, conn: Connection, accounts: Mapping[str, str | None], period: str
    ) -> dict[str, Fraction]:
        """meter → its energy on the account's earlier bills in the current tier cycle (the
        tiers of this bill start there)."""
        out: dict[str, Fraction] = {}
        start_at, _ = self.calendar.bounds(period)
        tz = self.site.info.tz
        cycle_start: dict[str, dt.datetime] = {}
        starts: dict[str | None, dt.datetime | None] = {}  # per tariff
        for account_id, tariff_id in accounts.items():
            for meter, kind in self._postpaid.get(account_id, []):
                key = self._tariff_for(kind, tariff_id)
                if key not in starts:
                    tiers = (
                        self.catalogue.get(key).version_at(start_at, tz).tiers
                        if key is not None
                        else None
                    )
                    c0 = tiers.cycle_bounds(start_at, tz)[0] if tiers is not None else None
                    starts[key] = c0 if c0 is not None and c0 < start_at else None
                if starts[key] is not None:
                    cycle_start[meter] = starts[key]
        if not cycle_start:
            return out
        first = self.calendar.period_of(min(cycle_start.values()))
        owners = sorted(
            {a for a in accounts if any(m in cycle_start for m, _ in self._postpaid.get(a, []))}
        )
        rows = conn.execute(
            sa.select(t.bill.c.period, t.bill.c.lines).where(
                t.bill.c.state.not_in([BillState.DRAFT, BillState.VOID]),
                t.bill.c.period >= first,
                t.bill.c.period < period,
                t.bill.c.account_id.in_(owners),
            )
        ).all()
        for bill_period, lines in rows:
            bill_start, _ = self.calendar.bounds(bill_period)
            for ln in lines or ():
                meter = ln.get("meter")
                if ln.get("kind") != "meter_reading" or meter not in cycle_start:
                    continue
                if bill_start >= cycle_start[meter]:
                    out[meter] = out.get(meter, Fraction(0)) + Fraction(
                        int(ln["energy"]), ENERGY_SCALE
                    )
        return out

    def late_fee(self, outstanding_fen: int, days: int) -> int:
        """Late fee of `outstanding_fen` overdue for `days` days (0 when off or not due)."""
        rate = self.settings.bills.late_fee_per_day
        if rate <= 0 or days <= 0 or outstanding_fen <= 0:
            return 0
        fen = round_fen(Fraction(outstanding_fen) * Fraction(rate) * days, self.rounding)
        return max(fen, self.settings.bills.late_fee_min_fen)

    def _late_fee(self, row: Any, start: dt.date, end: dt.date) -> dict[str, Any] | None:
        if row.due_date is None:
            return None
        first_overdue = dt.date.fromisoformat(row.due_date) + dt.timedelta(days=1)
        since = max(first_overdue, start)
        days = (end - since).days
        outstanding = int(row.total_fen) - int(row.paid_fen)
        fen = self.late_fee(outstanding, days)
        if not fen:
            return None
        return {
            "kind": "late_fee",
            "description": (
                f"late fee: bill {row.number} {format_fen(outstanding)} overdue "
                f"{days} day(s) from {since} × {self.settings.bills.late_fee_per_day}/day"
            ),
            "quantity": f"{days} days",
            "unit_price": str(self.settings.bills.late_fee_per_day),
            "amount_fen": fen,
            "bill": row.number,
            "posted": False,
        }

    def draft(
        self,
        conn: Connection,
        period: str,
        *,
        accounts: Sequence[str] | None = None,
        now: dt.datetime,
        computed: Mapping[str, tuple[list[dict[str, Any]], list[str], str]] | None = None,
    ) -> list[BillSummary]:
        """Compute and store the drafts of `period` (all accounts with something to bill,
        or `accounts`); confirmed bills are left alone. Returns the drafts. `computed` is
        `compute()`'s result when the caller has it already (same transaction)."""
        if computed is None:
            computed = self.compute(conn, period, accounts)
        start, end = self.calendar.dates(period)
        existing: dict[str, Any] = {}
        voided: dict[str, int] = {}
        for r in conn.execute(
            sa.select(t.bill.c.id, t.bill.c.account_id, t.bill.c.state).where(
                t.bill.c.period == period
            )
        ).all():
            if r.state == BillState.VOID:
                voided[r.account_id] = voided.get(r.account_id, 0) + 1
            else:
                existing[r.account_id] = r
        inserts, updates = [], []
        for account_id, (lines, problems, digest) in computed.items():
            total = sum(int(ln["amount_fen"]) for ln in lines)
            values = {
                "state": BillState.DRAFT,
                "total_fen": total,
                "lines": lines,
                "problems": problems,
                "digest": digest,
                "updated_at": now,
            }
            row = existing.get(account_id)
            if row is None:
                inserts.append(
                    {
                        **values,
                        "number": self.number(account_id, period, voided.get(account_id, 0) + 1),
                        "account_id": account_id,
                        "period": period,
                        "start_date": start.isoformat(),
                        "end_date": end.isoformat(),
                        "paid_fen": 0,
                        "created_at": now,
                    }
                )
            elif row.state == BillState.DRAFT:
                updates.append({"b_id": row.id, **values})
        if inserts:
            conn.execute(t.bill.insert(), inserts)
        if updates:
            conn.execute(
                t.bill.update()
                .where(t.bill.c.id == sa.bindparam("b_id"))
                .values(
                    state=sa.bindparam("state"),
                    total_fen=sa.bindparam("total_fen"),
                    lines=sa.bindparam("lines"),
                    problems=sa.bindparam("problems"),
                    digest=sa.bindparam("digest"),
                    updated_at=sa.bindparam("updated_at"),
                ),
                updates,
            )
        stale = [
            r.id
            for a, r in existing.items()
            if r.state == BillState.DRAFT
            and (accounts is None or a in accounts)
            and a not in computed
        ]
        if stale:  # nothing left to bill: the draft goes
            conn.execute(t.bill.delete().where(t.bill.c.id.in_(stale)))
        q = sa.select(t.bill.c.id).where(
            t.bill.c.period == period, t.bill.c.state == BillState.DRAFT
        )
        if accounts is not None:
            q = q.where(t.bill.c.account_id.in_(list(accounts)))
        return _summaries(conn, list(conn.execute(q).scalars()), [period])

    # -- confirming and issuing ------------------------------------------------------------
    def confirm(
        self,
        conn: Connection,
        *,
        period: str | None = None,
        numbers: Sequence[str] | None = None,
        actor: str,
        now: dt.datetime,
    ) -> tuple[list[BillSummary], list[tuple[str, str]]]:
        """Confirm drafts (all of `period`, or `numbers`): ([confirmed], [(number, why
        not)]). Each draft is computed again; one that changed since it was stored, or has
        problems, is not confirmed (its draft is refreshed for another review)."""
        if not actor or not actor.strip():
            raise RequestError("actor", "required (audit)")
        b = t.bill
        q = (
            sa.select(
                b.c.id,
                b.c.number,
                b.c.account_id,
                b.c.period,
                b.c.total_fen,
                b.c.digest,
                sa.cast(b.c.problems, sa.Text).label("problems"),
                sa.cast(b.c.lines, sa.Text).label("lines"),
            )
            .where(b.c.state == BillState.DRAFT)
            .with_for_update()
        )
        if numbers:
            q = q.where(b.c.number.in_(list(numbers)))
        elif period is not None:
            parse_period(period)
            q = q.where(b.c.period == period)
        else:
            raise RequestError("period", "name the period or the bills to confirm")
        drafts = conn.execute(q.order_by(b.c.period, b.c.account_id)).all()
        if numbers:
            found = {d.number for d in drafts}
            for n in numbers:
                if n not in found:
                    state = conn.execute(sa.select(b.c.state).where(b.c.number == n)).scalar()
                    if state is None:
                        raise RequestError("bill", f"unknown bill {n!r}")
        refused: list[tuple[str, str]] = []
        confirmed: list[Any] = []
        by_period: dict[str, list[Any]] = {}
        for d in drafts:
            by_period.setdefault(d.period, []).append(d)
        for p, rows in sorted(by_period.items()):
            digests = self.digests(conn, p, [r.account_id for r in rows])
            changed = []
            for r in rows:
                digest = digests.get(r.account_id)
                if digest is None:
                    refused.append((r.number, "nothing to bill any more"))
                    changed.append(r.account_id)
                elif digest != r.digest:
                    refused.append(
                        (r.number, "it changed since the draft was made: review it again")
                    )
                    changed.append(r.account_id)
                elif r.problems and r.problems != "[]":
                    refused.append((r.number, "; ".join(json.loads(r.problems))))
                else:
                    confirmed.append(r)
            if changed:
                self.draft(conn, p, accounts=changed, now=now)
        if not confirmed:
            return [], refused
        postings: dict[str, int] = {}
        item_rows = []
        attach: list[dict[str, Any]] = []
        for r in confirmed:
            # One item per meter's usage (its lines stay on the bill) and per late fee.
            new_items: dict[str, dict[str, Any]] = {}
            for ln in json.loads(r.lines):
                fen = int(ln["amount_fen"])
                if ln.get("posted") or not fen:
                    if ln.get("item") is not None:
                        attach.append({"i_id": int(ln["item"]), "bill": r.id})
                    continue
                code = ar_code(r.account_id)
                postings[code] = postings.get(code, 0) + fen
                revenue = f"rev:{ln['kind']}"
                postings[revenue] = postings.get(revenue, 0) - fen
                key = f"{ln['kind']}:{ln.get('meter') or ln.get('bill') or ''}"
                item = new_items.get(key)
                if item is None:
                    new_items[key] = {
                        "account_id": r.account_id,
                        "period": r.period,
                        "kind": ln["kind"],
                        "source": f"bill:{r.number}"[:100],
                        "description": (
                            f"{ln['kind']} {ln['meter']} {r.period}"
                            if ln.get("meter")
                            else ln["description"]
                        )[:300],
                        "quantity": "" if ln.get("meter") else str(ln.get("quantity", ""))[:60],
                        "unit_price": "" if ln.get("meter") else str(ln.get("unit_price", ""))[:40],
                        "amount_fen": fen,
                        "mode": "bill",
                        "run_id": None,
                        "bill_id": r.id,
                        "void": False,
                        "created_at": now,
                    }
                else:
                    item["amount_fen"] += fen
            item_rows.extend(new_items.values())
        journal_id = None
        lines = [Posting(code, fen) for code, fen in sorted(postings.items()) if fen]
        if lines:
            numbers_digest = hashlib.sha256(
                ",".join(r.number for r in confirmed).encode()
            ).hexdigest()
            posted = ledger.post_journal(
                conn,
                JournalKind.CHARGE,
                lines,
                idempotency_key=f"bills:{numbers_digest[:32]}",
                memo=f"post-paid bills confirmed ({len(confirmed)})",
                requested_by=actor,
                request={
                    "bills": len(confirmed),
                    "digest": numbers_digest,
                    "total_fen": sum(f for c, f in postings.items() if c.startswith("asset:")),
                },
                now=now,
            )
            journal_id = posted.journal.id
            for row in item_rows:
                row["journal_id"] = journal_id
        insert_items(conn, item_rows, now)
        if attach:
            _attach_item.executemany(conn, attach)
        at = db_time(conn, now)
        _confirm_bill.executemany(
            conn,
            [
                {
                    "b_id": r.id,
                    "state": BillState.CONFIRMED if int(r.total_fen) > 0 else BillState.PAID,
                    "paid": 0 if int(r.total_fen) > 0 else int(r.total_fen),
                    "journal": journal_id,
                    "by": actor[:100],
                    "at": at,
                }
                for r in confirmed
            ],
        )
        return _summaries(conn, [r.id for r in confirmed], {r.period for r in confirmed}), refused

    def issue(
        self,
        conn: Connection,
        *,
        period: str | None = None,
        numbers: Sequence[str] | None = None,
        on: dt.date | None = None,
        actor: str,
        now: dt.datetime,
    ) -> list[BillSummary]:
        """Issue confirmed bills: due date = `on` (default today) + `due_days`."""
        if not actor or not actor.strip():
            raise RequestError("actor", "required (audit)")
        b = t.bill
        q = sa.select(b.c.id, b.c.number, b.c.state, b.c.period)
        if numbers:
            q = q.where(b.c.number.in_(list(numbers)))
        elif period is not None:
            parse_period(period)
            q = q.where(b.c.period == period, b.c.state == BillState.CONFIRMED)
        else:
            raise RequestError("period", "name the period or the bills to issue")
        rows = conn.execute(q).all()
        if numbers:
            found = {r.number: r.state for r in rows}
            for n in numbers:
                if n not in found:
                    raise RequestError("bill", f"unknown bill {n!r}")
                if found[n] == BillState.DRAFT:
                    raise RequestError("bill", f"bill {n} is a draft: confirm it first")
        ids = [r.id for r in rows if r.state == BillState.CONFIRMED]
        day = on or now.astimezone(self.site.info.tz).date()
        due = (day + dt.timedelta(days=self.settings.bills.due_days)).isoformat()
        values = {
            "state": BillState.ISSUED,
            "due_date": due,
            "issued_at": now,
            "issued_by": actor[:100],
            "updated_at": now,
        }
        if numbers:
            for i in range(0, len(ids), 5000):
                conn.execute(b.update().where(b.c.id.in_(ids[i : i + 5000])).values(**values))
        else:  # the whole period: one statement
            conn.execute(
                b.update()
                .where(b.c.period == period, b.c.state == BillState.CONFIRMED)
                .values(**values)
            )
        return _summaries(conn, [r.id for r in rows], {r.period for r in rows})

    # -- voiding ----------------------------------------------------------------------------
    def void(
        self, conn: Connection, number: str, *, reason: str, actor: str, now: dt.datetime
    ) -> VoidResult:
        """Void a CONFIRMED or ISSUED bill no payment was applied to (see the module
        docstring). The same void again (same reason) returns the first result."""
        if not actor or not actor.strip():
            raise RequestError("actor", "required (audit)")
        if not isinstance(reason, str) or not reason.strip():
            raise RequestError("reason", "required: say why the bill is void (wrong reading...)")
        reason = reason.strip()
        if len(reason) > 300:
            raise RequestError("reason", f"at most 300 characters, got {len(reason)}")
        b, i = t.bill, t.billing_item
        row = conn.execute(sa.select(b).where(b.c.number == number).with_for_update()).first()
        if row is None:
            raise RequestError("bill", f"unknown bill {number!r}")
        lines = list(row.lines or ())
        reversed_fen = sum(
            int(ln["amount_fen"]) for ln in lines if not ln.get("posted") and ln["amount_fen"]
        )
        item_ids = [
            int(ln["item"]) for ln in lines if ln.get("posted") and ln.get("item") is not None
        ]
        if row.state == BillState.VOID:
            if row.void_reason != reason:
                raise RequestError(
                    "bill",
                    f"bill {number} is already void ({row.void_reason!r}, by {row.voided_by})",
                )
            return VoidResult(
                number,
                row.account_id,
                row.period,
                reversed_fen,
                len(item_ids),
                row.void_journal_id,
                True,
            )
        if row.state == BillState.DRAFT:
            raise RequestError(
                "bill", f"bill {number} is a draft: nothing was posted, draft it again instead"
            )
        if int(row.paid_fen) > 0:
            raise RequestError(
                "bill",
                f"bill {number} has {format_fen(int(row.paid_fen))} paid on it: "
                "refund or move the payment first",
            )
        if row.state not in OPEN_STATES and not (
            row.state == BillState.PAID and int(row.paid_fen) == 0
        ):
            raise RequestError("bill", f"bill {number} is {row.state}: it cannot be void")
        later = conn.execute(
            sa.select(b.c.number, b.c.lines).where(
                b.c.account_id == row.account_id,
                b.c.period > row.period,
                b.c.state.not_in([BillState.DRAFT, BillState.VOID]),
            )
        ).all()
        for other, other_lines in later:
            if any(
                ln.get("kind") == "late_fee" and ln.get("bill") == number
                for ln in other_lines or ()
            ):
                raise RequestError(
                    "bill", f"bill {other} charged a late fee on {number}: void {other} first"
                )
        postings: dict[str, int] = {}
        for ln in lines:
            fen = int(ln["amount_fen"])
            if ln.get("posted") or not fen:
                continue
            code = ar_code(row.account_id)
            postings[code] = postings.get(code, 0) - fen
            revenue = f"rev:{ln['kind']}"
            postings[revenue] = postings.get(revenue, 0) + fen
        journal_id = None
        postings_list = [Posting(code, fen) for code, fen in sorted(postings.items()) if fen]
        if postings_list:
            posted = ledger.post_journal(
                conn,
                JournalKind.ADJUSTMENT,
                postings_list,
                idempotency_key=f"bill-void:{number}",
                account_id=row.account_id,
                memo=f"bill {number} void: {reason}"[:300],
                requested_by=actor,
                request={"bill": number, "reversed_fen": reversed_fen},
                now=now,
            )
            journal_id = posted.journal.id
        if item_ids:  # billed items: on the account's next draft again
            conn.execute(
                i.update().where(i.c.id.in_(item_ids), i.c.bill_id == row.id).values(bill_id=None)
            )
        # What confirm made of the usage and late-fee lines: reversed above, never billed.
        conn.execute(
            i.update()
            .where(i.c.bill_id == row.id, i.c.source == f"bill:{number}"[:100])
            .values(void=True)
        )
        conn.execute(
            b.update()
            .where(b.c.id == row.id)
            .values(
                state=BillState.VOID,
                void_reason=reason,
                voided_by=actor[:100],
                voided_at=now,
                void_journal_id=journal_id,
                updated_at=now,
            )
        )
        return VoidResult(
            number, row.account_id, row.period, reversed_fen, len(item_ids), journal_id, False
        )

    # -- payments and arrears --------------------------------------------------------------
    def pay(
        self,
        conn: Connection,
        account_id: str,
        amount_fen: int,
        reference: str,
        *,
        channel: str = "cash",
        actor: str,
        now: dt.datetime,
    ) -> PaymentResult:
        """Apply a payment to the account's bills, oldest first; the rest goes to the
        general wallet. The same reference again returns the first result."""
        ledger.check_channel(channel)
        if isinstance(amount_fen, bool) or not isinstance(amount_fen, int) or amount_fen <= 0:
            raise RequestError("amount", f"expected more than 0.00, got {amount_fen!r}")
        if amount_fen > ledger.CAPACITY_FEN:
            raise RequestError("amount", f"{format_fen(amount_fen)} is above the capacity")
        if not isinstance(reference, str) or not reference.strip() or " " in reference:
            raise RequestError("reference", "required: the payment id or receipt, no spaces")
        p = t.bill_payment
        existing = conn.execute(sa.select(p).where(p.c.reference == reference)).first()
        if existing is not None:
            if existing.account_id != account_id or int(existing.amount_fen) != amount_fen:
                raise ledger.reused_key(
                    f"billpay:{reference}",
                    "payment",
                    f"{format_fen(existing.amount_fen)} for account {existing.account_id}",
                    f"{format_fen(amount_fen)} for account {account_id}",
                )
            return PaymentResult(
                reference,
                account_id,
                amount_fen,
                dict(existing.allocations),
                int(existing.to_wallet_fen),
                int(existing.journal_id),
                True,
            )
        state = conn.execute(
            sa.select(t.account.c.state).where(t.account.c.id == account_id)
        ).scalar()
        if state is None:
            raise RequestError("account", f"unknown account {account_id!r}")
        if state == "CLOSED":
            raise RequestError("account", f"account {account_id!r} is closed")
        b = t.bill
        open_bills = conn.execute(
            sa.select(b)
            .where(
                b.c.account_id == account_id,
                b.c.state.in_(OPEN_STATES),
                b.c.total_fen > b.c.paid_fen,
            )
            .order_by(b.c.period, b.c.id)
            .with_for_update()
        ).all()
        left = amount_fen
        allocations: dict[str, int] = {}
        for r in open_bills:
            if not left:
                break
            part = min(left, int(r.total_fen) - int(r.paid_fen))
            allocations[r.number] = part
            left -= part
        applied = amount_fen - left
        postings = [Posting(ledger.clearing_code(channel), amount_fen)]
        if applied:
            postings.append(Posting(ar_code(account_id), -applied))
        if left:
            postings.append(Posting(ledger.wallet_code(account_id, "general"), -left))
        posted = ledger.post_journal(
            conn,
            JournalKind.SETTLEMENT,
            postings,
            idempotency_key=f"billpay:{reference}",
            account_id=account_id,
            memo=f"payment {reference} via {channel}",
            requested_by=actor,
            request={"account": account_id, "amount_fen": amount_fen, "channel": channel},
            now=now,
        )
        for r in open_bills:
            part = allocations.get(r.number)
            if not part:
                continue
            paid = int(r.paid_fen) + part
            conn.execute(
                b.update()
                .where(b.c.id == r.id)
                .values(
                    paid_fen=paid,
                    state=BillState.PAID if paid >= int(r.total_fen) else r.state,
                    updated_at=now,
                )
            )
        conn.execute(
            p.insert(),
            {
                "reference": reference,
                "account_id": account_id,
                "amount_fen": amount_fen,
                "channel": channel,
                "journal_id": posted.journal.id,
                "allocations": allocations,
                "to_wallet_fen": left,
                "requested_by": actor[:100],
                "created_at": now,
            },
        )
        return PaymentResult(
            reference, account_id, amount_fen, allocations, left, posted.journal.id, False
        )

    def arrears(self, conn: Connection, as_of: dt.date) -> list[Arrear]:
        """Issued bills unpaid after their due date, oldest first."""
        b, a = t.bill, t.account
        rows = conn.execute(
            sa.select(b, a.c.name, a.c.room)
            .join(a, a.c.id == b.c.account_id)
            .where(
                b.c.state == BillState.ISSUED,
                b.c.due_date < as_of.isoformat(),
                b.c.total_fen > b.c.paid_fen,
            )
            .order_by(b.c.due_date, b.c.account_id)
        ).all()
        out = []
        for r in rows:
            due = dt.date.fromisoformat(r.due_date)
            days = (as_of - due).days
            out.append(
                Arrear(
                    r.number,
                    r.account_id,
                    r.name,
                    r.room,
                    r.period,
                    r.due_date,
                    int(r.total_fen),
                    int(r.paid_fen),
                    days,
                    self.late_fee(int(r.total_fen) - int(r.paid_fen), days),
                )
            )
        return out


def receivable(conn: Connection, account_ids: Iterable[str] | None = None) -> dict[str, int]:
    """What each account owes (the balance of asset:ar:<account>), from the ledger."""
    q = (
        sa.select(t.posting.c.ledger_account, sa.func.sum(t.posting.c.amount_fen))
        .where(t.posting.c.ledger_account.like("asset:ar:%"))
        .group_by(t.posting.c.ledger_account)
    )
    if account_ids is not None:
        q = q.where(t.posting.c.ledger_account.in_([ar_code(a) for a in account_ids]))
    return {code.split(":", 2)[2]: int(total) for code, total in conn.execute(q).all()}
