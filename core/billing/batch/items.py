"""Carrying out one item of a batch job through the service door (`core.operations`): the
policy gate, fee control, the audit trail and the durable command queue apply exactly as
to an operator's single action. Returns the item's result text and the device commands it
queued (the item waits for them, `outcomes.py`); a refusal raises `RequestError`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import tzinfo
from typing import Any

from ...ledger import format_fen
from ...prepay import commands as cmds
from .door import BatchDoor
from .model import Action


def item_tag(job: Any, item: Any) -> str:
    """The tag in the reason of an item's commands (found again after a restart)."""
    return f"[batch {job.id} #{job.run_no}.{item.seq}]"


def job_actor(job: Any) -> str:
    """Who the job's items are audited as: its creator, through the job."""
    return f"{job.created_by} (batch {job.id})"[:100]


@dataclass(frozen=True, slots=True)
class Carried:
    """What the door did for an item: its result, and the device commands it queued (or
    `failed`: the door refused it, `text` says why)."""

    text: str
    command_ids: tuple[int, ...] = ()
    failed: bool = False


def carry_out(
    ops: BatchDoor, job: Any, item: Any, action: Action, p: Mapping[str, Any], tz: tzinfo
) -> Carried:
    """Do `item` (parameters `p`: the job's and the item's own) and describe the result
    (times in the site's zone `tz`)."""
    actor = job_actor(job)
    target = item.target
    if action is Action.SET_TARIFF:
        account = ops.set_tariff(target, p["tariff"], actor=actor)
        return Carried(f"tariff {account.tariff_id}")
    if action is Action.SET_THRESHOLDS:
        account = ops.set_thresholds(
            target, alarm1_fen=p["alarm1"], alarm2_fen=p["alarm2"], actor=actor
        )
        th = account.thresholds
        return Carried(f"alarm1 {format_fen(th.alarm1_fen)}, alarm2 {format_fen(th.alarm2_fen)}")
    if action is Action.TOPUP:
        result = ops.topup(
            target,
            int(p["amount_fen"]),
            f"batch-{job.id}-{job.run_no}-{item.seq}",
            channel=p.get("channel") or "cash",
            actor=actor,
        )
        text = (
            f"top-up {format_fen(result.amount_fen)}"
            + (" (already done)" if result.replayed else "")
            + f", balance {format_fen(result.balance_fen)}"
        )
        if result.command_id is None:
            return Carried(text)
        # A LOCAL meter holds the money: the top-up is done when its RECHARGE is.
        return Carried(f"{text}; RECHARGE #{result.command_id} queued", (int(result.command_id),))
    reason = f"{job.reason} {item_tag(job, item)}"
    queued: Iterable[cmds.MeterCommand]
    if action is Action.DISCONNECT:
        queued = ops.disconnect(target, reason, actor=actor, override=bool(p.get("override")))
    elif action is Action.RECONNECT:
        queued = ops.reconnect(target, reason, actor=actor)
    else:  # set_price, set_params: the key makes a re-run after a crash queue nothing new
        queued = [
            ops.set_params(
                target,
                p["command"],
                p["values"],
                reason,
                actor=actor,
                idempotency_key=f"batch:{job.id}:{job.run_no}:{item.seq}",
            )
        ]
    queued = list(queued)
    return Carried(
        ", ".join(queued_text(c, tz) for c in queued) or "nothing to do",
        tuple(int(c.id) for c in queued),
    )


def queued_text(c: cmds.MeterCommand, tz: tzinfo) -> str:
    """`TRIP #13 queued` (`for <site time>` when the gate deferred it)."""
    later = c.next_attempt_at > c.created_at + dt.timedelta(seconds=1)
    return f"{c.kind} #{c.id} queued" + (
        f" for {c.next_attempt_at.astimezone(tz):%Y-%m-%d %H:%M}" if later else ""
    )
