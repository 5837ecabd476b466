"""Batch jobs show their progress over OPC UA (Diagnostics/batch-<job>)."""

from __future__ import annotations

import re

import pytest

from tests.conftest import until_async

from .conftest import OpcUaSite, run_cli

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_a_batch_job_reports_its_progress_as_variables(opcua_site: OpcUaSite) -> None:
    ops = opcua_site.ops
    before = {a: ops.account_snapshot(a).thresholds for a in ("A-101", "A-102")}
    try:
        await run_batch(opcua_site)
    finally:  # the site is shared: put the thresholds back
        for account, th in before.items():
            ops.set_thresholds(
                account, alarm1_fen=th.alarm1_fen, alarm2_fen=th.alarm2_fen, actor="test"
            )


async def run_batch(opcua_site: OpcUaSite) -> None:
    result = run_cli(
        "batch",
        "create",
        str(opcua_site.site_file),
        "set_thresholds",
        "--all",
        "--alarm1",
        "25.00",
        "--alarm2",
        "6.00",
        "--reason",
        "new alarm policy",
        "--no-wait",
    )
    assert result.exit_code == 0, result.output
    job = re.search(r"job (\d+)", result.output)
    assert job is not None, result.output
    source = f"batch-{job.group(1)}"

    async with opcua_site.connect("viewer1") as client:
        t, s = await opcua_site.ns(client)

        async def progress() -> dict[str, int] | None:
            try:
                node = await client.nodes.objects.get_child(
                    [f"{s}:OpenPrepay", f"{t}:Diagnostics", f"{s}:{source}"]
                )
            except Exception:
                return None  # appears with the job's first progress sample
            values = {}
            for name in ("total", "done", "failed", "state"):
                values[name] = await (await node.get_child(f"{t}:{name}")).read_value()
            return values

        async def finished() -> bool:
            values = await progress()
            return values is not None and values["state"] == 2

        await until_async(finished, timeout=30)
        values = await progress()
        assert values == {"total": 2, "done": 2, "failed": 0, "state": 2}
    snapshot = opcua_site.ops.account_snapshot("A-102")
    assert (snapshot.thresholds.alarm1_fen, snapshot.thresholds.alarm2_fen) == (2500, 600)
