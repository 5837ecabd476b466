"""Lease rows and fencing against the real PostgreSQL: the epoch grows on every change of
owner, an expired lease is never renewed, and the database refuses a claim or completion
made under an epoch that is no longer current."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from openprepay.core.cluster import lease
from openprepay.core.cluster.lease import Fence
from openprepay.core.cluster.settings import read_cluster
from openprepay.core.config.site import parse_site
from openprepay.core.db import Database
from openprepay.core.errors import CommandFenced, ConfigError
from openprepay.core.prepay import commands as cmds

from .conftest import expire


def test_epoch_grows_with_every_owner_and_an_expired_lease_is_not_renewed(pg: Database) -> None:
    with pg.begin() as conn:
        lease.ensure(conn, ["gw"])
        a = lease.acquire(conn, "gw", "A", 10)
        assert a is not None and a.epoch == 1 and 0 < a.left_s <= 10
        # Held: nobody else takes it, and A renews it.
        assert lease.acquire(conn, "gw", "B", 10) is None
        assert lease.renew(conn, "A", {"gw": 1}, 10)["gw"].epoch == 1
        # B cannot renew what it does not hold, nor A an epoch it does not hold.
        assert lease.renew(conn, "B", {"gw": 1}, 10) == {}
        assert lease.renew(conn, "A", {"gw": 7}, 10) == {}
    expire(pg, "gw")
    with pg.begin() as conn:
        assert lease.renew(conn, "A", {"gw": 1}, 10) == {}  # expired: maybe another's
        b = lease.acquire(conn, "gw", "B", 10)
        assert b is not None and b.epoch == 2
        assert lease.release(conn, "gw", "A", 1) is False
        assert lease.release(conn, "gw", "B", 2) is True
        c = lease.acquire(conn, "gw", "A", 10)
        assert c is not None and c.epoch == 3
        rows = {r.name: r for r in lease.leases(conn)}
    assert rows["gw"].owner == "A" and rows["gw"].epoch == 3


def test_acquire_all_takes_every_free_or_expired_lease_in_one_statement(pg: Database) -> None:
    names = ["gw-1", "gw-2", "gw-3", "gw-4"]
    with pg.begin() as conn:
        lease.ensure(conn, names)
        assert lease.acquire(conn, "gw-2", "B", 10) is not None
        assert lease.acquire(conn, "gw-3", "B", 10) is not None
    expire(pg, "gw-3")
    with pg.begin() as conn:
        got = lease.acquire_all(conn, names, "A", 10)
        assert {n: h.epoch for n, h in got.items()} == {"gw-1": 1, "gw-3": 2, "gw-4": 1}
        assert all(0 < h.left_s <= 10 for h in got.values())
        assert lease.acquire_all(conn, names, "B", 10) == {}  # A holds them now
        assert lease.acquire_all(conn, [], "B", 10) == {}
        owners = {r.name: r.owner for r in lease.leases(conn)}
    assert owners == {"gw-1": "A", "gw-2": "B", "gw-3": "A", "gw-4": "A"}


def test_two_instances_taking_at_once_get_disjoint_leases(pg: Database) -> None:
    """A row the other transaction is taking is skipped, not waited for nor deadlocked on:
    each lease goes to exactly one instance, the rest on the next heartbeat."""
    names = [f"gw-{i:02d}" for i in range(40)]
    with pg.begin() as conn:
        lease.ensure(conn, names)
    with pg.begin() as first:
        a = lease.acquire_all(first, names[:30], "A", 10)  # not committed yet
        with pg.begin() as second:
            b = lease.acquire_all(second, list(reversed(names)), "B", 10)
    assert set(a) == set(names[:30]) and set(b) == set(names[30:])


def test_fence_checks_hold_off_a_take_but_not_the_owners_renewal(pg: Database) -> None:
    """A metering flush key-share-locks the lease rows of its links until it commits. The
    owner's heartbeat renews them meanwhile without waiting (it waited 2–3 s behind such a
    flush at 20,000 meters), while a take of a lease that expired under the flush waits
    for the flush's commit, and a bulk take skips the row."""
    names = ["gw-c", "gw-a", "gw-b"]  # held in the order they were taken
    with pg.begin() as conn:
        lease.ensure(conn, names)
        taken = {n: lease.acquire(conn, n, "A", 30) for n in names}
    held = {n: h.epoch for n, h in taken.items() if h is not None}
    fences = [Fence(n, "A", held[n]) for n in sorted(names)]

    def lock_timeout(conn: sa.engine.Connection, ms: int) -> None:
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{ms}ms'")

    with pg.begin() as flush:
        lease.check_all(flush, fences)
        with pg.begin() as heartbeat:
            lock_timeout(heartbeat, 2000)
            assert set(lease.renew(heartbeat, "A", held, 30)) == set(names)
        expire(pg, "gw-b")
        with pytest.raises(sa.exc.OperationalError, match="lock timeout"), pg.begin() as take:
            lock_timeout(take, 300)
            lease.acquire(take, "gw-b", "B", 10)
        with pg.begin() as take:
            lock_timeout(take, 300)
            assert lease.acquire_all(take, names, "B", 10) == {}
    with pg.begin() as take:
        b = lease.acquire(take, "gw-b", "B", 10)
    assert b is not None and b.epoch == held["gw-b"] + 1


def test_check_all_is_one_statement_for_many_links(pg: Database) -> None:
    """A metering flush checks every link of its meters at once: all current → passes and
    locks them; one stale → refused,
    naming that link."""
    names = ["gw-c", "gw-a", "gw-b"]
    with pg.begin() as conn:
        lease.ensure(conn, names)
        held = {n: lease.acquire(conn, n, "A", 30) for n in names}
    fences = [Fence(n, "A", h.epoch) for n, h in sorted(held.items()) if h is not None]
    with pg.begin() as conn:
        lease.check_all(conn, fences)
        lease.check_all(conn, [])
        locked = conn.execute(
            sa.text(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'transactionid' "
                "AND pid = pg_backend_pid()"
            )
        ).scalar()
    assert locked == 1  # FOR KEY SHARE took row locks: this transaction got an id
    expire(pg, "gw-b")
    with pytest.raises(CommandFenced, match="link gw-b: epoch 1 of A"), pg.begin() as conn:
        lease.check_all(conn, fences)
    stale = [Fence("gw-a", "A", 1), Fence("gw-c", "B", 1)]
    with pytest.raises(CommandFenced, match="link gw-c: epoch 1 of B"), pg.begin() as conn:
        lease.check_all(conn, stale)


def test_a_stale_owner_can_neither_claim_nor_complete(pg: Database) -> None:
    with pg.begin() as conn:
        lease.ensure(conn, ["gw"])
        a = lease.acquire(conn, "gw", "A", 10)
        assert a is not None
        cmds.enqueue(conn, "E-1", "TRIP", reason="test", requested_by="test")
    fence_a = Fence("gw", "A", a.epoch)
    with pg.begin() as conn:
        (claimed,) = cmds.claim_due(conn, 5, owner="A", meters=["E-1"], fence=fence_a)
        cmds.mark_sent(conn, claimed.id, owner="A", fence=fence_a)
    assert (claimed.claimed_link, claimed.claimed_epoch) == ("gw", a.epoch)
    # A pauses past its lease; B takes the link over.
    expire(pg, "gw")
    with pg.begin() as conn:
        b = lease.acquire(conn, "gw", "B", 10)
    assert b is not None and b.epoch == a.epoch + 1
    fence_b = Fence("gw", "B", b.epoch)
    # A wakes up: its completion is refused, and so is any new claim under its epoch.
    with pytest.raises(CommandFenced), pg.begin() as conn:
        cmds.mark_confirmed(conn, claimed.id, owner="A", fence=fence_a)
    with pg.begin() as conn:
        assert cmds.claim_due(conn, 5, owner="A", meters=["E-1"], fence=fence_a) == []
        # B claims the command at once (its epoch is older than B's), without waiting for
        # the command's own claim lease to run out.
        (again,) = cmds.claim_due(conn, 5, owner="B", meters=["E-1"], fence=fence_b)
    assert again.id == claimed.id and again.claimed_epoch == b.epoch
    assert again.sent_at is not None  # B knows it may be on the device: it reads back first
    with pg.begin() as conn:
        done = cmds.mark_confirmed(conn, again.id, owner="B", fence=fence_b)
    assert done.state == "CONFIRMED"


def test_commands_carry_a_sequence_number_per_meter(pg: Database) -> None:
    with pg.begin() as conn:
        seqs = [
            cmds.enqueue(conn, meter, "TRIP", reason="t", requested_by="t").seq
            for meter in ("E-1", "E-1", "E-2", "E-1")
        ]
    assert seqs == [1, 2, 1, 3]


def _site(cluster: dict, url: str = "postgresql://u@h/db", timeout_ms: int = 500):  # type: ignore[no-untyped-def]
    return parse_site(
        {
            "site": {"id": "s", "timezone": "Asia/Shanghai"},
            "links": {
                "gw-a": {
                    "type": "modbus_tcp",
                    "host": "127.0.0.1",
                    "port": 1,
                    "timeout_ms": timeout_ms,
                }
            },
            "database": {"url": url},
            "cluster": cluster,
        }
    )


def test_cluster_settings_name_the_field_and_the_fix() -> None:
    settings = read_cluster(_site({"instance_id": "box-a", "links": ["gw-*"]}))
    assert settings is not None and settings.may_own("gw-a") and not settings.may_own("x")
    assert (settings.lease_ttl_s, settings.heartbeat_s) == (10.0, 2.0)
    cases = {
        "cluster.instance_id": {},
        "cluster.links": {"instance_id": "a", "links": ["nope-*"]},
        "cluster.lease_ttl_s": {"instance_id": "a", "lease_ttl_s": 3, "heartbeat_s": 2},
        "cluster.margin_s": {"instance_id": "a", "margin_s": 0.4},
        "cluster.heartbeat_s": {"instance_id": "a", "heartbeat_s": "2"},
    }
    for field, section in cases.items():
        with pytest.raises(ConfigError) as info:
            read_cluster(_site(section))
        assert field in str(info.value), (field, str(info.value))
    with pytest.raises(ConfigError, match=r"database\.url"):
        read_cluster(_site({"instance_id": "a"}, url="sqlite:///x.db"))
    assert read_cluster(parse_site({**_site_data_without_cluster()})) is None


def _site_data_without_cluster() -> dict:  # type: ignore[type-arg]
    return {
        "site": {"id": "s", "timezone": "Asia/Shanghai"},
        "links": {"gw-a": {"type": "modbus_tcp", "host": "127.0.0.1", "port": 1}},
    }
