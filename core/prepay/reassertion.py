"""Supply re-assertion: the standing supply decision, sent again to a meter that disobeys it.

The supply watch (`core/prepay/supply_watch.py`) decides *when* a meter disobeys: its Good
readings show the opposite of the standing decision (`prepay_meter.desired_on`) past the
grace. This module decides *what* is done then, in the caller's transaction:

- a restore is sent again at once;
- a cut is sent again through the policy gate as the enforcement of a cut the gate already
  allowed, not a new disconnection decision: quiet hours, trip days, notice, exemption and
  arrears rules do not hold it back (a bypassed meter would otherwise stay on all night),
  while protected supply (保电) still denies it and the mass-disconnect rate limit still
  spaces it out.

The command keeps the decision's requester (fee control stays the one that cut), the audit
names the supply watch, and the next re-assertion waits `backoff(n)` after the n-th in a
row. When the meter reads the decided state again, `supply_obeyed` ends the mismatch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.engine import Connection

from ..events import SupplyMismatch
from ..model import SupplyControl
from . import commands as cmds
from .account_rows import energy_balances, load_account_row
from .accounts import account_for_meter
from .control import PrepayControl
from .effects import Effects, audit
from .feecontrol import FeeState, FeeThresholds
from .policy import GateDecision, Override, Verdict
from .supply_state import meter_context, queue_supply_command

log = logging.getLogger("openprepay.prepay")

#: Who re-asserts a standing supply decision on a meter that disobeys it (audit).
SUPPLY_WATCH = "supply-watch"


@dataclass(frozen=True, slots=True)
class _Mismatch:
    """A meter that reads supply `observed_on` since `since` against `decision`."""

    meter_id: str
    account_id: str | None
    #: The meter's `prepay_meter` row.
    row: Any
    supply: SupplyControl
    decision: cmds.MeterCommand
    observed_on: bool
    since: datetime

    def why(self, consecutive: int) -> str:
        observed = "on" if self.observed_on else "off"
        decision = self.decision
        return (
            f"the meter reads supply {observed} since {self.since:%Y-%m-%d %H:%M:%S} UTC while "
            f"#{decision.id} ({decision.kind}, {decision.state}) stands; possible bypass, "
            f"reset, power cycle or swapped meter (re-assertion {consecutive} in a row)"
        )


@dataclass(frozen=True, slots=True)
class _Attempt:
    """What one re-assertion did: the command sent (0: none), what the audit says, when the
    next may follow, and the meter's counters to store."""

    command_id: int
    detail: str
    next_at: datetime
    reasserts: int
    mismatch_count: int


def reassert_supply(
    control: PrepayControl,
    conn: Connection,
    meter_id: str,
    observed_on: bool,
    since: datetime,
    *,
    decided_by: int,
    backoff: Callable[[int], timedelta],
    effects: Effects,
    now: datetime,
) -> SupplyMismatch | None:
    """Send the standing supply decision (`decided_by`, a finished command) to a meter
    whose Good readings have shown `observed_on` since `since` (module docstring), count
    it on the meter and audit it. Returns the `SupplyMismatch` to publish, or None when
    the decision changed meanwhile (nothing done)."""
    mismatch = _standing_mismatch(control, conn, meter_id, observed_on, since, decided_by)
    if mismatch is None:
        return None
    attempt = _attempt(control, conn, mismatch, backoff, effects, now)
    audit(
        conn,
        effects,
        SUPPLY_WATCH,
        "reassert",
        meter_id,
        attempt.detail,
        ok=attempt.command_id > 0,
        now=now,
    )
    control.upsert_meter(
        conn,
        meter_id,
        now,
        mismatch_count=attempt.mismatch_count,
        reasserts=attempt.reasserts,
        mismatch_since=mismatch.row.mismatch_since or since,
        reassert_due_at=attempt.next_at,
    )
    event = SupplyMismatch(
        meter_id,
        mismatch.account_id,
        bool(mismatch.row.desired_on),
        observed_on,
        True,
        attempt.mismatch_count,
        attempt.reasserts,
        attempt.command_id,
        attempt.next_at,
        attempt.detail,
        at=now,
    )
    effects.events.append(event)
    log.warning(
        "meter %s disobeys: %s",
        meter_id,
        attempt.detail,
        extra={"meter": meter_id, "account": mismatch.account_id or "-"},
    )
    return event


def _standing_mismatch(
    control: PrepayControl,
    conn: Connection,
    meter_id: str,
    observed_on: bool,
    since: datetime,
    decided_by: int,
) -> _Mismatch | None:
    """The mismatch to act on; None when there is none any more: no decision, a newer one,
    the meter reads the decided state, or the command is still on its way (its read-back
    decides first)."""
    row = control.meter_row(conn, meter_id)
    supply = control.supply_of(meter_id)
    if (
        row is None
        or supply is None
        or row.desired_on is None
        or row.desired_command_id != decided_by
        or bool(row.desired_on) == observed_on
    ):
        return None
    decision = cmds.get_command(conn, decided_by)
    if decision.state not in (cmds.CommandState.CONFIRMED, cmds.CommandState.FAILED):
        return None
    account_id = account_for_meter(conn, meter_id)
    return _Mismatch(meter_id, account_id, row, supply, decision, observed_on, since)


def _attempt(
    control: PrepayControl,
    conn: Connection,
    mismatch: _Mismatch,
    backoff: Callable[[int], timedelta],
    effects: Effects,
    now: datetime,
) -> _Attempt:
    """Send the decision again — a restore at once, a cut if the gate lets it — or say why
    it is held back."""
    row, decision = mismatch.row, mismatch.decision
    consecutive = int(row.reasserts) + 1
    count = int(row.mismatch_count) + 1
    why = mismatch.why(consecutive)
    next_at = now + backoff(consecutive)
    desired_on = bool(row.desired_on)
    if desired_on:
        kind = mismatch.supply.restore
        gate = None
    else:
        kind = mismatch.supply.cut
        gate = _reassert_gate(control, conn, mismatch, now)
    if gate is not None and gate.verdict is Verdict.DENY:
        return _Attempt(0, f"{why}; not re-asserted: {gate.reason}", next_at, consecutive, count)
    if gate is not None and gate.verdict is Verdict.DEFER:
        next_at = gate.until or next_at
        detail = f"{why}; held until {next_at:%H:%M:%S} UTC: {gate.reason}"
        # Nothing was sent: the back-off does not grow.
        return _Attempt(0, detail, next_at, consecutive - 1, count - 1)
    command = queue_supply_command(
        conn,
        effects,
        mismatch.meter_id,
        kind,
        f"re-asserted {kind} of #{decision.id}: {decision.reason}",
        decision.requested_by,
        mismatch.account_id,
        now,
        desired_on=desired_on,
        reassertion=True,
    )
    detail = (
        f"{why}; {kind} #{command.id} sent again, the next no sooner than {next_at:%H:%M:%S} UTC"
    )
    return _Attempt(command.id, detail, next_at, consecutive, count)


def _reassert_gate(
    control: PrepayControl, conn: Connection, mismatch: _Mismatch, now: datetime
) -> GateDecision:
    """The gate for sending a standing cut again: an override by the supply watch, so
    only protected supply and the mass-disconnect rate limit apply."""
    account_id = mismatch.account_id
    account = load_account_row(conn, account_id) if account_id else None
    ctx = meter_context(
        mismatch.meter_id,
        energy_balances(conn, account_id)[0] if account_id else 0,
        account.fee_state if account else FeeState.NORMAL,
        account.thresholds if account else FeeThresholds(),
        bool(account and account.protected),
        None,
        Override(SUPPLY_WATCH, f"re-assert the cut of #{mismatch.decision.id}", allow=True),
    )
    return control.gate(conn, ctx, now)


def supply_obeyed(
    control: PrepayControl,
    conn: Connection,
    meter_id: str,
    observed_on: bool,
    *,
    effects: Effects,
    now: datetime,
) -> SupplyMismatch | None:
    """The meter reads the desired state again: end its mismatch (the back-off starts
    afresh) and return the event that clears the alarm; None if there was none."""
    row = control.meter_row(conn, meter_id)
    if row is None or (row.mismatch_since is None and not row.reasserts):
        return None
    control.upsert_meter(
        conn, meter_id, now, reasserts=0, mismatch_since=None, reassert_due_at=None
    )
    account_id = account_for_meter(conn, meter_id)
    detail = (
        f"the meter reads supply {'on' if observed_on else 'off'} as decided again, after "
        f"{int(row.reasserts)} re-assertion(s)"
    )
    audit(conn, effects, SUPPLY_WATCH, "reassert", meter_id, detail, now=now)
    event = SupplyMismatch(
        meter_id,
        account_id,
        observed_on,
        observed_on,
        False,
        int(row.mismatch_count),
        0,
        0,
        None,
        detail,
        at=now,
    )
    effects.events.append(event)
    return event
