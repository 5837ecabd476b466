"""`among(conn, column, values)`: `column IN values` with the list bound once, on both
databases — the same rows as `in_`, for an empty list, for strings and integers, and for
more values than SQLite accepts placeholders (32,766), in one statement of constant size."""

from __future__ import annotations

import sqlalchemy as sa

from openprepay.core.db import Database
from openprepay.core.db import schema as t
from openprepay.core.db.among import among

from .test_analyze import _accounts


def test_among_selects_what_in_selects_with_one_parameter(db: Database) -> None:
    with db.begin() as conn:
        conn.execute(sa.insert(t.account), _accounts(50))
    wanted = [f"A-{i:05d}" for i in (3, 7, 7, 49)] + ["no-such-account"]
    with db.read() as conn:
        q = sa.select(t.account.c.id).order_by(t.account.c.id)
        got = conn.execute(q.where(among(conn, t.account.c.id, wanted))).scalars().all()
        expected = conn.execute(q.where(t.account.c.id.in_(wanted))).scalars().all()
        assert got == expected == ["A-00003", "A-00007", "A-00049"]
        assert conn.execute(q.where(among(conn, t.account.c.id, []))).scalars().all() == []
        # More values than SQLite's placeholder limit, and the statement stays small.
        many = [f"A-{i:05d}" for i in range(40_000)]
        stmt = q.where(among(conn, t.account.c.id, iter(many)))
        assert len(conn.execute(stmt).scalars().all()) == 50
        assert len(str(stmt.compile(conn))) < 300
        # Integers too (json_each gives SQLite integers back as integers).
        hits = conn.execute(
            sa.select(sa.func.count()).where(among(conn, t.journal.c.id, [1, 2, 3]))
        ).scalar_one()
        assert hits == 0
