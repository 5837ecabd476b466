"""A fault drill: the accounts and the client load that the failover benchmark and the
history and crash tests run against a site while they kill, pause or cut its instances.

The site has a REMOTE meter E-101 (room A-101) and a LOCAL meter E-102 (room A-102) on one
gateway. `open_drill_accounts` opens an account on each; `PaymentStream.run` (in a thread of
its own) tops both up through the door, every top-up of A-102 a RECHARGE of its meter, with
a disconnect or reconnect of E-101 now and then, and records every outcome as Jepsen does:
ok (acknowledged), fail (refused: nothing written) or info (unknown).
"""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from ..config.site import Site
from ..db import Database
from ..errors import RequestError
from ..model import DeviceModel
from ..prepay import accounts as acc
from ..prepay import commands as cmds
from ..prepay.purchase_count import set_meter_buy_count

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from ..operations import Operations

#: The console script of this installation (the drill runs it as an operator would).
OPENPREPAY = str(Path(sys.executable).parent / "openprepay")

#: (account, its meter): REMOTE E-101 and LOCAL E-102.
DRILL_ACCOUNTS = (("A-101", "E-101"), ("A-102", "E-102"))


def open_drill_accounts(conn: Connection, site: Site, models: Mapping[str, DeviceModel]) -> None:
    """Open A-101 and A-102 with their meters; the LOCAL meter's purchase count is 0 (what
    the service reads when it attaches the meter)."""
    for account, meter in DRILL_ACCOUNTS:
        acc.create_account(
            conn, acc.AccountSpec(account, "tenant", (acc.resolve_meter(site, models, meter),))
        )
    set_meter_buy_count(conn, "E-102", 0)


class PaymentStream:
    """Top-ups (`<prefix>-<i>`, 100 fen + i mod `amount_spread`) alternating between A-101
    and A-102, and every `command_every`-th one a disconnect or reconnect of E-101, one
    after another with `pause_s` between them until `stop` is set."""

    def __init__(
        self,
        ops: Operations,
        *,
        actor: str,
        prefix: str,
        amount_spread: int,
        command_every: int,
        pause_s: float = 0.05,
    ) -> None:
        self.ops = ops
        self.actor = actor
        self.prefix = prefix
        self.amount_spread = amount_spread
        self.command_every = command_every
        self.pause_s = pause_s
        #: (reference, account, amount_fen) of every acknowledged top-up.
        self.ok: list[tuple[str, str, int]] = []
        #: References whose outcome is unknown (the call failed other than by a refusal).
        self.info: list[str] = []
        #: References refused: nothing may be written for them.
        self.failed: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        every = self.command_every
        while not self.stop.is_set():
            account = "A-102" if i % 2 else "A-101"
            ref = f"{self.prefix}-{i}"
            try:
                result = self.ops.topup(
                    account, 100 + i % self.amount_spread, ref, actor=self.actor
                )
                self.ok.append((result.reference, account, result.amount_fen))
            except RequestError:
                self.failed.append(ref)
            except Exception:
                self.info.append(ref)
            if i % every == every - 1:
                supply = self.ops.disconnect if (i // every) % 2 == 0 else self.ops.reconnect
                try:
                    supply("E-101", f"{self.actor} drill {i}", actor=self.actor)
                except Exception:
                    pass  # a command refused or lost in a fault: the drill goes on
            i += 1
            self.stop.wait(self.pause_s)


def commands_settled(db: Database) -> bool:
    """No meter command is left to deliver (none queued, claimed or on the wire)."""
    with db.read() as conn:
        return not cmds.list_commands(conn, states=cmds.UNFINISHED)


async def verify_ledger(site_file: Path) -> tuple[int, str]:
    """`openprepay ledger verify SITE`: its exit status and what it printed."""
    verify = await asyncio.create_subprocess_exec(
        OPENPREPAY, "ledger", "verify", str(site_file), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await verify.communicate()
    assert verify.returncode is not None  # it has ended
    return verify.returncode, out.decode()
