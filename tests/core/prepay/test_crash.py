"""Crash recovery: the service runs in a subprocess (`openprepay run`) against simulated
meters; top-ups and supply commands stream in from this process while the service is
killed with SIGKILL and restarted. Afterwards the ledger verifies, every acknowledged
top-up is there exactly once, no command is lost (the pending ones complete after the
restart) and the LOCAL meter holds exactly the money delivered to it."""

from __future__ import annotations

import asyncio
import sys
import threading
from pathlib import Path
from typing import Any

import sqlalchemy as sa
import tomli_w

from openprepay.core.app.drill import commands_settled, open_drill_accounts, verify_ledger
from openprepay.core.app.simulation import SimulatedSite
from openprepay.core.config.site import load_site, parse_site
from openprepay.core.contracts import SimulatorOptions
from openprepay.core.db import open_database
from openprepay.core.db import schema as t
from openprepay.core.operations import Operations
from openprepay.core.prepay import commands as cmds
from tests.conftest import until

from .conftest import site_data

OPENPREPAY = str(Path(sys.executable).parent / "openprepay")


class Service:
    """`openprepay run SITE` in a subprocess, its log drained in the background."""

    def __init__(self, site_file: Path) -> None:
        self.site_file = site_file
        self.proc: asyncio.subprocess.Process | None = None
        self.log: list[str] = []
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.log = []
        self.proc = await asyncio.create_subprocess_exec(
            OPENPREPAY,
            "--log-level",
            "INFO",
            "run",
            str(self.site_file),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._drain())
        await until(lambda: any("prepayment engine running" in line for line in self.log), 30)

    async def _drain(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for line in self.proc.stderr:
            self.log.append(line.decode(errors="replace"))

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL: no clean shutdown of anything
        await self.proc.wait()
        if self._reader is not None:
            await self._reader

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()
        if self._reader is not None:
            await self._reader


class Stream:
    """Top-ups (and supply commands) from this process, one after another, recording
    which were acknowledged (the call returned: committed)."""

    def __init__(self, ops: Operations) -> None:
        self.ops = ops
        self.acknowledged: list[tuple[str, str, int]] = []
        self.commands: list[int] = []
        self.stop = threading.Event()
        self.i = 0

    def run(self, count: int) -> None:
        for _ in range(count):
            if self.stop.is_set():
                return
            i = self.i
            self.i += 1
            account = "A-102" if i % 2 == 0 else "A-101"
            amount = 100 + i
            result = self.ops.topup(account, amount, f"pay-{i}", actor="stream")
            self.acknowledged.append((result.reference, account, amount))
            if result.command_id is not None:
                self.commands.append(result.command_id)
            if i % 5 == 4:
                fn = self.ops.disconnect if (i // 5) % 2 == 0 else self.ops.reconnect
                self.commands.extend(c.id for c in fn("E-101", f"drill {i}", actor="stream"))


async def test_kill_9_mid_stream_loses_nothing(plugins, tmp_path: Path) -> None:
    data = site_data()
    sims = SimulatedSite(parse_site(data), plugins, SimulatorOptions(ephemeral_ports=True))
    await sims.start()
    service: Service | None = None
    db = None
    try:
        for link_id, (host, port) in sims.addresses.items():
            data["links"][link_id]["host"], data["links"][link_id]["port"] = host, port
        site_file = tmp_path / "site.toml"
        site_file.write_text(tomli_w.dumps(data))
        site = load_site(site_file)
        db = open_database(site)
        ops = Operations(site, db, models=plugins.models)
        with db.begin() as conn:
            open_drill_accounts(conn, site, plugins.models)

        service = Service(site_file)
        await service.start()
        stream = Stream(ops)
        await asyncio.to_thread(stream.run, 12)
        await service.kill()  # mid-stream: RECHARGEs are queued, claimed or on the wire
        with db.read() as conn:
            unfinished = cmds.list_commands(conn, states=cmds.UNFINISHED)
        await asyncio.to_thread(stream.run, 8)  # the service is down: only the queue grows
        await service.start()
        await asyncio.to_thread(stream.run, 8)

        await until(lambda: commands_settled(db), 60, step=0.2)
        status, out = await verify_ledger(site_file)
        assert status == 0, out
        assert "all invariants hold" in out

        with db.read() as conn:
            topups = conn.execute(
                sa.select(t.topup.c.reference, t.topup.c.account_id, t.topup.c.amount_fen)
            ).all()
            commands = cmds.list_commands(conn, limit=1000)
            meter = conn.execute(sa.select(t.meter).where(t.meter.c.id == "E-102")).one()
        # Every acknowledged top-up exactly once, and nothing else.
        assert sorted(tuple(r) for r in topups) == sorted(stream.acknowledged)
        # No command lost: every one finished, none failed; those pending at the kill too.
        states = {c.id: c.state for c in commands}
        assert set(stream.commands) <= set(states)
        assert all(s in ("CONFIRMED", "SUPERSEDED") for s in states.values()), states
        assert all(states[c.id] in ("CONFIRMED", "SUPERSEDED") for c in unfinished)
        assert unfinished, "the kill should have caught commands in flight"
        # The LOCAL meter took each RECHARGE exactly once.
        local = [amount for _, account, amount in stream.acknowledged if account == "A-102"]
        sim: Any = sims.devices["E-102"]
        assert sim.buy_count == len(local) == meter.buy_count == meter.confirmed_buy_count
        assert round(sim.remaining * 100) == sum(local)
        # The last supply drill decides E-101's relay.
        last = max((c for c in commands if c.meter_id == "E-101"), key=lambda c: c.id)
        assert sims.devices["E-101"].snapshot()["supply_on"] == (1 if last.kind == "CLOSE" else 0)
    finally:
        if service is not None:
            await service.stop()
        if db is not None:
            db.dispose()
        await sims.stop()
