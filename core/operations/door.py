"""The door's plumbing: one transaction per call, audited one way, published one way
(see the package docstring)."""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import Enum
from typing import Generic, TypeVar

from sqlalchemy.engine import Connection

from ..config.site import Site
from ..db import Database
from ..db.group import GroupCommit
from ..events import AuditRecord, EventBus, publish_on_loop, utcnow
from ..ledger import RequestError
from ..model import DeviceModel, MeterKind
from ..prepay import commands as cmds
from ..prepay.binding import TariffBinding
from ..prepay.control import PrepayControl
from ..prepay.effects import Effects, audit
from ..prepay.engine_settings import load_engine
from ..prepay.feecontrol import Cause
from ..prepay.notifications import NotifySettings, load_notify
from ..prepay.settings import PrepaySettings, load_prepay
from ..rating.tariff_reading import load_tariffs
from ..rating.tariffs import TariffCatalogue
from . import outbox

log = logging.getLogger("openprepay.operations")

R = TypeVar("R")
Row = TypeVar("Row")


class Door:
    """The construction and plumbing every part of `Operations` shares."""

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
        #: The running service's event loop (set by the runtime): events are published
        #: there. None: published in the caller's thread (the CLI).
        self.loop: asyncio.AbstractEventLoop | None = None
        #: This writer's name in the event outbox: the running service publishes what
        #: other writers (the CLI, another instance) committed, not its own changes twice.
        self.origin = outbox.new_origin()

    def _call(
        self,
        action: str,
        target: str,
        actor: str,
        work: Callable[[Connection, Effects, datetime], R],
        describe: Callable[[R], str],
        *,
        idempotent: bool = False,
    ) -> R:
        pending = self._submit(action, target, actor, work, describe, idempotent=idempotent)
        result, effects = self._settle(pending)
        self.publish_committed(effects, pending.now)
        return result

    def _call_many(self, calls: list[PendingCall[R]]) -> list[R | Exception]:
        """Wait for door calls submitted together (`_submit`, in the group commit at
        once), each answered with its result or what it raised; their committed effects
        are published once for all (one hop to the event loop, not one per call)."""
        results: list[R | Exception] = []
        effects = Effects()
        latest: datetime | None = None
        for pending in calls:
            try:
                result, mine = self._settle(pending)
            except Exception as exc:
                results.append(exc)
                continue
            results.append(result)
            effects.extend(mine)
            latest = pending.now if latest is None else max(latest, pending.now)
        if latest is not None:
            self.publish_committed(effects, latest)
        return results

    def _submit(
        self,
        action: str,
        target: str,
        actor: str,
        work: Callable[[Connection, Effects, datetime], R],
        describe: Callable[[R], str],
        *,
        idempotent: bool = False,
    ) -> PendingCall[R]:
        """Hand a door call to the group commit without waiting (`_settle` waits): one
        transaction, audited and written to the outbox like every call."""
        pending: PendingCall[R] = PendingCall(action, str(target), actor, self.clock())
        try:
            check_actor(actor)
        except RequestError as exc:
            pending.future.set_exception(exc)
            return pending

        def transaction(conn: Connection) -> R:
            # Run again after a commit of unknown outcome (`idempotent`): what the
            # last run produced is what happened.
            mine = Effects()
            pending.attempts.append(mine)
            outcome = work(conn, mine, pending.now)
            audit(conn, mine, actor, action, str(target), describe(outcome), now=pending.now)
            outbox.write(conn, self.origin, mine, pending.now)
            return outcome

        pending.future = self.writer.submit(transaction, idempotent=idempotent)
        return pending

    def _settle(self, pending: PendingCall[R]) -> tuple[R, Effects]:
        """A submitted call's result and committed effects; a refusal is audited (and
        raised) here."""
        try:
            result = pending.future.result()
        except RequestError as exc:
            record = AuditRecord(
                str(pending.actor or "?"), pending.action, pending.target, f"refused: {exc}", False
            )
            self._refused(record, pending.now)
            raise
        return result, pending.attempts[-1]

    def _refused(self, record: AuditRecord, now: datetime) -> None:
        """A refused request changed nothing, but its audit record reaches every running
        service (an operator watching OPC UA sees failed attempts from the CLI too)."""
        effects = Effects(events=[record])
        try:
            self.writer.run(lambda conn: outbox.write(conn, self.origin, effects, now))
        except Exception:
            log.exception("the audit record of a refused request was not stored")
        self.publish_committed(effects, now)

    def _publish(self, item: object) -> None:
        """Publish on the running service's event loop, whatever thread the call came from
        (the OPC UA server calls through `asyncio.to_thread`)."""
        publish_on_loop(self.loop, self.bus.publish, item)

    def _publish_all(self, items: list[object]) -> None:
        """`_publish` of each item in order, in one hop to the event loop (one wake-up of
        the loop per commit, not one per event)."""
        publish_on_loop(self.loop, self._publish_each, items)

    def _publish_each(self, items: list[object]) -> None:
        for item in items:
            self.bus.publish(item)

    def publish_committed(self, effects: Effects, now: datetime) -> None:
        """Tell this process of committed effects: events and account samples on the bus,
        then the commit listeners. Called after each of our own commits, and by the
        outbox tail for what other writers committed."""
        if effects.events:
            self._publish_all(list(effects.events))
        if effects.accounts:
            if self.loop is None:  # the CLI: published before the call returns
                self._publish_samples(effects.accounts, now)
            else:
                self._sampler.put((set(effects.accounts), now))
        for listener in self.committed:
            try:
                listener(effects)
            except Exception:
                log.exception("commit listener failed")

    @functools.cached_property
    def _sampler(self) -> queue.SimpleQueue[tuple[set[str], datetime]]:
        """The running service's account samples, read by one thread for every commit
        queued meanwhile: concurrent calls (a group commit's worth) cost four queries in
        all, not four each on a connection of their own. Each sample is read after its
        change committed, so it is at least as new as the change."""
        pending: queue.SimpleQueue[tuple[set[str], datetime]] = queue.SimpleQueue()

        def serve() -> None:
            while True:
                accounts, now = pending.get()
                while True:
                    try:
                        more, later = pending.get_nowait()
                    except queue.Empty:
                        break
                    accounts |= more
                    now = max(now, later)
                try:
                    self._publish_samples(accounts, now)
                except Exception:
                    log.exception("account samples of %d accounts not read", len(accounts))

        threading.Thread(target=serve, name="account-samples", daemon=True).start()
        return pending

    def _publish_samples(self, accounts: set[str], now: datetime) -> None:
        with self.db.read() as conn:
            samples = self.control.account_samples(conn, accounts, now)
        if samples:
            self._publish_all(samples)

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

    def _model_of(self, meter_id: str) -> DeviceModel:
        device = self.site.devices.get(meter_id) if isinstance(meter_id, str) else None
        model = self.models.get(device.model) if device is not None else None
        if model is None or model.kind not in (MeterKind.ELECTRIC, MeterKind.WATER):
            raise RequestError(
                "meter", f"unknown meter {meter_id!r} (not a billing meter of the site)"
            )
        return model


@dataclass(eq=False)
class PendingCall(Generic[R]):
    """A door call handed to the group commit (`Door._submit`), not answered yet."""

    action: str
    target: str
    actor: str
    now: datetime
    future: Future[R] = field(default_factory=Future)
    #: The effects of each run of its transaction (the last one is what happened).
    attempts: list[Effects] = field(default_factory=list)


def check_actor(actor: str) -> None:
    if not isinstance(actor, str) or not actor.strip() or len(actor) > 100:
        raise RequestError(
            "actor", "required: who asks (e.g. cli:alice, opcua:operator1), at most 100 characters"
        )


def check_reason(reason: str) -> None:
    if not isinstance(reason, str) or not reason.strip():
        raise RequestError("reason", "required: say why (every relay and valve action is audited)")
    if len(reason) > 400:
        raise RequestError("reason", "at most 400 characters")


def check_state_filter(state: str | None, states: type[Enum]) -> None:
    """A listing's `state` filter: none, or one of the values of `states`."""
    if state is not None and state not in {s.value for s in states}:
        raise RequestError(
            "state", f"expected one of {', '.join(s.value for s in states)}; got {state!r}"
        )


def found(row: Row | None, field: str, what: str, key: object) -> Row:
    """`row`, or the refusal of an unknown `key` ("unknown payment order 'x'")."""
    if row is None:
        raise RequestError(field, f"unknown {what} {key!r}")
    return row


def command_number(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise RequestError("command", f"expected a command number, got {value!r}")
    return value


def describe_command(c: cmds.MeterCommand) -> str:
    when = ""
    if c.next_attempt_at > c.created_at + timedelta(seconds=1):
        when = f" at {c.next_attempt_at:%Y-%m-%d %H:%M} UTC"
    return f"{c.kind} #{c.id} for {c.meter_id}{when}"
