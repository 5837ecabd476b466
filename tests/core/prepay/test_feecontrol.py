"""Fee control: the full state table of domain.md §1.3, its stickiness rules, its worked
example, the implied supply actions, and threshold/recharge validation."""

from __future__ import annotations

import pytest

from openprepay.core.prepay.feecontrol import (
    Cause,
    FeeState,
    FeeThresholds,
    SupplyAction,
    check_recharge,
    classify,
    evaluate,
)

N, A1, A2, OZ, OD = (
    FeeState.NORMAL,
    FeeState.ALARM1,
    FeeState.ALARM2,
    FeeState.OVER_ZERO,
    FeeState.OVERDRAFT,
)

EXAMPLE = FeeThresholds(alarm1_fen=2000, alarm2_fen=1000, overdraft_limit_fen=500)


@pytest.mark.parametrize(
    ("balance", "state"),
    [(2500, N), (1800, A1), (800, A2), (0, OZ), (-200, OZ), (-500, OD), (-530, OD)],
)
def test_worked_example(balance, state):
    """alarm1 20, alarm2 10, limit 5: 25 → NORMAL; 18 → ALARM1; 8 → ALARM2; 0 and −2 →
    OVER_ZERO; −5 and −5.30 → OVERDRAFT."""
    assert classify(balance, EXAMPLE) is state


def test_worked_example_recharge_allows_closing():
    d = evaluate(OD, -530 + 10000, EXAMPLE, Cause.RECHARGE)
    assert (d.state, d.action) == (N, SupplyAction.ALLOW_CLOSE)
    assert "94.70" in d.reason


# The §1.3 table: rules 1–5 at every boundary, with and without each threshold.
TABLE = [
    # (alarm1, alarm2, limit, balance, state)
    # limit = 0: r ≤ 0 trips
    (2000, 1000, 0, 1, A2),
    (2000, 1000, 0, 0, OD),
    (2000, 1000, 0, -1, OD),
    # limit > 0: OVER_ZERO for −limit < r ≤ 0, OVERDRAFT at −r ≥ limit
    (2000, 1000, 500, 0, OZ),
    (2000, 1000, 500, -499, OZ),
    (2000, 1000, 500, -500, OD),
    (2000, 1000, 500, -501, OD),
    # ALARM2: 0 < r ≤ alarm2
    (2000, 1000, 500, 1, A2),
    (2000, 1000, 500, 1000, A2),
    # ALARM1: alarm2 < r ≤ alarm1
    (2000, 1000, 500, 1001, A1),
    (2000, 1000, 500, 2000, A1),
    (2000, 1000, 500, 2001, N),
    # alarm2 = 0: no pre-trip level, ALARM1 reaches down to 0+
    (2000, 0, 500, 1, A1),
    (2000, 0, 500, 2000, A1),
    (2000, 0, 0, 0, OD),
    # alarm1 = 0 (and alarm2 = 0): no alarms at all
    (0, 0, 500, 1, N),
    (0, 0, 500, -1, OZ),
    # alarm1 = alarm2: ALARM2 wins (pre-trip), nothing is ALARM1
    (1000, 1000, 0, 1000, A2),
    (1000, 1000, 0, 1001, N),
]


@pytest.mark.parametrize(("alarm1", "alarm2", "limit", "balance", "state"), TABLE)
def test_state_table(alarm1, alarm2, limit, balance, state):
    t = FeeThresholds(alarm1_fen=alarm1, alarm2_fen=alarm2, overdraft_limit_fen=limit)
    assert classify(balance, t) is state
    # from any non-OVERDRAFT state, every cause evaluates the same rules
    for previous in (N, A1, A2, OZ):
        for cause in Cause:
            assert evaluate(previous, balance, t, cause).state is state


@pytest.mark.parametrize("cause", [Cause.DEDUCTION, Cause.REFUND])
def test_deductions_and_refunds_never_leave_overdraft(cause):
    for balance in (-10_000, -500, 0, 800, 1_000_000):
        d = evaluate(OD, balance, EXAMPLE, cause)
        assert (d.state, d.action) == (OD, SupplyAction.NONE)


@pytest.mark.parametrize("cause", [Cause.RECHARGE, Cause.ALARM_THRESHOLD_CHANGE])
def test_recharge_or_alarm_change_leaves_overdraft_only_above_close_limit(cause):
    t = FeeThresholds(
        alarm1_fen=2000, alarm2_fen=1000, overdraft_limit_fen=500, close_limit_fen=300
    )
    assert evaluate(OD, 300, t, cause).state is OD  # not > close limit
    assert evaluate(OD, -100, t, cause).state is OD  # would be OVER_ZERO: still stuck
    d = evaluate(OD, 301, t, cause)
    assert (d.state, d.action) == (A2, SupplyAction.ALLOW_CLOSE)
    assert evaluate(OD, 5000, t, cause).state is N


@pytest.mark.parametrize("cause", [Cause.OVERDRAFT_LIMIT_CHANGE, Cause.WALLET_PRESET])
def test_limit_change_or_preset_re_evaluates_normally(cause):
    t = FeeThresholds(
        alarm1_fen=2000, alarm2_fen=1000, overdraft_limit_fen=1000, close_limit_fen=300
    )
    d = evaluate(OD, -600, t, cause)  # limit raised to 10.00: −6.00 is OVER_ZERO now
    assert (d.state, d.action) == (OZ, SupplyAction.ALLOW_CLOSE)
    assert evaluate(OD, 100, t, cause).state is A2  # below the close limit, still re-evaluated


@pytest.mark.parametrize(
    ("previous", "state", "action"),
    [
        (N, A1, SupplyAction.ALARM),
        (N, A2, SupplyAction.PRE_TRIP),
        (A1, A2, SupplyAction.PRE_TRIP),
        (A2, OZ, SupplyAction.PRE_TRIP),
        (OZ, OD, SupplyAction.TRIP),
        (N, OD, SupplyAction.TRIP),
        (A1, N, SupplyAction.ALARM_CLEAR),
        (A2, A1, SupplyAction.ALLOW_CLOSE),
        (OZ, N, SupplyAction.ALLOW_CLOSE),
        (OZ, A2, SupplyAction.NONE),
        (A1, A1, SupplyAction.NONE),
    ],
)
def test_actions_of_transitions(previous, state, action):
    balance = {N: 5000, A1: 1500, A2: 500, OZ: -100, OD: -600}[state]
    d = evaluate(
        previous,
        balance,
        EXAMPLE,
        Cause.DEDUCTION if state.severity >= previous.severity else Cause.RECHARGE,
    )
    assert (d.state, d.action) == (state, action)


def test_threshold_validation():
    assert FeeThresholds().problems() == []
    (p,) = FeeThresholds(alarm1_fen=500, alarm2_fen=1000).problems()
    assert p.path == "alarm1_fen" and "must be at least alarm2 (10.00)" in p.message
    assert FeeThresholds(overdraft_limit_fen=-1).problems()[0].path == "overdraft_limit_fen"
    with pytest.raises(ValueError, match="alarm1"):
        FeeThresholds(alarm1_fen=0, alarm2_fen=1).validate()


def test_recharge_limits():
    t = FeeThresholds(hoard_limit_fen=500_000)
    assert check_recharge(-530, 10_000, t).allowed
    refused = check_recharge(450_000, 60_000, t)
    assert not refused.allowed and "hoarding limit 5000.00" in refused.reason
    assert not check_recharge(0, 0, t).allowed
    big = check_recharge(99_999_000, 1_000, FeeThresholds(hoard_limit_fen=0))
    assert not big.allowed and "capacity" in big.reason
