"""Fee control: the balance state machine of a prepaid meter (domain.md §1.2–§1.3).

Pure functions of integers. With r = the energy balance in fen:

1. OVERDRAFT (trip, not restorable locally): `limit>0 ∧ r<0 ∧ −r ≥ limit`, or `limit=0 ∧ r ≤ 0`;
2. OVER_ZERO (pre-trip, restorable): `limit>0 ∧ r ≤ 0 ∧ −r < limit`;
3. ALARM2 (pre-trip): `alarm2>0 ∧ 0 < r ≤ alarm2`;
4. ALARM1 (alarm only): `alarm1>0 ∧ r ≤ alarm1` (and `r > alarm2` when alarm2 > 0);
5. NORMAL otherwise — evaluated in this order after every deduction, recharge, refund or
   threshold change.

OVERDRAFT is sticky: deductions and refunds never leave it; a recharge or an alarm-threshold
change re-evaluates only if it leaves `r > close_limit`; a wallet preset or an
overdraft-limit change re-evaluates normally.

`evaluate(previous, balance_fen, thresholds, cause)` returns the new state and the supply
action the transition implies; whether and when a trip is actually sent is the policy
gate's decision (`core/prepay/policy.py`). Only the energy wallet's balance is ever an input.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ..config.reader import TableReader
from ..errors import FieldError

#: The meter can hold at most 999,999.99 CNY (domain.md §1.2).
METER_CAPACITY_FEN = 99_999_999


class FeeState(enum.StrEnum):
    NORMAL = "NORMAL"
    ALARM1 = "ALARM1"
    ALARM2 = "ALARM2"
    OVER_ZERO = "OVER_ZERO"
    OVERDRAFT = "OVERDRAFT"

    @property
    def severity(self) -> int:
        return _SEVERITY[self]

    @property
    def supply(self) -> str:
        """What the state means for supply: on, alarm, pre-trip or trip."""
        return _SUPPLY[self]


_SEVERITY = {
    FeeState.NORMAL: 0,
    FeeState.ALARM1: 1,
    FeeState.ALARM2: 2,
    FeeState.OVER_ZERO: 3,
    FeeState.OVERDRAFT: 4,
}
_SUPPLY = {
    FeeState.NORMAL: "on",
    FeeState.ALARM1: "alarm",
    FeeState.ALARM2: "pre-trip",
    FeeState.OVER_ZERO: "pre-trip",
    FeeState.OVERDRAFT: "trip",
}
_PRE_TRIP = (FeeState.ALARM2, FeeState.OVER_ZERO)


class Cause(enum.StrEnum):
    """Why the state is evaluated; it decides how sticky OVERDRAFT is."""

    DEDUCTION = "deduction"
    REFUND = "refund"
    RECHARGE = "recharge"
    ALARM_THRESHOLD_CHANGE = "alarm_threshold_change"
    OVERDRAFT_LIMIT_CHANGE = "overdraft_limit_change"
    WALLET_PRESET = "wallet_preset"


class SupplyAction(enum.StrEnum):
    """The command a transition implies (domain.md §1.4 command types)."""

    NONE = "NONE"
    ALARM = "ALARM"
    ALARM_CLEAR = "ALARM_CLEAR"
    PRE_TRIP = "PRE_TRIP"
    TRIP = "TRIP"
    ALLOW_CLOSE = "ALLOW_CLOSE"


@dataclass(frozen=True, slots=True)
class FeeThresholds:
    """Per-account thresholds in fen (names as in the account table)."""

    alarm1_fen: int = 2000
    alarm2_fen: int = 500
    overdraft_limit_fen: int = 0
    close_limit_fen: int = 0
    #: A recharge is refused when balance + amount would exceed it; 0 = off.
    hoard_limit_fen: int = 500_000

    def problems(self) -> list[FieldError]:
        """Why these thresholds cannot be saved (empty when they can)."""
        out = []
        for name in (
            "alarm1_fen",
            "alarm2_fen",
            "overdraft_limit_fen",
            "close_limit_fen",
            "hoard_limit_fen",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                out.append(FieldError(name, f"expected whole fen ≥ 0, got {value!r}"))
        if not out and self.alarm1_fen < self.alarm2_fen:
            out.append(
                FieldError(
                    "alarm1_fen",
                    f"alarm1 ({_cny(self.alarm1_fen)}) must be at least alarm2 "
                    f"({_cny(self.alarm2_fen)}): alarm 1 warns before alarm 2 pre-trips",
                )
            )
        if not out and self.hoard_limit_fen > METER_CAPACITY_FEN:
            out.append(
                FieldError(
                    "hoard_limit_fen",
                    f"at most the meter capacity {_cny(METER_CAPACITY_FEN)}, "
                    f"got {_cny(self.hoard_limit_fen)}",
                )
            )
        return out

    def validate(self) -> FeeThresholds:
        problems = self.problems()
        if problems:
            raise ValueError("; ".join(str(p) for p in problems))
        return self


@dataclass(frozen=True, slots=True)
class FeeDecision:
    previous: FeeState
    state: FeeState
    action: SupplyAction
    #: Why, for the audit trail.
    reason: str

    @property
    def changed(self) -> bool:
        return self.state is not self.previous


def classify(balance_fen: int, t: FeeThresholds) -> FeeState:
    """The state by §1.3's rules 1–5 alone (no stickiness)."""
    r = balance_fen
    limit = t.overdraft_limit_fen
    if (limit > 0 and r < 0 and -r >= limit) or (limit == 0 and r <= 0):
        return FeeState.OVERDRAFT
    if limit > 0 and r <= 0 and -r < limit:
        return FeeState.OVER_ZERO
    if t.alarm2_fen > 0 and 0 < r <= t.alarm2_fen:
        return FeeState.ALARM2
    if t.alarm1_fen > 0 and r <= t.alarm1_fen and (t.alarm2_fen == 0 or r > t.alarm2_fen):
        return FeeState.ALARM1
    return FeeState.NORMAL


def evaluate(
    previous: FeeState, balance_fen: int, thresholds: FeeThresholds, cause: Cause
) -> FeeDecision:
    """The state after `cause` left the energy balance at `balance_fen`, and the action."""
    if previous is FeeState.OVERDRAFT:
        if cause in (Cause.DEDUCTION, Cause.REFUND):
            return FeeDecision(
                previous,
                previous,
                SupplyAction.NONE,
                f"{cause}: OVERDRAFT is only left by a "
                "recharge, a threshold change, a wallet preset or an overdraft-limit change",
            )
        if (
            cause in (Cause.RECHARGE, Cause.ALARM_THRESHOLD_CHANGE)
            and balance_fen <= thresholds.close_limit_fen
        ):
            return FeeDecision(
                previous,
                previous,
                SupplyAction.NONE,
                f"{cause}: balance {_cny(balance_fen)} is not above the close limit "
                f"{_cny(thresholds.close_limit_fen)}; supply stays tripped",
            )
    state = classify(balance_fen, thresholds)
    action = _action(previous, state)
    return FeeDecision(
        previous,
        state,
        action,
        f"{cause}: balance {_cny(balance_fen)} → {state}"
        + ("" if state is previous else f" (was {previous})"),
    )


def _action(previous: FeeState, state: FeeState) -> SupplyAction:
    if state is previous:
        return SupplyAction.NONE
    if state.severity > previous.severity:
        return {
            FeeState.ALARM1: SupplyAction.ALARM,
            FeeState.ALARM2: SupplyAction.PRE_TRIP,
            FeeState.OVER_ZERO: SupplyAction.PRE_TRIP,
            FeeState.OVERDRAFT: SupplyAction.TRIP,
        }[state]
    # better than before
    if previous is FeeState.OVERDRAFT:
        return SupplyAction.ALLOW_CLOSE
    if previous in _PRE_TRIP and state not in _PRE_TRIP:
        return SupplyAction.ALLOW_CLOSE
    if previous is FeeState.ALARM1 and state is FeeState.NORMAL:
        return SupplyAction.ALARM_CLEAR
    return SupplyAction.NONE  # OVER_ZERO → ALARM2: still pre-trip


@dataclass(frozen=True, slots=True)
class RechargeCheck:
    allowed: bool
    reason: str


def check_recharge(balance_fen: int, amount_fen: int, thresholds: FeeThresholds) -> RechargeCheck:
    """Hoarding and capacity limits, checked before a recharge is accepted (§1.2)."""
    after = balance_fen + amount_fen
    if amount_fen <= 0:
        return RechargeCheck(False, f"a recharge must be positive, got {_cny(amount_fen)}")
    if thresholds.hoard_limit_fen and after > thresholds.hoard_limit_fen:
        return RechargeCheck(
            False,
            f"balance would be {_cny(after)}, above the hoarding limit "
            f"{_cny(thresholds.hoard_limit_fen)}",
        )
    if after > METER_CAPACITY_FEN:
        return RechargeCheck(
            False, f"balance would be {_cny(after)}, above the meter capacity 999999.99"
        )
    return RechargeCheck(True, f"balance after recharge {_cny(after)}")


def read_thresholds(r: TableReader, defaults: FeeThresholds | None = None) -> FeeThresholds:
    """`[prepay.thresholds]`: the defaults new accounts get (amounts in CNY)."""
    d = defaults or FeeThresholds()
    values = {
        name: read_cny(r, key, getattr(d, name))
        for key, name in (
            ("alarm1", "alarm1_fen"),
            ("alarm2", "alarm2_fen"),
            ("overdraft_limit", "overdraft_limit_fen"),
            ("close_limit", "close_limit_fen"),
            ("hoard_limit", "hoard_limit_fen"),
        )
    }
    r.finish()
    out = FeeThresholds(**{k: (v if v is not None else getattr(d, k)) for k, v in values.items()})
    for p in out.problems():
        r.error(p.message, p.path.removesuffix("_fen"))
    return out


def read_cny(r: TableReader, key: str, default_fen: int) -> int | None:
    """A CNY amount from 0.00 to the meter capacity (a string "20.00" or a number, at most
    2 decimals) as fen, read by the ledger's one money parser."""
    fen: int | None = r.yuan(key, default_fen)
    return fen


def thresholds_from_record(record: Mapping[str, Any]) -> FeeThresholds:
    """From an account row (columns alarm1_fen, alarm2_fen, ...)."""
    return FeeThresholds(
        **{
            name: int(record[name])
            for name in (
                "alarm1_fen",
                "alarm2_fen",
                "overdraft_limit_fen",
                "close_limit_fen",
                "hoard_limit_fen",
            )
            if name in record
        }
    )


def _cny(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{Decimal(abs(fen)) / 100:.2f}"
