"""The lease manager: which links this instance owns, renewed by heartbeat.

Every `heartbeat_s` one thread-side transaction heartbeats the instance, renews every lease
it holds (one UPDATE) and, once the instance runs (`begin_taking`, called by the runtime
after every service started), tries to take the links it may own that are free or
expired. A lease held gives a *local deadline* on the monotonic clock:

    deadline = (monotonic time just before the statement) + (seconds left by the DB clock) − margin

The margin is larger than the slowest command, so a link is given up — its worker stopped,
nothing more written — before the database could hand it to another instance. The deadline
is enforced by a watchdog task and checked by the link's worker before every transaction
(`owns`), so neither a hung database connection (a partition) nor a paused process (SIGSTOP,
a long collector pause) can make this instance write after its lease may have passed to
another. What a paused process had in flight is fenced in the database instead: completing
a command needs the link's current epoch (`core.prepay.commands`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..db import Database
from ..errors import CommandFenced
from ..events import LinkOwnerChanged
from ..tasks import wait_event
from . import lease
from .settings import ClusterSettings

#: The lease of the instance that runs the jobs that must run once (month-end...).
JOBS_LEADER = f"{lease.LEADER}jobs"

log = logging.getLogger("openprepay.cluster")


@dataclass(slots=True)
class Owned:
    epoch: int
    #: Monotonic time after which this instance must not use the link.
    deadline: float


#: The least time a session may sit idle inside a transaction before PostgreSQL ends it
#: (`Database.end_idle_transactions_after`; otherwise the lease's TTL).
IDLE_TRANSACTION_MIN_S = 5.0


class LinkLeases:
    """The `[cluster]` service: takes, renews and gives up link leases (module docstring)."""

    name = "cluster"

    def __init__(
        self,
        settings: ClusterSettings,
        db: Database,
        arbiter: Any,
        publish: Callable[[object], None],
        links: Sequence[str],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.db = db
        self.arbiter = arbiter
        self.publish = publish
        self.instance = settings.instance_id
        #: The site's links this instance may own, in order.
        self.links = [link for link in links if settings.may_own(link)]
        #: The leases this instance competes for: its links, then the jobs leader's.
        self.names = [*self.links, *([JOBS_LEADER] if settings.leader else [])]
        self.clock = clock
        self.held: dict[str, Owned] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._handing_back: set[asyncio.Task[None]] = set()
        #: The heartbeat's own thread (made at start): in the default pool it could queue
        #: behind metering flushes and snapshot reads, and leases lapsed (20,000 meters).
        self._beat_thread: ThreadPoolExecutor | None = None
        self._changed = asyncio.Event()
        self.on_change: list[Callable[[], None]] = []
        #: Called with the id of each link given up (what the service holds for its
        #: meters in memory is dropped).
        self.on_give_up: list[Callable[[str], None]] = []
        #: Heartbeats that failed (database unreachable, slow) since start.
        self.failed_beats = 0
        #: The instances alive at the last heartbeat (this one included), by id.
        self.peers: list[str] = [self.instance]
        #: Set by `begin_taking` once the instance is running: the heartbeat takes no
        #: lease before. Start-up stalls the loop for seconds at site scale (the OPC UA
        #: address space, the settling collection: 26 s at 4k meters on a busy box); a
        #: lease taken then lapsed unused or was given up at its deadline, twice, each
        #: time a new epoch, links stopped and started again, meters unread meanwhile.
        self._may_take = asyncio.Event()
        self._wake = asyncio.Event()

    # -- what the rest of the service asks ------------------------------------------------
    def owns(self, link_id: str) -> bool:
        own = self.held.get(link_id)
        return own is not None and self.clock() < own.deadline

    def fence(self, link_id: str) -> lease.Fence | None:
        own = self.held.get(link_id)
        if own is None or self.clock() >= own.deadline:
            return None
        return lease.Fence(link_id, self.instance, own.epoch)

    def fences(self) -> dict[str, lease.Fence]:
        now = self.clock()
        return {
            link: lease.Fence(link, self.instance, own.epoch)
            for link, own in self.held.items()
            if now < own.deadline
        }

    def guard_meters(self, conn: Any, link_of: dict[str, str], meters: list[str]) -> None:
        """Raise `CommandFenced` unless every link of `meters` is still this instance's,
        checked in the database in the caller's transaction (`lease.check_all`)."""
        fences = []
        for link_id in sorted({link_of[m] for m in meters if m in link_of}):
            fence = self.fence(link_id)
            if fence is None:
                raise CommandFenced(f"link {link_id} is no longer owned by {self.instance}")
            fences.append(fence)
        lease.check_all(conn, fences)

    def leader_fence(self) -> lease.Fence | None:
        """The jobs leader's lease while this instance holds it (else None): jobs that
        must run once run only then, and check it in each of their transactions."""
        return self.fence(JOBS_LEADER)

    def service_level(self) -> int:
        """OPC UA ServiceLevel of this instance's server: high while it owns links (its
        meters are live), low as a standby (clients pick the highest)."""
        now = self.clock()
        owned = [k for k, o in self.held.items() if k in self.links and now < o.deadline]
        if owned:
            return 250
        return 100 if self.links else 200

    def left_s(self, link_id: str) -> float:
        own = self.held.get(link_id)
        return 0.0 if own is None else max(own.deadline - self.clock(), 0.0)

    def epoch(self, link_id: str) -> int:
        own = self.held.get(link_id)
        return 0 if own is None else own.epoch

    # -- service --------------------------------------------------------------------------
    async def start(self) -> None:
        # A transaction of a frozen instance must not hold lease rows past the lease itself.
        self.db.end_idle_transactions_after(max(self.settings.lease_ttl_s, IDLE_TRANSACTION_MIN_S))
        await asyncio.to_thread(self._register)
        self._beat_thread = ThreadPoolExecutor(1, thread_name_prefix="cluster-heartbeat")
        self._tasks = [
            asyncio.create_task(self._heartbeats(), name="cluster-heartbeat"),
            asyncio.create_task(self._watchdog(), name="cluster-watchdog"),
        ]
        log.info(
            "cluster instance %s: may own %d link(s) %s; lease %.1f s, heartbeat %.1f s, "
            "margin %.1f s",
            self.instance,
            len(self.links),
            ", ".join(self.links),
            self.settings.lease_ttl_s,
            self.settings.heartbeat_s,
            self.settings.margin_s,
        )

    def begin_taking(self) -> None:
        """Take the links this instance may own from the next heartbeat (called by the
        runtime once every service has started), and beat now."""
        self._may_take.set()
        self._wake.set()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        if self._beat_thread is not None:
            self._beat_thread.shutdown(wait=False)  # a beat in flight ends by itself
            self._beat_thread = None
        released = list(self.held.items())
        for link_id in list(self.held):
            await self._give_up(link_id, "instance stopping")
        if released:
            try:
                await asyncio.wait_for(asyncio.to_thread(self._release, released), 5)
            except Exception as exc:  # the leases expire by themselves
                log.warning("could not release leases at stop: %s", exc)

    def _register(self) -> None:
        with self.db.begin() as conn:
            lease.ensure(conn, self.names)
            lease.register_instance(conn, self.instance, self.settings.links)

    def _release(self, released: list[tuple[str, Owned]]) -> None:
        with self.db.begin() as conn:
            for link_id, own in released:
                lease.release(conn, link_id, self.instance, own.epoch)

    # -- heartbeat ------------------------------------------------------------------------
    async def _heartbeats(self) -> None:
        while True:
            started = self.clock()
            self._wake.clear()
            take = self._may_take.is_set()
            beat = asyncio.get_running_loop().run_in_executor(
                self._beat_thread, self._renew_and_take, dict(self.held), take
            )
            done, _ = await asyncio.wait({beat}, timeout=self.settings.heartbeat_s * 2)
            if not done:
                # The database is slow or unreachable (a partition): the watchdog gives the
                # links up at their deadlines; this beat is applied whenever it returns,
                # measured from when it started, so a late grant is worth nothing.
                self.failed_beats += 1
                log.warning("cluster heartbeat is waiting for the database")
                await asyncio.wait({beat})
            # Every `heartbeat_s` from the start of the last beat, however long it took.
            pause = max(0.05, self.settings.heartbeat_s - (self.clock() - started))
            try:
                renewed, taken, next_expiry = beat.result()
            except Exception as exc:
                self.failed_beats += 1
                log.warning("cluster heartbeat failed: %s", exc or type(exc).__name__)
            else:
                await self._apply(started, renewed, taken)
                if next_expiry is not None:
                    # A lease another instance holds runs out before the next heartbeat:
                    # try to take it just after, not up to a heartbeat later.
                    waited = self.clock() - started
                    pause = min(pause, max(next_expiry - waited + 0.05, 0.05))
            await wait_event(self._wake, pause)

    def _renew_and_take(
        self, held: dict[str, Owned], take: bool = True
    ) -> tuple[dict[str, lease.Held], dict[str, lease.Held], float | None]:
        ttl = self.settings.lease_ttl_s
        taken: dict[str, lease.Held] = {}
        with self.db.begin() as conn:
            lease.heartbeat(conn, self.instance)
            renewed = lease.renew(conn, self.instance, {k: v.epoch for k, v in held.items()}, ttl)
        wanted = [n for n in self.names if n not in held] if take else []
        if wanted:  # one statement for every link: its grant is fresh when it returns
            with self.db.begin() as conn:
                taken = lease.acquire_all(conn, wanted, self.instance, ttl)
        wanted = [n for n in self.names if n not in held and n not in taken] if take else []
        with self.db.begin() as conn:
            next_expiry = lease.next_expiry_s(conn, wanted, self.instance)
            alive = [i["id"] for i in lease.instances(conn) if i["heartbeat_age_s"] < ttl]
        self.peers = sorted({*alive, self.instance})
        return renewed, taken, next_expiry

    async def _apply(
        self, started: float, renewed: dict[str, lease.Held], taken: dict[str, lease.Held]
    ) -> None:
        margin = self.settings.margin_s
        for link_id, own in list(self.held.items()):
            got = renewed.get(link_id)
            if got is None or got.epoch != own.epoch:
                await self._give_up(link_id, "lease lost (expired or taken over)")
            else:
                own.deadline = started + got.left_s - margin
        for link_id, got in taken.items():
            deadline = started + got.left_s - margin
            if self.clock() >= deadline:
                continue  # granted too slowly to be of use; it expires unused
            self.held[link_id] = Owned(got.epoch, deadline)
            log.info("link %s: owned by %s, epoch %d", link_id, self.instance, got.epoch)
            self.publish(LinkOwnerChanged(link_id, self.instance, got.epoch, self.instance))
            if link_id in self.arbiter.workers:
                await self.arbiter.start_link(link_id)
                self.arbiter.workers[link_id].publish_stats()
            self._notify()

    async def _watchdog(self) -> None:
        """Give up every link whose local deadline passed, whatever the database does."""
        while True:
            now = self.clock()
            for link_id, own in list(self.held.items()):
                if now >= own.deadline:
                    await self._give_up(link_id, "local deadline passed before renewal")
            nearest = min((o.deadline for o in self.held.values()), default=now + 1.0)
            await asyncio.sleep(min(max(nearest - self.clock(), 0.01), 0.5))

    async def _give_up(self, link_id: str, why: str) -> None:
        own = self.held.pop(link_id, None)
        if own is None:
            return
        log.warning(
            "link %s: given up by %s (epoch %d): %s", link_id, self.instance, own.epoch, why
        )
        if link_id in self.arbiter.workers:
            await self.arbiter.stop_link(link_id)
            self.arbiter.workers[link_id].publish_stats()  # lease_epoch 0: not owned here
        self.publish(LinkOwnerChanged(link_id, None, own.epoch, self.instance, why))
        for callback in self.on_give_up:
            callback(link_id)
        self._notify()
        if self._tasks:  # running (not stopping): hand the lease back now, best effort
            task = asyncio.create_task(self._hand_back(link_id, own))
            self._handing_back.add(task)
            task.add_done_callback(self._handing_back.discard)

    async def _hand_back(self, link_id: str, own: Owned) -> None:
        """Release a lease given up while still valid in the database (a late heartbeat),
        so another instance need not wait for it to expire. A partition makes this hang:
        then the lease simply expires."""
        try:
            await asyncio.wait_for(
                asyncio.to_thread(self._release, [(link_id, own)]), self.settings.lease_ttl_s
            )
        except Exception as exc:
            log.info("link %s: lease not handed back (%s); it expires", link_id, exc)

    def _notify(self) -> None:
        for callback in self.on_change:
            callback()
