"""Cluster tests run on the real PostgreSQL only: the database clock and row locks are the
coordinator, and SQLite has neither across processes."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from openprepay.core.db import Database


@pytest.fixture
def pg_url(postgres_database: str) -> Iterator[str]:
    """A schema of its own in the session's throwaway database, as a SQLAlchemy URL."""
    schema = f"c_{uuid.uuid4().hex[:12]}"
    engine = sa.create_engine(postgres_database)
    with engine.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{postgres_database}?options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        engine.dispose()


@pytest.fixture
def pg(pg_url: str) -> Iterator[Database]:
    database = Database(pg_url)
    database.upgrade()
    yield database
    database.dispose()


def expire(db: Database, name: str) -> None:
    """End a lease now by the database clock (what waiting out its TTL would do)."""
    with db.begin() as conn:
        conn.execute(
            sa.text(
                "UPDATE link_lease SET expires_at = clock_timestamp() - interval '1 second' "
                "WHERE name = :n"
            ),
            {"n": name},
        )


@pytest.fixture(scope="package", autouse=True)
def _without_other_services() -> Iterator[None]:
    """The instances run the core and the device plugins only (no OPC UA, no historian)."""
    import os

    from openprepay.core.app.plugins import DISABLE_ENV

    before = os.environ.get(DISABLE_ENV)
    os.environ[DISABLE_ENV] = "opcua,historian"
    yield
    if before is None:
        os.environ.pop(DISABLE_ENV, None)
    else:
        os.environ[DISABLE_ENV] = before


@pytest.fixture(scope="package")
def plugins(_without_other_services: None):  # type: ignore[no-untyped-def]
    from openprepay.core.app.plugins import Plugins

    loaded = Plugins.load()
    assert not loaded.failures, loaded.failures
    return loaded
