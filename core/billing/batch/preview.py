"""The dry run of a batch job: what each item would do, or the refusal the real run would
meet — nothing written.

Each item is asked of the door's read-only check for its action (`check_topup`,
`check_disconnect`, ... — see `door.py`), the very checks the real action runs before it
writes, so the dry run evaluates the policy gate, the account's state and limits and the
model's commands exactly as the real run will. No policy is decided here. One thing a
read cannot see is what earlier items of the same job will have queued; the one that
matters across items — the site's mass-disconnect rate limit — is carried from item to
item (`Preview.cuts`), as the real run's queued cuts are.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, tzinfo
from typing import Any

from sqlalchemy.engine import Connection

from ...ledger import RequestError, format_fen
from ...prepay.policy import Verdict
from .door import BatchDoor
from .model import Action, Item, PlanLine

log = logging.getLogger("openprepay.batch")


class Preview:
    """The dry run of one job's items, in the order the real run carries them out."""

    def __init__(
        self,
        ops: BatchDoor,
        action: Action,
        params: Mapping[str, Any],
        *,
        reason: str,
        actor: str,
        tz: tzinfo,
    ) -> None:
        self.ops = ops
        self.action = action
        self.params = params
        self.reason = reason
        self.actor = actor
        self.tz = tz
        self.now = ops.clock()
        #: Cuts the items before this one would queue (the rate limit counts them).
        self.cuts = 0

    def line(self, conn: Connection, seq: int, item: Item) -> PlanLine:
        """What `item` (number `seq` of the run) would do, or `would fail: <the reason>`."""
        try:
            text = self._check(conn, seq, item, {**self.params, **item.params})
        except RequestError as exc:
            return PlanLine(item.target, False, f"would fail: {exc}")
        except Exception as exc:  # the real run records an item's bug as its result too
            log.exception("dry run of %s item %s (%s) failed", self.action, seq, item.target)
            return PlanLine(item.target, False, f"would fail: error: {exc}")
        return PlanLine(item.target, True, text)

    def _check(self, conn: Connection, seq: int, item: Item, p: Mapping[str, Any]) -> str:
        ops, target, action = self.ops, item.target, self.action
        if action is Action.SET_TARIFF:
            account = ops.check_tariff(conn, target, p["tariff"])
            return f"tariff {account.tariff_id or '-'} → {p['tariff']}"
        if action is Action.SET_THRESHOLDS:
            _, new = ops.check_thresholds(
                conn, target, alarm1_fen=p["alarm1"], alarm2_fen=p["alarm2"]
            )
            return f"alarm1 {format_fen(new.alarm1_fen)}, alarm2 {format_fen(new.alarm2_fen)}"
        if action is Action.TOPUP:
            return self._topup(conn, seq, target, p)
        # The real run's reason carries the item's tag: the same length is checked here.
        tag = f" [batch - #1.{seq}]"
        reason = f"{self.reason}{tag}"
        if action is Action.DISCONNECT:
            text = self._disconnect(conn, target, reason, bool(p.get("override")))
            return text.replace(tag, "")
        if action is Action.RECONNECT:
            meters = ops.check_reconnect(conn, target, reason)
            return ", ".join(f"{supply.restore} for {meter}" for meter, supply in meters)
        ops.check_set_params(target, p["command"], p["values"])
        values = ", ".join(f"{k}={v}" for k, v in p["values"].items())
        return f"SET_PARAMS {p['command']} {values}"

    def _topup(self, conn: Connection, seq: int, target: str, p: Mapping[str, Any]) -> str:
        amount = int(p["amount_fen"])
        checked = self.ops.check_topup(
            conn, target, amount, f"batch-dry-run-{seq}", channel=p.get("channel") or "cash"
        )
        recharge = f"; RECHARGE to {checked.local_meter}" if checked.local_meter else ""
        return f"top-up {format_fen(amount)} → balance {format_fen(checked.after_fen)}{recharge}"

    def _disconnect(self, conn: Connection, target: str, reason: str, override: bool) -> str:
        plan = self.ops.check_disconnect(
            conn,
            target,
            reason,
            actor=self.actor,
            override=override,
            now=self.now,
            also_queued=[self.now] * self.cuts,
        )
        self.cuts += len(plan.meters)
        return ", ".join(
            f"{supply.cut} for {meter}" + self._when(gate.verdict, gate.until, gate.reason)
            for meter, supply, gate in plan.meters
        )

    def _when(self, verdict: Verdict, until: datetime | None, why: str) -> str:
        if verdict is Verdict.DEFER and until is not None:
            return f" at {until.astimezone(self.tz):%Y-%m-%d %H:%M} ({why})"
        return f" ({why})" if why else ""
