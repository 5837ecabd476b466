"""The event outbox: a change made through one door (the CLI's, another instance's) is
published by every other running service — its events, its account samples, and a wake-up
for the commands it queued — once, in order, and never twice by its own writer. On SQLite
and PostgreSQL."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from openprepay.core.config.site import parse_site
from openprepay.core.db import Database
from openprepay.core.db import schema as t
from openprepay.core.events import AlarmLevelChanged, AuditRecord, EventBus, event_record, utcnow
from openprepay.core.model import Sample
from openprepay.core.operations import Operations
from openprepay.core.operations.outbox import OutboxReader, OutboxTail
from openprepay.core.prepay import accounts as acc
from openprepay.core.prepay.effects import Effects
from tests.core.prepay.conftest import site_data


class Service:
    """What a running service sees: its own door, its bus and its outbox tail."""

    def __init__(self, site: Any, db: Database, plugins: Any) -> None:
        self.bus = EventBus()
        self.items: list[Any] = []
        for kind in (AuditRecord, AlarmLevelChanged, Sample):
            self.bus.subscribe(kind, self.items.append)
        self.ops = Operations(site, db, self.bus, models=plugins.models)
        self.woken: list[Effects] = []
        self.ops.committed.append(self.woken.append)
        self.tail = OutboxTail(db, self.ops.origin, self.ops.publish_committed)
        self.tail.reader.start_at_end()

    def audits(self) -> list[AuditRecord]:
        return [i for i in self.items if isinstance(i, AuditRecord)]


@pytest.fixture
def site(plugins: Any) -> Any:
    return parse_site(site_data())


@pytest.fixture
def opened(db: Database, site: Any, plugins: Any) -> Database:
    with db.begin() as conn:
        for account, meters in (("A-101", ("E-101", "W-101")), ("A-102", ("E-102",))):
            acc.create_account(
                conn,
                acc.AccountSpec(
                    account,
                    "tenant",
                    tuple(acc.resolve_meter(site, plugins.models, m) for m in meters),
                ),
            )
    return db


def test_a_change_through_another_door_is_published_by_the_running_service(
    opened: Database, site: Any, plugins: Any
) -> None:
    service = Service(site, opened, plugins)
    cli = Operations(site, opened, models=plugins.models)  # another process's door

    cli.topup("A-101", 5000, "cli-1", actor="cli:alice")
    assert service.items == []  # nothing until the tail reads
    assert service.tail.poll() == 1
    (audit,) = service.audits()
    assert (audit.actor, audit.action, audit.target, audit.ok) == (
        "cli:alice",
        "topup",
        "A-101",
        True,
    )
    samples = [i for i in service.items if isinstance(i, Sample)]
    assert [s.source for s in samples] == ["A-101"]
    assert samples[0].values["energy_balance_fen"] == 5000
    assert len(service.woken) == 1
    assert service.tail.poll() == 0  # each entry once


def test_a_local_recharge_from_elsewhere_wakes_the_command_executor(
    opened: Database, site: Any, plugins: Any
) -> None:
    service = Service(site, opened, plugins)
    cli = Operations(site, opened, models=plugins.models)
    result = cli.topup("A-102", 3000, "cli-local", actor="cli:bob")
    assert result.command_id is not None
    service.tail.poll()
    (effects,) = service.woken
    assert [c.id for c in effects.commands] == [result.command_id]
    assert effects.commands[0].kind == "RECHARGE"


def test_the_writer_does_not_publish_its_own_changes_twice(
    opened: Database, site: Any, plugins: Any
) -> None:
    service = Service(site, opened, plugins)
    service.ops.topup("A-101", 100, "own-1", actor="opcua:cashier")
    published = len(service.items)
    assert [a.actor for a in service.audits()] == ["opcua:cashier"]  # at once, on commit
    assert service.tail.poll() == 0
    assert len(service.items) == published


def test_a_refused_request_elsewhere_is_audited_on_the_running_service(
    opened: Database, site: Any, plugins: Any
) -> None:
    service = Service(site, opened, plugins)
    cli = Operations(site, opened, models=plugins.models)
    with pytest.raises(Exception, match="amount"):
        cli.topup("A-101", -5, "cli-bad", actor="cli:mallory")
    service.tail.poll()
    (audit,) = service.audits()
    assert (audit.actor, audit.ok) == ("cli:mallory", False)
    assert "refused" in audit.detail


def test_an_alarm_level_change_elsewhere_reaches_the_running_service(
    opened: Database, site: Any, plugins: Any
) -> None:
    service = Service(site, opened, plugins)
    cli = Operations(site, opened, models=plugins.models)
    cli.topup("A-101", 10000, "cli-2", actor="cli:alice")
    cli.refund("A-101", 9500, "rf-1", actor="cli:alice")  # leaves 5.00: below the alarms
    service.tail.poll()
    levels = [i for i in service.items if isinstance(i, AlarmLevelChanged)]
    assert levels and levels[-1].account_id == "A-101" and levels[-1].level != "NORMAL"


def write_at(conn: Any, entry_id: int, event: AuditRecord) -> None:
    conn.execute(
        t.event_outbox.insert(),
        {
            "id": entry_id,
            "origin": "other",
            "created_at": utcnow(),
            "payload": {"events": [event_record(event)]},
        },
    )


def test_an_id_that_commits_late_is_still_read_once(opened: Database) -> None:
    """PostgreSQL hands out ids at insert: id 2 can become visible after id 3."""
    clock = [0.0]
    reader = OutboxReader(opened, gap_wait_s=5.0, monotonic=lambda: clock[0])
    with opened.begin() as conn:
        write_at(conn, 1, AuditRecord("a", "x", "t", "1", True))
        write_at(conn, 3, AuditRecord("a", "x", "t", "3", True))
    assert [e.id for e in reader.read()] == [1, 3]
    assert set(reader.gaps) == {2}
    clock[0] = 1.0
    with opened.begin() as conn:
        write_at(conn, 2, AuditRecord("a", "x", "t", "2", True))
        write_at(conn, 4, AuditRecord("a", "x", "t", "4", True))
    assert [e.id for e in reader.read()] == [2, 4]
    assert reader.gaps == {}
    assert reader.read() == []


def test_a_gap_left_by_a_rollback_is_given_up_after_a_while(opened: Database) -> None:
    clock = [0.0]
    reader = OutboxReader(opened, gap_wait_s=5.0, monotonic=lambda: clock[0])
    with opened.begin() as conn:
        write_at(conn, 1, AuditRecord("a", "x", "t", "1", True))
        write_at(conn, 5, AuditRecord("a", "x", "t", "5", True))
    reader.read()
    assert set(reader.gaps) == {2, 3, 4}
    clock[0] = 6.0
    assert reader.read() == []
    assert reader.gaps == {}


def test_an_unknown_event_type_is_skipped_and_the_rest_published(
    opened: Database, site: Any, plugins: Any, caplog: pytest.LogCaptureFixture
) -> None:
    service = Service(site, opened, plugins)
    good = event_record(AuditRecord("cli:x", "topup", "A-101", "ok", True))
    with opened.begin() as conn:
        conn.execute(
            t.event_outbox.insert(),
            {
                "origin": "newer-instance",
                "created_at": utcnow(),
                "payload": {"events": [{"type": "FromTheFuture", "x": 1}, good]},
            },
        )
    with caplog.at_level(logging.WARNING, "openprepay.outbox"):
        assert service.tail.poll() == 1
    assert [a.actor for a in service.audits()] == ["cli:x"]
    assert "FromTheFuture" in caplog.text


def test_old_entries_are_pruned(opened: Database, site: Any, plugins: Any) -> None:
    service = Service(site, opened, plugins)
    old = utcnow() - timedelta(days=2)
    with opened.begin() as conn:
        conn.execute(
            t.event_outbox.insert(),
            {"origin": "x", "created_at": old, "payload": {"events": []}},
        )
    service.tail.poll()
    with opened.read() as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(t.event_outbox)).scalar()
    assert count == 0
