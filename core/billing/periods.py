"""Billing periods and capture instants, in the site's time zone.

A period is named after the month it starts in (`2025-03`) and runs from the meters'
freeze instant of that month (`freeze_day` at `freeze_hour`, site-local) to the freeze
instant of the next month. Meter registers are captured every site-local day at the freeze
hour (`capture_instant`); the monthly freeze instants are some of those, so the daily loss
analysis and the monthly apportionment difference the very same readings.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from ..ledger import RequestError

_PERIOD = re.compile(r"^(\d{4})-(\d{2})$")


@dataclass(frozen=True, slots=True)
class Calendar:
    """Where the periods and capture instants of a site fall."""

    tz: ZoneInfo
    freeze_day: int = 1
    freeze_hour: int = 0

    def period_start(self, year: int, month: int) -> dt.datetime:
        local = dt.datetime(year, month, self.freeze_day, self.freeze_hour, tzinfo=self.tz)
        return local.astimezone(dt.UTC)

    def bounds(self, period: str) -> tuple[dt.datetime, dt.datetime]:
        """[start, end) of `period` (UTC)."""
        year, month = parse_period(period)
        ny, nm = (year + 1, 1) if month == 12 else (year, month + 1)
        return self.period_start(year, month), self.period_start(ny, nm)

    def dates(self, period: str) -> tuple[dt.date, dt.date]:
        """Site-local dates of the period's start and end (end exclusive)."""
        start, end = self.bounds(period)
        return start.astimezone(self.tz).date(), end.astimezone(self.tz).date()

    def period_of(self, instant: dt.datetime) -> str:
        """The period holding `instant` (an instant on a freeze instant starts a period)."""
        local = instant.astimezone(self.tz)
        year, month = local.year, local.month
        if instant < self.period_start(year, month):
            year, month = (year - 1, 12) if month == 1 else (year, month - 1)
        return f"{year:04d}-{month:02d}"

    def previous(self, period: str) -> str:
        year, month = parse_period(period)
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
        return f"{year:04d}-{month:02d}"

    def next(self, period: str) -> str:
        year, month = parse_period(period)
        year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        return f"{year:04d}-{month:02d}"

    def capture_on(self, day: dt.date) -> dt.datetime:
        """The capture instant of site-local `day` (UTC)."""
        return dt.datetime.combine(day, dt.time(self.freeze_hour), tzinfo=self.tz).astimezone(
            dt.UTC
        )

    def capture_instant(self, read_at: dt.datetime) -> dt.datetime:
        """The first capture instant at or after `read_at`: a reading taken then is the
        last reading at or before that instant (until a later one arrives)."""
        local = read_at.astimezone(self.tz)
        at = self.capture_on(local.date())
        if at < read_at:
            at = self.capture_on(local.date() + dt.timedelta(days=1))
        return at

    def days(self, start: dt.date, end: dt.date) -> list[dt.datetime]:
        """Capture instants of the site-local days `start`..`end` (end exclusive)."""
        return [
            self.capture_on(start + dt.timedelta(days=i)) for i in range((end - start).days + 1)
        ]


def parse_period(period: str, field: str = "period") -> tuple[int, int]:
    m = _PERIOD.match(period or "") if isinstance(period, str) else None
    if m is None or not 1 <= int(m.group(2)) <= 12 or int(m.group(1)) < 2000:
        raise RequestError(field, f"expected a month such as 2025-03, got {period!r}")
    return int(m.group(1)), int(m.group(2))
