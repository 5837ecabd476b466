"""The service functions: one path for every operator action, whoever asks.

The command line, the OPC UA server's methods and batch jobs all call `Operations`; none
of them touches the ledger, the accounts or the command queue directly. Each call:

- checks its input and raises `core.ledger.RequestError(field, message)` before anything
  is written (a bad call changes nothing);
- does its database work in **one transaction**, including what it causes: a top-up,
  refund or threshold change re-evaluates fee control in the same transaction (new fee
  state stored, relay/valve commands queued, notices put in the outbox), so a crash can
  never leave money moved without its consequence;
- publishes an `AuditRecord` on the event bus (also when it was refused) and, once
  committed, the events it caused (`AlarmLevelChanged`, account samples); the durable
  commands it queued are executed by the running service's command executor — in the same
  process at once, from another process (the CLI) within its queue poll (≤ 0.5 s).

Calls are synchronous (they block on the database): from asyncio code run them with
`asyncio.to_thread`. Reads (`account_snapshot`, `list_accounts`) are not audited.

Manual disconnect (`disconnect`) is an operator's override of the policy gate: it is
audited with who and why, skips the time, notice, exemption and arrears rules, but never
cuts a protected (保电) account and still counts against the site's mass-disconnect rate
limit (a disconnect beyond it is queued for the instant the limit allows). With
`override=False` it goes through the whole gate like an automatic trip (refused when the
gate denies, queued for later when it defers). A manual reconnect of an account in arrears
puts a hold on it: fee control leaves its supply on until the account leaves arrears (a
top-up) or an operator disconnects it again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from .. import ledger
from ..config.site import ControlMode, Site
from ..db import Database
from ..db import schema as t
from ..db.group import GroupCommit
from ..events import AuditRecord, EventBus, publish_on_loop, utcnow
from ..ledger import RefundResult, RequestError, TopUpResult, format_fen
from ..model import DeviceModel, MeterKind
from ..prepay import accounts as acc
from ..prepay import commands as cmds
from ..prepay.binding import TariffBinding
from ..prepay.control import Effects, PrepayControl, audit, load_account_row
from ..prepay.feecontrol import Cause, FeeState, FeeThresholds
from ..prepay.notifications import NotifySettings, load_notify
from ..prepay.policy import MeterContext, grant_emergency_credit, reconnect_allowed
from ..prepay.replacement import ReplacementRecord, check_serial, parse_reading
from ..prepay.replacement import record as record_replacement
from ..prepay.settings import PrepaySettings, load_prepay
from ..rating.engine import ENERGY_SCALE, RatingError, RegisterLayout
from ..rating.tariffs import Commodity, TariffCatalogue, load_tariffs

log = logging.getLogger("openprepay.operations")

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class MeterSnapshot:
    meter_id: str
    #: electric / water.
    kind: str
    #: REMOTE / LOCAL / POSTPAID.
    control_mode: str
    #: Supply on (relay closed, valve open) as last read back; None while unknown.
    supply_on: bool | None
    #: A trip the policy gate deferred to this instant (UTC), if any.
    trip_due_at: datetime | None
    #: Consumption since site-local midnight, in `unit` (kWh or m³).
    today: Decimal
    unit: str
    buy_count: int
    confirmed_buy_count: int
    #: The supply state the platform decided (None: never switched by the platform).
    desired_on: bool | None = None
    #: Times the decision had to be re-asserted because the meter read otherwise, and
    #: whether it disobeys now (an active SupplyMismatch).
    mismatch_count: int = 0
    mismatch_active: bool = False
    #: Why the meter is not billed (None: it is).
    billing_problem: str | None = None
    #: Purchase counts in the meter's own numbering (the platform's minus its offset).
    meter_buy_count: int = 0
    #: True while its purchase count is to be read and aligned with.
    align_pending: bool = False


@dataclass(frozen=True, slots=True)
class AccountSnapshot:
    """An account as an operator screen shows it."""

    account_id: str
    name: str
    room: str | None
    #: PREREGISTERED / OPEN / CLOSED.
    state: str
    tariff_id: str | None
    protected: bool
    #: Energy wallet (what fee control reads) and general wallet, fen.
    balance_fen: int
    general_fen: int
    emergency_outstanding_fen: int
    fee_state: FeeState
    thresholds: FeeThresholds
    meters: tuple[MeterSnapshot, ...]
    energy_today_kwh: Decimal
    water_today_m3: Decimal
    #: Usage deducted from the energy wallet since site-local midnight, fen.
    cost_today_fen: int
    at: datetime
    #: What the tenant owes, fen: energy arrears (beyond emergency credit), general-wallet
    #: arrears, and billed charges and post-paid bills not paid (`asset:ar`).
    receivable_fen: int = 0
    #: FAILED RECHARGE/REFUND commands nobody retried or refunded yet (open alarms).
    failed_commands: tuple[int, ...] = ()

    @property
    def owed_fen(self) -> int:
        energy = max(0, self.emergency_outstanding_fen - self.balance_fen)
        return energy + max(0, -self.general_fen) + max(0, self.receivable_fen)

    @property
    def billing_problems(self) -> dict[str, str]:
        """Meter → why it is not billed, for the meters that are not."""
        return {m.meter_id: m.billing_problem for m in self.meters if m.billing_problem}

    @property
    def desired_supply_on(self) -> bool:
        """True unless the platform decided to cut a meter of the account."""
        return all(m.desired_on is not False for m in self.meters)

    @property
    def general_balance_fen(self) -> int:
        return self.general_fen

    @property
    def alarm_level(self) -> int:
        """0 normal, 1 alarm1, 2 alarm2, 3 over zero, 4 overdraft."""
        return self.fee_state.severity

    @property
    def supply_on(self) -> bool:
        """True while no meter of the account is known to be cut."""
        return all(m.supply_on is not False for m in self.meters)


class Operations:
    """The service functions of one site (see the module docstring)."""

    def __init__(
        self,
        site: Site,
        db: Database,
        bus: EventBus | None = None,
        *,
        models: Mapping[str, DeviceModel],
        settings: PrepaySettings | None = None,
        catalogue: TariffCatalogue | None = None,
        notify: NotifySettings | None = None,
        control: PrepayControl | None = None,
        default_tariffs: Mapping[str, str] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.site = site
        self.db = db
        #: Concurrent calls share one durable commit (core/db/group.py).
        self.writer = GroupCommit(db)
        self.bus = bus or EventBus()
        self.models = models
        self.settings = settings or load_prepay(site)
        self.catalogue = catalogue or load_tariffs(site)
        self.control = control or PrepayControl(
            site, models, self.settings, notify or load_notify(site)
        )
        if default_tariffs is None:
            from ..prepay.engine import load_engine

            default_tariffs = load_engine(site, self.catalogue).default_tariffs
        #: Which tariff prices which meter, and whether it fits its registers.
        self.binding = TariffBinding(site, models, self.catalogue, self.settings, default_tariffs)
        self.clock = clock
        #: Called with the effects of every committed call (the runtime wakes its command
        #: executor and notification dispatcher here).
        self.committed: list[Callable[[Effects], None]] = []
        #: Energy rated but not saved yet (meter, day) → 0.001 units; set by the running
        #: engine so that today's figures are current between its database writes.
        self.unsaved_energy: Callable[[str, str], int] = lambda meter, day: 0
        #: The running service's event loop (set by the engine): events are published
        #: there. None: published in the caller's thread (the CLI).
        self.loop: asyncio.AbstractEventLoop | None = None

    # -- plumbing -----------------------------------------------------------------------
    def _call(
        self,
        action: str,
        target: str,
        actor: str,
        work: Callable[[Connection, Effects, datetime], R],
        describe: Callable[[R], str],
    ) -> R:
        now = self.clock()
        try:
            _check_actor(actor)
            effects = Effects()

            def transaction(conn: Connection) -> R:
                outcome = work(conn, effects, now)
                audit(conn, effects, actor, action, str(target), describe(outcome), now=now)
                return outcome

            result = self.writer.run(transaction)
        except RequestError as exc:
            self._publish(
                AuditRecord(str(actor or "?"), action, str(target), f"refused: {exc}", False)
            )
            raise
        self._after_commit(effects, now)
        return result

    def _publish(self, item: object) -> None:
        """Publish on the running service's event loop, whatever thread the call came from
        (the OPC UA server calls through `asyncio.to_thread`)."""
        publish_on_loop(self.loop, self.bus.publish, item)

    def _after_commit(self, effects: Effects, now: datetime) -> None:
        for event in effects.events:
            self._publish(event)
        if effects.accounts:
            with self.db.read() as conn:
                samples = self.control.account_samples(conn, effects.accounts, now)
            for sample in samples:
                self._publish(sample)
        for listener in self.committed:
            try:
                listener(effects)
            except Exception:
                log.exception("commit listener failed")

    # -- money --------------------------------------------------------------------------
    def topup(
        self,
        account_id: str,
        amount_fen: int,
        reference: str,
        *,
        channel: str = "cash",
        actor: str,
        meter_id: str | None = None,
    ) -> TopUpResult:
        """Credit `amount_fen` to the account's energy wallet. `reference` (payment id,
        receipt) makes it idempotent: the same reference again returns the first result.
        A LOCAL meter gets a RECHARGE with its next purchase count; a REMOTE account that
        leaves arrears gets its supply restored."""

        def work(conn: Connection, effects: Effects, now: datetime) -> TopUpResult:
            result = ledger.topup(
                conn,
                account_id,
                amount_fen,
                reference,
                channel=channel,
                meter_id=meter_id,
                requested_by=actor,
                now=now,
            )
            if not result.replayed:
                if result.command_id is not None:
                    effects.commands.append(cmds.get_command(conn, result.command_id))
                if self._reconnection_withheld(conn, account_id, result, actor, effects, now):
                    effects.accounts.add(account_id)
                else:
                    self._fee_control(
                        conn, account_id, Cause.RECHARGE, actor, effects, now, result.balance_fen
                    )
            return result

        return self._call(
            "topup",
            account_id,
            actor,
            work,
            lambda r: (
                f"{format_fen(r.amount_fen)} via {r.channel}, reference {r.reference}"
                + (" (replay: nothing changed)" if r.replayed else "")
                + f"; energy balance {format_fen(r.balance_fen)}"
                + (
                    f"; RECHARGE #{r.command_id} to {r.meter_id} (purchase {r.buy_count})"
                    if r.command_id is not None
                    else ""
                )
            ),
        )

    def _reconnection_withheld(
        self,
        conn: Connection,
        account_id: str,
        result: TopUpResult,
        actor: str,
        effects: Effects,
        now: datetime,
    ) -> bool:
        """After emergency credit, a top-up reconnects only when it covers the credit plus
        `reconnect_min` (domain.md §3): otherwise the account stays in arrears, cut."""
        if not result.emergency_repaid_fen:
            return False
        row = load_account_row(conn, account_id)
        if row is None or row.fee_state is not FeeState.OVERDRAFT:
            return False
        outstanding = ledger.balances(conn, account_id).emergency_outstanding_fen
        verdict = reconnect_allowed(
            result.balance_fen,
            row.thresholds,
            self.settings.policy,
            emergency_repaid_fen=result.emergency_repaid_fen,
            emergency_outstanding_fen=outstanding,
        )
        if verdict.allowed:
            return False
        audit(
            conn,
            effects,
            actor,
            "reconnect",
            account_id,
            f"withheld: {verdict.reason}",
            False,
            now=now,
        )
        return True

    def emergency_credit(self, account_id: str, *, actor: str) -> ledger.Posted:
        """Grant emergency credit on the tenant's request (policy `emergency_credit`, one
        grant at a time, for an account at or near its trip level; not for LOCAL meters,
        which grant their own). The ledger advances it into the energy wallet and the next
        top-up repays it; fee control re-evaluates as after a recharge (supply returns)."""

        def work(conn: Connection, effects: Effects, now: datetime) -> ledger.Posted:
            row = load_account_row(conn, account_id)
            if row is None:
                raise RequestError("account", f"unknown account {account_id!r}")
            b = ledger.balances(conn, account_id)
            grant = grant_emergency_credit(
                MeterContext(
                    meter_id=account_id,
                    energy_balance_fen=b.energy_fen,
                    fee_state=row.fee_state,
                    thresholds=row.thresholds,
                    emergency_outstanding_fen=b.emergency_outstanding_fen,
                ),
                self.settings.policy,
            )
            if not grant.granted:
                raise RequestError("account", grant.reason)
            posted = ledger.grant_emergency_credit(
                conn,
                account_id,
                grant.amount_fen,
                f"emergency:{account_id}:{now.isoformat()}",
                requested_by=actor,
                now=now,
            )
            self._fee_control(conn, account_id, Cause.RECHARGE, actor, effects, now)
            return posted

        return self._call(
            "emergency_credit",
            account_id,
            actor,
            work,
            lambda p: (
                f"emergency credit {format_fen(int(p.journal.request['amount_fen']))} granted"
            ),
        )

    def refund(
        self,
        account_id: str,
        amount_fen: int,
        reference: str,
        *,
        actor: str,
        settle: bool = True,
        meter_id: str | None = None,
    ) -> RefundResult:
        """Refund from the energy wallet (at most what is refundable); `reference` is the
        refund number. `settle=False` leaves it REQUESTED for the payment channel. For a
        LOCAL meter (`meter_id` when the account has several) the meter is debited first:
        the refund waits (AWAITING_METER) for its REFUND command to be confirmed."""

        def work(conn: Connection, effects: Effects, now: datetime) -> RefundResult:
            result = ledger.refund(
                conn,
                account_id,
                amount_fen,
                reference,
                settle=settle,
                meter_id=meter_id,
                requested_by=actor,
                now=now,
            )
            if not result.replayed:
                self._fee_control(
                    conn, account_id, Cause.REFUND, actor, effects, now, result.balance_fen
                )
            return result

        return self._call(
            "refund",
            account_id,
            actor,
            work,
            lambda r: (
                f"{format_fen(r.amount_fen)}, refund {r.reference}, {r.state}"
                + (" (replay: nothing changed)" if r.replayed else "")
                + f"; energy balance {format_fen(r.balance_fen)}"
            ),
        )

    # -- settings -----------------------------------------------------------------------
    def set_tariff(self, account_id: str, tariff_id: str, *, actor: str) -> acc.Account:
        """Price the account's meters with `tariff_id` from the site's [tariffs] (for
        meters of the tariff's commodity; the others keep [prepay.engine] defaults).
        Refused when the tariff cannot bill a meter's registers (core.prepay.binding)."""

        def work(conn: Connection, effects: Effects, now: datetime) -> acc.Account:
            if not isinstance(tariff_id, str):
                raise RequestError("tariff", f"expected a tariff id, got {tariff_id!r}")
            self.binding.check_known(tariff_id)
            account = acc.get_account(conn, account_id)
            commodity = self.catalogue.get(tariff_id).commodity
            wanted = MeterKind.WATER if commodity is Commodity.WATER else MeterKind.ELECTRIC
            if account.meters and not any(m.kind == wanted.value for m in account.meters):
                raise RequestError(
                    "tariff",
                    f"tariff {tariff_id!r} prices {commodity.value}, but account "
                    f"{account_id!r} has no {wanted.value} meter",
                )
            self.binding.check_account(tariff_id, [m.meter_id for m in account.meters])
            updated = acc.update_account(conn, account_id, tariff_id=tariff_id, now=now)
            effects.accounts.add(account_id)
            return updated

        return self._call("set_tariff", account_id, actor, work, lambda a: f"tariff {a.tariff_id}")

    def set_thresholds(
        self,
        account_id: str,
        *,
        alarm1_fen: int,
        alarm2_fen: int,
        overdraft_limit_fen: int | None = None,
        close_limit_fen: int | None = None,
        actor: str,
    ) -> acc.Account:
        """Change the alarm amounts (and optionally the overdraft and close limits), then
        re-evaluate fee control with them."""

        def work(conn: Connection, effects: Effects, now: datetime) -> acc.Account:
            for name, value in (
                ("alarm1", alarm1_fen),
                ("alarm2", alarm2_fen),
                ("overdraft_limit", overdraft_limit_fen),
                ("close_limit", close_limit_fen),
            ):
                if value is None and name in ("overdraft_limit", "close_limit"):
                    continue
                if isinstance(value, bool) or not isinstance(value, int):
                    raise RequestError(name, f"expected whole fen (an integer), got {value!r}")
                if value < 0 or value > ledger.CAPACITY_FEN:
                    raise RequestError(
                        name,
                        f"expected 0.00 to {format_fen(ledger.CAPACITY_FEN)}, got "
                        f"{format_fen(value)}",
                    )
            account = acc.get_account(conn, account_id)
            old = account.thresholds
            new = dataclasses.replace(
                old,
                alarm1_fen=alarm1_fen,
                alarm2_fen=alarm2_fen,
                overdraft_limit_fen=(
                    old.overdraft_limit_fen if overdraft_limit_fen is None else overdraft_limit_fen
                ),
                close_limit_fen=old.close_limit_fen if close_limit_fen is None else close_limit_fen,
            )
            acc.update_account(conn, account_id, thresholds=new, now=now)
            cause = (
                Cause.OVERDRAFT_LIMIT_CHANGE
                if new.overdraft_limit_fen != old.overdraft_limit_fen
                else Cause.ALARM_THRESHOLD_CHANGE
            )
            self._fee_control(conn, account_id, cause, actor, effects, now)
            return acc.get_account(conn, account_id)  # with the fee state just evaluated

        def describe(a: acc.Account) -> str:
            th = a.thresholds
            return (
                f"alarm1 {format_fen(th.alarm1_fen)}, alarm2 {format_fen(th.alarm2_fen)}, "
                f"overdraft {format_fen(th.overdraft_limit_fen)}, "
                f"close {format_fen(th.close_limit_fen)}; fee state {a.fee_state}"
            )

        return self._call("set_thresholds", account_id, actor, work, describe)

    def protect(self, account_id: str, on: bool, *, actor: str) -> acc.Account:
        """保电 on or off. On: fee control never cuts the account, and meters it cut are
        closed again. Off: nothing switches at once; an account still in arrears is
        evaluated again (and may be tripped through the policy gate)."""
        if not isinstance(on, bool):
            raise RequestError("on", f"expected true or false, got {on!r}")

        def work(conn: Connection, effects: Effects, now: datetime) -> acc.Account:
            acc.get_account(conn, account_id)
            updated = acc.update_account(conn, account_id, protected=on, now=now)
            row = load_account_row(conn, account_id)
            if on and row is not None:
                self.control.restore_cut(
                    conn,
                    row,
                    f"protected supply (保电) set by {actor}",
                    actor=actor,
                    effects=effects,
                    now=now,
                )
            elif not on:
                self._fee_control(conn, account_id, Cause.DEDUCTION, actor, effects, now)
            effects.accounts.add(account_id)
            return updated

        return self._call(
            "protect" if on else "unprotect",
            account_id,
            actor,
            work,
            lambda a: f"protected supply (保电) {'on' if a.protected else 'off'}",
        )

    def _fee_control(
        self,
        conn: Connection,
        account_id: str,
        cause: Cause,
        actor: str,
        effects: Effects,
        now: datetime,
        balance_fen: int | None = None,
    ) -> None:
        """Re-evaluate fee control after a change of the account (same transaction), and
        publish the account's sample once committed."""
        self.control.after_change(
            conn, account_id, cause, actor=actor, effects=effects, balance_fen=balance_fen, now=now
        )
        effects.accounts.add(account_id)

    # -- supply -------------------------------------------------------------------------
    def disconnect(
        self, meter_or_account_id: str, reason: str, *, actor: str, override: bool = True
    ) -> list[cmds.MeterCommand]:
        """Cut supply of a meter, or of every meter of an account (see the module
        docstring for how the policy gate applies). Returns the queued commands."""

        def work(conn: Connection, effects: Effects, now: datetime) -> list[cmds.MeterCommand]:
            _check_reason(reason)
            return self.control.manual_cut(
                conn,
                meter_or_account_id,
                reason.strip(),
                actor=actor,
                override=override,
                effects=effects,
                now=now,
            )

        return self._call(
            "disconnect",
            meter_or_account_id,
            actor,
            work,
            lambda cs: f"{reason}: " + ", ".join(_describe_command(c) for c in cs),
        )

    def reconnect(
        self, meter_or_account_id: str, reason: str, *, actor: str
    ) -> list[cmds.MeterCommand]:
        """Restore supply of a meter or of every meter of an account."""

        def work(conn: Connection, effects: Effects, now: datetime) -> list[cmds.MeterCommand]:
            _check_reason(reason)
            return self.control.manual_restore(
                conn, meter_or_account_id, reason.strip(), actor=actor, effects=effects, now=now
            )

        return self._call(
            "reconnect",
            meter_or_account_id,
            actor,
            work,
            lambda cs: f"{reason}: " + ", ".join(_describe_command(c) for c in cs),
        )

    def command(self, command_id: int) -> cmds.MeterCommand:
        """A queued command as it stands now (state, attempts, last error, read-back)."""
        with self.db.read() as conn:
            return cmds.get_command(conn, command_id)

    def open_failures(self, account_id: str | None = None) -> list[cmds.MeterCommand]:
        """FAILED RECHARGE/REFUND commands nobody retried or refunded yet (alarms)."""
        with self.db.read() as conn:
            return cmds.open_failures(conn, account_id=account_id)

    # -- failed commands ----------------------------------------------------------------
    def retry_command(self, command_id: int, reason: str, *, actor: str) -> cmds.MeterCommand:
        """Send a FAILED command again with the same parameters; returns the new command.
        A RECHARGE keeps the purchase count it was sent with: if the meter took it and only
        the reply was lost, the meter shows that count and the retry is confirmed without
        a second credit. Retry several FAILED deliveries of one meter oldest first."""

        def work(conn: Connection, effects: Effects, now: datetime) -> cmds.MeterCommand:
            _check_reason(reason)
            failed, new = cmds.retry_failed(
                conn, _command_id(command_id), reason.strip(), requested_by=actor, now=now
            )
            if failed.kind in {k.value for k in cmds.SUPPLY_KINDS}:
                # The retried decision is the one the supply watch holds the meter to.
                conn.execute(
                    t.prepay_meter.update()
                    .where(
                        t.prepay_meter.c.meter_id == failed.meter_id,
                        t.prepay_meter.c.desired_command_id == failed.id,
                    )
                    .values(desired_command_id=new.id, updated_at=now)
                )
            effects.commands.append(new)
            return new

        return self._call(
            "retry_command",
            str(command_id),
            actor,
            work,
            lambda c: f"{c.kind} #{c.retry_of} for {c.meter_id} sent again as #{c.id}: {reason}",
        )

    def refund_failed_command(self, command_id: int, reason: str, *, actor: str) -> ledger.Posted:
        """Give back the money of a FAILED RECHARGE that never reached the meter — known
        from its purchase count read after the failure (`align_meter`), or a replaced
        device: its top-up is reversed (the payer is refunded through the top-up's
        channel), the command is marked refunded, the meter's count is read and aligned
        again (the count it was given is never delivered) and fee control runs on the
        lower balance. Returns the reversal."""

        def work(conn: Connection, effects: Effects, now: datetime) -> ledger.Posted:
            _check_reason(reason)
            failed = cmds.get_command(conn, _command_id(command_id))
            if failed.kind != cmds.CommandKind.RECHARGE:
                raise RequestError(
                    "command", f"command {failed.id} is a {failed.kind}, not a RECHARGE"
                )
            order = conn.execute(
                sa.select(t.topup.c.reference, t.topup.c.journal_id, t.topup.c.amount_fen).where(
                    t.topup.c.command_id == failed.id
                )
            ).first()
            if order is None:
                raise RequestError("command", f"RECHARGE #{failed.id} has no top-up to refund")
            self._check_undelivered(conn, failed)
            cmds.resolve(
                conn,
                failed.id,
                f"refunded: top-up {order.reference} reversed",
                requested_by=actor,
                now=now,
            )
            posted = ledger.reverse(
                conn,
                order.journal_id,
                reason=f"RECHARGE #{failed.id} FAILED, never delivered: {reason.strip()}",
                requested_by=actor,
                now=now,
            )
            cmds.request_alignment(conn, failed.meter_id, now=now)
            if failed.account_id:
                self._fee_control(conn, failed.account_id, Cause.REFUND, actor, effects, now)
            return posted

        return self._call(
            "refund_command",
            str(command_id),
            actor,
            work,
            lambda p: (
                f"RECHARGE #{command_id} refunded: journal {p.journal.reverses_id} reversed by "
                f"{p.journal.id}; {reason}"
            ),
        )

    def _check_undelivered(self, conn: Connection, failed: cmds.MeterCommand) -> None:
        """Refund only what the meter is known not to hold: its purchase count was read
        after the RECHARGE failed and is below the count the RECHARGE carried, or the device
        was replaced since. (A delivery whose reply was lost is in the meter: retry it.)"""
        meter = conn.execute(
            sa.select(
                t.meter.c.aligned_at, t.meter.c.confirmed_buy_count, t.meter.c.count_offset
            ).where(t.meter.c.id == failed.meter_id)
        ).first()
        swapped = conn.execute(
            sa.select(t.meter_replacement.c.id).where(
                t.meter_replacement.c.meter_id == failed.meter_id,
                t.meter_replacement.c.at > failed.finished_at,
            )
        ).first()
        if swapped is not None:
            return
        if meter is None or meter.aligned_at is None or meter.aligned_at <= failed.finished_at:
            raise RequestError(
                "command",
                f"the meter may hold RECHARGE #{failed.id} (its reply may have been lost): read "
                f"it first — `openprepay meter align SITE {failed.meter_id}` — then refund",
            )
        shows = int(meter.confirmed_buy_count) - int(meter.count_offset)
        sent = int(failed.params.get(cmds.METER_COUNT, failed.params.get("buy_count", 0)))
        if shows >= sent:
            raise RequestError(
                "command",
                f"meter {failed.meter_id} shows purchase {shows}: it took RECHARGE "
                f"#{failed.id} (purchase {sent}); retry it to confirm, do not refund",
            )

    # -- LOCAL meters and replacement ------------------------------------------------------
    def align_meter(self, meter_id: str, reason: str, *, actor: str) -> None:
        """Have the running service read the meter's own purchase count and align the
        platform with it before the next RECHARGE or REFUND (audited when done)."""

        def work(conn: Connection, effects: Effects, now: datetime) -> None:
            _check_reason(reason)
            model = self._model_of(meter_id)
            if "buy_count" not in {p.name for p in model.points}:
                raise RequestError(
                    "meter", f"meter {meter_id!r} ({model.name}) reports no purchase count"
                )
            if not cmds.request_alignment(conn, meter_id, now=now):
                raise RequestError(
                    "meter", f"meter {meter_id!r} is not registered (attach it to an account)"
                )

        return self._call(
            "align",
            meter_id,
            actor,
            work,
            lambda _: f"purchase count to be read from the meter and aligned: {reason}",
        )

    def set_params(
        self,
        meter_id: str,
        command: str,
        values: Mapping[str, object],
        reason: str,
        *,
        actor: str,
        idempotency_key: str,
    ) -> cmds.MeterCommand:
        """Queue the model's `command` (e.g. SET_PRICES, SET_ALARMS) with `values` as a
        durable SET_PARAMS command for `meter_id`. `idempotency_key` makes it idempotent:
        the same key again returns the first command."""

        def work(conn: Connection, effects: Effects, now: datetime) -> cmds.MeterCommand:
            model = self._model_of(meter_id)
            if not isinstance(values, Mapping) or not values:
                raise RequestError("values", "give the command's parameters (NAME=VALUE)")
            try:
                model.command(command)
            except KeyError as exc:
                raise RequestError("command", str(exc.args[0])) from None
            queued = cmds.enqueue(
                conn,
                meter_id,
                cmds.CommandKind.SET_PARAMS,
                params={"command": command, **dict(values)},
                reason=reason,
                requested_by=actor,
                idempotency_key=idempotency_key,
                now=now,
            )
            effects.commands.append(queued)
            return queued

        return self._call(
            "set_params", meter_id, actor, work, lambda c: f"{command} #{c.id}: {reason}"
        )

    def replace_meter(
        self,
        meter_id: str,
        *,
        final_reading: str | Mapping[str, object],
        new_serial: str,
        initial_reading: str | Mapping[str, object],
        reason: str,
        actor: str,
    ) -> ReplacementRecord:
        """Record that the device behind `meter_id` was swapped (core/prepay/replacement.py):
        metering bills the old device up to `final_reading` and the new one from
        `initial_reading`; a LOCAL meter's new purchase count is read and aligned with.
        Refused while a delivery with a fixed purchase count is on its way to the old one."""

        def work(conn: Connection, effects: Effects, now: datetime) -> ReplacementRecord:
            _check_reason(reason)
            model = self._model_of(meter_id)
            try:
                layout = RegisterLayout.from_model(model)
            except RatingError as exc:
                raise RequestError("meter", f"meter {meter_id!r} is not billed: {exc}") from None
            final = parse_reading(layout, final_reading, "final_reading")
            initial = parse_reading(layout, initial_reading, "initial_reading")
            serial = check_serial(new_serial)
            busy = conn.execute(
                sa.select(t.meter_command.c.id).where(
                    t.meter_command.c.meter_id == meter_id,
                    t.meter_command.c.kind.in_(
                        [cmds.CommandKind.RECHARGE.value, cmds.CommandKind.REFUND.value]
                    ),
                    t.meter_command.c.state.in_([x.value for x in cmds.UNFINISHED]),
                    t.meter_command.c.sent_at.is_not(None),
                )
            ).first()
            if busy is not None:
                raise RequestError(
                    "meter",
                    f"command {busy.id} is delivering money to the old device: wait until it "
                    "is finished (or fails) before recording the swap",
                )
            account_id = acc.account_for_meter(conn, meter_id)
            done = record_replacement(
                conn,
                meter_id,
                model.kind.value,
                final_reading=final,
                initial_reading=initial,
                new_serial=serial,
                account_id=account_id,
                reason=reason.strip(),
                recorded_by=actor,
                now=now,
            )
            mode = conn.execute(
                sa.select(t.account_meter.c.control_mode).where(
                    t.account_meter.c.meter_id == meter_id,
                    t.account_meter.c.detached_at.is_(None),
                )
            ).scalar()
            if mode == ControlMode.LOCAL.value:
                cmds.request_alignment(conn, meter_id, now=now)
            if account_id:
                effects.accounts.add(account_id)
            return done

        return self._call("replace", meter_id, actor, work, lambda r: f"{r.describe()}; {reason}")

    def _model_of(self, meter_id: str) -> DeviceModel:
        device = self.site.devices.get(meter_id) if isinstance(meter_id, str) else None
        model = self.models.get(device.model) if device is not None else None
        if model is None or model.kind not in (MeterKind.ELECTRIC, MeterKind.WATER):
            raise RequestError(
                "meter", f"unknown meter {meter_id!r} (not a billing meter of the site)"
            )
        return model

    # -- reading ------------------------------------------------------------------------
    def account_snapshot(self, account_id: str) -> AccountSnapshot:
        """Balances, fee state, supply and today's consumption of one account."""
        with self.db.read() as conn:
            account = acc.get_account(conn, account_id)
            return self._snapshots(conn, [account])[0]

    def list_accounts(self) -> list[AccountSnapshot]:
        """Every account (ordered by id) as `AccountSnapshot`s."""
        with self.db.read() as conn:
            return self._snapshots(conn, acc.list_accounts(conn))

    def _snapshots(self, conn: Connection, accounts: list[acc.Account]) -> list[AccountSnapshot]:
        now = self.clock()
        tz = self.site.info.tz
        local = now.astimezone(tz)
        midnight = datetime.combine(local.date(), datetime.min.time(), tzinfo=tz)
        day = local.date().isoformat()
        ids = [a.id for a in accounts]
        meters = [m.meter_id for a in accounts for m in a.meters]
        p = t.prepay_meter.c
        pm = {
            r.meter_id: r
            for r in conn.execute(
                sa.select(
                    p.meter_id,
                    p.supply_on,
                    p.trip_due_at,
                    p.desired_on,
                    p.mismatch_count,
                    p.mismatch_since,
                    p.billing_problem,
                ).where(p.meter_id.in_(meters))
            )
        }
        offsets = dict(
            conn.execute(
                sa.select(t.meter.c.id, t.meter.c.count_offset).where(t.meter.c.id.in_(meters))
            ).all()
        )
        aligning = set(
            conn.execute(
                sa.select(t.meter.c.id).where(
                    t.meter.c.id.in_(meters), t.meter.c.align_requested_at.is_not(None)
                )
            ).scalars()
        )
        from ..billing.bills.paying import receivable

        owed = receivable(conn, ids)
        failures: dict[str, list[int]] = {}
        for f in cmds.open_failures(conn):
            failures.setdefault(f.account_id or "", []).append(f.id)
        usage = dict(
            conn.execute(
                sa.select(t.meter_usage_day.c.meter_id, t.meter_usage_day.c.energy).where(
                    t.meter_usage_day.c.meter_id.in_(meters), t.meter_usage_day.c.day == day
                )
            ).all()
        )
        cost = ledger.usage_fen_since(conn, ids, midnight.astimezone(now.tzinfo))
        emergency = {
            code.rsplit(":", 1)[1]: int(total)
            for code, total in conn.execute(
                sa.select(t.posting.c.ledger_account, sa.func.sum(t.posting.c.amount_fen))
                .where(t.posting.c.ledger_account.like("asset:emergency_credit:%"))
                .group_by(t.posting.c.ledger_account)
            ).all()
        }
        out = []
        for a in accounts:
            snaps = []
            kwh = Decimal(0)
            m3 = Decimal(0)
            for m in a.meters:
                row = pm.get(m.meter_id)
                units = int(usage.get(m.meter_id, 0)) + self.unsaved_energy(m.meter_id, day)
                today = Decimal(units) / ENERGY_SCALE
                water = m.kind == MeterKind.WATER.value
                if water:
                    m3 += today
                else:
                    kwh += today
                offset = int(offsets.get(m.meter_id) or 0)
                snaps.append(
                    MeterSnapshot(
                        m.meter_id,
                        m.kind,
                        m.control_mode,
                        row.supply_on if row is not None else None,
                        row.trip_due_at if row is not None else None,
                        today,
                        "m³" if water else "kWh",
                        m.buy_count,
                        m.confirmed_buy_count,
                        desired_on=row.desired_on if row is not None else None,
                        mismatch_count=int(row.mismatch_count) if row is not None else 0,
                        mismatch_active=row is not None and row.mismatch_since is not None,
                        billing_problem=row.billing_problem if row is not None else None,
                        meter_buy_count=m.confirmed_buy_count - offset,
                        align_pending=m.meter_id in aligning,
                    )
                )
            out.append(
                AccountSnapshot(
                    a.id,
                    a.name,
                    a.room,
                    a.state.value,
                    a.tariff_id,
                    a.protected,
                    a.energy_fen,
                    a.general_fen,
                    emergency.get(a.id, 0),
                    FeeState(a.fee_state),
                    a.thresholds,
                    tuple(snaps),
                    kwh,
                    m3,
                    cost.get(a.id, 0),
                    now,
                    receivable_fen=owed.get(a.id, 0),
                    failed_commands=tuple(failures.get(a.id, ())),
                )
            )
        return out


def _check_actor(actor: str) -> None:
    if not isinstance(actor, str) or not actor.strip() or len(actor) > 100:
        raise RequestError(
            "actor", "required: who asks (e.g. cli:alice, opcua:operator1), at most 100 characters"
        )


def _check_reason(reason: str) -> None:
    if not isinstance(reason, str) or not reason.strip():
        raise RequestError("reason", "required: say why (every relay and valve action is audited)")
    if len(reason) > 400:
        raise RequestError("reason", "at most 400 characters")


def _command_id(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise RequestError("command", f"expected a command number, got {value!r}")
    return value


def _describe_command(c: cmds.MeterCommand) -> str:
    when = ""
    if c.next_attempt_at > c.created_at + timedelta(seconds=1):
        when = f" at {c.next_attempt_at:%Y-%m-%d %H:%M} UTC"
    return f"{c.kind} #{c.id} for {c.meter_id}{when}"
