"""The daily trade-bill reconciliation through the door.

`reconcile_payments` compares a provider's bill of one day with our orders
(`core.payments.reconcile.compare`), credits what was paid there and not credited here
through the same path as a notification (`apply_notice`: the top-up under the provider's
transaction id, so a notification arriving meanwhile still credits once), then writes the
day's `payment_reconciliation` row with every finding and raises a `PaymentDiscrepancy`
event per finding. `reconciliation_failed` records a day whose bill could not be had.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..contracts import PaymentNotice, TradeRecord
from ..db import schema as t
from ..events import PaymentDiscrepancy
from ..ledger import RequestError, format_fen
from ..payments import orders as po
from ..payments.reconcile import Comparison, compare
from ..prepay.effects import Effects
from .payments import PaymentDoor


@dataclass(frozen=True, slots=True)
class Reconciliation:
    """One provider's day as reconciled (a `payment_reconciliation` row)."""

    day: date
    channel: str
    state: str
    bill_rows: int
    matched: int
    credited: int
    differences: int
    paid_fen: int
    refunded_fen: int
    report: list[dict[str, Any]]
    error: str | None
    started_at: datetime
    finished_at: datetime
    requested_by: str


class PaymentReconcileDoor(PaymentDoor):
    def reconcile_payments(
        self, channel: str, day: date, rows: Sequence[TradeRecord], *, actor: str
    ) -> Reconciliation:
        """Reconcile `channel`'s trade bill of `day` (the provider's rows, checked and
        parsed by its plugin). Run again for the same day, it replaces the day's row (what
        it credited the first time is matched the second)."""
        provider = self._providers.get(channel)
        if provider is None:
            configured = ", ".join(sorted(self._providers)) or "none"
            raise RequestError(
                "channel",
                f"no payment provider {channel!r} on this site (configured: {configured})",
            )
        if not isinstance(day, date) or isinstance(day, datetime):
            raise RequestError("day", f"expected a date (YYYY-MM-DD), got {day!r}")
        started = self.clock()
        with self.db.read() as conn:
            numbers = sorted({r.out_trade_no for r in rows})
            known = {o.out_trade_no: o for o in _orders(conn, numbers)}
            that_day = _paid_between(conn, channel, *self._day_bounds(day))
        comparison = compare(rows, known, that_day)
        report: list[dict[str, Any]] = []
        credited = 0
        for finding in comparison.findings:
            outcome_text = "for a person"
            if finding.credit:
                order = known[finding.out_trade_no]
                row = next(
                    r for r in rows if r.out_trade_no == finding.out_trade_no and r.state == "PAID"
                )
                notice = PaymentNotice(
                    channel,
                    finding.out_trade_no,
                    "PAID",
                    finding.amount_fen,
                    order.currency,
                    finding.transaction_id,
                    provider.merchant_id,
                    provider.app_id,
                    row.at,
                    raw={"source": "trade bill", "day": day.isoformat()},
                )
                outcome = self.apply_notice(notice, actor=actor, queried=True)
                if outcome.credited:
                    credited += 1
                    outcome_text = f"credited ({outcome.topup.reference if outcome.topup else ''})"
                else:
                    outcome_text = f"{outcome.state}: {outcome.reason}"
            report.append(finding.record(outcome=outcome_text))
        return self._record_reconciliation(
            channel, day, comparison, report, credited, None, started, actor
        )

    def reconciliation_failed(
        self, channel: str, day: date, error: str, *, actor: str
    ) -> Reconciliation:
        """The day's bill could not be had (network, hash check, parse error): FAILED, with
        the error; the schedule tries again."""
        return self._record_reconciliation(
            channel, day, Comparison(), [], 0, error[:2000], self.clock(), actor
        )

    # -- reads ---------------------------------------------------------------------------

    def reconciliations(
        self, *, channel: str | None = None, limit: int = 60
    ) -> list[Reconciliation]:
        """Newest day first."""
        r = t.payment_reconciliation
        q = sa.select(r).order_by(r.c.day.desc(), r.c.channel).limit(limit)
        if channel is not None:
            q = q.where(r.c.channel == channel)
        with self.db.read() as conn:
            return [_reconciliation(row) for row in conn.execute(q)]

    def reconciliation(self, channel: str, day: date) -> Reconciliation | None:
        r = t.payment_reconciliation
        with self.db.read() as conn:
            row = conn.execute(sa.select(r).where(r.c.channel == channel, r.c.day == day)).first()
        return _reconciliation(row) if row is not None else None

    # -- the parts -----------------------------------------------------------------------

    def _day_bounds(self, day: date) -> tuple[datetime, datetime]:
        """The day in the site's time zone (the providers' bills are in China time: a
        site in China has the same days)."""
        start = datetime.combine(day, time(0), tzinfo=self.site.info.tz)
        return start, start + timedelta(days=1)

    def _record_reconciliation(
        self,
        channel: str,
        day: date,
        comparison: Comparison,
        report: list[dict[str, Any]],
        credited: int,
        error: str | None,
        started: datetime,
        actor: str,
    ) -> Reconciliation:
        state = "FAILED" if error is not None else ("DIFFERENCES" if report else "OK")

        def work(conn: Connection, effects: Effects, now: datetime) -> Reconciliation:
            r = t.payment_reconciliation
            values = {
                "state": state,
                "bill_rows": comparison.bill_rows,
                "matched": comparison.matched,
                "credited": credited,
                "differences": len(report),
                "paid_fen": comparison.paid_fen,
                "refunded_fen": comparison.refunded_fen,
                "report": report,
                "error": error,
                "started_at": started,
                "finished_at": now,
                "requested_by": actor,
            }
            where = (r.c.channel == channel, r.c.day == day)
            if conn.execute(sa.select(r.c.id).where(*where).with_for_update()).first():
                conn.execute(r.update().where(*where).values(**values))
            else:
                conn.execute(r.insert().values(day=day, channel=channel, **values))
            for item in report:
                effects.events.append(
                    PaymentDiscrepancy(
                        channel,
                        str(item["kind"]),
                        str(item["out_trade_no"]),
                        int(item["amount_fen"]),
                        f"{item['detail']}; {item['outcome']}",
                        day.isoformat(),
                        at=now,
                    )
                )
            if error is not None:
                effects.events.append(
                    PaymentDiscrepancy(
                        channel, "bill_failed", "", 0, error[:500], day.isoformat(), at=now
                    )
                )
            row = conn.execute(sa.select(r).where(*where)).first()
            return _reconciliation(row)

        return self._call(
            "payment_reconcile",
            f"{channel}:{day.isoformat()}",
            actor,
            work,
            lambda x: (
                f"{x.state}: {x.bill_rows} bill rows, {x.matched} matched, {x.credited} "
                f"credited, {x.differences} differences; paid {format_fen(x.paid_fen)}, "
                f"refunded {format_fen(x.refunded_fen)}" + (f"; {x.error}" if x.error else "")
            ),
        )


def _orders(conn: Connection, numbers: list[str]) -> list[po.PaymentOrder]:
    found: list[po.PaymentOrder] = []
    for i in range(0, len(numbers), 500):
        chunk = numbers[i : i + 500]
        q = sa.select(t.payment_order).where(t.payment_order.c.out_trade_no.in_(chunk))
        found.extend(po._order(row) for row in conn.execute(q))
    return found


def _paid_between(
    conn: Connection, channel: str, start: datetime, end: datetime
) -> list[po.PaymentOrder]:
    o = t.payment_order
    q = sa.select(o).where(o.c.channel == channel, o.c.paid_at >= start, o.c.paid_at < end)
    return [po._order(row) for row in conn.execute(q)]


def _reconciliation(row: Any) -> Reconciliation:
    values = dict(row._mapping)
    values.pop("id")
    values["report"] = list(values["report"] or [])
    return Reconciliation(**values)
