"""What a bill of a period depends on, per account: its POSTPAID meters and their readings
at the two freeze instants, its billed items, its overdue bills, the energy of its earlier
bills in the tier cycle — gathered with one pass over each table, and hashed (the digest)
so that a draft whose inputs did not change needs no recomputing when it is confirmed."""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from fractions import Fraction
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ...config.site import Site
from ...db import FastStatement
from ...db import schema as t
from ...db.among import among
from ...ledger import RequestError
from ...model import DeviceModel
from ...prepay.binding import tariff_for
from ...prepay.settings import PrepaySettings
from ...rating.engine import RatingError, RegisterLayout
from ...rating.tariffs import TariffCatalogue
from ...rating.units import ENERGY_SCALE
from ..periods import Calendar, parse_period
from ..readings import readings_at
from ..settings import BillingSettings
from .model import BillState
from .store import (
    ACCOUNT_ROWS,
    CONFIRMED_IN,
    ISSUED_BEFORE,
    OPEN_ITEMS,
    POSTPAID_METERS,
    OpenItem,
    OverdueBill,
    fetch,
)

#: account → its POSTPAID meters as (meter, kind) pairs.
Postpaid = dict[str, list[tuple[str, str]]]


class Gathered(NamedTuple):
    #: The accounts to bill, sorted.
    ids: list[str]
    #: account → {"tariff", "meters", "items", "overdue"}.
    inputs: dict[str, dict[str, Any]]
    #: Shared by all accounts: readings at the period's "start" and "end", and "ytd"
    #: (meter → energy of earlier bills in the tier cycle).
    shared: dict[str, Any]


class BillInputs:
    """Gathers and hashes the inputs of a site's bills (with per-site caches)."""

    def __init__(
        self,
        site: Site,
        models: Mapping[str, DeviceModel],
        settings: BillingSettings,
        prepay: PrepaySettings,
        catalogue: TariffCatalogue,
        default_tariffs: Mapping[str, str],
        calendar: Calendar,
    ) -> None:
        self.site = site
        self.models = models
        self.settings = settings
        self.catalogue = catalogue
        self.default_tariffs = default_tariffs
        self.calendar = calendar
        self._layouts: dict[str, RegisterLayout | None] = {}
        self._tariff_hashes: dict[str, str] = {}
        self._tariff_keys: dict[tuple[str, str | None], str | None] = {}
        #: Settings that change every bill (late fees, rounding, register mapping).
        self._config = repr(
            (settings.bills, prepay.rounding, sorted(prepay.register_rates.items()))
        )

    # -- per-site lookups ------------------------------------------------------------------
    def layout(self, meter: str) -> RegisterLayout | None:
        """The register layout of `meter`'s model (None: unknown, or not billable)."""
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

    def tariff_for(self, kind: str, tariff_id: str | None) -> str | None:
        """The catalogue key of the tariff pricing a `kind` meter of an account."""
        key = (kind, tariff_id)
        if key not in self._tariff_keys:
            self._tariff_keys[key] = tariff_for(
                self.catalogue, self.default_tariffs, kind, tariff_id
            )
        return self._tariff_keys[key]

    def _tariff_hash(self, key: str | None) -> str:
        if key is None:
            return ""
        if key not in self._tariff_hashes:
            text = repr(self.catalogue.get(key))
            self._tariff_hashes[key] = hashlib.sha256(text.encode()).hexdigest()[:16]
        return self._tariff_hashes[key]

    # -- gathering -------------------------------------------------------------------------
    def gather(
        self, conn: Connection, period: str, accounts: Sequence[str] | None, decode: bool = True
    ) -> Gathered:
        """Everything a bill of `period` depends on, per account (queries only, each one
        pass over its table): the accounts to bill, their inputs, the shared readings.

        An account is billed when it has a POSTPAID meter, a billed item not on a
        confirmed bill, or an issued bill of an earlier period (late fees)."""
        parse_period(period)
        start_at, end_at = self.calendar.bounds(period)
        rows = {r[0]: r for r in fetch(conn, ACCOUNT_ROWS, {})}
        if accounts is not None:
            unknown = sorted(set(accounts) - set(rows))
            if unknown:
                raise RequestError("account", f"unknown account {unknown[0]!r}")
        scope = set(accounts) if accounts is not None else set(rows)
        postpaid: Postpaid = {}
        for account_id, meter, kind in fetch(conn, POSTPAID_METERS, {}):
            if account_id in scope and rows[account_id][2] == "OPEN":
                postpaid.setdefault(account_id, []).append((meter, kind))
        items = _per_account(conn, OPEN_ITEMS, period, scope, OpenItem)
        late_fees = self.settings.bills.late_fee_per_day > 0
        overdue = _per_account(conn, ISSUED_BEFORE, period, scope, OverdueBill)
        taken = {r[0] for r in fetch(conn, CONFIRMED_IN, {"p": period})}
        wanted = set(postpaid) | set(items) | (set(overdue) if late_fees else set())
        ids = sorted(wanted - taken)
        if not ids:
            return Gathered([], {}, {})
        meters = [m for a in ids for m, _ in postpaid.get(a, [])]
        shared = {
            "start": readings_at(conn, meters, start_at, decode=decode) if meters else {},
            "end": readings_at(conn, meters, end_at, decode=decode) if meters else {},
            "ytd": self._cycle_energy(conn, {a: rows[a][1] for a in ids}, postpaid, period),
        }
        inputs = {
            a: {
                "tariff": rows[a][1],
                "meters": sorted(postpaid.get(a, [])),
                "items": items.get(a, []),
                "overdue": overdue.get(a, []) if late_fees else [],
            }
            for a in ids
        }
        return Gathered(ids, inputs, shared)

    def digest(self, period: str, inputs: Mapping[str, Any], shared: Mapping[str, Any]) -> str:
        """What the bill's lines are made of, hashed: a draft whose inputs did not change
        since it was stored needs no recomputing when it is confirmed."""
        parts = [period, self._config]
        start, end, ytd = shared["start"], shared["end"], shared["ytd"]
        for m, kind in inputs["meters"]:
            a, b = start.get(m), end.get(m)
            parts.append(
                f"m|{m}|{kind}|{self._tariff_hash(self.tariff_for(kind, inputs['tariff']))}|"
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

    def digests(
        self, conn: Connection, period: str, accounts: Sequence[str] | None = None
    ) -> dict[str, str]:
        """account → the digest of its bill's inputs now (no rating)."""
        ids, inputs, shared = self.gather(conn, period, accounts, decode=False)
        return {a: self.digest(period, inputs[a], shared) for a in ids}

    # -- the tier cycle ----------------------------------------------------------------------
    def _cycle_energy(
        self,
        conn: Connection,
        accounts: Mapping[str, str | None],
        postpaid: Postpaid,
        period: str,
    ) -> dict[str, Fraction]:
        """meter → its energy on the account's earlier bills in the current tier cycle (the
        tiers of this bill start there)."""
        out: dict[str, Fraction] = {}
        cycle_start = self._cycle_starts(accounts, postpaid, period)
        if not cycle_start:
            return out
        first = self.calendar.period_of(min(cycle_start.values()))
        owners = sorted(
            {a for a in accounts if any(m in cycle_start for m, _ in postpaid.get(a, []))}
        )
        rows = conn.execute(
            sa.select(t.bill.c.period, t.bill.c.lines).where(
                t.bill.c.state.not_in([BillState.DRAFT, BillState.VOID]),
                t.bill.c.period >= first,
                t.bill.c.period < period,
                among(conn, t.bill.c.account_id, owners),
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

    def _cycle_starts(
        self, accounts: Mapping[str, str | None], postpaid: Postpaid, period: str
    ) -> dict[str, dt.datetime]:
        """meter → the start of its tariff's tier cycle, for the meters whose cycle began
        before `period` (the others start their tiers with this bill)."""
        start_at, _ = self.calendar.bounds(period)
        tz = self.site.info.tz
        cycle_start: dict[str, dt.datetime] = {}
        starts: dict[str | None, dt.datetime | None] = {}  # per tariff
        for account_id, tariff_id in accounts.items():
            for meter, kind in postpaid.get(account_id, []):
                key = self.tariff_for(kind, tariff_id)
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
        return cycle_start


def _per_account(
    conn: Connection, statement: FastStatement, period: str, scope: set[str], row_type: Any
) -> dict[str, list[Any]]:
    """The rows of `statement` for `period`, grouped by their account (second column)."""
    out: dict[str, list[Any]] = {}
    for row in fetch(conn, statement, {"p": period}):
        if row[1] in scope:
            out.setdefault(row[1], []).append(row_type(*row))
    return out
