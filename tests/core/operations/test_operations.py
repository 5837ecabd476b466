"""The service functions: bad input is refused with the field named and changes nothing
(audited as refused); the CLI goes through them; a trip written by the CLI in another
process is executed by the running service; `openprepay check` validates [tariffs],
[prepay] and [notify]."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from openprepay.core import ledger
from openprepay.core.cli import CliContext, build_cli
from openprepay.core.config.site import load_site
from openprepay.core.db import Database
from openprepay.core.events import AuditRecord, EventBus
from openprepay.core.ledger import RequestError
from openprepay.core.operations import Operations
from openprepay.core.prepay import accounts as acc
from openprepay.core.prepay import commands as cmds
from openprepay.core.prepay.feecontrol import FeeState
from tests.conftest import until
from tests.core.prepay.conftest import site_data

TABLES = (
    "journal",
    "posting",
    "wallet",
    "topup",
    "refund",
    "meter_command",
    "meter",
    "account",
    "account_meter",
    "prepay_meter",
    "prepay_account",
    "notification",
    "audit_log",
)


def snapshot(db: Database) -> dict[str, Any]:
    out = {}
    with db.read() as conn:
        for table in TABLES:
            rows = conn.execute(sa.text(f"SELECT * FROM {table}")).all()
            out[table] = sorted(tuple(str(v) for v in r) for r in rows)
    return out


@pytest.fixture
def offline(tmp_path: Path, plugins) -> Any:
    """Operations on a migrated database without a running service (as the CLI has)."""
    import tomli_w

    site_file = tmp_path / "site.toml"
    site_file.write_text(tomli_w.dumps(site_data()))
    site = load_site(site_file)
    db = Database(f"sqlite:///{tmp_path / 'var' / 'openprepay.db'}")
    db.upgrade()
    bus = EventBus()
    audits: list[AuditRecord] = []
    bus.subscribe(AuditRecord, audits.append)
    ops = Operations(site, db, bus, models=plugins.models)
    with db.begin() as conn:
        acc.create_account(
            conn,
            acc.AccountSpec(
                "A-101",
                "tenant",
                tuple(acc.resolve_meter(site, plugins.models, m) for m in ("E-101", "W-101")),
            ),
        )
    ops.topup("A-101", 10000, "first", actor="test")
    yield ops, db, audits, site_file
    db.dispose()


BAD_CALLS = [
    ("negative amount", "topup", ("A-101", -100, "r1"), {}, "amount"),
    ("zero amount", "topup", ("A-101", 0, "r1"), {}, "amount"),
    ("absurd amount", "topup", ("A-101", 10**12, "r1"), {}, "amount"),
    ("float amount", "topup", ("A-101", 12.5, "r1"), {}, "amount"),
    ("text amount", "topup", ("A-101", "100", "r1"), {}, "amount"),
    ("bool amount", "topup", ("A-101", True, "r1"), {}, "amount"),
    ("empty reference", "topup", ("A-101", 100, " "), {}, "reference"),
    ("unknown account", "topup", ("B-999", 100, "r1"), {}, "account"),
    ("bad channel", "topup", ("A-101", 100, "r1"), {"channel": "We Chat"}, "channel"),
    ("refund too much", "refund", ("A-101", 10**6, "rf"), {}, "amount"),
    ("refund negative", "refund", ("A-101", -1, "rf"), {}, "amount"),
    ("unknown tariff", "set_tariff", ("A-101", "nope"), {}, "tariff"),
    (
        "alarm1 below alarm2",
        "set_thresholds",
        ("A-101",),
        {"alarm1_fen": 100, "alarm2_fen": 500},
        "alarm1",
    ),
    (
        "negative threshold",
        "set_thresholds",
        ("A-101",),
        {"alarm1_fen": -1, "alarm2_fen": 0},
        "alarm1",
    ),
    (
        "float threshold",
        "set_thresholds",
        ("A-101",),
        {"alarm1_fen": 20.5, "alarm2_fen": 0},
        "alarm1",
    ),
    ("unknown meter", "disconnect", ("E-999", "test"), {}, "target"),
    ("no reason", "disconnect", ("E-101", "  "), {}, "reason"),
    ("unknown account (reconnect)", "reconnect", ("X", "test"), {}, "target"),
    ("unknown account (protect)", "protect", ("X", True), {}, "account"),
]


@pytest.mark.parametrize(
    "method,args,kwargs,field", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS]
)
def test_bad_input_is_refused_naming_the_field_and_changes_nothing(
    offline, method, args, kwargs, field
) -> None:
    ops, db, audits, _ = offline
    before = snapshot(db)
    with pytest.raises(RequestError) as raised:
        getattr(ops, method)(*args, actor="cli:test", **kwargs)
    assert raised.value.field == field, raised.value
    assert snapshot(db) == before
    assert audits[-1].ok is False and "refused" in audits[-1].detail


def test_an_actor_is_required(offline) -> None:
    ops, db, _, _ = offline
    before = snapshot(db)
    with pytest.raises(RequestError) as raised:
        ops.topup("A-101", 100, "r-actor", actor="")
    assert raised.value.field == "actor"
    assert snapshot(db) == before


def test_every_change_is_audited_in_the_database(offline) -> None:
    ops, db, audits, _ = offline
    ops.set_tariff("A-101", "flat", actor="op:1")
    ops.set_thresholds("A-101", alarm1_fen=20000, alarm2_fen=500, actor="op:1")
    assert ops.account_snapshot("A-101").fee_state is FeeState.ALARM1
    ops.protect("A-101", True, actor="op:1")
    with db.read() as conn:
        rows = conn.execute(
            sa.text("SELECT actor, action, target FROM audit_log ORDER BY id")
        ).all()
    assert [tuple(r) for r in rows][-3:] == [
        ("op:1", "set_tariff", "A-101"),
        ("op:1", "set_thresholds", "A-101"),
        ("op:1", "protect", "A-101"),
    ]
    assert [a.action for a in audits][-3:] == ["set_tariff", "set_thresholds", "protect"]


def test_protected_account_refuses_a_manual_disconnect(offline) -> None:
    ops, db, _, _ = offline
    ops.protect("A-101", True, actor="op:1")
    before = snapshot(db)
    with pytest.raises(RequestError, match="protected supply"):
        ops.disconnect("E-101", "meter exchange", actor="op:1")
    assert snapshot(db) == before


def test_manual_disconnect_is_an_audited_override(offline) -> None:
    ops, db, audits, _ = offline
    (trip,) = ops.disconnect("E-101", "meter exchange", actor="op:1")
    assert trip.kind == "TRIP" and trip.requested_by == "op:1"
    assert "manual override by op:1" in trip.reason
    (close,) = ops.reconnect("E-101", "exchange done", actor="op:1")
    assert close.kind == "CLOSE"
    with db.read() as conn:
        rows = conn.execute(sa.text("SELECT actor, action, target FROM audit_log")).all()
    assert ("op:1", "disconnect", "E-101") in [tuple(r) for r in rows]
    assert [a.action for a in audits][-2:] == ["disconnect", "reconnect"]


def cli_run(plugins: Any, *args: str) -> Any:
    return CliRunner().invoke(
        build_cli(plugins), [*args], obj=CliContext(plugins), catch_exceptions=False
    )


@pytest.mark.parametrize(
    "args,field",
    [
        (("topup", "{site}", "A-101", "-5", "--ref", "x1"), "amount"),
        (("topup", "{site}", "A-101", "0", "--ref", "x1"), "amount"),
        (("topup", "{site}", "A-101", "12.345", "--ref", "x1"), "amount"),
        (("topup", "{site}", "A-101", "abc", "--ref", "x1"), "amount"),
        (("topup", "{site}", "A-101", "99999999999", "--ref", "x1"), "amount"),
        (("topup", "{site}", "NOPE", "10", "--ref", "x1"), "account"),
        (("meter", "trip", "{site}", "E-999", "--reason", "x"), "target"),
        (("meter", "close", "{site}", "E-999", "--reason", "x"), "target"),
        (("meter", "protect", "{site}", "E-999", "--reason", "x"), "meter"),
    ],
)
def test_cli_bad_input_exits_non_zero_and_changes_nothing(offline, plugins, args, field) -> None:
    _ops, db, _, site_file = offline
    before = snapshot(db)
    result = cli_run(plugins, *(a.format(site=site_file) for a in args))
    assert result.exit_code != 0
    assert f"{field}:" in result.output
    assert snapshot(db) == before


def test_cli_goes_through_operations(offline, plugins) -> None:
    ops, db, _, site_file = offline
    result = cli_run(plugins, "topup", str(site_file), "A-101", "50", "--ref", "cli-1")
    assert result.exit_code == 0, result.output
    result = cli_run(plugins, "meter", "trip", str(site_file), "E-101", "--reason", "works")
    assert result.exit_code == 0, result.output
    assert "command" in result.output and "TRIP E-101" in result.output
    result = cli_run(plugins, "meter", "protect", str(site_file), "E-101", "--reason", "ill")
    assert result.exit_code == 0, result.output
    assert "CLOSE E-101" in result.output  # 保电 closes what was cut
    with db.read() as conn:
        actions = [
            r[0] for r in conn.execute(sa.text("SELECT action FROM audit_log ORDER BY id")).all()
        ]
    assert actions[-3:] == ["topup", "disconnect", "protect"]
    assert ops.account_snapshot("A-101").protected


def test_check_validates_tariffs_prepay_and_notify(tmp_path: Path, plugins) -> None:
    import tomli_w

    data = site_data(
        tariffs={"flat": {"price": "-1"}},
        prepay={"policy": {"quiet_start": "25:00"}, "engine": {"queue_poll_s": 3}},
        notify={"max_attempts": "many"},
    )
    site_file = tmp_path / "bad.toml"
    site_file.write_text(tomli_w.dumps(data))
    result = cli_run(plugins, "check", str(site_file))
    assert result.exit_code == 2
    for field in (
        "tariffs.flat.price",
        "prepay.policy.quiet_start",
        "prepay.engine.queue_poll_s",
        "notify.max_attempts",
    ):
        assert field in result.output, result.output


async def test_cli_trip_from_another_process_runs_on_the_service_within_a_second(
    running,
) -> None:
    run = await running(speedup=0)
    run.open_account("A-101", ("E-101",), balance_fen=5000)
    openprepay = Path(sys.executable).parent / "openprepay"
    proc = await asyncio.create_subprocess_exec(
        str(openprepay),
        "meter",
        "trip",
        str(run.site_file),
        "E-101",
        "--reason",
        "tenant moved out",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ},
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    command_id = int(out.decode().split()[1].rstrip(":"))
    await until(lambda: run.ops.command(command_id).state == "CONFIRMED", 10)
    command = run.ops.command(command_id)
    # Written by the CLI process, claimed from the database queue, written to the meter,
    # read back and confirmed — all within a second of the row being committed.
    assert (command.finished_at - command.created_at).total_seconds() < 1.0
    assert run.sim("E-101").snapshot()["supply_on"] == 0


def policy_ops(tmp_path: Path, plugins: Any, **policy: Any) -> tuple[Operations, Database]:
    import tomli_w

    from tests.core.prepay.conftest import ANYTIME_POLICY

    data = site_data(prepay=dict(site_data()["prepay"], policy=dict(ANYTIME_POLICY, **policy)))
    data["devices"]["E-102"]["control_mode"] = "REMOTE"
    site_file = tmp_path / "policy.toml"
    site_file.write_text(tomli_w.dumps(data))
    site = load_site(site_file)
    db = Database(f"sqlite:///{tmp_path / 'policy.db'}")
    db.upgrade()
    ops = Operations(site, db, models=plugins.models)
    with db.begin() as conn:
        for account, meter in (("A-101", "E-101"), ("A-102", "E-102")):
            acc.create_account(
                conn,
                acc.AccountSpec(account, "t", (acc.resolve_meter(site, plugins.models, meter),)),
            )
    return ops, db


def test_mass_disconnects_are_rate_limited(tmp_path: Path, plugins) -> None:
    ops, db = policy_ops(tmp_path, plugins, max_trips_per_minute=1)
    try:
        for account in ("A-101", "A-102"):
            ops.topup(account, 1000, f"t-{account}", actor="op")
            ops.refund(account, 1000, f"r-{account}", actor="op")  # → 0.00: OVERDRAFT
        with db.read() as conn:
            trips = [c for c in cmds.list_commands(conn) if c.kind == "TRIP"]
        assert [c.meter_id for c in trips] == ["E-101"]  # the second waits for the limit
        second = ops.account_snapshot("A-102")
        assert second.fee_state is FeeState.OVERDRAFT
        assert second.meters[0].trip_due_at is not None
        assert second.meters[0].trip_due_at > second.at
    finally:
        db.dispose()


def test_no_trip_before_the_disconnection_notice_has_run(tmp_path: Path, plugins) -> None:
    ops, db = policy_ops(tmp_path, plugins, notice_days=3)
    try:
        ops.topup("A-101", 1000, "t1", actor="op")  # 10.00: ALARM1
        ops.set_thresholds("A-101", alarm1_fen=2000, alarm2_fen=1500, actor="op")  # ALARM2
        with db.read() as conn:
            notice = conn.execute(
                sa.text("SELECT notice_served_at FROM prepay_account WHERE account_id = 'A-101'")
            ).scalar()
        assert notice is not None  # served when the account reached pre-trip
        ops.refund("A-101", 1000, "r1", actor="op")  # 0.00: OVERDRAFT
        snap = ops.account_snapshot("A-101")
        assert snap.fee_state is FeeState.OVERDRAFT
        due = snap.meters[0].trip_due_at
        assert due is not None and (due - snap.at).days >= 2  # three days after the notice
        with db.read() as conn:
            assert not [c for c in cmds.list_commands(conn) if c.kind == "TRIP"]
    finally:
        db.dispose()


def test_emergency_credit_and_reconnection_after_it(tmp_path: Path, plugins) -> None:
    from openprepay.core import ledger
    from openprepay.core.prepay.effects import Effects
    from openprepay.core.prepay.feecontrol import Cause

    ops, db = policy_ops(tmp_path, plugins)

    def kinds() -> list[str]:
        with db.read() as conn:
            return [c.kind for c in reversed(cmds.list_commands(conn, meter_id="E-101"))]

    try:
        ops.topup("A-101", 1000, "t1", actor="op")
        ops.refund("A-101", 1000, "r1", actor="op")
        assert kinds() == ["TRIP"]
        ops.emergency_credit("A-101", actor="tenant")  # 5.00 advanced: supply returns
        snap = ops.account_snapshot("A-101")
        assert snap.balance_fen == 500 and snap.emergency_outstanding_fen == 500
        # Read with other accounts (a refresh's part) or without it, each gets its own.
        others = [a for a in ops.account_ids() if a != "A-101"]
        assert others and "A-101" in ops.account_ids()
        together = {s.account_id: s for s in ops.account_snapshots(["A-101", *others])}
        assert together["A-101"].emergency_outstanding_fen == 500
        assert all(together[a].emergency_outstanding_fen == 0 for a in others)
        assert [s.emergency_outstanding_fen for s in ops.account_snapshots(others)] == [0] * len(
            others
        )
        assert kinds() == ["TRIP", "CLOSE"]
        with pytest.raises(RequestError, match="still outstanding"):
            ops.emergency_credit("A-101", actor="tenant")
        with db.begin() as conn:  # the tenant uses it up
            ledger.post_usage(conn, "A-101", "E-101", 500, "p1")
            ops.control.after_change(
                conn, "A-101", Cause.DEDUCTION, actor="fee-control", effects=Effects()
            )
        assert kinds() == ["TRIP", "CLOSE", "TRIP"]
        # 5.50 repays the 5.00 but leaves 0.50 < reconnect_min 1.00: stays cut.
        ops.topup("A-101", 550, "t2", actor="op")
        snap = ops.account_snapshot("A-101")
        assert snap.balance_fen == 50 and snap.fee_state is FeeState.OVERDRAFT
        assert kinds() == ["TRIP", "CLOSE", "TRIP"]
        ops.topup("A-101", 100, "t3", actor="op")  # 1.50: reconnected
        assert ops.account_snapshot("A-101").fee_state is not FeeState.OVERDRAFT
        assert kinds() == ["TRIP", "CLOSE", "TRIP", "CLOSE"]
    finally:
        db.dispose()


# -- group commit: concurrent calls share one durable commit ---------------------------


def test_concurrent_topups_share_commits_and_a_bad_one_changes_nothing(offline: Any) -> None:
    ops, db, audits, _ = offline
    writer = ops.writer
    before_commits = writer.commits
    errors: list[Exception] = []
    start = threading.Barrier(41)

    def pay(i: int) -> None:
        start.wait()
        try:
            if i == 7:
                ops.topup("A-101", -5, f"bad-{i}", actor="cashier")  # refused
            else:
                ops.topup("A-101", 100, f"pay-{i}", actor="cashier")
        except RequestError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=pay, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    start.wait()
    for t in threads:
        t.join()

    assert [e.field for e in errors] == ["amount"]
    with db.read() as conn:
        assert ledger.balances(conn, "A-101").energy_fen == 10000 + 39 * 100
        assert ledger.verify(conn).ok
    # 39 answered requests needed fewer commits than requests: they were grouped.
    assert writer.requests - 1 >= 39  # the fixture's first top-up went through it too
    assert writer.commits - before_commits < 39
    refused = [a for a in audits if not a.ok]
    assert len(refused) == 1 and "refused" in refused[0].detail


def test_a_replayed_reference_inside_one_batch_posts_once(offline: Any) -> None:
    ops, db, _, _ = offline
    results: list[Any] = []
    start = threading.Barrier(10)

    def pay() -> None:
        start.wait()
        results.append(ops.topup("A-101", 250, "same-payment", actor="callback"))

    threads = [threading.Thread(target=pay) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(1 for r in results if not r.replayed) == 1
    with db.read() as conn:
        assert ledger.balances(conn, "A-101").energy_fen == 10000 + 250


def test_a_failing_commit_fails_every_request_of_its_batch(offline: Any) -> None:
    ops, db, _, _ = offline
    before = snapshot(db)

    def explode(conn: Any) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        ops.writer.run(explode)
    assert snapshot(db) == before


def test_set_params_queues_one_audited_command_idempotent_on_its_key(offline) -> None:
    ops, db, audits, _ = offline
    committed: list[Any] = []
    ops.committed.append(committed.append)
    first = ops.set_params(
        "E-101",
        "SET_ALARMS",
        {"alarm1": 20.0, "alarm2": 5.0},
        "new alarm levels",
        actor="op:1",
        idempotency_key="batch:7:1:1",
    )
    assert (first.meter_id, first.kind) == ("E-101", "SET_PARAMS")
    assert first.params == {"command": "SET_ALARMS", "alarm1": 20.0, "alarm2": 5.0}
    assert [c.id for effects in committed for c in effects.commands] == [first.id]

    def audit_rows() -> list[tuple[str, ...]]:
        with db.read() as conn:
            return [
                tuple(r)
                for r in conn.execute(
                    sa.text(
                        "SELECT actor, target, detail FROM audit_log "
                        "WHERE action = 'set_params' ORDER BY id"
                    )
                ).all()
            ]

    assert audit_rows() == [("op:1", "E-101", f"SET_ALARMS #{first.id}: new alarm levels")]
    assert audits[-1].action == "set_params" and audits[-1].ok

    again = ops.set_params(
        "E-101",
        "SET_ALARMS",
        {"alarm1": 20.0, "alarm2": 5.0},
        "new alarm levels",
        actor="op:1",
        idempotency_key="batch:7:1:1",
    )
    assert again.id == first.id  # the same key: the first command, nothing queued again
    with db.read() as conn:
        kinds = [c.kind for c in cmds.list_commands(conn) if c.kind == "SET_PARAMS"]
    assert kinds == ["SET_PARAMS"]
    # Each request is audited once (as every call of the door is); both name one command.
    row = ("op:1", "E-101", f"SET_ALARMS #{first.id}: new alarm levels")
    assert audit_rows() == [row, row]


@pytest.mark.parametrize(
    "meter,command,field",
    [
        ("E 1O1;", "SET_ALARMS", "meter"),
        (None, "SET_ALARMS", "meter"),
        ("E-101", "NOPE", "command"),
    ],
)
def test_set_params_refuses_a_garbled_meter_or_command(offline, meter, command, field) -> None:
    ops, db, audits, _ = offline
    before = snapshot(db)
    with pytest.raises(RequestError) as raised:
        ops.set_params(
            meter, command, {"alarm1": 1}, "test", actor="op:1", idempotency_key="k-garbled"
        )
    assert raised.value.field == field
    if field == "meter":
        assert "unknown meter" in raised.value.message
    assert snapshot(db) == before
    assert audits[-1].ok is False and audits[-1].action == "set_params"


def test_snapshots_of_several_accounts_in_one_read_match_one_by_one(offline) -> None:
    ops = offline[0]
    [many] = ops.account_snapshots(["A-101", "NOPE", "A-101"])  # unknown left out, once each
    one = ops.account_snapshot("A-101")
    assert many.balance_fen == 10000
    assert dataclasses.replace(many, at=one.at) == one  # the same facts, read at another time
    assert ops.account_snapshots([]) == []
