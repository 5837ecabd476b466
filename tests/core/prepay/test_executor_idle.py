"""An idle executor claims nothing: it looks for a due command (one read) before it opens a
claim (a write transaction; with [cluster] one per owned link, every `poll_s`)."""

from __future__ import annotations

import asyncio
from typing import Any

from openprepay.core.prepay import commands as cmds
from openprepay.core.prepay import executor as executor_module
from tests.conftest import until


async def test_no_claim_while_nothing_is_due_and_a_command_still_runs(
    running: Any, monkeypatch: Any
) -> None:
    claims: list[int] = []
    real_claim_due = cmds.claim_due

    def counted(*args: Any, **kwargs: Any) -> list[cmds.MeterCommand]:
        claims.append(1)
        return real_claim_due(*args, **kwargs)

    monkeypatch.setattr(executor_module.cmds, "claim_due", counted)
    run = await running(speedup=1)
    run.open_account("A-101", ("E-101",), balance_fen=100_000)
    executor = run.runtime.prepay.executor
    await until(lambda: not executor._running, timeout=30)  # what opening queued is done
    claims.clear()
    await asyncio.sleep(executor.poll_s * 8)
    assert claims == []
    (trip,) = run.ops.disconnect("E-101", "meter exchange", actor="op:1")

    def state() -> str:
        with run.db.read() as conn:
            return cmds.get_command(conn, trip.id).state

    await until(lambda: state() == cmds.CommandState.CONFIRMED.value, 60)
    assert claims
