"""Durable meter commands: the queue between a decision and a device.

A `MeterCommand` row is written in the same transaction as the change that caused it (a
top-up's RECHARGE, fee control's TRIP after a usage posting, an operator's CLOSE), so a
crash can lose neither. The executor (in the running service) claims due rows, sends them
through the link arbiter, confirms them by reading the device back, and records the
outcome. Because the database is the queue, a command written by the CLI or by another
instance is picked up by the next `claim_due` poll.

State diagram::

                enqueue
                   │
                   ▼          newer TRIP/CLOSE/... for the meter
   ┌──────────► PENDING ─────────────────────────────────────────► SUPERSEDED
   │               │ claim_due (due, oldest unfinished of its meter,
   │               │            row-locked; attempts += 1; lease)
   │               ▼
   │            CLAIMED ──┐
   │               │      │ lease expired (executor died): claimable again
   │     mark_sent │      │ (re-sent: TRIP/CLOSE are idempotent, RECHARGE
   │               ▼      │  carries its purchase count)
   │             SENT  ───┘
   │               │
   │   mark_failed │ mark_confirmed (read-back shows the effect)
   │  (retry_at)   ├──────────────────────────────────────────────► CONFIRMED
   └───────────────┤
                   │ mark_failed(final=True) (refused, out of attempts)
                   └──────────────────────────────────────────────► FAILED

Rules:
- Per meter, commands run in order: a row is claimable only when no older row of the same
  meter is PENDING, CLAIMED or SENT. RECHARGE n+1 therefore never overtakes n, and a CLOSE
  never overtakes the TRIP before it.
- A newer supply command (TRIP, CLOSE, ALLOW_CLOSE, RELEASE, VALVE_OPEN, VALVE_CLOSE)
  supersedes older PENDING supply commands of the meter; likewise PROTECT/UNPROTECT and
  ALARM/ALARM_CLEAR among themselves. Claimed or sent rows are never superseded (they
  may be on the wire); the newer one simply runs after them.
- RECHARGE and REFUND carry money and are never superseded. They carry the platform's
  purchase count (`buy_count`, unique per meter, never going back); the meter's own count
  is the platform's minus the meter's offset and is fixed when first sent, so every retry
  carries the same count (`core/prepay/purchase_count.py`); a command whose meter's
  count is still to be read waits.
- A FAILED command is final; an operator may send it again as a new command or resolve
  it otherwise; FAILED money commands without a resolution are open alarms
  (`core/prepay/failed_commands.py`).
- Every command records why (`reason`) and who asked (`requested_by`): required.
- Claims use `SELECT ... FOR UPDATE SKIP LOCKED` on PostgreSQL (two instances never get
  the same row); on SQLite the claim transaction holds the write lock.
- Every command carries a per-meter sequence number (`seq`), and commands set a state
  (TRIP, CLOSE), never toggle one, so sending one twice has the effect of once.
- With [cluster] (`core/cluster`), a claim and every later transition carry a `Fence`: the
  link's lease owner and epoch. The database refuses them (`CommandFenced`) once the epoch is
  not the current one, so an instance that was paused past its lease completes nothing.

Executor loop (sketch)::

    with db.begin() as conn:
        batch = claim_due(conn, 20, owner=instance_id, meters=my_meters)
    for cmd in batch:
        try:
            outcome = await arbiter.execute(cmd.device_command())
        except CommandRefused as exc:
            with db.begin() as conn: mark_failed(conn, cmd.id, str(exc), final=True, owner=...)
            continue
        except DeviceIOError as exc:
            with db.begin() as conn:
                mark_failed(conn, cmd.id, str(exc), retry_at=now + retry_delay(cmd.attempts))
            continue
        with db.begin() as conn:
            if outcome.confirmed: mark_confirmed(conn, cmd.id, readback=outcome.readback)
            else: mark_failed(conn, cmd.id, outcome.detail, retry_at=...)
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from ..cluster.lease import Fence, fence_clause
from ..cluster.lease import check as check_fence
from ..db import schema as t
from ..db.among import among
from ..errors import CommandFenced, OpenPrepayError
from ..events import utcnow
from ..ledger import RequestError, abandon_meter_refund, complete_meter_refund
from ..model import DeviceCommand


class CommandKind(enum.StrEnum):
    TRIP = "TRIP"
    CLOSE = "CLOSE"
    ALLOW_CLOSE = "ALLOW_CLOSE"
    #: Hand the relay back to the meter's own balance logic (LOCAL meters).
    RELEASE = "RELEASE"
    PROTECT = "PROTECT"
    UNPROTECT = "UNPROTECT"
    ALARM = "ALARM"
    ALARM_CLEAR = "ALARM_CLEAR"
    #: Deliver a top-up to a LOCAL meter: params buy_count, amount_fen, amount ("100.00").
    RECHARGE = "RECHARGE"
    #: Debit a LOCAL meter (equal purchase count): params buy_count, amount_fen, amount.
    REFUND = "REFUND"
    #: Push parameters (alarm amounts, prices...): params are the device command's.
    SET_PARAMS = "SET_PARAMS"
    VALVE_OPEN = "VALVE_OPEN"
    VALVE_CLOSE = "VALVE_CLOSE"


class CommandState(enum.StrEnum):
    PENDING = "PENDING"
    CLAIMED = "CLAIMED"
    SENT = "SENT"
    CONFIRMED = "CONFIRMED"
    FAILED = "FAILED"
    SUPERSEDED = "SUPERSEDED"


UNFINISHED = (CommandState.PENDING, CommandState.CLAIMED, CommandState.SENT)
FINISHED = (CommandState.CONFIRMED, CommandState.FAILED, CommandState.SUPERSEDED)

#: Commands that switch supply (relay or valve): audited, and a newer one supersedes.
SUPPLY_KINDS = frozenset(
    {
        CommandKind.TRIP,
        CommandKind.CLOSE,
        CommandKind.ALLOW_CLOSE,
        CommandKind.RELEASE,
        CommandKind.VALVE_OPEN,
        CommandKind.VALVE_CLOSE,
    }
)
_SUPERSEDE_GROUPS = (
    SUPPLY_KINDS,
    frozenset({CommandKind.PROTECT, CommandKind.UNPROTECT}),
    frozenset({CommandKind.ALARM, CommandKind.ALARM_CLEAR}),
)

DEFAULT_LEASE_S = 60.0
#: Commands that carry the meter's purchase count (domain.md §1.5).
COUNTED_KINDS = (CommandKind.RECHARGE.value, CommandKind.REFUND.value)


class CommandStateError(OpenPrepayError):
    """A transition the state diagram does not allow (or the claim was lost)."""


@dataclass(frozen=True, slots=True)
class MeterCommand:
    id: int
    meter_id: str
    kind: str
    params: Mapping[str, Any]
    reason: str
    requested_by: str
    state: str
    attempts: int
    next_attempt_at: datetime
    claimed_by: str | None
    lease_until: datetime | None
    last_error: str | None
    readback: Mapping[str, Any] | None
    superseded_by: int | None
    journal_id: int | None
    account_id: str | None
    idempotency_key: str | None
    created_at: datetime
    updated_at: datetime
    sent_at: datetime | None
    finished_at: datetime | None
    #: The FAILED command this one retries.
    retry_of: int | None = None
    #: How an operator dealt with this command once it FAILED (retry, refund), who, when.
    resolution: str | None = None
    resolved_by: str | None = None
    resolved_at: datetime | None = None
    #: The meter's command sequence number (increasing per meter).
    seq: int | None = None
    #: With [cluster]: the link and lease epoch of the claim (fencing token).
    claimed_link: str | None = None
    claimed_epoch: int | None = None

    def device_command(self) -> DeviceCommand:
        """What to hand to `LinkArbiter.execute`; the reason carries the audit trail."""
        return DeviceCommand(
            self.meter_id,
            self.kind,
            dict(self.params),
            reason=f"{self.reason} (requested by {self.requested_by}; command {self.id})",
        )


def command_from_row(row: Any) -> MeterCommand:
    """A `meter_command` row selected with `SELECT_COMMANDS` as a `MeterCommand`."""
    return MeterCommand(**{c: getattr(row, c) for c in MeterCommand.__slots__})


#: Every column of `MeterCommand`, to select commands with.
SELECT_COMMANDS = sa.select(*(t.meter_command.c[name] for name in MeterCommand.__slots__))


def get_command(conn: Connection, command_id: int) -> MeterCommand:
    row = conn.execute(SELECT_COMMANDS.where(t.meter_command.c.id == command_id)).first()
    if row is None:
        raise RequestError("command", f"unknown command {command_id}")
    return command_from_row(row)


def list_commands(
    conn: Connection,
    *,
    meter_id: str | None = None,
    account_id: str | None = None,
    states: Collection[str] | None = None,
    limit: int = 100,
) -> list[MeterCommand]:
    """Newest first."""
    q = SELECT_COMMANDS.order_by(t.meter_command.c.id.desc()).limit(limit)
    if meter_id is not None:
        q = q.where(t.meter_command.c.meter_id == meter_id)
    if account_id is not None:
        q = q.where(t.meter_command.c.account_id == account_id)
    if states is not None:
        q = q.where(t.meter_command.c.state.in_([str(s) for s in states]))
    return [command_from_row(r) for r in conn.execute(q)]


def enqueue(
    conn: Connection,
    meter_id: str,
    kind: CommandKind | str,
    *,
    reason: str,
    requested_by: str,
    params: Mapping[str, Any] | None = None,
    journal_id: int | None = None,
    account_id: str | None = None,
    idempotency_key: str | None = None,
    not_before: datetime | None = None,
    now: datetime | None = None,
) -> MeterCommand:
    """Queue a command for `meter_id` in the caller's transaction.

    `reason` (why) and `requested_by` (who) are required: every relay and valve action is
    audited. `not_before` delays the first attempt (e.g. a TRIP scheduled after quiet
    hours). With `idempotency_key`, enqueuing the same decision twice returns the first
    row. A supply command supersedes the meter's older PENDING supply commands.
    """
    try:
        kind = CommandKind(kind)
    except ValueError:
        known = ", ".join(k.value for k in CommandKind)
        raise RequestError("kind", f"expected one of {known}; got {kind!r}") from None
    if not isinstance(meter_id, str) or not meter_id:
        raise RequestError("meter", "required")
    if not reason or not reason.strip():
        raise RequestError("reason", f"required: say why the {kind} is sent (audit)")
    if not requested_by or not requested_by.strip():
        raise RequestError("requested_by", f"required: say who asks for the {kind} (audit)")
    if idempotency_key is not None:
        existing = conn.execute(
            SELECT_COMMANDS.where(t.meter_command.c.idempotency_key == idempotency_key)
        ).first()
        if existing is not None:
            return command_from_row(existing)
    now = now or utcnow()
    command_id = conn.execute(
        t.meter_command.insert().returning(t.meter_command.c.id),
        {
            "seq": next_seq(conn, meter_id),
            "meter_id": meter_id,
            "kind": kind.value,
            "params": dict(params or {}),
            "reason": reason[:500],
            "requested_by": requested_by[:100],
            "state": CommandState.PENDING.value,
            "attempts": 0,
            "next_attempt_at": not_before or now,
            "journal_id": journal_id,
            "account_id": account_id,
            "idempotency_key": idempotency_key,
            "created_at": now,
            "updated_at": now,
        },
    ).scalar_one()
    for group in _SUPERSEDE_GROUPS:
        if kind in group:
            conn.execute(
                t.meter_command.update()
                .where(
                    t.meter_command.c.meter_id == meter_id,
                    t.meter_command.c.state == CommandState.PENDING.value,
                    t.meter_command.c.kind.in_([k.value for k in group]),
                    t.meter_command.c.id < command_id,
                )
                .values(
                    state=CommandState.SUPERSEDED.value,
                    superseded_by=command_id,
                    updated_at=now,
                    finished_at=now,
                )
            )
    return get_command(conn, command_id)


def next_seq(conn: Connection, meter_id: str) -> int:
    """The meter's next command sequence number (one row per meter, incremented in the
    caller's transaction: two writers queue one after the other)."""
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    q = insert(t.meter_command_seq).values(meter_id=meter_id, last_seq=1)
    q = q.on_conflict_do_update(
        index_elements=[t.meter_command_seq.c.meter_id],
        set_={"last_seq": t.meter_command_seq.c.last_seq + 1},
    ).returning(t.meter_command_seq.c.last_seq)
    return int(conn.execute(q).scalar_one())


def claimable_meters(
    conn: Connection, *, now: datetime | None = None, in_hand: Collection[int] = ()
) -> set[str]:
    """The meters that have a command `claim_due` might claim now — a superset: PENDING and
    due, or CLAIMED/SENT (its lease may have run out, or its epoch moved on) not in the
    caller's hand. Empty: a claim would find nothing.

    The executor asks this in a read transaction before every claim: almost always the
    answer is empty, and the claim it saves is a write transaction (the site database's
    write lock; with [cluster] one per owned link) several times a second. When it is not
    empty, the claim runs only for the caller's meters among them, and with [cluster] only
    on the links they hang on: another instance's command in flight no longer makes every
    instance claim on all its links."""
    now = now or utcnow()
    c = t.meter_command
    in_flight = c.c.state.in_([CommandState.CLAIMED.value, CommandState.SENT.value])
    q = sa.select(c.c.meter_id).where(
        sa.or_(
            sa.and_(c.c.state == CommandState.PENDING.value, c.c.next_attempt_at <= now),
            in_flight,
        )
    )
    if in_hand:
        q = q.where(c.c.id.not_in(list(in_hand)))
    return set(conn.execute(q.distinct()).scalars())


def claim_due(
    conn: Connection,
    limit: int,
    *,
    owner: str = "executor",
    lease_s: float = DEFAULT_LEASE_S,
    meters: Collection[str] | None = None,
    now: datetime | None = None,
    in_hand: Collection[int] = (),
    fence: Fence | None = None,
) -> list[MeterCommand]:
    """Claim up to `limit` due commands for `owner` and return them, oldest first.

    Due = PENDING with `next_attempt_at <= now`, or CLAIMED/SENT whose lease expired (the
    executor that held it died). Only the oldest unfinished command of each meter is
    claimable. `meters` restricts the claim to the meters this instance's links serve.
    The claim increments `attempts` and sets a lease of `lease_s` seconds; commit the
    transaction before talking to devices. `in_hand`: ids the caller still holds (its
    outcome is being recorded, perhaps past the lease while the database was busy) —
    never claimed again, and their meters' newer commands wait behind them as usual.

    With `fence` ([cluster]: `meters` are the link's), the claim happens only while the
    fence is the link's current lease, and records its link and epoch; a command claimed
    or sent under an older epoch of the link is claimable at once (its owner is gone).
    """
    if limit <= 0:
        return []
    now = now or utcnow()
    c = t.meter_command.alias("c")
    older = t.meter_command.alias("o")
    unfinished = [s.value for s in UNFINISHED]
    blocked = (
        sa.select(older.c.id)
        .where(
            older.c.meter_id == c.c.meter_id,
            older.c.id < c.c.id,
            older.c.state.in_(unfinished),
        )
        .exists()
    )
    in_flight = c.c.state.in_([CommandState.CLAIMED.value, CommandState.SENT.value])
    due = sa.or_(
        sa.and_(c.c.state == CommandState.PENDING.value, c.c.next_attempt_at <= now),
        sa.and_(in_flight, c.c.lease_until < now),
    )
    if fence is not None:
        due = sa.or_(due, sa.and_(in_flight, c.c.claimed_epoch.is_distinct_from(fence.epoch)))
    # Money waits while the meter's own purchase count is to be read (align_buy_count);
    # one already sent, or a retry, keeps the count it was first sent with: never waits.
    unaligned = sa.and_(
        c.c.kind.in_(COUNTED_KINDS),
        c.c.sent_at.is_(None),
        c.c.retry_of.is_(None),
        sa.select(t.meter.c.id)
        .where(t.meter.c.id == c.c.meter_id, t.meter.c.align_requested_at.is_not(None))
        .exists(),
    )
    q = (
        sa.select(c.c.id)
        .where(due, ~blocked, ~unaligned)
        .order_by(c.c.next_attempt_at, c.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True, of=c)
    )
    if meters is not None:
        q = q.where(among(conn, c.c.meter_id, meters))
    if in_hand:
        q = q.where(c.c.id.not_in(list(in_hand)))
    if fence is not None:
        q = q.where(fence_clause(fence))
    ids = list(conn.execute(q).scalars())
    if not ids:
        return []
    claim: dict[str, Any] = {
        "state": CommandState.CLAIMED.value,
        "claimed_by": owner[:100],
        "lease_until": now + timedelta(seconds=lease_s),
        "attempts": t.meter_command.c.attempts + 1,
        "updated_at": now,
    }
    if fence is not None:
        claim.update(claimed_link=fence.link_id, claimed_epoch=fence.epoch)
    conn.execute(t.meter_command.update().where(t.meter_command.c.id.in_(ids)).values(**claim))
    rows = conn.execute(SELECT_COMMANDS.where(t.meter_command.c.id.in_(ids))).all()
    return sorted((command_from_row(r) for r in rows), key=lambda m: (m.next_attempt_at, m.id))


def _transition(
    conn: Connection,
    command_id: int,
    allowed: Collection[CommandState],
    owner: str | None,
    values: Mapping[str, Any],
    fence: Fence | None = None,
) -> MeterCommand:
    if fence is not None:
        # Before the command's row: the lease row is key-share-locked first, always in this
        # order, so a take-over waits for this transaction or this one sees it.
        check_fence(conn, fence)
    locked = SELECT_COMMANDS.where(t.meter_command.c.id == command_id).with_for_update()
    row = conn.execute(locked).first()
    if row is None:
        raise RequestError("command", f"unknown command {command_id}")
    if row.state not in {s.value for s in allowed}:
        raise CommandStateError(
            f"command {command_id} is {row.state}; expected {' or '.join(s.value for s in allowed)}"
        )
    if owner is not None and row.claimed_by != owner:
        raise CommandStateError(
            f"command {command_id} is claimed by {row.claimed_by!r}, not {owner!r} "
            "(the lease expired and another executor took it)"
        )
    if fence is not None and (row.claimed_link, row.claimed_epoch) != (
        fence.link_id,
        fence.epoch,
    ):
        raise CommandFenced(
            f"command {command_id} was claimed under link {row.claimed_link} epoch "
            f"{row.claimed_epoch}, not {fence.link_id} epoch {fence.epoch}"
        )
    conn.execute(
        t.meter_command.update().where(t.meter_command.c.id == command_id).values(**values)
    )
    return get_command(conn, command_id)


def mark_sent(
    conn: Connection,
    command_id: int,
    *,
    owner: str | None = None,
    now: datetime | None = None,
    fence: Fence | None = None,
) -> MeterCommand:
    """The command was written to the device; confirmation by read-back follows."""
    now = now or utcnow()
    return _transition(
        conn,
        command_id,
        (CommandState.CLAIMED, CommandState.SENT),
        owner,
        {"state": CommandState.SENT.value, "sent_at": now, "updated_at": now},
        fence,
    )


def mark_confirmed(
    conn: Connection,
    command_id: int,
    *,
    readback: Mapping[str, Any] | None = None,
    owner: str | None = None,
    now: datetime | None = None,
    fence: Fence | None = None,
) -> MeterCommand:
    """The device was read back and shows the effect. For RECHARGE, the meter's confirmed
    purchase count advances (reconciliation compares it with the meter's). With `fence`
    ([cluster]) only under the link's current lease epoch (`CommandFenced` otherwise)."""
    now = now or utcnow()
    command = _transition(
        conn,
        command_id,
        (CommandState.CLAIMED, CommandState.SENT),
        owner,
        {
            "state": CommandState.CONFIRMED.value,
            "readback": dict(readback) if readback is not None else None,
            "last_error": None,
            "lease_until": None,
            "finished_at": now,
            "updated_at": now,
        },
        fence,
    )
    if command.kind == CommandKind.RECHARGE and "buy_count" in command.params:
        count = int(command.params["buy_count"])
        conn.execute(
            t.meter.update()
            .where(t.meter.c.id == command.meter_id, t.meter.c.confirmed_buy_count < count)
            .values(confirmed_buy_count=count, updated_at=now)
        )
    elif command.kind == CommandKind.REFUND:
        # The meter is debited: now the refund is posted (same transaction).
        complete_meter_refund(conn, command.id, requested_by=command.requested_by, now=now)
    return command


def mark_failed(
    conn: Connection,
    command_id: int,
    error: str,
    *,
    retry_at: datetime | None = None,
    final: bool = False,
    owner: str | None = None,
    now: datetime | None = None,
    fence: Fence | None = None,
) -> MeterCommand:
    """The attempt failed. With `retry_at` the command goes back to PENDING until then;
    with `final=True` it ends FAILED (refused by the device, out of attempts). Exactly
    one of the two."""
    if (retry_at is None) == (not final):
        raise RequestError("retry_at", "give either retry_at (retry later) or final=True")
    now = now or utcnow()
    values: dict[str, Any] = {
        "last_error": (error or "failed")[:1000],
        "updated_at": now,
        "lease_until": None,
    }
    if final:
        values.update(state=CommandState.FAILED.value, finished_at=now)
    else:
        values.update(state=CommandState.PENDING.value, next_attempt_at=retry_at, claimed_by=None)
    command = _transition(
        conn, command_id, (CommandState.CLAIMED, CommandState.SENT), owner, values, fence
    )
    if final and command.kind == CommandKind.REFUND:
        abandon_meter_refund(conn, command.id, f"meter refused: {error}", now=now)
    return command


def cancel(
    conn: Connection, command_id: int, reason: str, *, now: datetime | None = None
) -> MeterCommand:
    """Withdraw a PENDING command (operator action): it ends SUPERSEDED with the reason
    (a withdrawn meter REFUND ends its refund FAILED)."""
    if not reason or not reason.strip():
        raise RequestError("reason", "required (audit)")
    now = now or utcnow()
    command = _transition(
        conn,
        command_id,
        (CommandState.PENDING,),
        None,
        {
            "state": CommandState.SUPERSEDED.value,
            "last_error": f"cancelled: {reason}"[:1000],
            "finished_at": now,
            "updated_at": now,
        },
    )
    if command.kind == CommandKind.REFUND:
        abandon_meter_refund(conn, command.id, f"cancelled: {reason}", now=now)
    return command


def retry_delay(attempts: int, initial_s: float = 5.0, maximum_s: float = 600.0) -> timedelta:
    """Back-off before the next attempt: initial × 2^(attempts−1), capped."""
    return timedelta(seconds=min(maximum_s, initial_s * 2 ** max(0, attempts - 1)))


def recent_command_times(
    conn: Connection,
    kinds: Collection[CommandKind | str],
    since: datetime,
    *,
    meters: Collection[str] | None = None,
) -> list[datetime]:
    """When commands of `kinds` were queued since `since` (not superseded), oldest first:
    the policy gate's mass-disconnect rate limit across every instance sharing the
    database (the in-memory `TripWindow` only sees its own process)."""
    q = (
        sa.select(t.meter_command.c.created_at)
        .where(
            t.meter_command.c.kind.in_([str(k) for k in kinds]),
            t.meter_command.c.created_at >= since,
            t.meter_command.c.state != CommandState.SUPERSEDED.value,
        )
        .order_by(t.meter_command.c.created_at)
    )
    if meters is not None:
        q = q.where(among(conn, t.meter_command.c.meter_id, meters))
    return list(conn.execute(q).scalars())
