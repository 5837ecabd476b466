"""The command line of the clerk tests (`test_clerk_*.py`): the site file of `test_cli.py`
(a pool, a property fee, two tenants A-101 and A-102) on a SQLite file, commands run
through click's runner, and rows read back from the database."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from click.testing import CliRunner, Result

from openprepay.core.db import Database

from .test_cli import SITE

Run = Callable[..., Result]


def site_file(tmp_path: Path) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(SITE.replace("{db}", str(tmp_path / "op.db")), encoding="utf-8")
    return path


def runner(cli: tuple[Any, Any], path: Path) -> Run:
    """`run("bill", "show", "SITE", ...)`: the command on `path`, checked to succeed (or,
    with `ok=False`, to fail); the database upgraded and the two tenants opened."""
    group, obj = cli

    def invoke(*args: str, ok: bool = True) -> Result:
        argv = [a if a != "SITE" else str(path) for a in args]
        result = CliRunner().invoke(group, argv, obj=obj, catch_exceptions=False)
        assert (result.exit_code == 0) == ok, result.output
        return result

    invoke("db", "upgrade", "SITE")
    for account, name in (("A-101", "Alice"), ("A-102", "Bob")):
        invoke(
            "account", "open", "SITE", account, "--name", name, "--room", account,
            "--meter", f"E-{account}",
        )  # fmt: skip
    return invoke


def rows(path: Path, query: Any) -> list[Any]:
    """The rows of `query` on the site's database."""
    db = Database(f"sqlite:///{path.parent / 'op.db'}")
    try:
        with db.read() as conn:
            return list(conn.execute(query).all())
    finally:
        db.dispose()


def audits(path: Path, action: str) -> list[Any]:
    from openprepay.core.db import schema as t

    a = t.audit_log
    return rows(path, sa.select(a).where(a.c.action == action).order_by(a.c.id))
