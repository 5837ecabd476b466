"""A busy database never loses a confirmation: while another connection holds SQLite's
write lock, the executor waits to record a command's outcome (it stays SENT, is not claimed
again) and records it once the lock is released."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from openprepay.core.db.retry import BUSY
from openprepay.core.prepay import commands as cmds
from tests.conftest import until


def command(run: Any, command_id: int) -> cmds.MeterCommand:
    with run.db.read() as conn:
        return cmds.get_command(conn, command_id)


async def test_a_confirmation_recorded_while_the_database_is_locked_lands_after(
    running: Any, tmp_path: Path
) -> None:
    db_file = tmp_path / "locked.db"
    run = await running(speedup=1, database={"url": f"sqlite:///{db_file}", "busy_timeout_ms": 50})
    run.open_account("A-101", ("E-101",), balance_fen=100_000)
    executor = run.runtime.prepay.executor
    arbiter = executor.arbiter
    holder = sqlite3.connect(db_file, isolation_level=None, check_same_thread=False)
    locked = asyncio.Event()

    class LockingAfterTheDevice:
        """The real arbiter; once the device answered, another process takes the lock."""

        async def execute(self, device_command: Any) -> Any:
            outcome = await arbiter.execute(device_command)
            if not locked.is_set():
                await asyncio.to_thread(holder.execute, "BEGIN IMMEDIATE")
                locked.set()
            return outcome

    executor.arbiter = LockingAfterTheDevice()
    try:
        before = BUSY.retried
        (trip,) = run.ops.disconnect("E-101", "meter exchange", actor="op:1")
        await until(lambda: locked.is_set() and BUSY.retried >= before + 3, timeout=60)
        await asyncio.sleep(executor.poll_s * 4)  # claims run meanwhile: none takes it again
        assert trip.id in executor._in_hand
    finally:
        if locked.is_set():
            holder.execute("COMMIT")
        holder.close()
    assert command(run, trip.id).state == cmds.CommandState.SENT.value
    await until(lambda: command(run, trip.id).state == cmds.CommandState.CONFIRMED.value, 60)
    done = command(run, trip.id)
    assert done.attempts == 1  # sent once, recorded once
    assert executor.confirmed >= 1
    assert trip.id not in executor._in_hand
