"""Migrations run up from empty on SQLite and PostgreSQL, match the schema the code uses,
are idempotent, and the site file's [database] section is validated field by field."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from openprepay.core.config.site import parse_site
from openprepay.core.db import Database, normalise_url, open_database, read_database_config
from openprepay.core.db import schema as t
from openprepay.core.errors import ConfigError


def test_upgrade_from_empty_matches_the_schema(db_url):
    db = Database(db_url)
    try:
        assert db.current_revision() is None
        head = db.head_revision()
        assert head is not None and db.upgrade() == head
        with db.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), t.metadata)
        # Type affinity differences aside, nothing may be missing or extra.
        structural = [d for d in diff if d[0] not in ("modify_type",)]
        assert structural == []
        assert db.upgrade() == head  # a second run changes nothing
    finally:
        db.dispose()


def test_step_by_step_upgrade_keeps_data(db_url):
    db = Database(db_url)
    try:
        db.upgrade("0001")
        now = "2025-01-01 00:00:00.000000"
        with db.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO account (id, name, state, protected, alarm1_fen, alarm2_fen, "
                    "overdraft_limit_fen, close_limit_fen, hoard_limit_fen, notify, created_at, "
                    "updated_at) VALUES ('A', 'a', 'OPEN', false, 2000, 500, 0, 0, 500000, "
                    f"'[]', '{now}', '{now}')"
                )
            )
        db.upgrade()
        with db.read() as conn:
            assert conn.execute(sa.text("SELECT fee_state FROM account")).scalar() == "NORMAL"
    finally:
        db.dispose()


def test_bill_void_migration_keeps_the_items_on_their_bills(db_url):
    """0006 rebuilds the bill table on SQLite: billed items still point at their bill."""
    db = Database(db_url)
    try:
        db.upgrade("0005")
        now = "2025-01-01 00:00:00.000000"
        with db.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO account (id, name, state, protected, alarm1_fen, alarm2_fen, "
                    "overdraft_limit_fen, close_limit_fen, hoard_limit_fen, notify, created_at, "
                    "updated_at) VALUES ('A', 'a', 'OPEN', false, 2000, 500, 0, 0, 500000, "
                    f"'[]', '{now}', '{now}')"
                )
            )
            conn.execute(
                sa.text(
                    "INSERT INTO bill (id, number, account_id, period, start_date, end_date, "
                    "state, total_fen, paid_fen, lines, problems, digest, created_at, "
                    "updated_at) VALUES (7, 'B-2025-01-A', 'A', '2025-01', '2025-01-01', "
                    f"'2025-02-01', 'ISSUED', 100, 0, '[]', '[]', '', '{now}', '{now}')"
                )
            )
            conn.execute(
                sa.text(
                    "INSERT INTO billing_item (account_id, period, kind, source, description, "
                    "amount_fen, mode, bill_id, void, created_at) VALUES ('A', '2025-01', "
                    f"'property', 'charge:p', 'fee', 100, 'bill', 7, false, '{now}')"
                )
            )
        db.upgrade()
        with db.read() as conn:
            assert conn.execute(sa.text("SELECT bill_id FROM billing_item")).scalar() == 7
            assert conn.execute(sa.text("SELECT state FROM bill")).scalar() == "ISSUED"
    finally:
        db.dispose()


def test_sqlite_pragmas(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    try:
        with db.read() as conn:
            pragma = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
                for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            }
        assert pragma == {
            "journal_mode": "wal",
            "synchronous": 2,  # FULL
            "foreign_keys": 1,
            "busy_timeout": 10000,
        }
    finally:
        db.dispose()


def test_concurrent_upgrades_do_not_collide(db_url):
    """Two instances starting at once both end at head (PostgreSQL advisory lock, SQLite
    write lock)."""
    errors: list[BaseException] = []

    def run() -> None:
        db = Database(db_url)
        try:
            db.upgrade()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        finally:
            db.dispose()

    threads = [threading.Thread(target=run) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    db = Database(db_url)
    assert db.current_revision() == db.head_revision()
    db.dispose()


def _site(tmp_path: Path, database: dict | None):
    data = {
        "site": {"id": "s"},
        "links": {"gw": {"type": "modbus_tcp", "host": "127.0.0.1"}},
    }
    if database is not None:
        data["database"] = database
    return parse_site(data, path=tmp_path / "site.toml")


def test_database_config_defaults_next_to_the_site_file(tmp_path):
    config = read_database_config(_site(tmp_path, None))
    assert config.url == f"sqlite:///{tmp_path / 'var' / 'openprepay.db'}"
    relative = read_database_config(_site(tmp_path, {"url": "sqlite:///data/ledger.db"}))
    assert relative.url == f"sqlite:///{tmp_path / 'data' / 'ledger.db'}"
    pg = read_database_config(_site(tmp_path, {"url": "postgresql://u@db/ledger"}))
    assert pg.url == "postgresql+psycopg://u@db/ledger"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"url": 5}, "database.url: expected a string, got 5"),
        ({"url": "mysql://x/y"}, "database.url: expected sqlite:///PATH or postgresql://"),
        ({"url": "sqlite:///:memory:"}, "database.url: expected sqlite:///PATH"),
        ({"url": "postgresql://u@host"}, "the URL names no database"),
        ({"busy_timeout_ms": -1}, "database.busy_timeout_ms: expected 0..600000, got -1"),
        ({"ulr": "sqlite:///x.db"}, "database.ulr: unknown key"),
    ],
)
def test_database_config_errors_name_the_field(tmp_path, section, message):
    with pytest.raises(ConfigError) as info:
        read_database_config(_site(tmp_path, section))
    assert message in str(info.value)


def test_open_database_migrates_at_start(tmp_path):
    site = _site(tmp_path, None)
    db = open_database(site)
    try:
        assert db.current_revision() == db.head_revision()
        assert (tmp_path / "var" / "openprepay.db").exists()
    finally:
        db.dispose()


def test_normalise_url_keeps_absolute_paths():
    assert normalise_url("sqlite:////srv/x.db", Path("/etc")) == "sqlite:////srv/x.db"


async def test_the_service_migrates_its_database_at_start(tmp_path):
    from openprepay.core.app.plugins import Plugins
    from openprepay.core.app.runtime import Runtime
    from openprepay.core.config.site import load_site
    from openprepay.plugins.modbus import plugin as modbus

    path = tmp_path / "site.toml"
    path.write_text(
        '[site]\nid = "s"\n[links.gw]\ntype = "modbus_tcp"\nhost = "127.0.0.1"\nport = 1\n',
        encoding="utf-8",
    )
    plugins = Plugins.load(entry_points=False, extra=[("modbus", modbus)])
    async with Runtime(load_site(path), plugins) as runtime:
        assert runtime.db is not None
        assert runtime.db.current_revision() == runtime.db.head_revision()
    assert runtime.db is None
    assert (tmp_path / "var" / "openprepay.db").exists()
    # A bad [database] section is a ConfigError before anything starts.
    path.write_text(path.read_text() + '[database]\nurl = "mysql://x/y"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"database\.url"):
        Runtime(load_site(path), plugins)
