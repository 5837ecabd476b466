"""`column IN (values)` for lists of any length, as one bound parameter.

SQLAlchemy's `column.in_(values)` binds one parameter per value. For the whole site's
meters (20,000 at site scale) that is a statement of 20,000 placeholders, compiled, sent
and parsed again on every call: psycopg splits such a query with a regular expression (a
match object and a query part per placeholder) before it converts each value. The account
snapshots read five such lists every refresh; at 20,000 meters their garbage was most of
what the collector's middle generation walked (issue 15). SQLite refuses more than 32,766
placeholders outright.

`among` binds the whole list once: `column = ANY(:array)` on PostgreSQL, and
`column IN (SELECT value FROM json_each(:json))` on SQLite.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection


def among(conn: Connection, column: Any, values: Iterable[Any]) -> sa.ColumnElement[bool]:
    """`column IN values` with `values` as one parameter (see the module docstring)."""
    listed = list(values)
    if conn.dialect.name == "postgresql":
        return column == sa.any_(sa.bindparam(None, listed, type_=sa.ARRAY(column.type)))
    each = sa.func.json_each(sa.bindparam(None, json.dumps(listed), type_=sa.Text))
    return column.in_(sa.select(sa.column("value")).select_from(each))
