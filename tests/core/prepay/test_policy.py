"""The disconnect policy gate (domain.md §3): protected supply, exemption, energy-only
arrears, notice, quiet hours, weekends, CN holidays and 调休, friendly credit, emergency
credit, rate limit and audited overrides."""

from __future__ import annotations

import dataclasses
import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from openprepay.core.config.reader import TableReader
from openprepay.core.errors import FieldError
from openprepay.core.prepay.feecontrol import Cause, FeeState, FeeThresholds, SupplyAction, evaluate
from openprepay.core.prepay.policy import (
    MeterContext,
    Override,
    PolicyConfig,
    TripCalendar,
    TripWindow,
    Verdict,
    grant_emergency_credit,
    may_disconnect,
    reconnect_allowed,
)
from openprepay.core.prepay.policy_config import read_policy

TZ = ZoneInfo("Asia/Shanghai")
POLICY = PolicyConfig()


def at(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=TZ)


def ctx(**kw) -> MeterContext:
    base = dict(
        meter_id="E-A-101",
        energy_balance_fen=-50,
        fee_state=FeeState.OVERDRAFT,
        notice_served_at=at(2025, 2, 20, 9),
    )
    base.update(kw)
    return MeterContext(**base)


def gate(c: MeterContext, now: dt.datetime, policy: PolicyConfig = POLICY, **kw):
    return may_disconnect(c, now, policy, TZ, **kw)


def test_allowed_on_a_plain_tuesday_morning():
    d = gate(ctx(), at(2025, 3, 4, 10))
    assert d.verdict is Verdict.ALLOW
    assert "energy balance -0.50 at or below the trip level 0.00" in d.reason


def test_protected_supply_is_never_tripped_even_by_override():
    c = ctx(protected=True, override=Override("ops-li", "fire inspection"))
    d = gate(c, at(2025, 3, 4, 10))
    assert d.verdict is Verdict.DENY and "保电" in d.reason


def test_exempt_customer_is_not_tripped():
    d = gate(ctx(exempt=True, exempt_reason="medical equipment"), at(2025, 3, 4, 10))
    assert d.verdict is Verdict.DENY and "medical equipment" in d.reason


def test_property_fee_debt_cannot_trip_supply():
    """The context holds the energy wallet only: a tenant with a full energy wallet is never
    tripped, whatever else they owe — there is not even a way to say what else they owe."""
    d = gate(ctx(energy_balance_fen=12_000, fee_state=FeeState.NORMAL), at(2025, 3, 4, 10))
    assert d.verdict is Verdict.DENY
    assert "property fee, rent and service debt never do" in d.reason
    fields = {f.name for f in dataclasses.fields(MeterContext)}
    assert not {
        f for f in fields if any(w in f for w in ("property", "rent", "general", "service"))
    }
    with pytest.raises(TypeError):
        ctx(property_fee_debt_fen=-500_000)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        ctx(energy_balance_fen=-12.5)


def test_quiet_hours_defer_to_the_next_morning():
    d = gate(ctx(), at(2025, 3, 3, 20))  # Monday 20:00
    assert d.verdict is Verdict.DEFER
    assert d.until == at(2025, 3, 4, 8)
    assert "quiet hours 18:00–08:00" in d.reason and "friendly credit" in d.reason
    assert gate(ctx(), at(2025, 3, 4, 7, 59)).until == at(2025, 3, 4, 8)


@pytest.mark.parametrize("day", [7, 8, 9])  # Fri, Sat, Sun
def test_no_trips_fri_sat_sun(day):
    d = gate(ctx(), at(2025, 3, day, 10))
    assert d.verdict is Verdict.DEFER
    assert d.until == at(2025, 3, 10, 8)  # Monday morning


def test_cn_public_holiday_and_the_day_before_it():
    # National Day week 2025: 10-01..10-08 off; 09-30 (Tue) is the day before a holiday
    d = gate(ctx(), at(2025, 9, 30, 10))
    assert d.verdict is Verdict.DEFER and "day before a non-working day" in d.reason
    d = gate(ctx(), at(2025, 10, 2, 10))
    assert d.verdict is Verdict.DEFER and "public holiday (National Day)" in d.reason
    assert d.until == at(2025, 10, 9, 8)  # Thursday after the holiday week


def test_substituted_day_off_is_a_holiday():
    # 2024-02-15 (Thursday) is a 调休 day off of the Spring Festival
    d = gate(ctx(), at(2024, 2, 15, 10))
    assert d.verdict is Verdict.DEFER and "Day off" in d.reason


def test_adjusted_working_day_counts_as_a_working_day():
    """2025-09-28 is a Sunday worked in exchange for the National Day holiday (调休上班):
    the holidays package lists it in `weekend_workdays`."""
    cal = TripCalendar(POLICY)
    assert cal.adjusted_workday(dt.date(2025, 9, 28))
    assert cal.working_day(dt.date(2025, 9, 28))
    d = gate(ctx(), at(2025, 9, 28, 10))
    assert d.verdict is Verdict.ALLOW
    strict = dataclasses.replace(POLICY, trip_on_adjusted_workdays=False)
    assert gate(ctx(), at(2025, 9, 28, 10), strict).verdict is Verdict.DEFER
    # 2024-10-12 is a Saturday worked, but Sunday follows: still no trip
    d = gate(ctx(), at(2024, 10, 12, 10))
    assert d.verdict is Verdict.DEFER and "day before a non-working day" in d.reason


def test_site_file_can_add_holidays_and_workdays():
    policy = dataclasses.replace(
        POLICY,
        extra_holidays=frozenset({dt.date(2025, 3, 5)}),
        extra_workdays=frozenset({dt.date(2025, 3, 9)}),
    )
    cal = TripCalendar(policy)
    assert cal.holiday(dt.date(2025, 3, 5)) is not None
    assert cal.working_day(dt.date(2025, 3, 9))
    assert gate(ctx(), at(2025, 3, 4, 10), policy).verdict is Verdict.DEFER  # day before


def test_notice_must_be_served_and_run_its_days():
    d = gate(ctx(notice_served_at=None), at(2025, 3, 4, 10))
    assert d.verdict is Verdict.DENY and "no disconnection notice" in d.reason
    d = gate(ctx(notice_served_at=at(2025, 3, 3, 15)), at(2025, 3, 4, 10))
    assert d.verdict is Verdict.DEFER
    # 3 days after Monday 15:00 is Thursday 15:00 — inside the daytime window
    assert d.until == at(2025, 3, 6, 15)
    d = gate(ctx(notice_served_at=at(2025, 3, 4, 17)), at(2025, 3, 4, 18))
    assert d.until == at(2025, 3, 10, 8)  # Fri 17:00 → the weekend → Monday 08:00


def test_friendly_credit_cap():
    """Blocked trips let the balance run down to 10.00 below the trip level; beyond it the
    weekend/holiday rules are lifted, never the quiet hours."""
    saturday = at(2025, 3, 8, 10)
    within = gate(ctx(energy_balance_fen=-999), saturday)
    assert within.verdict is Verdict.DEFER and within.until == at(2025, 3, 10, 8)
    beyond = gate(ctx(energy_balance_fen=-1000), saturday)
    assert beyond.verdict is Verdict.ALLOW and "friendly credit exhausted" in beyond.reason
    night = gate(ctx(energy_balance_fen=-5000), at(2025, 3, 8, 22))
    assert night.verdict is Verdict.DEFER and night.until == at(2025, 3, 9, 8)
    assert "friendly credit exhausted" in night.reason
    # the cap is counted below the account's own trip level
    deep = ctx(
        energy_balance_fen=-1400,
        thresholds=FeeThresholds(overdraft_limit_fen=500),
    )
    assert gate(deep, saturday).verdict is Verdict.DEFER


def test_emergency_credit_grant():
    low = ctx(energy_balance_fen=-100, fee_state=FeeState.OVERDRAFT)
    grant = grant_emergency_credit(low, POLICY)
    assert grant.granted and grant.amount_fen == 500
    # the ledger advances it into the energy wallet; fee control leaves OVERDRAFT
    decision = evaluate(FeeState.OVERDRAFT, -100 + 500, FeeThresholds(), Cause.RECHARGE)
    assert decision.action is SupplyAction.ALLOW_CLOSE
    using = dataclasses.replace(
        low, energy_balance_fen=400, fee_state=decision.state, emergency_outstanding_fen=500
    )
    assert gate(using, at(2025, 3, 4, 10)).verdict is Verdict.DENY  # not in arrears
    assert not grant_emergency_credit(using, POLICY).granted  # one at a time
    spent = dataclasses.replace(using, energy_balance_fen=0, fee_state=FeeState.OVERDRAFT)
    assert not grant_emergency_credit(spent, POLICY).granted  # still outstanding
    assert gate(spent, at(2025, 3, 4, 10)).verdict is Verdict.ALLOW
    rich = ctx(energy_balance_fen=9000, fee_state=FeeState.NORMAL)
    assert not grant_emergency_credit(rich, POLICY).granted
    off = dataclasses.replace(POLICY, emergency_credit_fen=0)
    assert not grant_emergency_credit(low, off).granted


def test_reconnection_after_emergency_credit_needs_it_repaid_plus_a_minimum():
    t = FeeThresholds()
    # tripped at 0.00 after using 5.00 of emergency credit: a 5.50 top-up repays it and
    # leaves 0.50 — not enough; 6.00 leaves 1.00 — enough
    r = reconnect_allowed(50, t, POLICY, emergency_repaid_fen=500)
    assert not r.allowed and "1.00 needed" in r.reason
    assert reconnect_allowed(100, t, POLICY, emergency_repaid_fen=500).allowed
    r = reconnect_allowed(0, t, POLICY, emergency_outstanding_fen=200)
    assert not r.allowed and "still outstanding" in r.reason
    # without emergency credit, §1.3's close limit decides
    assert reconnect_allowed(1, t, POLICY).allowed
    assert not reconnect_allowed(0, t, POLICY).allowed


def test_rate_limit_on_mass_disconnects():
    now = at(2025, 3, 4, 10, 0, 30)
    window = TripWindow()
    for s in range(10):
        window.record(at(2025, 3, 4, 9, 59, 40) + dt.timedelta(seconds=s))
    d = gate(ctx(), now, recent_trips=window.recent(now))
    assert d.verdict is Verdict.DEFER and "rate limit: 10 trips" in d.reason
    assert d.until == at(2025, 3, 4, 10, 0, 40)  # when the oldest leaves the minute
    assert gate(ctx(), now, recent_trips=window.recent(now)[1:]).verdict is Verdict.ALLOW
    old = [at(2025, 3, 4, 9, 50)] * 50
    assert gate(ctx(), now, recent_trips=old).verdict is Verdict.ALLOW


def test_manual_override_is_audited_and_bypasses_time_rules_but_not_the_rate_limit():
    with pytest.raises(ValueError, match="who made it and why"):
        Override("ops-li", " ")
    ov = Override("ops-li", "tenant moved out; meter to be replaced")
    d = gate(
        ctx(override=ov, fee_state=FeeState.NORMAL, energy_balance_fen=5000), at(2025, 3, 8, 23)
    )
    assert d.verdict is Verdict.ALLOW
    assert d.reason == "manual override by ops-li: tenant moved out; meter to be replaced"
    busy = [at(2025, 3, 8, 22, 59, 50)] * 10
    assert gate(ctx(override=ov), at(2025, 3, 8, 23), recent_trips=busy).verdict is Verdict.DEFER
    hold = Override("ops-wang", "dispute under review", allow=False)
    d = gate(ctx(override=hold), at(2025, 3, 4, 10))
    assert d.verdict is Verdict.DENY and "manual hold by ops-wang" in d.reason


def test_policy_from_the_site_file():
    errors: list[FieldError] = []
    policy = read_policy(
        TableReader(
            {
                "quiet_start": "20:00",
                "quiet_end": "07:30",
                "no_trip_days": ["Sat", "Sun"],
                "friendly_credit": "15.50",
                "extra_holidays": ["2027-02-08"],
                "max_trips_per_minute": 5,
            },
            "prepay.policy",
            errors,
        )
    )
    assert not errors
    assert (policy.quiet_start, policy.quiet_end) == (20 * 60, 7 * 60 + 30)
    assert policy.no_trip_weekdays == frozenset({5, 6})
    assert policy.friendly_credit_fen == 1550
    errors = []
    read_policy(
        TableReader(
            {
                "quiet_start": "25:00",
                "no_trip_days": ["Friday"],
                "friendly_credit": "1.234",
                "x": 1,
            },
            "prepay.policy",
            errors,
        )
    )
    messages = [str(e) for e in errors]
    assert (
        "prepay.policy.quiet_start: expected a time HH:MM from 00:00 to 23:59, got '25:00'"
        in messages
    )
    assert any(m.startswith("prepay.policy.no_trip_days: unknown day 'Friday'") for m in messages)
    assert "prepay.policy.friendly_credit: at most 2 decimals (whole fen), got 1.234" in messages
    assert any(m.startswith("prepay.policy.x: unknown key") for m in messages)
