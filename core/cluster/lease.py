"""Lease rows in PostgreSQL: owner, epoch and expiry by the database clock.

Every change is one atomic statement on the `link_lease` row:

- `acquire`: `UPDATE ... SET owner = me, epoch = epoch + 1, expires_at = now() + ttl WHERE
  name = :n AND (owner IS NULL OR expires_at < now())` — a free or expired lease only; the
  epoch grows on every change of owner, so it is the fencing token.
- `renew`: `... SET expires_at = now() + ttl WHERE owner = me AND epoch = :held AND
  expires_at > now()` — an expired lease is never renewed (it may already be another's).
- `release`: `... SET owner = NULL, expires_at = NULL WHERE owner = me AND epoch = :held`.

Row locks (what waits for what): a fence check (`check`, `check_all`) key-share-locks the
row until its transaction ends, and everything that changes the owner or the epoch
(`acquire`, `acquire_all`) locks it FOR UPDATE first, so no take can slip between a check
and the commit of what it guards. A renewal changes neither: it locks FOR NO KEY UPDATE,
which a key-share lock does not block, so the heartbeat never queues behind a metering
flush's fence checks (it did, 2–3 s at 20,000 meters, with FOR SHARE: the lease is 10 s).

Times come from the database (`clock_timestamp()`), never from the instances' clocks. Each
statement returns the seconds left, which the caller turns into a local deadline on its
monotonic clock taken *before* the statement (so the deadline can only be early).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..errors import CommandFenced

#: Prefix of leader-job lease names (link leases are named by the link id).
LEADER = "leader:"


@dataclass(frozen=True, slots=True)
class Held:
    """A lease this instance holds: its epoch and the seconds left when last granted."""

    name: str
    epoch: int
    left_s: float


@dataclass(frozen=True, slots=True)
class Fence:
    """What a claim or completion on a link must match: the lease's owner and epoch."""

    link_id: str
    owner: str
    epoch: int


@dataclass(frozen=True, slots=True)
class LeaseRow:
    name: str
    owner: str | None
    epoch: int
    expires_at: datetime | None
    renewed_at: datetime | None
    left_s: float | None


_ENSURE = sa.text(
    "INSERT INTO link_lease (name, epoch) SELECT n, 0 FROM unnest(CAST(:names AS text[])) AS n "
    "ON CONFLICT (name) DO NOTHING"
)
#: FOR UPDATE first: a plain UPDATE would not wait for the fence checks' key-share locks.
_ACQUIRE = sa.text(
    "UPDATE link_lease AS l SET owner = :owner, epoch = l.epoch + 1, "
    "expires_at = clock_timestamp() + make_interval(secs => :ttl), "
    "acquired_at = clock_timestamp(), renewed_at = clock_timestamp() "
    "FROM (SELECT name FROM link_lease WHERE name = :name FOR UPDATE) AS mine "
    "WHERE l.name = mine.name AND (l.owner IS NULL OR l.expires_at IS NULL "
    "OR l.expires_at < clock_timestamp()) "
    "RETURNING l.epoch, EXTRACT(EPOCH FROM l.expires_at - clock_timestamp())"
)
#: Every free or expired one of `names` in one statement. The rows are locked in name
#: order (as `_RENEW` does) and a row another transaction holds is skipped (it is being
#: taken, renewed or released right now: the next heartbeat looks again), so two
#: instances taking at once neither deadlock nor wait for each other.
_ACQUIRE_ALL = sa.text(
    "UPDATE link_lease AS l SET owner = :owner, epoch = l.epoch + 1, "
    "expires_at = clock_timestamp() + make_interval(secs => :ttl), "
    "acquired_at = clock_timestamp(), renewed_at = clock_timestamp() "
    "FROM (SELECT name FROM link_lease WHERE name = ANY(CAST(:names AS text[])) "
    "AND (owner IS NULL OR expires_at IS NULL OR expires_at < clock_timestamp()) "
    'ORDER BY name COLLATE "C" FOR UPDATE SKIP LOCKED) AS free '
    "WHERE l.name = free.name "
    "RETURNING l.name, l.epoch, EXTRACT(EPOCH FROM l.expires_at - clock_timestamp())"
)
#: FOR NO KEY UPDATE: not blocked by the fence checks' key-share locks (module docstring).
#: The rows are locked in name order ("C" collation: Python's `sorted`): when fence checks
#: share-locked them and the renewal locked them in the join's order, the two deadlocked
#: (PostgreSQL aborted the heartbeat, and the leases it did not renew were given up).
_RENEW = sa.text(
    "UPDATE link_lease AS l SET expires_at = clock_timestamp() + make_interval(secs => :ttl), "
    "renewed_at = clock_timestamp() "
    "FROM (SELECT k.name FROM link_lease AS k "
    "JOIN unnest(CAST(:names AS text[]), CAST(:epochs AS bigint[])) AS h(name, epoch) "
    "ON k.name = h.name AND k.epoch = h.epoch "
    "WHERE k.owner = :owner AND k.expires_at > clock_timestamp() "
    'ORDER BY k.name COLLATE "C" FOR NO KEY UPDATE OF k) AS mine '
    "WHERE l.name = mine.name AND l.owner = :owner AND l.expires_at > clock_timestamp() "
    "RETURNING l.name, l.epoch, EXTRACT(EPOCH FROM l.expires_at - clock_timestamp())"
)
_RELEASE = sa.text(
    "UPDATE link_lease SET owner = NULL, expires_at = NULL "
    "WHERE name = :name AND owner = :owner AND epoch = :epoch"
)
_CHECK = sa.text(
    "SELECT epoch FROM link_lease WHERE name = :name AND owner = :owner AND epoch = :epoch "
    "AND expires_at > clock_timestamp() FOR KEY SHARE"
)
#: `check` for many links in one statement, locking in name order (as `_RENEW` does).
_CHECK_MANY = sa.text(
    "SELECT k.name FROM link_lease AS k "
    "JOIN unnest(CAST(:names AS text[]), CAST(:owners AS text[]), CAST(:epochs AS bigint[])) "
    "AS f(name, owner, epoch) ON k.name = f.name AND k.owner = f.owner AND k.epoch = f.epoch "
    'WHERE k.expires_at > clock_timestamp() ORDER BY k.name COLLATE "C" FOR KEY SHARE OF k'
)


def ensure(conn: Connection, names: Sequence[str]) -> None:
    """Create the lease rows that do not exist yet (free, epoch 0)."""
    if names:
        conn.execute(_ENSURE, {"names": list(names)})


def acquire(conn: Connection, name: str, owner: str, ttl_s: float) -> Held | None:
    """Take `name` if it is free or expired; the new epoch, or None (someone holds it)."""
    row = conn.execute(_ACQUIRE, {"name": name, "owner": owner, "ttl": ttl_s}).first()
    return None if row is None else Held(name, int(row[0]), float(row[1]))


def acquire_all(
    conn: Connection, names: Sequence[str], owner: str, ttl_s: float
) -> dict[str, Held]:
    """Take every one of `names` that is free or expired, in one statement (`acquire` one
    at a time was a round trip per link: 145 links took 4 s on a busy box, most of the
    lease's time before its first renewal); name → the new lease."""
    if not names:
        return {}
    rows = conn.execute(_ACQUIRE_ALL, {"names": list(names), "owner": owner, "ttl": ttl_s})
    return {r[0]: Held(r[0], int(r[1]), float(r[2])) for r in rows}


def renew(conn: Connection, owner: str, held: Mapping[str, int], ttl_s: float) -> dict[str, Held]:
    """Renew every lease in `held` (name → epoch) in one statement; what was renewed.
    A lease missing from the answer is lost: expired, or another owner's now."""
    if not held:
        return {}
    names = list(held)
    rows = conn.execute(
        _RENEW,
        {"owner": owner, "names": names, "epochs": [held[n] for n in names], "ttl": ttl_s},
    ).all()
    return {r[0]: Held(r[0], int(r[1]), float(r[2])) for r in rows}


def next_expiry_s(conn: Connection, names: Sequence[str], owner: str) -> float | None:
    """Seconds until the first of `names` held by another instance expires (None: none
    is), so a standby can try to take it right then rather than at its next heartbeat."""
    if not names:
        return None
    value = conn.execute(
        sa.text(
            "SELECT min(EXTRACT(EPOCH FROM expires_at - clock_timestamp())) FROM link_lease "
            "WHERE name = ANY(CAST(:names AS text[])) AND owner IS NOT NULL AND owner <> :owner "
            "AND expires_at IS NOT NULL"
        ),
        {"names": list(names), "owner": owner},
    ).scalar()
    return None if value is None else float(value)


def release(conn: Connection, name: str, owner: str, epoch: int) -> bool:
    """Give a lease up at once (a clean stop), so another instance need not wait for it
    to expire. False if it was no longer ours."""
    return bool(conn.execute(_RELEASE, {"name": name, "owner": owner, "epoch": epoch}).rowcount)


def check(conn: Connection, fence: Fence) -> None:
    """Raise `CommandFenced` unless `fence` is the link's current, unexpired lease. The
    row is key-share-locked until the transaction ends, so no other instance can take the
    lease between this check and the commit of what it guards (a take locks FOR UPDATE);
    the owner's renewals do not wait for it."""
    found = conn.execute(
        _CHECK, {"name": fence.link_id, "owner": fence.owner, "epoch": fence.epoch}
    ).first()
    if found is None:
        raise _fenced(fence)


def check_all(conn: Connection, fences: Sequence[Fence]) -> None:
    """`check` for every fence in one statement (a metering flush covers hundreds of
    links: one round trip each was ~5% of an instance's sampled time at 20,000 meters)."""
    if len(fences) == 1:
        check(conn, fences[0])
        return
    if not fences:
        return
    found = {
        row[0]
        for row in conn.execute(
            _CHECK_MANY,
            {
                "names": [f.link_id for f in fences],
                "owners": [f.owner for f in fences],
                "epochs": [f.epoch for f in fences],
            },
        )
    }
    for fence in fences:
        if fence.link_id not in found:
            raise _fenced(fence)


def _fenced(fence: Fence) -> CommandFenced:
    return CommandFenced(
        f"link {fence.link_id}: epoch {fence.epoch} of {fence.owner} is no longer the "
        "current lease (expired or taken over); the database refuses the change"
    )


def fence_clause(fence: Fence) -> Any:
    """The same condition as `check` as a SQL expression (for claims)."""
    return sa.text(
        "EXISTS (SELECT 1 FROM link_lease f WHERE f.name = :fence_link AND f.owner = "
        ":fence_owner AND f.epoch = :fence_epoch AND f.expires_at > clock_timestamp())"
    ).bindparams(fence_link=fence.link_id, fence_owner=fence.owner, fence_epoch=fence.epoch)


def leases(conn: Connection) -> list[LeaseRow]:
    rows = conn.execute(
        sa.text(
            "SELECT name, owner, epoch, expires_at, renewed_at, "
            "EXTRACT(EPOCH FROM expires_at - clock_timestamp()) FROM link_lease ORDER BY name"
        )
    ).all()
    return [
        LeaseRow(r[0], r[1], int(r[2]), r[3], r[4], None if r[5] is None else float(r[5]))
        for r in rows
    ]


# -- instances -----------------------------------------------------------------------------


def register_instance(conn: Connection, instance_id: str, links: Sequence[str]) -> None:
    conn.execute(
        sa.text(
            "INSERT INTO cluster_instance (id, host, pid, links, started_at, heartbeat_at) "
            "VALUES (:id, :host, :pid, CAST(:links AS json), clock_timestamp(), "
            "clock_timestamp()) ON CONFLICT (id) DO UPDATE SET host = EXCLUDED.host, "
            "pid = EXCLUDED.pid, links = EXCLUDED.links, started_at = EXCLUDED.started_at, "
            "heartbeat_at = EXCLUDED.heartbeat_at"
        ),
        {
            "id": instance_id,
            "host": socket.gethostname()[:200],
            "pid": os.getpid(),
            "links": _json(list(links)),
        },
    )


def heartbeat(conn: Connection, instance_id: str) -> None:
    conn.execute(
        sa.text("UPDATE cluster_instance SET heartbeat_at = clock_timestamp() WHERE id = :id"),
        {"id": instance_id},
    )


def instances(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        sa.text(
            "SELECT id, host, pid, links, started_at, heartbeat_at, "
            "EXTRACT(EPOCH FROM clock_timestamp() - heartbeat_at) FROM cluster_instance "
            "ORDER BY id"
        )
    ).all()
    return [
        {
            "id": r[0],
            "host": r[1],
            "pid": r[2],
            "links": r[3],
            "started_at": r[4],
            "heartbeat_at": r[5],
            "heartbeat_age_s": float(r[6]),
        }
        for r in rows
    ]


def _json(value: Any) -> str:
    import json

    return json.dumps(value)
