"""Clears the alarm of a FAILED money command once it is retried or refunded."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import sqlalchemy as sa

from ..db import Database
from ..db import schema as t
from ..events import CommandFailed, CommandResolved, utcnow
from . import commands as cmds
from .effects import Effects
from .failed_commands import open_failures


class FailureWatch:
    """Raises `CommandResolved` once a FAILED RECHARGE or REFUND was retried or refunded —
    by the CLI, OPC UA or this process — so the alarms of every running service clear."""

    def __init__(self, db: Database, *, clock: Callable[[], datetime] = utcnow) -> None:
        self.db = db
        self.clock = clock
        #: FAILED money commands not resolved when last looked (None: not looked yet).
        self._open: set[int] | None = None
        self._failed_here: set[int] = set()

    def on_failed(self, event: CommandFailed) -> None:
        if event.command in (cmds.CommandKind.RECHARGE, cmds.CommandKind.REFUND):
            self._failed_here.add(event.command_id)

    def check(self) -> Effects:
        effects = Effects()
        with self.db.read() as conn:
            current = {c.id for c in open_failures(conn)}
            known = (self._open or set()) | self._failed_here
            self._failed_here = set()
            gone = sorted(known - current)
            for command_id in gone:
                c = cmds.get_command(conn, command_id)
                if c.resolution is None:
                    continue
                retry = conn.execute(
                    sa.select(t.meter_command.c.id).where(t.meter_command.c.retry_of == c.id)
                ).scalar()
                effects.events.append(
                    CommandResolved(
                        c.id,
                        c.meter_id,
                        c.account_id,
                        c.kind,
                        "retry" if retry is not None else "refund",
                        retry,
                        c.resolved_by or "",
                        c.resolution,
                        at=c.resolved_at or self.clock(),
                    )
                )
                if c.account_id:
                    effects.accounts.add(c.account_id)
        self._open = current
        return effects
