"""Jobs that must run once: steps run under the jobs leader's lease, each fenced and its
progress persisted with its effect; a leader that lost the lease commits no further step
and the next leader resumes at the first step not done (no step twice, none skipped)."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from openprepay.core.cluster import lease
from openprepay.core.cluster.leader import progress_of, run_resumable
from openprepay.core.cluster.lease import Fence
from openprepay.core.cluster.manager import JOBS_LEADER
from openprepay.core.db import Database
from openprepay.core.errors import CommandFenced

from .conftest import expire


def _steps(by: str) -> list[tuple[str, object]]:
    def step(n: int):  # type: ignore[no-untyped-def]
        def run(conn: Connection) -> int:
            conn.execute(
                sa.text("INSERT INTO job_effect (step, done_by) VALUES (:s, :b)"),
                {"s": n, "b": by},
            )
            return n

        return run

    return [(f"step{n}", step(n)) for n in range(1, 5)]


def test_a_job_interrupted_by_failover_is_resumed_by_the_next_leader(pg: Database) -> None:
    with pg.begin() as conn:
        conn.execute(sa.text("CREATE TABLE job_effect (step int, done_by text)"))
        lease.ensure(conn, [JOBS_LEADER])
        a = lease.acquire(conn, JOBS_LEADER, "a", 30)
    assert a is not None
    fence_a = Fence(JOBS_LEADER, "a", a.epoch)
    asked = 0

    def a_fence() -> Fence:
        nonlocal asked
        asked += 1
        if asked == 4:  # before step 3: a is paused past its lease and b becomes leader
            expire(pg, JOBS_LEADER)
            with pg.begin() as conn:
                assert lease.acquire(conn, JOBS_LEADER, "b", 30) is not None
        return fence_a

    with pytest.raises(CommandFenced):
        run_resumable(pg, a_fence, "month-end:2026-11", _steps("a"))  # type: ignore[arg-type]
    with pg.read() as conn:
        assert progress_of(conn, JOBS_LEADER) == {"month-end:2026-11": 2}
        b_epoch = next(r.epoch for r in lease.leases(conn) if r.name == JOBS_LEADER)
    fence_b = Fence(JOBS_LEADER, "b", b_epoch)
    results = run_resumable(pg, lambda: fence_b, "month-end:2026-11", _steps("b"))  # type: ignore[arg-type]
    assert results == [None, None, 3, 4]
    with pg.read() as conn:
        rows = conn.execute(sa.text("SELECT step, done_by FROM job_effect ORDER BY step")).all()
    assert [tuple(r) for r in rows] == [(1, "a"), (2, "a"), (3, "b"), (4, "b")]
    # Run again: everything is done, nothing happens twice.
    assert run_resumable(pg, lambda: fence_b, "month-end:2026-11", _steps("b")) == [None] * 4  # type: ignore[arg-type]
    # An instance that is not the leader runs nothing.
    with pytest.raises(CommandFenced):
        run_resumable(pg, lambda: None, "month-end:2026-12", _steps("a"))  # type: ignore[arg-type]
