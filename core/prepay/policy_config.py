"""`[prepay.policy]` of the site file read into the policy gate's `PolicyConfig`."""

from __future__ import annotations

import datetime as dt

from ..config.reader import TableReader
from ..rating.tariffs import hhmm, parse_hhmm
from .feecontrol import read_cny
from .policy import WEEKDAYS, PolicyConfig


def read_policy(r: TableReader) -> PolicyConfig:
    """`[prepay.policy]` with the defaults of `PolicyConfig`."""
    d = PolicyConfig()
    qs = r.str("quiet_start", hhmm(d.quiet_start))
    qe = r.str("quiet_end", hhmm(d.quiet_end))
    quiet = []
    for key, value in (("quiet_start", qs), ("quiet_end", qe)):
        minutes = None if value is None else parse_hhmm(value)
        if value is not None and (minutes is None or minutes >= 24 * 60):
            r.error(f"expected a time HH:MM from 00:00 to 23:59, got {value!r}", key)
        quiet.append(minutes)
    days = r.str_list("no_trip_days", [WEEKDAYS[i] for i in sorted(d.no_trip_weekdays)])
    weekdays: set[int] = set()
    for name in days or ():
        if name not in WEEKDAYS:
            r.error(f"unknown day {name!r} (use {', '.join(WEEKDAYS)})", "no_trip_days")
        else:
            weekdays.add(WEEKDAYS.index(name))
    calendar = r.str("holiday_calendar", d.holiday_calendar)
    if calendar:
        try:
            import holidays  # deferred: a 0.2 s import, needed only to check a calendar

            holidays.country_holidays(calendar, years=2024)
        except (NotImplementedError, KeyError, AttributeError):
            r.error(
                f"unknown holiday calendar {calendar!r} (a country code of the `holidays` "
                'package, e.g. CN; "" for none)',
                "holiday_calendar",
            )
    before = r.bool("no_trip_before_non_working_day", d.no_trip_before_non_working_day)
    adjusted = r.bool("trip_on_adjusted_workdays", d.trip_on_adjusted_workdays)
    extra_h = _read_dates(r, "extra_holidays")
    extra_w = _read_dates(r, "extra_workdays")
    notice = r.int("notice_days", d.notice_days, low=0, high=60)
    friendly = read_cny(r, "friendly_credit", d.friendly_credit_fen)
    emergency = read_cny(r, "emergency_credit", d.emergency_credit_fen)
    reconnect = read_cny(r, "reconnect_min", d.reconnect_min_fen)
    rate = r.int("max_trips_per_minute", d.max_trips_per_minute, low=0, high=100000)
    r.finish()
    both = extra_h & extra_w
    if both:
        r.error(
            f"{', '.join(str(x) for x in sorted(both))} listed as holiday and working day",
            "extra_workdays",
        )
    return PolicyConfig(
        quiet_start=quiet[0] if quiet[0] is not None else d.quiet_start,
        quiet_end=quiet[1] if quiet[1] is not None else d.quiet_end,
        no_trip_weekdays=frozenset(weekdays) if days is not None else d.no_trip_weekdays,
        holiday_calendar=calendar if calendar is not None else d.holiday_calendar,
        no_trip_before_non_working_day=before if before is not None else True,
        trip_on_adjusted_workdays=adjusted if adjusted is not None else True,
        extra_holidays=extra_h,
        extra_workdays=extra_w,
        notice_days=notice if notice is not None else d.notice_days,
        friendly_credit_fen=friendly if friendly is not None else d.friendly_credit_fen,
        emergency_credit_fen=emergency if emergency is not None else d.emergency_credit_fen,
        reconnect_min_fen=reconnect if reconnect is not None else d.reconnect_min_fen,
        max_trips_per_minute=rate if rate is not None else d.max_trips_per_minute,
    )


def _read_dates(r: TableReader, key: str) -> frozenset[dt.date]:
    raw = r.raw(key, [])
    if not isinstance(raw, list):
        r.error("expected a list of dates (YYYY-MM-DD)", key)
        return frozenset()
    out = set()
    for i, item in enumerate(raw):
        if isinstance(item, dt.date) and not isinstance(item, dt.datetime):
            out.add(item)
            continue
        try:
            out.add(dt.date.fromisoformat(str(item)))
        except ValueError:
            r.error(f"expected a date YYYY-MM-DD, got {item!r}", f"{key}[{i}]")
    return frozenset(out)
