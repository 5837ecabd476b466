"""Common-area apportionment (公摊, domain.md §4).

A pool is a main meter, its sub-meters (the rooms') and public-area meters, all read at the
period's two freeze instants (`readings`). Then, in 0.001 kWh (or m³):

    loss = main − Σ sub − Σ public

- `loss < 0`: a meter is wrong (a sub reads more than the main): state FAULT, an
  `ApportionmentAlert`, **nothing allocated**;
- `loss / main > loss_cap` (8 % by default): state HELD — computed, not posted, until an
  operator approves it (`approve`) or the readings are corrected and it is run again;
- readings missing: NO_DATA; readings older than `reading_max_age_h` at an instant: HELD.

Otherwise the public meters' energy and the loss are each priced (`energy × price`, rounded
once to the fen by `rating.round_fen`) and each shared between the pool's rooms by its
method — area, equally, by the rooms' own consumption in the period, or fixed ratios — with
the largest-remainder method (`allocate`, built on `rating.largest_remainder`): the shares
add up to the amount exactly; ties go to the larger weight, then to the lower room id, so
the result never depends on the order the rooms are listed in.

Each room's share is its own itemised line (never folded into the energy price; the whole
thing can be switched off per site with `[billing] apportionment = false`). A room without
a tenant is charged to the owner (`vacant = "owner"`) or left out of the weights
(`vacant = "exclude"`). Posting, idempotency per (pool, period) and re-runs are
`runs.apply`'s.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..config.site import Site
from ..db import schema as t
from ..db.among import among
from ..ledger import JournalKind, RequestError, format_fen
from ..model import DeviceModel
from ..rating.engine import RatingError, RegisterLayout
from ..rating.rounding import Rounding, largest_remainder, round_fen
from ..rating.units import ENERGY_SCALE
from . import runs
from .periods import Calendar
from .readings import Reading, difference, modulus_units, readings_at
from .runs import Computed, Line, RunState
from .settings import BillingSettings, Method, Pool


def allocate(
    total_fen: int, weights: Sequence[tuple[str, Fraction | Decimal | int]]
) -> dict[str, int]:
    """Split `total_fen` over `weights` ((room id, weight) pairs) to the fen.

    Largest remainder: exact_i = T·w_i/W; floor each; the fen still missing go to the
    largest fractional parts, ties to the larger weight, then to the lower room id. A
    negative total (a credit) is split as its absolute value and negated.
    """
    items = sorted((str(k), Fraction(w)) for k, w in weights)
    if not items:
        raise RequestError("weights", "nothing to share among")
    if any(w < 0 for _, w in items):
        raise RequestError("weights", "weights must not be negative")
    total_w = sum((w for _, w in items), Fraction(0))
    if total_w == 0:
        raise RequestError("weights", "the weights add up to 0: nothing to share by")
    sign = -1 if total_fen < 0 else 1
    magnitude = abs(total_fen)
    exact = [Fraction(magnitude) * w / total_w for _, w in items]
    parts = largest_remainder(magnitude, exact)
    return {k: sign * p for (k, _), p in zip(items, parts, strict=True)}


@dataclass(frozen=True, slots=True)
class PoolFigures:
    """A pool's energy in a period (0.001 units)."""

    main: int
    subs: int
    public: int
    by_room: Mapping[str, int]

    @property
    def loss(self) -> int:
        return self.main - self.subs - self.public

    @property
    def loss_rate(self) -> Fraction | None:
        return Fraction(self.loss, self.main) if self.main > 0 else None


def _qty(units: int) -> str:
    return f"{Decimal(units) / ENERGY_SCALE:.2f}"


def _pct(rate: Fraction | None) -> str:
    if rate is None:
        return "-"
    return f"{Decimal(rate.numerator * 100) / Decimal(rate.denominator):.2f}%"


class Apportionment:
    """Computes and posts a site's pools (see the module docstring)."""

    def __init__(
        self,
        site: Site,
        models: Mapping[str, DeviceModel],
        settings: BillingSettings,
        *,
        rounding: Rounding = Rounding.HALF_UP,
    ) -> None:
        self.site = site
        self.models = models
        self.settings = settings
        self.rounding = rounding
        self.calendar = Calendar(site.info.tz, settings.freeze_day, settings.freeze_hour)
        self._moduli: dict[str, int | None] = {}

    def pool(self, pool_id: str) -> Pool:
        pool = self.settings.pools.get(pool_id)
        if pool is None:
            known = ", ".join(sorted(self.settings.pools)) or "none defined"
            raise RequestError("pool", f"unknown pool {pool_id!r} (pools: {known})")
        return pool

    def _modulus(self, meter: str) -> int | None:
        name = self.site.devices[meter].model
        if name not in self._moduli:
            model = self.models.get(name)
            try:
                self._moduli[name] = (
                    modulus_units(RegisterLayout.from_model(model)) if model else None
                )
            except RatingError:
                self._moduli[name] = None
        return self._moduli[name]

    def tenants(self, conn: Connection, meters: Sequence[str]) -> dict[str, str]:
        """meter → the OPEN account it belongs to."""
        am, a = t.account_meter, t.account
        rows = conn.execute(
            sa.select(am.c.meter_id, am.c.account_id)
            .join(a, a.c.id == am.c.account_id)
            .where(
                among(conn, am.c.meter_id, meters), am.c.detached_at.is_(None), a.c.state == "OPEN"
            )
        ).all()
        return {m: acc for m, acc in rows}

    def figures(
        self,
        pool: Pool,
        start: Mapping[str, Reading],
        end: Mapping[str, Reading],
    ) -> tuple[PoolFigures | None, str]:
        """The pool's energy from the two readings of each meter, or (None, why)."""
        energy: dict[str, int] = {}
        for meter in pool.meters:
            if meter not in start or meter not in end:
                at = "start" if meter not in start else "end"
                return None, f"no reading of {meter} at the period's {at}"
            delta = difference(start[meter], end[meter], self._modulus(meter))
            if delta is None:
                return None, (
                    f"{meter} reads {_qty(end[meter].energy)} at the end, below "
                    f"{_qty(start[meter].energy)} at the start (replaced or faulty meter: "
                    "record its readings by hand)"
                )
            energy[meter] = delta
        by_room: dict[str, int] = {}
        for meter in pool.subs:
            room = self.site.devices[meter].room
            assert room is not None
            by_room[room] = by_room.get(room, 0) + energy[meter]
        return (
            PoolFigures(
                energy[pool.main],
                sum(energy[m] for m in pool.subs),
                sum(energy[m] for m in pool.public),
                by_room,
            ),
            "",
        )

    def weights(
        self, pool: Pool, method: Method, rooms: Sequence[str], figures: PoolFigures
    ) -> list[tuple[str, Fraction]]:
        out = []
        for room in rooms:
            if method is Method.AREA:
                area = self.settings.area_of(self.site, room)
                if area is None:
                    raise RequestError("method", f"room {room} has no area")
                w = Fraction(area)
            elif method is Method.EQUAL:
                w = Fraction(1)
            elif method is Method.CONSUMPTION:
                w = Fraction(figures.by_room.get(room, 0))
            else:
                w = Fraction(pool.ratios[room])
            out.append((room, w))
        return out

    def compute(self, conn: Connection, pool: Pool, period: str) -> Computed:
        """The pool's run for `period` (see the module docstring): its lines, or why it
        is FAULT, NO_DATA or HELD. Nothing is written."""
        start_at, end_at = self.calendar.bounds(period)
        start = readings_at(conn, pool.meters, start_at, registers=False)
        end = readings_at(conn, pool.meters, end_at, registers=False)
        computed = Computed(
            pool.source,
            period,
            RunState.POSTED,
            [],
            "rev:public_energy",
            pool.mode,
            JournalKind.ALLOCATION.value,
            f"common area {pool.id} {period}",
        )
        detail: dict[str, Any] = {
            "pool": pool.id,
            "main": pool.main,
            "price": str(pool.price),
            "method": pool.method.value,
            "public_method": pool.public_method.value,
            "start": start_at.isoformat(),
            "end": end_at.isoformat(),
            "readings": {
                m: [
                    start[m].energy if m in start else None,
                    end[m].energy if m in end else None,
                ]
                for m in pool.meters
            },
        }
        computed.detail = detail
        figures, why = self.figures(pool, start, end)
        if figures is None:
            return _stopped(
                computed, RunState.NO_DATA if "no reading" in why else RunState.FAULT, why
            )
        detail.update(
            main_energy=figures.main,
            sub_energy=figures.subs,
            public_energy=figures.public,
            loss_energy=figures.loss,
            loss_rate=_pct(figures.loss_rate),
        )
        if figures.loss < 0:
            return _stopped(
                computed,
                RunState.FAULT,
                f"negative loss: main {_qty(figures.main)} < subs {_qty(figures.subs)} + public "
                f"{_qty(figures.public)} ({_qty(figures.loss)}); a meter is faulty — nothing "
                "allocated",
            )
        room_account = self._room_accounts(conn, pool)
        rooms = sorted(r for r, a in room_account.items() if a is not None or pool.vacant_to_owner)
        detail["vacant"] = sorted(r for r, a in room_account.items() if a is None)
        shares, why = self._shares(pool, figures, rooms, detail)
        if shares is None:
            return _stopped(computed, RunState.HELD, why)
        computed.lines = _lines(pool, period, rooms, room_account, shares)
        held = self._held(pool, figures, start, end)
        if held:
            computed.state = RunState.HELD
            computed.reason = held
        return computed

    def _room_accounts(self, conn: Connection, pool: Pool) -> dict[str, str | None]:
        """room → the OPEN account of its sub-meters (None: vacant)."""
        tenants = self.tenants(conn, pool.subs)
        room_account: dict[str, str | None] = {}
        for meter in pool.subs:
            room = self.site.devices[meter].room
            assert room is not None
            room_account.setdefault(room, None)
            if meter in tenants and room_account[room] is None:
                room_account[room] = tenants[meter]
        return room_account

    def _shares(
        self, pool: Pool, figures: PoolFigures, rooms: Sequence[str], detail: dict[str, Any]
    ) -> tuple[dict[str, list[tuple[str, int, str]]] | None, str]:
        """room → its (label, fen, explanation) shares of the priced public-area energy and
        loss, or (None, why) when there is nothing to share by."""
        price = Fraction(pool.price)
        parts = (
            ("public", figures.public, pool.public_method, "public-area energy"),
            ("loss", figures.loss, pool.method, "line loss"),
        )
        shares: dict[str, list[tuple[str, int, str]]] = {r: [] for r in rooms}
        unit = "kWh" if pool.commodity == "electricity" else "m³"
        for name, units, method, label in parts:
            exact = Fraction(units, ENERGY_SCALE) * price * 100
            fen = round_fen(exact, self.rounding)
            detail[f"{name}_fen"] = fen
            if not fen:
                continue
            if not rooms:
                return None, "no room to share among (every room is vacant and excluded)"
            weights = self.weights(pool, method, rooms, figures)
            total_w = sum((w for _, w in weights), Fraction(0))
            if total_w == 0:
                return None, f"{label}: the rooms' weights by {method} add up to 0"
            split = allocate(fen, weights)
            head = (
                f"{label} {_qty(units)} {unit} × {pool.price} = {format_fen(fen)}, "
                f"by {method.value}: "
            )
            of = _of_total(method, total_w, len(weights), unit)
            for room, w in weights:
                mine = _qty(int(w)) if method is Method.CONSUMPTION else _dec(w)
                shares[room].append((label, split[room], head + mine + of))
        return shares, ""

    def _held(
        self,
        pool: Pool,
        figures: PoolFigures,
        start: Mapping[str, Reading],
        end: Mapping[str, Reading],
    ) -> str:
        """Why a computed run waits for an operator's approval ("" when it does not): loss
        above the cap, or readings older than `reading_max_age_h` at an instant."""
        rate = figures.loss_rate
        if rate is not None and rate > pool.loss_cap:
            return (
                f"loss {_pct(rate)} of the main meter is above the cap {_pct(pool.loss_cap)}: "
                "held for approval"
            )
        max_age = dt.timedelta(seconds=self.settings.reading_max_age_s)
        stale = sorted(
            m
            for m in pool.meters
            if start[m].at - start[m].read_at > max_age or end[m].at - end[m].read_at > max_age
        )
        if stale:
            return (
                f"readings of {', '.join(stale[:5])} are older than "
                f"{self.settings.reading_max_age_s / 3600:g} h at an instant: held for approval"
            )
        return ""

    def run(
        self,
        conn: Connection,
        period: str,
        *,
        pools: Sequence[str] | None = None,
        actor: str,
        now: dt.datetime,
        dry_run: bool = False,
    ) -> list[runs.RunResult | Computed]:
        """Compute (and unless `dry_run`, record and post) `pools` (default: all) for
        `period`. Switched off per site: returns nothing."""
        if not self.settings.apportionment:
            return []
        chosen = [self.pool(p) for p in pools] if pools else list(self.settings.pools.values())
        out: list[runs.RunResult | Computed] = []
        for pool in chosen:
            computed = self.compute(conn, pool, period)
            out.append(computed if dry_run else runs.apply(conn, computed, actor=actor, now=now))
        return out


def _stopped(computed: Computed, state: RunState, reason: str) -> Computed:
    """`computed` stopped in `state` (FAULT, NO_DATA, HELD) without lines."""
    computed.state = state
    computed.reason = reason
    return computed


def _of_total(method: Method, total_w: Fraction, rooms: int, unit: str) -> str:
    """The end of a share's explanation: what the room's weight is a part of."""
    if method is Method.CONSUMPTION:
        return f" of {_qty(int(total_w))} {unit}"
    if method is Method.AREA:
        return f" of {_dec(total_w)} m²"
    if method is Method.EQUAL:
        return f" of {rooms} rooms"
    return f" of {_dec(total_w)}"


def _lines(
    pool: Pool,
    period: str,
    rooms: Sequence[str],
    room_account: Mapping[str, str | None],
    shares: Mapping[str, list[tuple[str, int, str]]],
) -> list[Line]:
    """One itemised line per room with a share (vacant rooms: the owner's, account None)."""
    lines = []
    for room in rooms:
        amount = sum(s[1] for s in shares[room])
        if not amount:
            continue
        description = f"common area {pool.id} {period}: " + "; ".join(
            f"{text} → {format_fen(fen)}" for _, fen, text in shares[room]
        )
        lines.append(
            Line(
                room_account[room],
                room,
                amount,
                "public_energy",
                description[:300],
                "",
                str(pool.price),
            )
        )
    return lines


def _dec(x: Fraction) -> str:
    d = Decimal(x.numerator) / Decimal(x.denominator)
    return f"{d.normalize():f}"
