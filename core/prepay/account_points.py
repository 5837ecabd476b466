"""Accounts as points: how the prepayment engine publishes balances and alarm levels.

An account's state is published on the event bus as an ordinary `Sample` of the pseudo-model
`openprepay.account` (kind `MeterKind.ACCOUNT`), with `source` set to the account id.
The historian stores it (InfluxDB measurement `account`, tag `account`), the OPC UA server
and reports read it back like any meter point. Publish a sample whenever one of the values
changes (after a posting, an alarm evaluation or a supply change); `account_sample()` builds
one. Money stays in integer fen, as in the ledger.
"""

from __future__ import annotations

from datetime import datetime

from ..model import DeviceModel, MeterKind, PointRole, PointSpec, Sample, ValueType
from .feecontrol import FeeState


def _point(
    name: str, unit: str, description: str, vt: ValueType, role: PointRole = PointRole.STATE
) -> PointSpec:
    return PointSpec(name, unit, description, role, vt)


ACCOUNT_MODEL = DeviceModel(
    name="openprepay.account",
    vendor="OpenPrepay",
    product="Prepayment account",
    kind=MeterKind.ACCOUNT,
    description="Balances, alarm level and supply state of one prepayment account",
    points=(
        _point(
            "energy_balance_fen",
            "fen",
            "Energy wallet balance (what fee control reads), in fen",
            ValueType.INT,
        ),
        _point(
            "general_balance_fen",
            "fen",
            "General wallet balance (property fee, rent, services), in fen",
            ValueType.INT,
        ),
        _point(
            "alarm_level",
            "",
            "Fee-control state: 0 NORMAL, 1 ALARM1, 2 ALARM2, 3 OVER_ZERO, 4 OVERDRAFT"
            " (FeeState.severity)",
            ValueType.INT,
        ),
        _point("supply_on", "", "1 while every meter of the account supplies", ValueType.BOOL),
        _point(
            "emergency_credit_fen",
            "fen",
            "Emergency credit advanced and not yet repaid, in fen",
            ValueType.INT,
        ),
    ),
    plugin="core",
)


def account_sample(
    account_id: str,
    at: datetime,
    *,
    energy_balance_fen: int,
    general_balance_fen: int,
    alarm_level: FeeState,
    supply_on: bool,
    emergency_credit_fen: int = 0,
) -> Sample:
    """The sample that records an account's state at `at` (UTC)."""
    return Sample(
        account_id,
        ACCOUNT_MODEL,
        at,
        {
            "energy_balance_fen": int(energy_balance_fen),
            "general_balance_fen": int(general_balance_fen),
            "alarm_level": FeeState(alarm_level).severity,
            "supply_on": bool(supply_on),
            "emergency_credit_fen": int(emergency_credit_fen),
        },
    )
