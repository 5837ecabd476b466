"""Fixtures for the payment tests: the door on a real database (SQLite and PostgreSQL) with
an open account and the test-double provider, and the whole runtime on simulated meters."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from openprepay.core.app.plugins import Plugins
from openprepay.core.config.site import load_site
from openprepay.core.db import Database
from openprepay.core.operations import Operations
from openprepay.core.prepay import accounts as acc
from tests.core.prepay.conftest import _without_other_services, running, site_data

from .double import DoublePlugin, DoubleProvider

__all__ = ["_without_other_services", "running"]

PAYMENTS: dict[str, Any] = {"minimum": "1.00", "order_minutes": 15, "query_after_s": 60}
#: Where providers call back (the notify URL given to them is built from it).
WEB: dict[str, Any] = {"bind": "127.0.0.1", "port": 0, "public_base_url": "https://pay.example.com"}


def payment_site(tmp_path: Path, **changes: Any) -> Path:
    data = site_data(payments=dict(PAYMENTS), **changes)
    path = tmp_path / "site.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def open_account(ops: Operations, db: Database, account_id: str = "A-101", **spec: Any) -> None:
    meters = ("E-101", "W-101") if account_id == "A-101" else ()
    with db.begin() as conn:
        acc.create_account(
            conn,
            acc.AccountSpec(
                account_id,
                f"tenant {account_id}",
                tuple(acc.resolve_meter(ops.site, ops.models, m) for m in meters),
                room=account_id,
                **spec,
            ),
        )


@pytest.fixture(scope="package")
def double_plugin() -> DoublePlugin:
    return DoublePlugin()


@pytest.fixture(scope="package")
def plugins(_without_other_services: None, double_plugin: DoublePlugin) -> Plugins:
    """Every installed plugin but OPC UA and the historian, plus the test-double provider."""
    loaded = Plugins.load(extra=[("payments_double", double_plugin)])
    assert not loaded.failures, loaded.failures
    return loaded


@pytest.fixture
def provider() -> DoubleProvider:
    return DoubleProvider()


@pytest.fixture
def ops(
    db: Database, tmp_path: Path, plugins: Any, provider: DoubleProvider
) -> Iterator[Operations]:
    """The door on `db` (SQLite and PostgreSQL) with account A-101 open and the double."""
    site = load_site(payment_site(tmp_path, web=dict(WEB)))
    door = Operations(site, db, models=plugins.models)
    door.use_providers([provider])
    open_account(door, db)
    yield door
    door.writer.close()
