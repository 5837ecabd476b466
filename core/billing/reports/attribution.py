"""Which period each revenue posting pays for (the **service period**), next to when it was
posted (the **posting date**).

A revenue posting (a credit to `rev:*`, or its reversal) belongs to:

- prepaid usage: the instant of the meter reading it was rated up to (a usage journal's
  period key is that reading's time, epoch seconds); a key that is not a time (postings
  made by hand or by tests) falls back to the posting time;
- a common-area pool or a charge run (and the reversal of a revision): the run's period;
- a one-off charge: the period it was charged in (its billed item);
- post-paid usage and late fees: the period of the bill that posted them (bills confirmed
  together in one journal are told apart by their billed items);
- a voided bill's reversal: the bill's period;
- any other reversal: what the journal it reverses belongs to;
- anything else: its posting time (counted as "by posting time" in the notes).

A period's revenue is placed at the period's start (its freeze instant), so by month it is
the month the period is named after, by day the day it starts on.

Usage is posted within seconds of its reading (rating runs every `post_interval_s`), so
only usage posted within `USAGE_LAG` after a bucket boundary is looked at one journal at a
time; the rest is summed per bucket in the database. Usage posted more than `USAGE_LAG`
after its reading (which the running service does not do) is placed by its posting time.
"""

from __future__ import annotations

import bisect
import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ...db import schema as t
from ...db.among import among
from .common import ReportScope, bucket_of

#: How long after its reading a usage posting may be made and still be placed by reading.
USAGE_LAG = dt.timedelta(hours=1)
#: A usage period key below this is not an epoch time (2001-09-09): placed by posting time.
_EPOCH_MIN = 1_000_000_000
#: Billed-item kinds of one-off charges → their revenue stream (the rest are streams).
_ITEM_STREAM = {"custom": "service"}

#: Where a posting belongs: (instant, label) — label a period ("2025-12") or a day.
Service = tuple[dt.datetime, str]


@dataclass(frozen=True, slots=True)
class Flow:
    """Revenue (fen, credits positive) of one stream, by when it was posted and what it
    pays for; `posted`/`served` are bucket indexes, None outside the span."""

    stream: str
    fen: int
    posted: int | None
    served: int | None
    #: Site-local posting day ("" for usage summed per bucket: the same bucket both ways).
    posted_on: str = ""
    #: The service period or reading day.
    service: str = ""
    #: What it is: usage, pool:A, charge:property, bills, bill void B-..., once:ref...
    source: str = "usage"
    #: Placed by posting time for want of a service period.
    fallback: bool = False


class Bucketer:
    """The bucket index of an instant, for bucket bounds [b0, b1, ..., bn)."""

    def __init__(self, bounds: Sequence[dt.datetime]) -> None:
        self.bounds = list(bounds)

    def __call__(self, at: dt.datetime) -> int | None:
        if at < self.bounds[0] or at >= self.bounds[-1]:
            return None
        return bisect.bisect_right(self.bounds, at) - 1


def revenue_flows(
    scope: ReportScope, conn: Connection, bounds: Sequence[dt.datetime]
) -> list[Flow]:
    """Every revenue posting posted in, or paying for, the span [bounds[0], bounds[-1])."""
    bucket = Bucketer(bounds)
    flows = [*_usage(scope, conn, bounds, bucket), *_other_revenue(scope, conn, bucket)]
    return [f for f in flows if f.posted is not None or f.served is not None]


def stream_of(code: str) -> str:
    return code.split(":", 1)[1]


#: Boundaries per query of usage near them (SQLite limits an expression's depth).
_CHUNK = 100


def _near_boundary(column: Any, bounds: Sequence[dt.datetime]) -> Any:
    return sa.or_(*[sa.and_(column >= b, column < b + USAGE_LAG) for b in bounds])


def _usage(
    scope: ReportScope, conn: Connection, bounds: Sequence[dt.datetime], bucket: Bucketer
) -> list[Flow]:
    """Prepaid usage: summed per bucket and stream by posting time (read in the same
    bucket), except what was posted just after a boundary, placed by its reading."""
    near = _usage_near_boundaries(scope, conn, bounds, bucket)
    sums: dict[tuple[int, str], int] = {}
    j, p = t.journal, t.posting
    b = bucket_of(j.c.created_at, bounds).label("b")
    for i, code, fen in conn.execute(
        sa.select(b, p.c.ledger_account, sa.func.sum(p.c.amount_fen))
        .join(j, j.c.id == p.c.journal_id)
        .where(
            j.c.kind == "usage",
            p.c.ledger_account.like("rev:%"),
            j.c.created_at >= bounds[0],
            j.c.created_at < bounds[-1],
        )
        .group_by(b, p.c.ledger_account)
    ).all():
        sums[(int(i), stream_of(code))] = -int(fen)
    for f in near:  # looked at one by one: out of the sums
        if f.posted is not None:
            sums[(f.posted, f.stream)] -= f.fen
    bulk = [Flow(stream, fen, i, i) for (i, stream), fen in sums.items() if fen]
    return bulk + near


def _usage_near_boundaries(
    scope: ReportScope, conn: Connection, bounds: Sequence[dt.datetime], bucket: Bucketer
) -> list[Flow]:
    """Usage posted just after a bucket boundary, one journal at a time, by its reading."""
    j, p = t.journal, t.posting
    sums: dict[tuple[str, int | None, int | None, str, str, bool], int] = {}
    for c in range(0, len(bounds), _CHUNK):
        rows = conn.execute(
            sa.select(j.c.created_at, j.c.request, p.c.ledger_account, p.c.amount_fen)
            .join(j, j.c.id == p.c.journal_id)
            .where(
                j.c.kind == "usage",
                p.c.ledger_account.like("rev:%"),
                _near_boundary(j.c.created_at, bounds[c : c + _CHUNK]),
            )
        ).all()
        for created, request, code, fen in rows:
            (at, label), fallback = _usage_service(scope, created, request)
            posted_on = _day(scope, created)
            key = (stream_of(code), bucket(created), bucket(at), posted_on, label, fallback)
            sums[key] = sums.get(key, 0) - int(fen)
    return [
        Flow(stream, fen, posted, served, posted_on, label, "usage", fallback)
        for (stream, posted, served, posted_on, label, fallback), fen in sums.items()
    ]


def usage_by_meter(
    scope: ReportScope, conn: Connection, lo: dt.datetime, hi: dt.datetime, meters: Sequence[str]
) -> dict[str, int]:
    """meter → the fen its prepaid usage read in [lo, hi) took from the wallet."""
    j, p = t.journal, t.posting
    usage = sa.and_(
        j.c.kind == "usage", p.c.ledger_account.like("rev:%"), among(conn, j.c.meter_id, meters)
    )
    out: dict[str, int] = {}
    for meter, fen in conn.execute(
        sa.select(j.c.meter_id, sa.func.sum(p.c.amount_fen))
        .join(j, j.c.id == p.c.journal_id)
        .where(
            usage,
            j.c.created_at >= lo,
            j.c.created_at < hi,
            sa.not_(_near_boundary(j.c.created_at, [lo, hi])),
        )
        .group_by(j.c.meter_id)
    ).all():
        out[meter] = -int(fen)
    for meter, created, request, fen in conn.execute(
        sa.select(j.c.meter_id, j.c.created_at, j.c.request, p.c.amount_fen)
        .join(j, j.c.id == p.c.journal_id)
        .where(usage, _near_boundary(j.c.created_at, [lo, hi]))
    ).all():
        (at, _), _fallback = _usage_service(scope, created, request)
        if lo <= at < hi:
            out[meter] = out.get(meter, 0) - int(fen)
    return out


def _usage_service(
    scope: ReportScope, created: dt.datetime, request: Mapping[str, Any] | None
) -> tuple[Service, bool]:
    """((reading instant, its day), False), or the posting time and True without one."""
    key = str((request or {}).get("period", ""))
    if key.isdigit() and int(key) >= _EPOCH_MIN:
        at = dt.datetime.fromtimestamp(int(key), dt.UTC)
        return (at, _day(scope, at)), False
    return (created, _day(scope, created)), True


def _day(scope: ReportScope, at: dt.datetime) -> str:
    return at.astimezone(scope.tz).date().isoformat()


def _other_revenue(scope: ReportScope, conn: Connection, bucket: Bucketer) -> list[Flow]:
    """Every revenue journal other than usage (runs, charges, bills, voids, reversals):
    few, so all of them, each placed by what it pays for."""
    j, p = t.journal, t.posting
    rows = conn.execute(
        sa.select(
            j.c.id, j.c.created_at, j.c.reverses_id, p.c.ledger_account, sa.func.sum(p.c.amount_fen)
        )
        .join(j, j.c.id == p.c.journal_id)
        .where(j.c.kind != "usage", p.c.ledger_account.like("rev:%"))
        .group_by(j.c.id, j.c.created_at, j.c.reverses_id, p.c.ledger_account)
    ).all()
    if not rows:
        return []
    places = _Places(scope, conn, {int(r[0]): r[2] for r in rows})
    out: list[Flow] = []
    for jid, created, _rev, code, fen in rows:
        stream, posted = stream_of(code), bucket(created)
        posted_on = _day(scope, created)
        parts, source = places.of(int(jid), stream, -int(fen))
        if not parts:
            out.append(Flow(stream, -int(fen), posted, posted, posted_on, posted_on, source, True))
            continue
        for (at, label), part in parts:
            out.append(Flow(stream, part, posted, bucket(at), posted_on, label, source))
    return out


class _Places:
    """What each non-usage revenue journal pays for, from the billing tables."""

    def __init__(
        self, scope: ReportScope, conn: Connection, reverses: Mapping[int, int | None]
    ) -> None:
        self.scope, self.conn, self.reverses = scope, conn, reverses
        self.runs: dict[int, tuple[str, str]] = {}
        r = t.billing_run
        for jid, rid, period, source in conn.execute(
            sa.select(r.c.journal_id, r.c.reversal_journal_id, r.c.period, r.c.source).where(
                r.c.journal_id.is_not(None)
            )
        ).all():
            self.runs[int(jid)] = (period, source)
            if rid is not None:
                self.runs[int(rid)] = (period, source)
        b = t.bill
        self.voids = {
            int(jid): (period, number)
            for jid, period, number in conn.execute(
                sa.select(b.c.void_journal_id, b.c.period, b.c.number).where(
                    b.c.void_journal_id.is_not(None)
                )
            ).all()
        }
        i = t.billing_item
        self.items: dict[int, dict[tuple[str, str], int]] = {}
        self.item_source: dict[int, str] = {}
        for jid, period, kind, source, fen in conn.execute(
            sa.select(i.c.journal_id, i.c.period, i.c.kind, i.c.source, sa.func.sum(i.c.amount_fen))
            .where(i.c.journal_id.is_not(None), i.c.run_id.is_(None))
            .group_by(i.c.journal_id, i.c.period, i.c.kind, i.c.source)
        ).all():
            per = self.items.setdefault(int(jid), {})
            key = (period, _ITEM_STREAM.get(kind, kind))
            per[key] = per.get(key, 0) + int(fen)
            self.item_source[int(jid)] = "bills" if source.startswith("bill:") else source

    def period(self, period: str) -> Service:
        return self.scope.calendar.bounds(period)[0], period

    def of(self, jid: int, stream: str, fen: int) -> tuple[list[tuple[Service, int]], str]:
        """([(service, fen)...], source) of journal `jid`'s `fen` of `stream`; no parts:
        placed by posting time."""
        if jid in self.runs:
            period, source = self.runs[jid]
            return [(self.period(period), fen)], source
        if jid in self.voids:
            period, number = self.voids[jid]
            return [(self.period(period), fen)], f"bill void {number}"
        if jid in self.items:
            return self._by_items(jid, stream, fen), self.item_source[jid]
        reversed_id = self.reverses.get(jid)
        if reversed_id is not None:
            parts, source = self._reversed(int(reversed_id), stream, fen)
            return parts, f"reversal of {source}"
        return [], "other"

    def _by_items(self, jid: int, stream: str, fen: int) -> list[tuple[Service, int]]:
        """A journal with billed items: one period takes all of it; bills of several
        periods confirmed together are split by their items (the rest by posting time)."""
        per = self.items[jid]
        periods = sorted({p for p, _ in per})
        if len(periods) == 1:
            return [(self.period(periods[0]), fen)]
        # An item is what the tenant is charged: the revenue of its stream, same sign.
        parts = [(self.period(p), f) for (p, s), f in sorted(per.items()) if s == stream and f]
        return parts if sum(f for _, f in parts) == fen else []

    def _reversed(self, jid: int, stream: str, fen: int) -> tuple[list[tuple[Service, int]], str]:
        """A reversal's parts: where the journal it reverses was placed — its service
        period, or its own posting time when it had none."""
        if jid in self.reverses or jid in self.runs or jid in self.voids or jid in self.items:
            parts, source = self.of(jid, stream, -fen)
            if parts:
                return [(svc, -f) for svc, f in parts], source
        row = self.conn.execute(
            sa.select(t.journal.c.kind, t.journal.c.created_at, t.journal.c.request).where(
                t.journal.c.id == jid
            )
        ).first()
        if row is None:
            return [], "other"
        if row.kind == "usage":
            service, _ = _usage_service(self.scope, row.created_at, row.request)
            return [(service, fen)], "usage"
        return [((row.created_at, _day(self.scope, row.created_at)), fen)], row.kind


def group(flows: Iterable[Flow], basis: str, streams: Sequence[str], n: int) -> list[list[int]]:
    """Revenue per bucket (n rows) and stream (+ "other" last), by `basis`."""
    grid = [[0] * (len(streams) + 1) for _ in range(n)]
    for f in flows:
        i = f.posted if basis == "posting" else f.served
        if i is None:
            continue
        col = streams.index(f.stream) if f.stream in streams else len(streams)
        grid[i][col] += f.fen
    return grid
