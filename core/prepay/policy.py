"""The safe-disconnect policy gate (domain.md §3): may this meter be tripped now?

Fee control (`core/prepay/feecontrol.py`) says a meter's energy balance calls for a trip; this
gate says whether, and when, the trip may actually be sent. Every TRIP passes here, first
when it is scheduled and again at send time. Rules, in order:

1. protected supply (保电) → DENY: no trip of any origin;
2. a manual hold (override with allow=false) → DENY; a manual override with allow=true
   skips rules 3–6 (it is audited: who and why go into the reason);
3. exempt / vulnerable customers → DENY;
4. only the energy wallet counts: unless fee control is in OVERDRAFT → DENY. The context
   has no field for property fee, rent or service debt, so such debt cannot trip supply
   (Civil Code Art. 944);
5. notice: a disconnection notice must have been served `notice_days` before → DENY when
   none was served, DEFER until it has run;
6. time: no trips in the quiet window (default 18:00–08:00 site-local), on Fri/Sat/Sun, on
   public holidays (China's calendar: the `holidays` package's CN table, whose substituted
   days off (调休) count as holidays and whose adjusted working days (weekend days worked,
   `weekend_workdays`) count as working days), nor on the day before a non-working day.
   While blocked the supply stays on and the balance may run into friendly credit. Past
   `friendly_credit` below the trip level the day rules (weekend, holiday) are lifted but
   the quiet window never is: the trip becomes due at the next daytime instant, even on a
   weekend or holiday — never at night;
7. rate limit: at most `max_trips_per_minute` trips per site per minute; the rest DEFER.

Emergency credit is money the ledger advances into the energy wallet
(`ledger.grant_emergency_credit`, repaid from the next top-up): the gate sees it inside
the balance, and `grant_emergency_credit` / `reconnect_allowed` here decide when it may be
granted and when supply may come back after it.

Output: `GateDecision(verdict=ALLOW|DEFER|DENY, until, reason)`. DEFER gives the instant to
try again; the caller re-asks the gate then.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from ..rating.tariffs import hhmm
from .feecontrol import FeeState, FeeThresholds

WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")


class Verdict(enum.StrEnum):
    ALLOW = "ALLOW"
    DEFER = "DEFER"
    DENY = "DENY"


@dataclass(frozen=True, slots=True)
class GateDecision:
    verdict: Verdict
    #: For DEFER: the earliest instant (UTC) at which the trip may be retried.
    until: dt.datetime | None
    #: Why, for the audit trail.
    reason: str

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ALLOW


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    """`[prepay.policy]`; defaults per domain.md §3."""

    #: Quiet window, minutes of the local day; trips only outside it. start == end: none.
    quiet_start: int = 18 * 60
    quiet_end: int = 8 * 60
    #: Weekdays (0 = Monday) with no trips.
    no_trip_weekdays: frozenset[int] = frozenset({4, 5, 6})
    #: Country code of the public-holiday calendar (`holidays` package); "" for none.
    holiday_calendar: str = "CN"
    #: No trip on the last working day before a non-working day (reconnection would wait).
    no_trip_before_non_working_day: bool = True
    #: A weekend day worked (调休上班) is a normal working day for trips.
    trip_on_adjusted_workdays: bool = True
    #: Days the package does not know yet (State Council notice of next year).
    extra_holidays: frozenset[dt.date] = frozenset()
    extra_workdays: frozenset[dt.date] = frozenset()
    notice_days: int = 3
    #: How far below the trip level the balance may run while a trip is blocked.
    friendly_credit_fen: int = 1000
    #: Emergency credit granted on request (0 = off).
    emergency_credit_fen: int = 500
    #: After emergency credit, reconnection needs the balance to reach at least this.
    reconnect_min_fen: int = 100
    max_trips_per_minute: int = 10


@dataclass(frozen=True, slots=True)
class Override:
    """A manual decision by an operator, recorded with who and why."""

    who: str
    why: str
    #: True: disconnect despite time rules, notice, exemption; False: hold supply on.
    allow: bool = True

    def __post_init__(self) -> None:
        if not self.who.strip() or not self.why.strip():
            raise ValueError("an override must say who made it and why (it is audited)")


@dataclass(frozen=True, slots=True, kw_only=True)
class MeterContext:
    """What the gate knows about one meter. Deliberately nothing but the energy wallet:
    there is no way to hand it property fee, rent or service debt."""

    meter_id: str
    #: Balance of this meter's energy wallet (fen).
    energy_balance_fen: int
    #: The fee-control state of that same energy wallet (`feecontrol.evaluate`).
    fee_state: FeeState
    thresholds: FeeThresholds = field(default_factory=FeeThresholds)
    #: 保电: the meter executes no trip of any origin.
    protected: bool = False
    #: Vulnerable or otherwise exempt from disconnection.
    exempt: bool = False
    exempt_reason: str = ""
    #: When the disconnection notice of the current arrears episode was served.
    notice_served_at: dt.datetime | None = None
    #: Emergency credit advanced and not yet repaid (fen); like the ledger's
    #: `Balances.emergency_outstanding_fen` it is already included in the balance.
    emergency_outstanding_fen: int = 0
    override: Override | None = None

    def __post_init__(self) -> None:
        if isinstance(self.energy_balance_fen, bool) or not isinstance(
            self.energy_balance_fen, int
        ):
            raise TypeError("energy_balance_fen must be whole fen (int)")
        if not isinstance(self.fee_state, FeeState):
            raise TypeError("fee_state must be a FeeState of the energy wallet")

    @property
    def trip_level_fen(self) -> int:
        """The balance at or below which the meter is due to trip."""
        return -self.thresholds.overdraft_limit_fen


# -- the calendar ---------------------------------------------------------------------------


class TripCalendar:
    """Working days for trips: weekends, public holidays and 调休 of one country."""

    def __init__(self, policy: PolicyConfig) -> None:
        self.policy = policy
        self._years: dict[int, tuple[dict[dt.date, str], frozenset[dt.date]]] = {}

    def _year(self, year: int) -> tuple[dict[dt.date, str], frozenset[dt.date]]:
        cached = self._years.get(year)
        if cached is None:
            code = self.policy.holiday_calendar
            if code:
                import holidays  # deferred: a 0.2 s import, only for a holiday calendar

                table = holidays.country_holidays(code, years=year)
                days = {d: str(name) for d, name in table.items() if d.year == year}
                workdays = frozenset(
                    d for d in getattr(table, "weekend_workdays", ()) if d.year == year
                )
            else:
                days, workdays = {}, frozenset()
            cached = (days, workdays)
            self._years[year] = cached
        return cached

    def holiday(self, day: dt.date) -> str | None:
        """The holiday's name (substituted days off included), or None."""
        if day in self.policy.extra_workdays:
            return None
        if day in self.policy.extra_holidays:
            return "holiday (site file)"
        return self._year(day.year)[0].get(day)

    def adjusted_workday(self, day: dt.date) -> bool:
        """A weekend day that is worked (调休上班)."""
        if day in self.policy.extra_workdays:
            return True
        return day.weekday() >= 5 and day in self._year(day.year)[1]

    def working_day(self, day: dt.date) -> bool:
        if self.holiday(day) is not None:
            return False
        return day.weekday() < 5 or self.adjusted_workday(day)

    def why_not_trip_day(self, day: dt.date) -> str | None:
        """Why no trip may happen on `day` (None when trips are allowed)."""
        name = self.holiday(day)
        if name is not None:
            return f"{day} is a public holiday ({name})"
        adjusted = self.adjusted_workday(day)
        if day.weekday() >= 5 and not adjusted:
            return f"{day} is a {WEEKDAYS[day.weekday()]} (weekend)"
        if day.weekday() in self.policy.no_trip_weekdays and not (
            adjusted and self.policy.trip_on_adjusted_workdays
        ):
            return f"no trips on {WEEKDAYS[day.weekday()]} ({day})"
        if self.policy.no_trip_before_non_working_day:
            nxt = day + dt.timedelta(days=1)
            if not self.working_day(nxt):
                what = self.holiday(nxt) or WEEKDAYS[nxt.weekday()]
                return f"{day} is the day before a non-working day ({nxt}: {what})"
        return None


def _allowed_spans(policy: PolicyConfig) -> list[tuple[int, int]]:
    """Minutes of the day outside the quiet window."""
    a, b = policy.quiet_start, policy.quiet_end
    if a == b:
        return [(0, 24 * 60)]
    if a > b:  # 18:00–08:00: allowed 08:00–18:00
        return [(b, a)]
    return [(0, a), (b, 24 * 60)]  # a quiet window inside one day


def next_trip_instant(
    start: dt.datetime,
    policy: PolicyConfig,
    tz: ZoneInfo,
    calendar: TripCalendar,
    *,
    day_rules: bool = True,
    horizon_days: int = 400,
) -> dt.datetime | None:
    """The earliest instant ≥ `start` outside the quiet window and (with `day_rules`) on a
    day that allows trips, or None within the horizon."""
    local = start.astimezone(tz)
    spans = _allowed_spans(policy)
    for offset in range(horizon_days):
        day = local.date() + dt.timedelta(days=offset)
        if day_rules and calendar.why_not_trip_day(day) is not None:
            continue
        for a, b in spans:
            lo = _at(day, a, tz)
            hi = _at(day, b, tz)
            candidate = max(lo, start)
            if candidate < hi:
                return candidate.astimezone(dt.UTC)
    return None


def _at(day: dt.date, minute: int, tz: ZoneInfo) -> dt.datetime:
    if minute >= 24 * 60:
        return dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), tzinfo=tz)
    return dt.datetime.combine(day, dt.time(minute // 60, minute % 60), tzinfo=tz)


# -- the gate -------------------------------------------------------------------------------


def may_disconnect(
    ctx: MeterContext,
    now: dt.datetime,
    policy: PolicyConfig,
    tz: ZoneInfo | str,
    *,
    recent_trips: Iterable[dt.datetime] = (),
    calendar: TripCalendar | None = None,
) -> GateDecision:
    """May `ctx.meter_id` be tripped at `now`? `recent_trips` are the site's trips sent (or
    reserved) in the last minute, from the durable command table, so several instances
    share the limit. An ALLOW reserves nothing: record the trip before sending it.

    In order: protected supply and an operator's hold deny; an operator's override
    allows; otherwise the arrears rules decide (`_arrears_gate`). What is allowed is
    still spaced out by the mass-disconnect rate limit."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    tz = ZoneInfo(tz) if isinstance(tz, str) else tz
    calendar = calendar or TripCalendar(policy)
    if ctx.protected:
        return _deny("protected supply (保电): no trip of any origin; cancel 保电 first")
    ov = ctx.override
    if ov is not None and not ov.allow:
        return _deny(f"manual hold by {ov.who}: {ov.why}")
    forced = ov is not None and ov.allow
    if ov is not None and forced:
        reason = f"manual override by {ov.who}: {ov.why}"
    else:
        gate = _arrears_gate(ctx, now, policy, tz, calendar)
        if gate.verdict is not Verdict.ALLOW:
            return gate
        reason = gate.reason
    limited = _rate_limited(ctx, now, policy, tz, calendar, recent_trips, forced, reason)
    return limited or GateDecision(Verdict.ALLOW, None, reason)


def _arrears_gate(
    ctx: MeterContext,
    now: dt.datetime,
    policy: PolicyConfig,
    tz: ZoneInfo,
    calendar: TripCalendar,
) -> GateDecision:
    """The rules for a trip nobody forced: exemption, arrears of the energy wallet, the
    disconnection notice, quiet hours and trip days, friendly credit. ALLOW carries the
    reason; the rate limit is not applied here."""
    balance = ctx.energy_balance_fen
    if ctx.exempt:
        return _deny(
            "exempt from disconnection" + (f" ({ctx.exempt_reason})" if ctx.exempt_reason else "")
        )
    if ctx.fee_state is not FeeState.OVERDRAFT:
        return _deny(
            f"energy wallet not in arrears (fee-control state {ctx.fee_state}, balance "
            f"{_cny(balance)}); only the energy balance trips supply — property fee, "
            "rent and service debt never do"
        )
    why: list[str] = []
    level = ctx.trip_level_fen
    earliest = now
    if policy.notice_days > 0:
        if ctx.notice_served_at is None:
            return _deny(
                "no disconnection notice served; serve one — a trip may follow "
                f"{policy.notice_days} days later"
            )
        ready = ctx.notice_served_at + dt.timedelta(days=policy.notice_days)
        if ready > now:
            earliest = ready
            why.append(
                f"notice served {ctx.notice_served_at.astimezone(tz):%Y-%m-%d %H:%M} runs "
                f"{policy.notice_days} days"
            )
    beyond = balance <= level - policy.friendly_credit_fen
    when = next_trip_instant(earliest, policy, tz, calendar, day_rules=not beyond)
    if when is None:
        return _deny("no allowed trip instant within the next 400 days; check the policy")
    if when > now:
        why.extend(_blocked_reasons(now, policy, tz, calendar, day_rules=not beyond))
        if beyond:
            why.append(
                f"friendly credit exhausted (balance {_cny(balance)} ≤ "
                f"{_cny(level - policy.friendly_credit_fen)}): due at the next daytime "
                "instant, weekends and holidays included"
            )
        else:
            why.append(
                f"friendly credit: supply stays on; the balance may fall to "
                f"{_cny(level - policy.friendly_credit_fen)}"
            )
        return GateDecision(Verdict.DEFER, when, "; ".join(why))
    why.append(
        f"energy balance {_cny(balance)} at or below the trip level {_cny(level)}"
        + (f"; notice served {ctx.notice_served_at:%Y-%m-%d}" if ctx.notice_served_at else "")
        + ("; friendly credit exhausted" if beyond else "; outside quiet hours, trip day")
    )
    return GateDecision(Verdict.ALLOW, None, "; ".join(why))


def _rate_limited(
    ctx: MeterContext,
    now: dt.datetime,
    policy: PolicyConfig,
    tz: ZoneInfo,
    calendar: TripCalendar,
    recent_trips: Iterable[dt.datetime],
    forced: bool,
    reason: str,
) -> GateDecision | None:
    """DEFER to when the mass-disconnect rate limit frees a slot (for a trip nobody forced,
    also an allowed instant); None when the last minute has room for this trip."""
    window = sorted(t for t in recent_trips if now - dt.timedelta(minutes=1) < t <= now)
    if not policy.max_trips_per_minute or len(window) < policy.max_trips_per_minute:
        return None
    free = window[len(window) - policy.max_trips_per_minute] + dt.timedelta(minutes=1)
    if not forced:
        beyond = ctx.energy_balance_fen <= ctx.trip_level_fen - policy.friendly_credit_fen
        free = next_trip_instant(free, policy, tz, calendar, day_rules=not beyond) or free
    return GateDecision(
        Verdict.DEFER,
        free.astimezone(dt.UTC),
        f"rate limit: {len(window)} trips in the last minute for the site "
        f"(max {policy.max_trips_per_minute}); " + reason,
    )


def _blocked_reasons(
    now: dt.datetime, policy: PolicyConfig, tz: ZoneInfo, calendar: TripCalendar, day_rules: bool
) -> list[str]:
    out = []
    local = now.astimezone(tz)
    minute = local.hour * 60 + local.minute
    if not any(a <= minute < b for a, b in _allowed_spans(policy)):
        out.append(f"quiet hours {hhmm(policy.quiet_start)}–{hhmm(policy.quiet_end)}")
    if day_rules:
        day_reason = calendar.why_not_trip_day(local.date())
        if day_reason:
            out.append(day_reason)
    return out


def _deny(reason: str) -> GateDecision:
    return GateDecision(Verdict.DENY, None, reason)


# -- emergency credit and reconnection -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EmergencyGrant:
    granted: bool
    amount_fen: int
    reason: str


def grant_emergency_credit(ctx: MeterContext, policy: PolicyConfig) -> EmergencyGrant:
    """May emergency credit be granted on the customer's request, and how much?

    On a grant the ledger advances `amount_fen` into the energy wallet
    (`ledger.grant_emergency_credit`); then re-evaluate fee control with
    `Cause.RECHARGE` (it leaves OVERDRAFT once the balance is above the close limit, and
    implies ALLOW_CLOSE). One grant at a time; the next top-up repays it.
    """
    if policy.emergency_credit_fen <= 0:
        return EmergencyGrant(False, 0, "emergency credit is not offered on this site")
    if ctx.emergency_outstanding_fen > 0:
        return EmergencyGrant(
            False,
            0,
            f"emergency credit {_cny(ctx.emergency_outstanding_fen)} still outstanding; "
            "a top-up must repay it first",
        )
    if ctx.fee_state not in (FeeState.ALARM2, FeeState.OVER_ZERO, FeeState.OVERDRAFT):
        return EmergencyGrant(
            False,
            0,
            f"balance {_cny(ctx.energy_balance_fen)} is not low enough (state "
            f"{ctx.fee_state}); emergency credit is for a meter at or near its trip level",
        )
    return EmergencyGrant(
        True,
        policy.emergency_credit_fen,
        f"emergency credit {_cny(policy.emergency_credit_fen)} granted at balance "
        f"{_cny(ctx.energy_balance_fen)}",
    )


@dataclass(frozen=True, slots=True)
class Reconnection:
    allowed: bool
    reason: str


def reconnect_allowed(
    balance_after_fen: int,
    thresholds: FeeThresholds,
    policy: PolicyConfig,
    *,
    emergency_repaid_fen: int = 0,
    emergency_outstanding_fen: int = 0,
) -> Reconnection:
    """May supply come back after a top-up that left the energy balance at
    `balance_after_fen` (after the ledger repaid emergency credit from it)?

    Without emergency credit, §1.3 decides: balance > close limit. After emergency credit,
    the top-up must cover it plus `reconnect_min`: nothing may remain outstanding and the
    balance must reach `reconnect_min` (and exceed the close limit).
    """
    if emergency_outstanding_fen > 0:
        return Reconnection(
            False,
            f"emergency credit {_cny(emergency_outstanding_fen)} still outstanding; the "
            f"top-up must cover it plus {_cny(policy.reconnect_min_fen)}",
        )
    if emergency_repaid_fen > 0:
        need = max(policy.reconnect_min_fen, thresholds.close_limit_fen + 1)
        if balance_after_fen < need:
            return Reconnection(
                False,
                f"emergency credit {_cny(emergency_repaid_fen)} repaid, but the balance "
                f"{_cny(balance_after_fen)} is below the {_cny(need)} needed to reconnect",
            )
        return Reconnection(
            True,
            f"emergency credit {_cny(emergency_repaid_fen)} repaid; balance "
            f"{_cny(balance_after_fen)}",
        )
    if balance_after_fen <= thresholds.close_limit_fen:
        return Reconnection(
            False,
            f"balance {_cny(balance_after_fen)} is not above the close limit "
            f"{_cny(thresholds.close_limit_fen)}",
        )
    return Reconnection(True, f"balance {_cny(balance_after_fen)} above the close limit")


class TripWindow:
    """In-memory record of a site's recent trips, for a single-process caller (a service
    with several instances reads recent TRIP commands from the database instead)."""

    def __init__(self) -> None:
        self.sent: list[dt.datetime] = []

    def recent(self, now: dt.datetime) -> list[dt.datetime]:
        cutoff = now - dt.timedelta(minutes=1)
        self.sent = [t for t in self.sent if t > cutoff]
        return list(self.sent)

    def record(self, at: dt.datetime) -> None:
        self.sent.append(at)


def _cny(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"


__all__: Sequence[str] = (
    "EmergencyGrant",
    "GateDecision",
    "MeterContext",
    "Override",
    "PolicyConfig",
    "Reconnection",
    "TripCalendar",
    "TripWindow",
    "Verdict",
    "grant_emergency_credit",
    "may_disconnect",
    "next_trip_instant",
    "reconnect_allowed",
)
