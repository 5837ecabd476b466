"""What a transaction did that others must learn of once it commits, and the audit log.

A service function, fee control or a background job collects its `Effects` while it writes
(events to publish, commands to wake the executor for, accounts whose sample changed,
notices queued) and hands them on after the commit; `audit` writes an audit-log row in the
same transaction and queues its event.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy.engine import Connection

from ..db import FastStatement, db_time
from ..db import schema as t
from ..events import AuditRecord, utcnow
from .commands import MeterCommand


@dataclass(slots=True)
class Effects:
    """What a transaction did that others must learn of once it commits."""

    events: list[object] = field(default_factory=list)
    commands: list[MeterCommand] = field(default_factory=list)
    #: Accounts whose state changed (an account sample is published for each).
    accounts: set[str] = field(default_factory=set)
    notices: int = 0

    def extend(self, other: Effects) -> None:
        self.events.extend(other.events)
        self.commands.extend(other.commands)
        self.accounts |= other.accounts
        self.notices += other.notices


#: Every door call writes one: compiled once, run on the driver's cursor (core/db FastStatement).
_fast_audit = FastStatement(
    t.audit_log.insert(), ("at", "actor", "action", "target", "detail", "ok")
)


def audit(
    conn: Connection,
    effects: Effects,
    actor: str,
    action: str,
    target: str,
    detail: str,
    ok: bool = True,
    *,
    now: datetime | None = None,
) -> AuditRecord:
    """Record an action in the audit log (in the caller's transaction) and queue its event."""
    at = now or utcnow()
    _fast_audit.execute(
        conn,
        {
            "at": db_time(conn, at),
            "actor": actor[:100],
            "action": action[:64],
            "target": target[:100],
            "detail": detail[:1000],
            "ok": bool(ok),
        },
    ).close()
    record = AuditRecord(actor, action, target, detail, ok, at=at)
    effects.events.append(record)
    return record
