"""Three instances as real processes on one PostgreSQL, the simulated gateway behind a relay
per instance (the gateway's log: who sent which frame when). Faults are real: SIGKILL,
SIGSTOP/SIGCONT, a partition between an instance and PostgreSQL.

What must hold, read from the gateway's side: the link is polled again by another instance
after its owner dies; two instances never interleave on the link; an instance paused past
its lease completes nothing it had in flight; a partitioned instance goes quiet on the link
before any other instance starts on it."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from openprepay.core.app.simulation import SimulatedSite
from openprepay.core.config.site import parse_site
from openprepay.core.contracts import SimulatorOptions
from openprepay.core.db import Database
from openprepay.core.prepay import commands as cmds
from tests.conftest import until

from .instances import (
    CLUSTER,
    OPENPREPAY,
    Instance,
    cluster_site_data,
    instance_site,
    owner_of,
)
from .relay import Frame, Relay

NAMES = ("a", "b", "c")


@dataclass
class Cluster:
    db: Database
    sims: SimulatedSite
    relays: dict[str, Relay] = field(default_factory=dict)
    instances: dict[str, Instance] = field(default_factory=dict)

    def frames(self) -> list[Frame]:
        return sorted((f for r in self.relays.values() for f in r.frames), key=lambda f: f.at)

    def frames_of(self, name: str, after: float = 0.0) -> list[Frame]:
        return [f for f in self.relays[name].frames if f.at > after]


@pytest.fixture
async def cluster(plugins, pg: Database, pg_url: str, tmp_path: Path) -> AsyncIterator[Cluster]:  # type: ignore[no-untyped-def]
    sims = SimulatedSite(
        parse_site(cluster_site_data()), plugins, SimulatorOptions(ephemeral_ports=True)
    )
    await sims.start()
    found = Cluster(pg, sims)
    try:
        gateway = sims.addresses["gw"]
        for name in NAMES:
            relay = Relay(gateway, name, modbus=True)
            found.relays[name] = relay
            port = await relay.start()
            found.instances[name] = Instance(name, instance_site(tmp_path, name, pg_url, port))
        yield found
    finally:
        for instance in found.instances.values():
            await instance.kill()
        for relay in found.relays.values():
            await relay.stop()
        await sims.stop()


def one_speaker_at_a_time(c: Cluster, faults: int) -> None:
    """The gateway's log changes speaker only where the previous one was faulted (killed,
    stopped, cut off) or gave the link up itself (logged; under heavy load a heartbeat can
    come too late): two instances polling the link at once would change it at every frame."""
    speakers = [f.instance for f in c.frames()]
    changes = sum(1 for x, y in itertools.pairwise(speakers) if x != y)
    given_up = sum(
        line.count("link gw: given up by") for i in c.instances.values() for line in i.log
    )
    assert changes <= faults + given_up, (changes, faults, given_up, speakers[-20:])


async def owned_by(c: Cluster, names: tuple[str, ...], timeout: float = 60) -> str:
    await until(lambda: owner_of(c.db)[0] in names, timeout, step=0.1)
    owner = owner_of(c.db)[0]
    assert owner is not None
    return owner


async def test_sigkill_the_owner_another_polls_the_link(cluster: Cluster) -> None:
    c = cluster
    await c.instances["a"].start()
    await owned_by(c, ("a",))
    await until(lambda: c.frames_of("a"), 30)
    await c.instances["b"].start()
    await c.instances["c"].start()
    assert owner_of(c.db)[0] == "a"  # the others stand by
    killed_at = time.monotonic()
    await c.instances["a"].kill()
    new = await owned_by(c, ("b", "c"), timeout=CLUSTER["lease_ttl_s"] * 10)
    await until(lambda: c.frames_of(new, killed_at), 30)
    failover_s = c.frames_of(new, killed_at)[0].at - killed_at
    print(f"failover: {new} polled the link {failover_s:.2f} s after the SIGKILL")
    # A command queued now is carried out by the new owner, under its epoch.
    with c.db.begin() as conn:
        command = cmds.enqueue(conn, "E-101", "TRIP", reason="drill", requested_by="test")
    await until(lambda: _state(c.db, command.id) == "CONFIRMED", 60, step=0.1)
    with c.db.read() as conn:
        done = cmds.get_command(conn, command.id)
    assert done.claimed_by == new and done.claimed_epoch == owner_of(c.db)[1]
    assert c.sims.devices["E-101"].snapshot()["supply_on"] == 0
    one_speaker_at_a_time(c, 1)
    # The operator sees it: `openprepay cluster status`.
    status = await _cluster_status(c.instances[new].site_file)
    leases = {r["name"]: r for r in status["leases"]}
    assert leases["gw"]["owner"] == new and leases["gw"]["epoch"] == owner_of(c.db)[1]
    alive = {i["id"]: i["alive"] for i in status["instances"]}
    assert alive[new] is True and set(alive) == {"a", "b", "c"}


async def _cluster_status(site_file: Path) -> dict:  # type: ignore[type-arg]
    proc = await asyncio.create_subprocess_exec(
        OPENPREPAY, "cluster", "status", str(site_file), "--json", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out
    return json.loads(out)


async def test_sigstop_past_the_lease_completes_nothing_in_flight(cluster: Cluster) -> None:
    c = cluster
    a = c.instances["a"]
    await a.start()
    await owned_by(c, ("a",))
    await c.instances["b"].start()
    _, epoch_a = owner_of(c.db)
    # Catch a with a TRIP on the wire: the gateway holds its answer back.
    c.relays["a"].hold_replies_s = 3.0
    with c.db.begin() as conn:
        command = cmds.enqueue(conn, "E-101", "TRIP", reason="drill", requested_by="test")
    await until(lambda: any(f.write for f in c.relays["a"].frames), 30, step=0.01)
    a.signal(signal.SIGSTOP)
    stopped_at = time.monotonic()
    writes_before = [f for f in c.relays["a"].frames if f.write]
    # b takes the link over and carries the command out under its own epoch.
    await owned_by(c, ("b",), timeout=CLUSTER["lease_ttl_s"] * 10)
    await until(lambda: _state(c.db, command.id) == "CONFIRMED", 60, step=0.1)
    a.signal(signal.SIGCONT)
    resumed_at = time.monotonic()
    await until(lambda: a.logged("link gw: given up by a"), 30)
    await asyncio.sleep(CLUSTER["heartbeat_s"] * 4)  # give a every chance to misbehave
    with c.db.read() as conn:
        done = cmds.get_command(conn, command.id)
    assert done.state == "CONFIRMED"
    assert done.claimed_by == "b" and done.claimed_epoch is not None
    assert done.claimed_epoch > epoch_a
    # Nothing a had in flight completed, and a wrote nothing after it woke up.
    writes_after = [f for f in c.relays["a"].frames if f.write and f.at > stopped_at]
    assert writes_after == [], writes_after
    assert writes_before, "a should have been caught with its write on the wire"
    assert not c.frames_of("a", resumed_at), "a talked to the link after it woke up"
    # What a had in flight came back to it after the pause; the database refused it.
    assert a.logged("the database refuses the change") or a.logged("not sent"), "".join(a.log)
    one_speaker_at_a_time(c, 1)
    assert c.sims.devices["E-101"].snapshot()["supply_on"] == 0


async def test_partition_from_postgres_gives_links_up_before_another_takes_them(
    cluster: Cluster, pg_url: str, tmp_path: Path
) -> None:
    c = cluster
    # c reaches PostgreSQL through a relay that can be cut.
    from sqlalchemy.engine import make_url

    url = make_url(pg_url)
    pg_relay = Relay((url.host or "127.0.0.1", url.port or 5432), "pg")
    pg_port = await pg_relay.start()
    try:
        site = instance_site(
            tmp_path / "partitioned",
            "c",
            url.set(port=pg_port).render_as_string(hide_password=False),
            await _second_gateway_port(c),
        )
        c.instances["c"] = Instance("c", site)
        await c.instances["c"].start()
        await owned_by(c, ("c",))
        await until(lambda: c.frames_of("c"), 30)
        await c.instances["a"].start()
        pg_relay.cut()
        cut_at = time.monotonic()
        new = await owned_by(c, ("a",), timeout=CLUSTER["lease_ttl_s"] * 10)
        await until(lambda: c.frames_of(new, cut_at), 30)
        first_new = c.frames_of(new, cut_at)[0].at
        last_c = max(f.at for f in c.relays["c"].frames)
        assert last_c < first_new, "c still talked to the link when a started on it"
        assert c.instances["c"].logged("link gw: given up by c")
        one_speaker_at_a_time(c, 1)
    finally:
        pg_relay.heal()
        await c.instances["c"].kill()
        await pg_relay.stop()


async def _second_gateway_port(c: Cluster) -> int:
    """c's own relay to the gateway (the fixture's site file for c is replaced)."""
    relay = c.relays["c"]
    assert relay._server is not None
    return int(relay._server.sockets[0].getsockname()[1])


def _state(db: Database, command_id: int) -> str:
    with db.read() as conn:
        return cmds.get_command(conn, command_id).state
