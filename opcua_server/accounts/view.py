"""Prepayment in the address space, as an extension of the OPC UA service.

Accounts come from `runtime.operations` (core.operations.Operations): each is added at
start (nodes.py) and new ones later (the list is re-read every `[opcua] account_refresh_s`);
a snapshot is re-read after every change that concerns the account and periodically, and
goes through the publisher's queue like a sample. Core events become OPC UA alarms and
events (alarms.py); the methods call the core (methods.py).
"""

from __future__ import annotations

import asyncio
import logging

from asyncua import ua

from openprepay.core.events import Event
from openprepay.core.model import Sample
from openprepay.core.operations import AccountSnapshot
from openprepay.core.tasks import stop_task, wait_event

from ..access import SessionUser
from ..extension import ExtensionHost
from ..methods import in_thread
from .alarms import AccountAlarms
from .methods import AccountMethods
from .nodes import SNAPSHOT_MODEL, add_account, declare_account_type, snapshot_values

log = logging.getLogger("openprepay.opcua")

#: Accounts whose nodes a refresh builds before it lets the event loop run (polls wait).
NODES_BETWEEN_YIELDS = 20
#: Snapshots a refresh hands to the publisher before it lets the event loop run: a full
#: refresh is every account of the site (20,000 in one loop turn stalled polling).
SNAPSHOTS_BETWEEN_YIELDS = 500
#: Accounts a refresh reads in one worker-thread job. The job holds the interpreter while it
#: builds their snapshots, and the loop, giving the interpreter up at each socket call, waits
#: for it every time: every account of a 20,000-meter site in one job stalled polling for
#: 200-450 ms once a minute; a part of 500 is a few tens of ms.
ACCOUNTS_PER_READ = 500


class AccountView:
    """The prepayment part of the server (an `extension.ServerExtension`)."""

    def __init__(self) -> None:
        self.methods = AccountMethods()
        self.alarms = AccountAlarms()
        self._dirty: set[str] = set()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.refreshes = 0

    async def declare(self, host: ExtensionHost) -> None:
        """AccountType and the methods (before the site tree)."""
        assert host.space is not None
        declare_account_type(host.space)
        self.methods.declare(host)

    async def build(self, host: ExtensionHost) -> None:
        """The accounts that exist at start."""
        ops = self.methods.ops = getattr(host.runtime, "operations", None)
        if ops is None:
            return
        try:
            snapshots = await in_thread(ops.list_accounts)
        except Exception:
            log.exception("reading the accounts for OPC UA failed")
            return
        for snap in snapshots:
            self._add(host, snap)

    def _add(self, host: ExtensionHost, snap: AccountSnapshot) -> bool:
        """The account's nodes, if it has none yet; whether they were added."""
        space = host.space
        assert space is not None
        if snap.account_id in space.account_nodes:
            return False
        add_account(space, snap)
        self.alarms.low_balance(
            host, snap.account_id, snap.alarm_level, snap.balance_fen, startup=True
        )
        return True

    async def start(self, host: ExtensionHost) -> None:
        if self.methods.ops is None:
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._refresh_forever(host), name="opcua-accounts")

    async def stop(self, host: ExtensionHost) -> None:
        await stop_task(self._task)
        self._task = None

    def touch(self, account_id: str | None) -> None:
        """Re-read this account's snapshot soon (any thread)."""
        if account_id is None or self._loop is None:
            return
        self._dirty.add(account_id)
        try:
            self._loop.call_soon_threadsafe(self._wake.set)  # type: ignore[union-attr]
        except RuntimeError:
            pass  # loop closed: stopping

    async def _refresh_forever(self, host: ExtensionHost) -> None:
        assert self._wake is not None
        period = host.config.account_refresh_s
        await self.refresh(host, None)
        loop = asyncio.get_running_loop()
        next_full = loop.time() + period
        while True:
            await wait_event(self._wake, max(0.0, next_full - loop.time()))
            self._wake.clear()
            full = loop.time() >= next_full
            dirty, self._dirty = self._dirty, set()
            try:
                await self.refresh(host, None if full else dirty)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("refreshing OPC UA accounts failed")
            if full:
                next_full = loop.time() + period

    async def refresh(self, host: ExtensionHost, accounts: set[str] | None) -> None:
        """Re-read snapshots (all when `accounts` is None) into the address space."""
        ops, publisher = self.methods.ops, host.publisher
        if ops is None or publisher is None:
            return
        # The accounts touched since the last refresh (after a metering flush or a price
        # change, hundreds) are read together, not a read and a thread hop each.
        ids = await in_thread(ops.account_ids) if accounts is None else sorted(accounts)
        if not ids:
            return
        self.refreshes += 1
        added = 0
        for start in range(0, len(ids), ACCOUNTS_PER_READ):
            part = ids[start : start + ACCOUNTS_PER_READ]
            for n, snap in enumerate(await in_thread(ops.account_snapshots, part), 1):
                if self._add(host, snap):
                    added += 1
                    if added % NODES_BETWEEN_YIELDS == 0:
                        # Building an account's nodes takes ~0.4 ms: thousands of accounts
                        # imported at once stalled polling for seconds (1.7 s at 4,000).
                        await asyncio.sleep(0)
                elif n % SNAPSHOTS_BETWEEN_YIELDS == 0:
                    await asyncio.sleep(0)
                # Through the publisher's queue: one writer for the address space.
                publisher.on_sample(
                    Sample(snap.account_id, SNAPSHOT_MODEL, snap.at, snapshot_values(snap))
                )

    def on_event(self, host: ExtensionHost, event: Event) -> None:
        self.touch(self.alarms.publish(host, event))

    def refused(
        self, host: ExtensionHost, user: SessionUser | None, calls: list[ua.CallMethodRequest]
    ) -> None:
        self.methods.refused(host, user, calls)
