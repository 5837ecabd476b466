"""The command executor: durable meter commands from the database to the devices.

The database is the queue (`core.prepay.commands`). The executor claims due commands every
`poll_s` (0.25 s by default, so a command written by the CLI or another process runs within
half a second) or at once when this process queued one (`wake()`), and runs each as a task
of its own — one per meter at a time, because a command is only claimable when no older
command of its meter is unfinished:

    claim (CLAIMED, lease) → mark_sent (SENT) → arbiter.execute (write, then read back)
      confirmed   → mark_confirmed; supply commands update the meter's supply state and
                    publish SupplyChanged (with the reason and who asked)
      not shown   → retry with back-off (same parameters: a RECHARGE keeps its purchase
                    count — the meter's own, fixed when first sent — so a top-up whose
                    reply was lost is applied exactly once)
      refused     → FAILED at once (CommandRefused: the device cannot do it)
      I/O error   → retry with back-off; FAILED after `attempts` tries
    FAILED publishes CommandFailed.

A busy database never loses a confirmation: claiming and recording an outcome run through
`Database.write`, which waits the lock out with back-off (`core/db/retry.py`); a command
whose outcome is still being recorded stays "in hand" and is not claimed again by this
executor even if its lease runs out meanwhile (`claim_due(in_hand=...)`).

With [cluster] (`use_fences`), the executor claims only the commands of the meters on the
links this instance holds the lease of, under the lease's epoch, and every transition
carries it: a completion under a lost lease is refused by the database (`CommandFenced`)
and dropped; the new owner claims the command at once and, if it had been sent before,
reads the device back before deciding whether to send it again.

After a restart nothing is lost: the instance releases the claims its previous life held
(same instance name), so PENDING, CLAIMED and SENT commands run again at once; claims of
another, dead instance become claimable when their lease expires.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from ..cluster.lease import Fence
from ..db import Database
from ..db import schema as t
from ..errors import CommandFenced, CommandRefused, DeviceIOError, LinkNotOwned
from ..events import CommandFailed, SupplyChanged, publish_on_loop, utcnow
from ..model import CommandOutcome, DeviceCommand
from ..tasks import wait_event
from . import commands as cmds
from .control import PrepayControl
from .effects import Effects
from .feecontrol import Cause
from .purchase_count import METER_COUNT, pin_meter_counts

log = logging.getLogger("openprepay.executor")


class CommandExecutor:
    name = "command-executor"

    def __init__(
        self,
        db: Database,
        arbiter: Any,
        control: PrepayControl,
        publish: Callable[[object], None],
        *,
        meters: Collection[str],
        owner: str,
        poll_s: float = 0.25,
        lease_s: float = 30.0,
        attempts: int = 8,
        retry_initial_s: float = 5.0,
        retry_max_s: float = 600.0,
        concurrency: int = 64,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.arbiter = arbiter
        self.control = control
        self.publish = publish
        self.meters = frozenset(meters)
        self.owner = owner
        self.poll_s = poll_s
        self.lease_s = lease_s
        self.attempts = attempts
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.concurrency = concurrency
        self.clock = clock
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Commands claimed and not yet recorded (never claimed twice by this executor).
        self._in_hand: set[int] = set()
        #: Set when stop gives up waiting: a recording still waiting on a busy database
        #: gives up too (the command is resumed at the next start).
        self._stopping = threading.Event()
        #: Set when stop begins: a claim waiting on a busy database gives up (what it
        #: would claim could not run any more).
        self._no_claims = threading.Event()
        self.confirmed = 0
        self.failed = 0
        self.retried = 0
        #: With [cluster]: the fences of the links this instance owns now, and the meters
        #: of each link (`use_fences`); None: one process, every meter of the site.
        self.fences: Callable[[], Mapping[str, Fence]] | None = None
        self.link_meters: Mapping[str, Collection[str]] = {}
        #: Completions the database refused because the lease had moved on.
        self.fenced = 0

    def use_fences(
        self,
        fences: Callable[[], Mapping[str, Fence]],
        link_meters: Mapping[str, Collection[str]],
        owner: str,
    ) -> None:
        """[cluster]: claim and complete only under the current lease of each link, as
        `owner` (the cluster instance id, the leases' owner)."""
        self.owner = owner
        self.fences = fences
        self.link_meters = {k: frozenset(v) & self.meters for k, v in link_meters.items()}

    async def start(self) -> None:
        self._no_claims.clear()
        self._stopping.clear()
        self._loop = asyncio.get_running_loop()
        released = await asyncio.to_thread(self._release_own_claims)
        if released:
            log.info("resuming %d command(s) this instance held before it stopped", released)
        self._task = asyncio.create_task(self._run(), name="command-executor")

    async def stop(self) -> None:
        self._no_claims.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._running:
            await asyncio.wait(self._running, timeout=10)
            self._stopping.set()
            for task in self._running:
                task.cancel()
            await asyncio.gather(*self._running, return_exceptions=True)

    def wake(self) -> None:
        """Look at the queue now (thread-safe): this process just queued a command."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._wake.set()
        else:
            loop.call_soon_threadsafe(self._wake.set)

    def _release_own_claims(self) -> int:
        now = self.clock()
        with self.db.begin() as conn:
            return conn.execute(
                t.meter_command.update()
                .where(
                    t.meter_command.c.claimed_by == self.owner[:100],
                    t.meter_command.c.state.in_(
                        [cmds.CommandState.CLAIMED.value, cmds.CommandState.SENT.value]
                    ),
                )
                .values(lease_until=now)
            ).rowcount

    async def _run(self) -> None:
        while True:
            self._wake.clear()
            try:
                free = self.concurrency - len(self._running)
                if free > 0:
                    batch = await asyncio.to_thread(self._claim, free, frozenset(self._in_hand))
                    for command in batch:
                        self._in_hand.add(command.id)
                        task = asyncio.create_task(self._execute(command))
                        self._running.add(task)
                        task.add_done_callback(self._running.discard)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("claiming meter commands failed")
            await wait_event(self._wake, self.poll_s)

    def _claim(self, limit: int, in_hand: frozenset[int] = frozenset()) -> list[cmds.MeterCommand]:
        # Look before claiming: nearly always nothing is due, and a claim is a write
        # transaction (one per owned link with [cluster]) with an IN list of the meters.
        with self.db.read() as conn:
            due = cmds.claimable_meters(conn, now=self.clock(), in_hand=in_hand)
        meters = self.meters & due
        if not meters:
            return []
        if self.fences is not None:
            return self._claim_fenced(limit, in_hand, meters)

        def claim(conn: Connection) -> list[cmds.MeterCommand]:
            batch = cmds.claim_due(
                conn,
                limit,
                owner=self.owner,
                lease_s=self.lease_s,
                meters=meters,
                now=self.clock(),
                in_hand=in_hand,
            )
            batch = pin_meter_counts(conn, batch)
            for command in batch:
                cmds.mark_sent(conn, command.id, owner=self.owner)
            return batch

        return self.db.write(claim, what="claiming meter commands", stop=self._no_claims)

    def _claim_fenced(
        self, limit: int, in_hand: frozenset[int], due: Collection[str]
    ) -> list[cmds.MeterCommand]:
        """Claim on each owned link that has a meter in `due` (`claimable_meters`)."""
        assert self.fences is not None
        claimed: list[cmds.MeterCommand] = []
        for link_id, fence in self.fences().items():
            meters = [m for m in self.link_meters.get(link_id, ()) if m in due]
            if not meters or len(claimed) >= limit:
                continue

            def claim(
                conn: Connection, fence: Fence = fence, meters: Collection[str] = meters
            ) -> list[cmds.MeterCommand]:
                batch = cmds.claim_due(
                    conn,
                    limit - len(claimed),
                    owner=self.owner,
                    lease_s=self.lease_s,
                    meters=meters,
                    now=self.clock(),
                    in_hand=in_hand,
                    fence=fence,
                )
                batch = pin_meter_counts(conn, batch)
                for command in batch:
                    cmds.mark_sent(conn, command.id, owner=self.owner, fence=fence)
                return batch

            claimed.extend(
                self.db.write(
                    claim, what=f"claiming meter commands of {link_id}", stop=self._no_claims
                )
            )
        return claimed

    def _fence_of(self, command: cmds.MeterCommand) -> Fence | None:
        if self.fences is None or command.claimed_link is None or command.claimed_epoch is None:
            return None
        return Fence(command.claimed_link, self.owner, command.claimed_epoch)

    async def _execute(self, command: cmds.MeterCommand) -> None:
        try:
            await self._execute_one(command)
        except asyncio.CancelledError:
            raise
        except Exception:  # recording failed for another reason: the lease runs out, it reruns
            log.exception("recording the outcome of command %d failed", command.id)
        finally:
            self._in_hand.discard(command.id)

    async def _execute_one(self, command: cmds.MeterCommand) -> None:
        try:
            device = _device_command(command)
        except (KeyError, TypeError, ValueError) as exc:
            await asyncio.to_thread(self._fail, command, f"bad parameters: {exc}", True)
            return
        if self.fences is not None and command.sent_at is not None:
            # Sent before (perhaps by the link's previous owner): read the device back
            # first; if it shows the effect, nothing is written again.
            try:
                seen = await asyncio.wait_for(
                    self.arbiter.check(device), timeout=max(self.lease_s * 0.8, 1.0)
                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.info("command %d: read-back before re-sending failed: %s", command.id, exc)
            else:
                if seen.confirmed:
                    log.info(
                        "command %d (seq %s) already in effect on %s: not sent again",
                        command.id,
                        command.seq,
                        command.meter_id,
                    )
                    await asyncio.to_thread(self._confirmed, command, seen)
                    return
        try:
            outcome = await asyncio.wait_for(
                self.arbiter.execute(device), timeout=max(self.lease_s * 0.8, 1.0)
            )
        except LinkNotOwned as exc:
            # [cluster] the lease went while the command waited: nothing was sent and
            # nothing is recorded; the link's next owner claims it under its epoch.
            log.warning("command %d not sent: %s", command.id, exc)
            return
        except CommandRefused as exc:
            await asyncio.to_thread(self._fail, command, f"refused: {exc}", True)
            return
        except (DeviceIOError, TimeoutError) as exc:
            await asyncio.to_thread(self._fail, command, f"{type(exc).__name__}: {exc}", False)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not lose the command
            log.exception("executing command %d failed", command.id)
            await asyncio.to_thread(self._fail, command, f"error: {exc}", False)
            return
        if outcome.confirmed:
            await asyncio.to_thread(self._confirmed, command, outcome)
        else:
            await asyncio.to_thread(self._fail, command, f"not confirmed: {outcome.detail}", False)

    def _confirmed(self, command: cmds.MeterCommand, outcome: CommandOutcome) -> None:
        now = self.clock()
        supply = self.control.supply_of(command.meter_id)
        on = None
        if supply is not None and command.kind in (supply.cut, supply.restore):
            on = command.kind == supply.restore

        def record(conn: Connection) -> Effects | None:
            try:
                cmds.mark_confirmed(
                    conn,
                    command.id,
                    readback=_jsonable(outcome.readback),
                    owner=self.owner,
                    now=now,
                    fence=self._fence_of(command),
                )
            except (cmds.CommandStateError, CommandFenced) as exc:
                self.fenced += isinstance(exc, CommandFenced)
                log.warning("command %d: %s", command.id, exc)
                return None
            if on is not None:
                self.control.upsert_meter(conn, command.meter_id, now, supply_on=on, supply_at=now)
            effects = Effects()
            if command.kind == cmds.CommandKind.REFUND and command.account_id:
                # The meter was debited and the refund posted with the confirmation: the
                # energy balance moved, so fee control looks at it (same transaction).
                self.control.after_change(
                    conn,
                    command.account_id,
                    Cause.REFUND,
                    actor=command.requested_by,
                    effects=effects,
                    now=now,
                )
            return effects

        effects = self.db.write(
            record, what=f"recording command {command.id} confirmed", stop=self._stopping
        )
        if effects is None:
            return
        for event in effects.events:
            self._emit(event)
        if effects.commands:
            self.wake()
        self.confirmed += 1
        if on is not None:
            self._emit(
                SupplyChanged(
                    command.meter_id,
                    command.account_id,
                    on,
                    command.reason,
                    command.requested_by,
                    command.id,
                    True,
                    at=now,
                )
            )

    def _fail(self, command: cmds.MeterCommand, error: str, final: bool) -> None:
        now = self.clock()
        final = final or command.attempts >= self.attempts
        retry_at = (
            None
            if final
            else now + cmds.retry_delay(command.attempts, self.retry_initial_s, self.retry_max_s)
        )

        def record(conn: Connection) -> bool:
            try:
                cmds.mark_failed(
                    conn,
                    command.id,
                    error,
                    retry_at=retry_at,
                    final=final,
                    owner=self.owner,
                    now=now,
                    fence=self._fence_of(command),
                )
            except (cmds.CommandStateError, CommandFenced) as exc:
                self.fenced += isinstance(exc, CommandFenced)
                log.warning("command %d: %s", command.id, exc)
                return False
            return True

        if not self.db.write(
            record, what=f"recording command {command.id} failed", stop=self._stopping
        ):
            return
        log.warning(
            "command %s #%d for %s %s (attempt %d): %s",
            command.kind,
            command.id,
            command.meter_id,
            "FAILED" if final else "will be retried",
            command.attempts,
            error,
        )
        if final:
            self.failed += 1
            self._emit(
                CommandFailed(
                    command.id,
                    command.meter_id,
                    command.account_id,
                    command.kind,
                    command.attempts,
                    error,
                    at=now,
                )
            )
        else:
            self.retried += 1
            self._schedule_wake(retry_at)

    def _emit(self, event: object) -> None:
        """Publish on the event loop (this runs in a worker thread)."""
        publish_on_loop(self._loop, self.publish, event)

    def _schedule_wake(self, at: datetime | None) -> None:
        loop = self._loop
        if at is None or loop is None or loop.is_closed():
            return
        delay = max((at - self.clock()).total_seconds(), 0.0)
        if delay < self.poll_s:
            return
        loop.call_soon_threadsafe(loop.call_later, delay, self._wake.set)


def _device_command(command: cmds.MeterCommand) -> DeviceCommand:
    """The device command for a queued one: money parameters become the wire's units, the
    purchase count the meter's own (pinned when first sent)."""
    params = dict(command.params)
    if command.kind in (cmds.CommandKind.RECHARGE, cmds.CommandKind.REFUND):
        fen = int(params["amount_fen"])
        count = params.get(METER_COUNT, params["buy_count"])
        params = {"buy_count": int(count), "amount": fen / 100}
    device = command.device_command()
    name = device.name
    if command.kind == cmds.CommandKind.SET_PARAMS and "command" in params:
        name = str(params.pop("command"))  # the model's own command (SET_PRICES, SET_ALARMS)
    return DeviceCommand(device.meter_id, name, params, reason=device.reason)


def _jsonable(values: Any) -> dict[str, Any]:
    out = {}
    for k, v in dict(values or {}).items():
        out[str(k)] = v if isinstance(v, int | float | str | bool) or v is None else str(v)
    return out
