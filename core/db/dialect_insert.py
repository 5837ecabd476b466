"""`INSERT ... ON CONFLICT` for the connection's database.

PostgreSQL and SQLite both have it, with the same SQLAlchemy API, but each through its own
dialect's `insert`: the upserts of the ledger, metering, the readings capture and the
engine's state rows pick theirs here.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection


def dialect_insert(conn: Connection, table: sa.Table) -> Any:
    """`table`'s INSERT with `on_conflict_do_update` / `on_conflict_do_nothing`."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    return dialect.insert(table)
