"""Money across a database failover, the parts in the connection layer: a multi-host URL
(what Patroni and pg_auto_failover hand out) finds the read-write server, and a server that
refuses writes (a demoted primary) has its pooled connections discarded."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from openprepay.core.db import Database, normalise_url


def test_a_multi_host_url_takes_the_read_write_server(pg_url: str) -> None:
    url = make_url(pg_url)
    # The first host is down (nothing listens on port 1), the second is the primary.
    hosts = f"127.0.0.1:1,{url.host}:{url.port or 5432}"
    multi = (
        f"postgresql://{url.username}@{hosts}/{url.database}?target_session_attrs=read-write"
        f"&options={url.query['options']}"
    )
    assert "host=127.0.0.1%3A1" in normalise_url(multi)
    db = Database(multi)
    try:
        assert db.upgrade() == db.head_revision()
        with db.read() as conn:
            assert conn.execute(sa.text("SELECT inet_server_port()")).scalar() == (url.port or 5432)
    finally:
        db.dispose()


def test_a_server_that_refuses_writes_is_dropped_from_the_pool(pg: Database) -> None:
    with pg.begin() as conn:
        conn.execute(sa.text("CREATE TABLE failover_probe (v int)"))
        # This session now behaves as a demoted primary would: it refuses every write.
        conn.execute(sa.text("SET SESSION default_transaction_read_only = on"))
        demoted = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
    with pytest.raises(sa.exc.DBAPIError) as info, pg.begin() as conn:
        assert conn.execute(sa.text("SELECT pg_backend_pid()")).scalar() == demoted
        conn.execute(sa.text("INSERT INTO failover_probe VALUES (1)"))
    assert info.value.connection_invalidated
    # The next transaction gets a fresh connection and writes.
    with pg.begin() as conn:
        assert conn.execute(sa.text("SELECT pg_backend_pid()")).scalar() != demoted
        conn.execute(sa.text("INSERT INTO failover_probe VALUES (2)"))
    with pg.read() as conn:
        assert conn.execute(sa.text("SELECT v FROM failover_probe")).scalar() == 2
