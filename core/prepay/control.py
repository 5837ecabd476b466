"""The prepayment state machine in the database: fee control, the policy gate and the
durable relay/valve commands they cause.

After every change of an account's energy balance — a usage posting, a top-up, a refund, a
threshold change — `PrepayControl.after_change(conn, account, cause)` runs **in the same
transaction** as the change:

1. fee control (`core.prepay.feecontrol.evaluate`) gives the account's new state (NORMAL, ALARM1,
   ALARM2, OVER_ZERO, OVERDRAFT); a new state is stored on the account and announced
   (`AlarmLevelChanged`, an account sample, notices in the outbox);
2. the disconnection notice of an arrears episode is served when the account first reaches
   a pre-trip state (ALARM2 / OVER_ZERO) or OVERDRAFT, and withdrawn when it is back at
   ALARM1 or better;
3. supply, per meter and by the meter's control mode:
   - **REMOTE**: in OVERDRAFT each supplying meter asks the policy gate
     (`core.prepay.policy.may_disconnect`): ALLOW → a durable cut command (TRIP, or VALVE_CLOSE
     by the model's `supply` mapping) with the gate's reason; DEFER → the meter's
     `trip_due_at` is set and the engine asks again then (and after every deduction, so
     exhausted friendly credit can bring the trip forward); DENY → no command, the reason
     is kept. Leaving OVERDRAFT restores (CLOSE / VALVE_OPEN) what fee control cut, and
     drops deferred trips. Pre-trip states only alarm and notify: the platform never
     pre-trips a remote meter;
   - **LOCAL**: the meter trips on its own balance; the platform only alarms and notifies;
   - **POSTPAID**: never an automatic supply action.

Only the energy wallet is ever read: property fee, rent and service debt live in the general
wallet, which nothing here looks at (Civil Code Art. 944).

Manual actions (`manual_cut`, `manual_restore`, protection) go through here too, so every
relay and valve command has a reason and an actor, and the outcome is audited.

Every supply command records the state it decides on the meter (`prepay_meter.desired_on`).
The newest one not superseded is the standing decision — a FAILED one included: the meter
did not obey, and `core.prepay.reassertion.reassert_supply` (called by the supply watch,
`core/prepay/supply_watch.py`) sends it again rather than fee control deciding it anew at
every deduction.

Around this module: `effects.py` (what a transaction did, the audit log), `account_rows.py`
(fee control's view of accounts), `supply_state.py` (the engine's state rows and the supply
command that records a decision), `level_notice.py` (the notice's words).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..config.site import ControlMode, Site
from ..db import schema as t
from ..events import AlarmLevelChanged, utcnow
from ..ledger import RequestError, format_fen
from ..model import DeviceModel, SupplyControl
from . import commands as cmds
from .account_points import account_sample
from .account_rows import AccountRow, energy_balances, load_account_row
from .accounts import account_for_meter, set_fee_state
from .effects import Effects, audit
from .feecontrol import Cause, FeeDecision, FeeState, FeeThresholds, evaluate
from .level_notice import notice_body, notice_subject
from .notifications import NotifySettings, enqueue_notice
from .policy import GateDecision, MeterContext, Override, TripCalendar, Verdict, may_disconnect
from .settings import PrepaySettings
from .supply_state import meter_context, queue_supply_command, state_row, upsert_state

log = logging.getLogger("openprepay.prepay")

#: Who fee control's own commands are requested by (audit).
FEE_CONTROL = "fee-control"

_PRE_TRIP_OR_WORSE = (FeeState.ALARM2, FeeState.OVER_ZERO, FeeState.OVERDRAFT)


@dataclass(frozen=True, slots=True)
class CutPlan:
    """An operator's cut as the policy gate allows it: the account (None: a meter of no
    account) and each meter with its supply mapping and gate decision (ALLOW or DEFER)."""

    account_id: str | None
    meters: list[tuple[str, SupplyControl, GateDecision]]


class PrepayControl:
    """Fee control + policy gate + supply commands, for one site."""

    def __init__(
        self,
        site: Site,
        models: Mapping[str, DeviceModel],
        settings: PrepaySettings,
        notify: NotifySettings | None = None,
    ) -> None:
        self.site = site
        self.models = models
        self.settings = settings
        self.notify = notify or NotifySettings()
        self.policy = settings.policy
        self.tz = site.info.tz
        self.calendar = TripCalendar(settings.policy)

    # -- what a meter is ----------------------------------------------------------------
    def supply_of(self, meter_id: str) -> SupplyControl | None:
        device = self.site.devices.get(meter_id)
        if device is None:
            return None
        model = self.models.get(device.model)
        return model.supply if model is not None else None

    def cut_kinds(self) -> set[str]:
        kinds = {cmds.CommandKind.TRIP.value, cmds.CommandKind.VALVE_CLOSE.value}
        for model in self.models.values():
            if model.supply is not None:
                kinds.add(model.supply.cut)
        return kinds

    # -- after a balance change ---------------------------------------------------------
    def after_change(
        self,
        conn: Connection,
        account_id: str,
        cause: Cause,
        *,
        actor: str,
        effects: Effects,
        balance_fen: int | None = None,
        account: AccountRow | None = None,
        now: datetime | None = None,
    ) -> FeeDecision | None:
        """Evaluate fee control for `account_id` after `cause` and act on the result, in
        the caller's transaction. Returns the decision (None for an account that is not
        open)."""
        now = now or utcnow()
        account = account or load_account_row(conn, account_id)
        if account is None or account.state != "OPEN":
            return None
        if balance_fen is None:
            balance_fen = energy_balances(conn, account_id)[0]
        decision = evaluate(account.fee_state, balance_fen, account.thresholds, cause)
        if decision.changed:
            self._state_changed(conn, account, decision, balance_fen, now, effects)
        if decision.state is FeeState.OVERDRAFT:
            self._consider_trips(conn, account, decision, balance_fen, now, effects)
        elif decision.previous is FeeState.OVERDRAFT or decision.changed:
            self._leave_overdraft(conn, account, decision, balance_fen, now, effects)
        return decision

    def _state_changed(
        self,
        conn: Connection,
        account: AccountRow,
        decision: FeeDecision,
        balance_fen: int,
        now: datetime,
        effects: Effects,
    ) -> None:
        set_fee_state(conn, account.id, decision.state.value, now=now)
        effects.events.append(
            AlarmLevelChanged(
                account.id, decision.previous.value, decision.state.value, balance_fen, at=now
            )
        )
        effects.accounts.add(account.id)
        worse = decision.state.severity > decision.previous.severity
        notice_served = False
        if worse and decision.state in _PRE_TRIP_OR_WORSE:
            notice_served = self._serve_notice(conn, account.id, now)
        elif decision.state.severity <= FeeState.ALARM1.severity:
            self._end_episode(conn, account.id, now)
        if decision.state.value not in self.notify.levels and not notice_served:
            return
        effects.notices += enqueue_notice(
            conn,
            account.id,
            account.notify,
            kind="alarm_level",
            subject=notice_subject(account.id, decision, balance_fen),
            body=notice_body(
                account.id, decision, balance_fen, notice_served, self.policy.notice_days
            ),
            data={
                "event": "alarm_level",
                "account": account.id,
                "previous": decision.previous.value,
                "level": decision.state.value,
                "balance_fen": balance_fen,
                "disconnection_notice": notice_served,
            },
            key=f"level:{account.id}:{now.isoformat()}:{decision.state.value}",
            now=now,
        )

    # -- per-account engine state ---------------------------------------------------------
    def _prepay_account(self, conn: Connection, account_id: str) -> Any:
        return state_row(conn, t.prepay_account, "account_id", account_id)

    def _upsert_account(
        self, conn: Connection, account_id: str, now: datetime, **values: Any
    ) -> None:
        upsert_state(conn, t.prepay_account, "account_id", account_id, now, values)

    def _serve_notice(self, conn: Connection, account_id: str, now: datetime) -> bool:
        row = self._prepay_account(conn, account_id)
        if row is not None and row.notice_served_at is not None:
            return False
        self._upsert_account(conn, account_id, now, notice_served_at=now)
        return True

    def _end_episode(self, conn: Connection, account_id: str, now: datetime) -> None:
        row = self._prepay_account(conn, account_id)
        if row is not None and (row.notice_served_at is not None or row.hold_by is not None):
            self._upsert_account(
                conn, account_id, now, notice_served_at=None, hold_by=None, hold_reason=None
            )

    def set_hold(
        self, conn: Connection, account_id: str, who: str | None, why: str | None, now: datetime
    ) -> None:
        self._upsert_account(conn, account_id, now, hold_by=who, hold_reason=why)

    # -- per-meter engine state -----------------------------------------------------------
    def meter_row(self, conn: Connection, meter_id: str) -> Any:
        return state_row(conn, t.prepay_meter, "meter_id", meter_id)

    def upsert_meter(self, conn: Connection, meter_id: str, now: datetime, **values: Any) -> None:
        upsert_state(conn, t.prepay_meter, "meter_id", meter_id, now, values)

    def latest_supply_command(self, conn: Connection, meter_id: str) -> Any:
        """The newest supply command of the meter that was not superseded or cancelled: the
        standing decision. A FAILED one stands too — the meter did not obey, and the supply
        watch re-asserts it (with back-off) instead of fee control deciding it again."""
        c = t.meter_command.c
        return conn.execute(
            sa.select(c.id, c.kind, c.state, c.requested_by)
            .where(
                c.meter_id == meter_id,
                c.kind.in_([k.value for k in cmds.SUPPLY_KINDS] + sorted(self.cut_kinds())),
                c.state != cmds.CommandState.SUPERSEDED.value,
            )
            .order_by(c.id.desc())
            .limit(1)
        ).first()

    def _is_cut(self, conn: Connection, meter_id: str, supply: SupplyControl) -> tuple[bool, Any]:
        """Whether the meter is cut or being cut (latest command a cut, or read back off)."""
        latest = self.latest_supply_command(conn, meter_id)
        if latest is not None:
            return latest.kind == supply.cut, latest
        row = self.meter_row(conn, meter_id)
        return (row is not None and row.supply_on is False), latest

    # -- trips ----------------------------------------------------------------------------
    def _remote_supply_meters(self, account: AccountRow) -> list[tuple[str, SupplyControl]]:
        out = []
        for meter_id, _kind, mode in account.meters:
            if mode != ControlMode.REMOTE.value:
                continue
            supply = self.supply_of(meter_id)
            if supply is not None:
                out.append((meter_id, supply))
        return out

    def _consider_trips(
        self,
        conn: Connection,
        account: AccountRow,
        decision: FeeDecision,
        balance_fen: int,
        now: datetime,
        effects: Effects,
    ) -> None:
        meters = self._remote_supply_meters(account)
        if not meters:
            return
        pa = self._prepay_account(conn, account.id)
        for meter_id, supply in meters:
            cut, _latest = self._is_cut(conn, meter_id, supply)
            if cut:
                continue
            override = None
            if pa is not None and pa.hold_by:
                override = Override(pa.hold_by, pa.hold_reason or "hold", allow=False)
            ctx = meter_context(
                meter_id,
                balance_fen,
                decision.state,
                account.thresholds,
                account.protected,
                pa,
                override,
            )
            gate = self.gate(conn, ctx, now)
            self._apply_gate(conn, account.id, meter_id, supply, gate, FEE_CONTROL, now, effects)

    def gate(
        self,
        conn: Connection,
        ctx: MeterContext,
        now: datetime,
        *,
        also_queued: Sequence[datetime] = (),
    ) -> GateDecision:
        """What the policy gate says of cutting `ctx`'s meter now (the mass-disconnect rate
        limit counts the cuts every instance queued in the last minute, and `also_queued`:
        cuts planned but not written yet)."""
        recent = cmds.recent_command_times(
            conn, sorted(self.cut_kinds()), now - timedelta(minutes=1)
        )
        recent = [*recent, *also_queued]
        return may_disconnect(
            ctx, now, self.policy, self.tz, recent_trips=recent, calendar=self.calendar
        )

    def _apply_gate(
        self,
        conn: Connection,
        account_id: str | None,
        meter_id: str,
        supply: SupplyControl,
        gate: GateDecision,
        actor: str,
        now: datetime,
        effects: Effects,
        reason_prefix: str = "",
    ) -> cmds.MeterCommand | None:
        row = self.meter_row(conn, meter_id)
        previous_reason = row.gate_reason if row is not None else None
        if gate.verdict is Verdict.ALLOW:
            reason = f"{reason_prefix}{gate.reason}" or "disconnect"
            command = queue_supply_command(
                conn,
                effects,
                meter_id,
                supply.cut,
                reason,
                actor,
                account_id,
                now,
                audit_as="disconnect",
                desired_on=False,
            )
            self.upsert_meter(
                conn, meter_id, now, account_id=account_id, trip_due_at=None, gate_reason=reason
            )
            return command
        due = gate.until if gate.verdict is Verdict.DEFER else None
        if row is None or row.trip_due_at != due or previous_reason != gate.reason:
            self.upsert_meter(
                conn, meter_id, now, account_id=account_id, trip_due_at=due, gate_reason=gate.reason
            )
            if previous_reason != gate.reason:
                what = (
                    f"trip deferred until {due.astimezone(self.tz):%Y-%m-%d %H:%M %Z}"
                    if due is not None
                    else "trip denied"
                )
                audit(
                    conn,
                    effects,
                    actor,
                    "disconnect",
                    meter_id,
                    f"{what}: {gate.reason}",
                    ok=False,
                    now=now,
                )
        return None

    def _leave_overdraft(
        self,
        conn: Connection,
        account: AccountRow,
        decision: FeeDecision,
        balance_fen: int,
        now: datetime,
        effects: Effects,
    ) -> None:
        """Out of OVERDRAFT: restore what fee control cut, drop deferred trips."""
        for meter_id, supply in self._remote_supply_meters(account):
            row = self.meter_row(conn, meter_id)
            if row is not None and row.trip_due_at is not None:
                self.upsert_meter(conn, meter_id, now, trip_due_at=None, gate_reason=None)
            latest = self.latest_supply_command(conn, meter_id)
            cut_by_fee = (
                latest is not None
                and latest.kind == supply.cut
                and latest.requested_by == FEE_CONTROL
            )
            if not cut_by_fee:
                continue
            reason = (
                f"fee control: {decision.reason}; balance {format_fen(balance_fen)} allows closing"
            )
            queue_supply_command(
                conn,
                effects,
                meter_id,
                supply.restore,
                reason,
                FEE_CONTROL,
                account.id,
                now,
                audit_as="reconnect",
                desired_on=True,
            )

    # -- deferred trips ---------------------------------------------------------------------
    def due_deferrals(self, conn: Connection, now: datetime, limit: int = 200) -> list[str]:
        """Accounts with a deferred trip whose instant has come."""
        rows = conn.execute(
            sa.select(t.prepay_meter.c.account_id)
            .where(t.prepay_meter.c.trip_due_at <= now, t.prepay_meter.c.account_id.is_not(None))
            .distinct()
            .limit(limit)
        ).scalars()
        return [r for r in rows if r]

    def reevaluate(
        self, conn: Connection, account_id: str, *, effects: Effects, now: datetime | None = None
    ) -> FeeDecision | None:
        """Ask again for an account whose deferred trip is due (or whose protection or hold
        was lifted): fee control is re-run as a threshold-neutral deduction."""
        now = now or utcnow()
        for meter_id in conn.execute(
            sa.select(t.prepay_meter.c.meter_id).where(
                t.prepay_meter.c.account_id == account_id, t.prepay_meter.c.trip_due_at <= now
            )
        ).scalars():
            self.upsert_meter(conn, meter_id, now, trip_due_at=None)
        return self.after_change(
            conn, account_id, Cause.DEDUCTION, actor=FEE_CONTROL, effects=effects, now=now
        )

    # -- manual supply actions --------------------------------------------------------------
    def resolve_targets(
        self, conn: Connection, meter_or_account_id: str
    ) -> tuple[str | None, list[tuple[str, SupplyControl]]]:
        """(account, [(meter, supply)]) for a meter id or an account id."""
        if not isinstance(meter_or_account_id, str) or not meter_or_account_id.strip():
            raise RequestError("target", "required: a meter id or an account id")
        target = meter_or_account_id
        if target in self.site.devices:
            supply = self.supply_of(target)
            if supply is None:
                model = self.site.devices[target].model
                raise RequestError(
                    "meter", f"meter {target!r} ({model}) has no relay or valve to switch"
                )
            return account_for_meter(conn, target), [(target, supply)]
        account = load_account_row(conn, target)
        if account is None:
            raise RequestError(
                "target", f"unknown meter or account {target!r} (not a site device nor an account)"
            )
        meters = [(m, s) for m, _k, _mode in account.meters if (s := self.supply_of(m)) is not None]
        if not meters:
            raise RequestError("target", f"account {target!r} has no meter with a relay or valve")
        return account.id, meters

    def plan_cut(
        self,
        conn: Connection,
        meter_or_account_id: str,
        reason: str,
        *,
        actor: str,
        override: bool,
        now: datetime,
        also_queued: Sequence[datetime] = (),
    ) -> CutPlan:
        """What the policy gate says of an operator's cut, read only: each meter with its
        gate decision, or a `RequestError` when the gate denies one (`manual_cut` acts on
        this plan, so a dry run and the real cut cannot differ). `also_queued`: cuts a
        dry run has already counted against the mass-disconnect rate limit."""
        account_id, meters = self.resolve_targets(conn, meter_or_account_id)
        account = load_account_row(conn, account_id) if account_id else None
        pa = self._prepay_account(conn, account_id) if account_id else None
        balance = energy_balances(conn, account_id)[0] if account_id else 0
        gates = []
        for meter_id, supply in meters:
            ctx = meter_context(
                meter_id,
                balance,
                account.fee_state if account else FeeState.NORMAL,
                account.thresholds if account else FeeThresholds(),
                bool(account and account.protected),
                pa,
                Override(actor, reason, allow=True) if override else None,
            )
            gate = self.gate(conn, ctx, now, also_queued=[*also_queued, *(now for _ in gates)])
            if gate.verdict is Verdict.DENY:
                raise RequestError("target", f"{meter_id} may not be disconnected: {gate.reason}")
            gates.append((meter_id, supply, gate))
        return CutPlan(account_id, gates)

    def manual_cut(
        self,
        conn: Connection,
        meter_or_account_id: str,
        reason: str,
        *,
        actor: str,
        override: bool,
        effects: Effects,
        now: datetime,
        plan: CutPlan | None = None,
    ) -> list[cmds.MeterCommand]:
        """Cut as `plan_cut` planned (`plan`, or planned now)."""
        if plan is None:
            plan = self.plan_cut(
                conn, meter_or_account_id, reason, actor=actor, override=override, now=now
            )
        account_id = plan.account_id
        out = []
        for meter_id, supply, gate in plan.meters:
            # A deferred cut is queued for the instant the gate gives (`until`; None: now).
            command = queue_supply_command(
                conn,
                effects,
                meter_id,
                supply.cut,
                f"{reason} ({gate.reason})" if gate.reason else reason,
                actor,
                account_id,
                now,
                not_before=gate.until,
                desired_on=False,
            )
            self.upsert_meter(conn, meter_id, now, account_id=account_id, trip_due_at=None)
            out.append(command)
        if account_id:
            self.set_hold(conn, account_id, None, None, now)
        return out

    def manual_restore(
        self,
        conn: Connection,
        meter_or_account_id: str,
        reason: str,
        *,
        actor: str,
        effects: Effects,
        now: datetime,
    ) -> list[cmds.MeterCommand]:
        account_id, meters = self.resolve_targets(conn, meter_or_account_id)
        out = []
        for meter_id, supply in meters:
            command = queue_supply_command(
                conn,
                effects,
                meter_id,
                supply.restore,
                reason,
                actor,
                account_id,
                now,
                desired_on=True,
            )
            self.upsert_meter(conn, meter_id, now, account_id=account_id, trip_due_at=None)
            out.append(command)
        if account_id:
            account = load_account_row(conn, account_id)
            if account is not None and account.fee_state is FeeState.OVERDRAFT:
                # Reconnected in arrears: hold supply on until the account leaves OVERDRAFT
                # (a top-up) or an operator disconnects again, else fee control would
                # trip it straight back.
                self.set_hold(conn, account_id, actor, reason, now)
        return out

    def restore_cut(
        self,
        conn: Connection,
        account: AccountRow,
        reason: str,
        *,
        actor: str,
        effects: Effects,
        now: datetime,
    ) -> list[cmds.MeterCommand]:
        """Restore every remote meter of the account that is cut or being cut (保电 set
        while tripped: the meter closes)."""
        out = []
        for meter_id, supply in self._remote_supply_meters(account):
            cut, _ = self._is_cut(conn, meter_id, supply)
            if not cut:
                continue
            command = queue_supply_command(
                conn,
                effects,
                meter_id,
                supply.restore,
                reason,
                actor,
                account.id,
                now,
                desired_on=True,
            )
            self.upsert_meter(conn, meter_id, now, trip_due_at=None)
            out.append(command)
        return out

    # -- account samples ----------------------------------------------------------------------
    def account_samples(self, conn: Connection, account_ids: Iterable[str], now: datetime) -> list:
        """`ACCOUNT_MODEL` samples of several accounts, in four queries whatever their
        number (metering publishes one per account whose balance moved)."""
        ids = sorted(set(account_ids))
        if not ids:
            return []
        states = dict(
            conn.execute(
                sa.select(t.account.c.id, t.account.c.fee_state).where(t.account.c.id.in_(ids))
            ).all()
        )
        wallets: dict[str, dict[str, int]] = {}
        for account_id, kind, balance in conn.execute(
            sa.select(t.wallet.c.account_id, t.wallet.c.kind, t.wallet.c.balance_fen).where(
                t.wallet.c.account_id.in_(ids)
            )
        ).all():
            wallets.setdefault(account_id, {})[kind] = int(balance)
        cut = set(
            conn.execute(
                sa.select(t.account_meter.c.account_id)
                .join(t.prepay_meter, t.prepay_meter.c.meter_id == t.account_meter.c.meter_id)
                .where(
                    t.account_meter.c.account_id.in_(ids),
                    t.account_meter.c.detached_at.is_(None),
                    t.prepay_meter.c.supply_on.is_(False),
                )
            ).scalars()
        )
        emergency = {
            code.rsplit(":", 1)[1]: int(total)
            for code, total in conn.execute(
                sa.select(t.posting.c.ledger_account, sa.func.sum(t.posting.c.amount_fen))
                .where(t.posting.c.ledger_account.in_([f"asset:emergency_credit:{a}" for a in ids]))
                .group_by(t.posting.c.ledger_account)
            ).all()
        }
        return [
            account_sample(
                account_id,
                now,
                energy_balance_fen=wallets.get(account_id, {}).get("energy", 0),
                general_balance_fen=wallets.get(account_id, {}).get("general", 0),
                alarm_level=FeeState(states[account_id]),
                supply_on=account_id not in cut,
                emergency_credit_fen=emergency.get(account_id, 0),
            )
            for account_id in ids
            if account_id in states
        ]
