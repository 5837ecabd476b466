"""Money across a database failover, the parts in the connection layer: a multi-host URL
(what Patroni and pg_auto_failover hand out) finds the read-write server, and a server that
refuses writes (a demoted primary) has its pooled connections discarded."""

from __future__ import annotations

import asyncio
import threading

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from openprepay.core import ledger
from openprepay.core.db import Database, normalise_url
from openprepay.core.db.group import CommitOutcomeUnknown, GroupCommit
from openprepay.core.prepay import accounts

from .relay import Relay


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


def test_a_commit_lost_on_the_wire_is_run_again_with_the_same_key(pg_url: str) -> None:
    """The connection drops after COMMIT left (the server committed, the client never heard):
    an idempotent request (a top-up with its payment reference) is run again and returns
    the stored row — credited once; a request without a key is told the outcome is unknown."""
    url = make_url(pg_url)
    loop = asyncio.new_event_loop()
    relay = Relay((url.host or "127.0.0.1", url.port or 5432), "pg")
    port = loop.run_until_complete(relay.start())
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()
    db = Database(url.set(port=port).render_as_string(hide_password=False))
    try:
        db.upgrade()
        with db.begin() as conn:
            accounts.create_account(conn, accounts.AccountSpec("A-1", "tenant"))
            conn.execute(sa.text("CREATE TABLE plain_rows (v int)"))
        writer = GroupCommit(db)
        relay.lose_next_commit = True
        result = writer.run(
            lambda conn: ledger.topup(conn, "A-1", 500, "pay-lost-commit", channel="wechat"),
            idempotent=True,
        )
        assert relay.commits_lost == 1 and writer.rerun == 1
        assert result.replayed  # the first commit had happened: the key returned it
        relay.lose_next_commit = True
        with pytest.raises(CommitOutcomeUnknown):
            writer.run(lambda conn: conn.execute(sa.text("INSERT INTO plain_rows VALUES (1)")))
        writer.close()
        with db.read() as conn:
            assert ledger.verify(conn).ok
            stored = conn.execute(
                sa.text("SELECT count(*) FROM topup WHERE reference = 'pay-lost-commit'")
            ).scalar()
            assert stored == 1
            assert conn.execute(sa.text("SELECT count(*) FROM plain_rows")).scalar() == 1
    finally:
        db.dispose()
        asyncio.run_coroutine_threadsafe(relay.stop(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        runner.join(5)
