"""Whether a billing period may be closed: it has ended, and every meter it bills has a
real reading at its freeze instant.

A period is closed by its month-end: apportionment of the common areas, the charges due in
it and the drafts of its post-paid bills. Each of those refuses a period that

- has not ended (its freeze instant is still to come: the readings "at" it are provisional,
  the last ones so far), or
- has meters without a reading at the freeze instant, or with one older than
  `reading_max_age_h` (the meter went silent before the instant: its usage would be short),

naming the period's end or the meters, and saying how to go on: wait, record the missing
readings (`openprepay billing reading`, or a CSV import), or close it anyway with an
override reason. An override is written to the audit log (who, which period, what was
overridden, why) in the same transaction as what it allowed. Dry runs never refuse: they say
"provisional" with the same reasons.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..db import schema as t
from ..db.among import among
from ..errors import RequestError
from ..prepay.effects import Effects, audit
from .periods import Calendar
from .readings import readings_at


@dataclass(frozen=True, slots=True)
class PeriodCheck:
    """What stands between a period and its closing (nothing, when `closable`)."""

    period: str
    #: The period's end: the freeze instant its readings are taken at (UTC).
    end: dt.datetime
    tz: Any
    ended: bool
    #: Meters billed in the period without a reading at the freeze instant.
    missing: tuple[str, ...] = ()
    #: (meter, read at) of readings older than the allowed age at the freeze instant.
    stale: tuple[tuple[str, dt.datetime], ...] = ()
    max_age_h: float = 0.0

    @property
    def closable(self) -> bool:
        return self.ended and not self.missing and not self.stale

    def reasons(self) -> list[str]:
        out = []
        local_end = f"{self.end.astimezone(self.tz):%Y-%m-%d %H:%M} {self.tz}"
        if not self.ended:
            out.append(
                f"{self.period} has not ended: its freeze instant is {local_end}, so its "
                "readings are provisional"
            )
        if self.missing:
            out.append(f"no reading at the freeze instant {local_end} for {_few(self.missing)}")
        if self.stale:
            when = ", ".join(
                f"{m} (read {r.astimezone(self.tz):%Y-%m-%d %H:%M})" for m, r in self.stale[:8]
            )
            more = f" and {len(self.stale) - 8} more" if len(self.stale) > 8 else ""
            out.append(
                f"readings older than {self.max_age_h:g} h at the freeze instant: {when}{more}"
            )
        return out

    def describe(self) -> str:
        return "; ".join(self.reasons())


def _few(meters: Collection[str], shown: int = 12) -> str:
    names = sorted(meters)
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def check_period(
    conn: Connection,
    calendar: Calendar,
    period: str,
    meters: Iterable[str],
    *,
    now: dt.datetime,
    max_age: dt.timedelta,
) -> PeriodCheck:
    """The period's state at `now`, for `meters` (those the closing step bills)."""
    _, end = calendar.bounds(period)
    wanted = sorted(set(meters))
    found = readings_at(conn, wanted, end, registers=False) if wanted else {}
    missing = tuple(m for m in wanted if m not in found)
    stale = tuple(
        (m, r.read_at)
        for m in wanted
        if (r := found.get(m)) is not None and end - r.read_at > max_age
    )
    return PeriodCheck(
        period,
        end,
        calendar.tz,
        ended=now >= end,
        missing=missing,
        stale=stale,
        max_age_h=max_age.total_seconds() / 3600,
    )


def postpaid_meters(conn: Connection, accounts: Collection[str] | None = None) -> list[str]:
    """The POSTPAID meters attached to open accounts (of `accounts`, when given): the meters
    a period's post-paid bills difference."""
    am, a = t.account_meter, t.account
    query = (
        sa.select(am.c.meter_id)
        .join(a, a.c.id == am.c.account_id)
        .where(am.c.detached_at.is_(None), am.c.control_mode == "POSTPAID", a.c.state == "OPEN")
    )
    if accounts is not None:
        query = query.where(among(conn, am.c.account_id, set(accounts)))
    return list(conn.execute(query).scalars())


def require_closable(
    conn: Connection,
    check: PeriodCheck,
    *,
    step: str,
    override: str | None,
    actor: str,
    now: dt.datetime,
) -> Effects:
    """Refuse `step` of a period that is not closable, unless `override` gives a reason;
    an override is audited in `conn`'s transaction. Returns the audit's effects (its event
    is for the caller to publish after the commit)."""
    effects = Effects()
    if check.closable:
        return effects
    if override is None or not override.strip():
        raise RequestError(
            "period",
            f"{step} refused: {check.describe()}. Wait for the freeze instant and the "
            "readings, record the missing readings (`openprepay billing reading`, or a CSV "
            "import), or close it anyway with an override reason (--override REASON, audited)",
        )
    audit(
        conn,
        effects,
        actor,
        "period_override",
        check.period,
        f"{step} although {check.describe()}; reason: {override.strip()}",
        now=now,
    )
    return effects
