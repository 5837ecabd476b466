"""Durable meter commands on SQLite and PostgreSQL: audit fields, supersede, per-meter order,
claims with row locks (two claimers never get the same row), leases, retries."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest

from openprepay.core import ledger
from openprepay.core.config.site import ControlMode
from openprepay.core.ledger import RequestError
from openprepay.core.model import DeviceCommand, MeterKind
from openprepay.core.prepay import commands as cmds
from openprepay.core.prepay.commands import CommandKind, CommandState, CommandStateError
from openprepay.core.prepay.local_money import LOCAL_MONEY

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)


def enqueue(db, meter, kind, *, at=T0, **kw):
    kw.setdefault("reason", f"test {kind}")
    kw.setdefault("requested_by", "test")
    with db.begin() as conn:
        return cmds.enqueue(conn, meter, kind, now=at, **kw)


def claim(db, limit=10, *, at=T0, owner="x", **kw):
    with db.begin() as conn:
        return cmds.claim_due(conn, limit, owner=owner, now=at, **kw)


def state_of(db, command_id):
    with db.read() as conn:
        return cmds.get_command(conn, command_id)


def test_every_command_records_why_and_who(db):
    for missing in ("reason", "requested_by"):
        with pytest.raises(RequestError) as info:
            enqueue(db, "E-101", "TRIP", **{missing: " "})
        assert info.value.field == missing
    with pytest.raises(RequestError) as info:
        enqueue(db, "E-101", "EXPLODE")
    assert info.value.field == "kind"
    c = enqueue(db, "E-101", "TRIP", reason="balance -0.30 <= 0", requested_by="fee-control")
    dc = c.device_command()
    assert isinstance(dc, DeviceCommand) and dc.name == "TRIP" and dc.meter_id == "E-101"
    assert "balance -0.30 <= 0" in dc.reason and "fee-control" in dc.reason


def test_a_newer_supply_command_supersedes_older_pending_ones(db, check):
    trip = enqueue(db, "E-101", "TRIP")
    other_meter = enqueue(db, "E-201", "TRIP")
    recharge = enqueue(db, "E-101", "RECHARGE", params={"buy_count": 1})
    protect = enqueue(db, "E-101", "PROTECT")
    close = enqueue(db, "E-101", "CLOSE")
    assert state_of(db, trip.id).state == CommandState.SUPERSEDED
    assert state_of(db, trip.id).superseded_by == close.id
    assert state_of(db, other_meter.id).state == CommandState.PENDING
    assert state_of(db, recharge.id).state == CommandState.PENDING  # money: never superseded
    assert state_of(db, protect.id).state == CommandState.PENDING  # another group
    unprotect = enqueue(db, "E-101", "UNPROTECT")
    assert state_of(db, protect.id).superseded_by == unprotect.id
    check()


def test_claimed_commands_are_not_superseded_and_order_is_kept(db):
    trip = enqueue(db, "E-101", "TRIP")
    assert [c.id for c in claim(db)] == [trip.id]
    close = enqueue(db, "E-101", "CLOSE", at=T0 + timedelta(seconds=1))
    assert state_of(db, trip.id).state == CommandState.CLAIMED
    # The CLOSE waits until the TRIP before it is finished.
    assert claim(db, at=T0 + timedelta(seconds=2)) == []
    with db.begin() as conn:
        cmds.mark_sent(conn, trip.id, owner="x", now=T0)
        cmds.mark_confirmed(conn, trip.id, readback={"relay": 0}, owner="x", now=T0)
    assert [c.id for c in claim(db, at=T0 + timedelta(seconds=2))] == [close.id]


def test_recharges_of_a_meter_run_in_purchase_order(db, make_account):
    make_account("A-102", meters=(("E-102", MeterKind.ELECTRIC, ControlMode.LOCAL),))
    with db.begin() as conn:
        r1 = ledger.topup(conn, "A-102", 1000, "p1", now=T0, local=LOCAL_MONEY)
        r2 = ledger.topup(conn, "A-102", 2000, "p2", now=T0, local=LOCAL_MONEY)
    first = claim(db, at=T0 + timedelta(seconds=1))
    assert [c.params["buy_count"] for c in first] == [1]
    with db.begin() as conn:
        cmds.mark_failed(conn, r1.command_id, "timeout", retry_at=T0 + timedelta(seconds=30))
    # Purchase 2 must not overtake purchase 1 while 1 waits for its retry.
    assert claim(db, at=T0 + timedelta(seconds=10)) == []
    again = claim(db, at=T0 + timedelta(seconds=31))
    assert [(c.id, c.attempts, c.params["buy_count"]) for c in again] == [(r1.command_id, 2, 1)]
    with db.begin() as conn:
        cmds.mark_confirmed(conn, r1.command_id)
    assert [c.id for c in claim(db, at=T0 + timedelta(seconds=32))] == [r2.command_id]
    with db.begin() as conn:
        cmds.mark_confirmed(conn, r2.command_id)
    with db.read() as conn:
        from openprepay.core.prepay.accounts import get_account

        meter = get_account(conn, "A-102").meters[0]
        assert (meter.buy_count, meter.confirmed_buy_count) == (2, 2)


def test_retry_then_final_failure(db):
    c = enqueue(db, "E-101", "TRIP")
    claim(db)
    with db.begin() as conn:
        cmds.mark_sent(conn, c.id, now=T0)
        retry = cmds.mark_failed(conn, c.id, "no answer", retry_at=T0 + cmds.retry_delay(1))
    assert (retry.state, retry.last_error, retry.next_attempt_at) == (
        CommandState.PENDING,
        "no answer",
        T0 + timedelta(seconds=5),
    )
    assert cmds.retry_delay(4) == timedelta(seconds=40)
    assert cmds.retry_delay(30) == timedelta(seconds=600)
    assert claim(db, at=T0 + timedelta(seconds=4)) == []
    assert [x.attempts for x in claim(db, at=T0 + timedelta(seconds=5))] == [2]
    with db.begin() as conn:
        failed = cmds.mark_failed(conn, c.id, "refused: protected", final=True)
    assert failed.state == CommandState.FAILED and failed.finished_at is not None
    with pytest.raises(CommandStateError), db.begin() as conn:
        cmds.mark_confirmed(conn, c.id)
    with pytest.raises(RequestError), db.begin() as conn:
        cmds.mark_failed(conn, c.id, "x")  # neither retry_at nor final


def test_an_expired_lease_is_claimed_again_and_the_old_owner_is_refused(db):
    c = enqueue(db, "E-101", "TRIP")
    assert [x.id for x in claim(db, owner="a", lease_s=30)] == [c.id]
    assert claim(db, owner="b", at=T0 + timedelta(seconds=29)) == []
    with db.begin() as conn:
        cmds.mark_sent(conn, c.id, owner="a")
    taken = claim(db, owner="b", at=T0 + timedelta(seconds=31))
    assert [(x.id, x.claimed_by, x.attempts) for x in taken] == [(c.id, "b", 2)]
    with pytest.raises(CommandStateError, match="claimed by 'b'"), db.begin() as conn:
        cmds.mark_confirmed(conn, c.id, owner="a")
    with db.begin() as conn:
        assert cmds.mark_confirmed(conn, c.id, owner="b").state == CommandState.CONFIRMED


def test_not_before_and_meter_filter(db):
    later = enqueue(db, "E-101", "TRIP", not_before=T0 + timedelta(hours=10))
    other = enqueue(db, "E-201", "TRIP")
    assert [c.id for c in claim(db, meters=["E-101"])] == []
    assert [c.id for c in claim(db, meters=["E-201"])] == [other.id]
    with db.begin() as conn:
        cmds.mark_confirmed(conn, other.id)
    assert [c.id for c in claim(db, at=T0 + timedelta(hours=10))] == [later.id]


def test_the_read_before_a_claim_says_no_only_when_a_claim_would_find_nothing(db):
    def may(at=T0, in_hand=()):
        with db.read() as conn:
            return bool(cmds.claimable_meters(conn, now=at, in_hand=in_hand))

    assert not may()  # nothing at all
    later = enqueue(db, "E-101", "TRIP", not_before=T0 + timedelta(hours=1))
    assert not may() and claim(db) == []  # not due yet
    assert may(T0 + timedelta(hours=1))
    [taken] = claim(db, at=T0 + timedelta(hours=1), owner="a", lease_s=30)
    assert not may(T0 + timedelta(hours=1), in_hand=[later.id])  # in flight, held by the caller
    # In flight and not held by the caller: its lease may run out (another executor died).
    assert may(T0 + timedelta(hours=1))
    with db.begin() as conn:
        cmds.mark_confirmed(conn, taken.id, owner="a")
    assert not may(T0 + timedelta(hours=2))


def test_enqueue_with_a_key_is_idempotent(db):
    a = enqueue(db, "E-101", "TRIP", idempotency_key="fee:E-101:812")
    b = enqueue(db, "E-101", "TRIP", idempotency_key="fee:E-101:812")
    assert a.id == b.id
    with db.read() as conn:
        assert len(cmds.list_commands(conn, meter_id="E-101")) == 1


def test_cancel_withdraws_a_pending_command(db):
    c = enqueue(db, "E-101", "CLOSE")
    with db.begin() as conn:
        done = cmds.cancel(conn, c.id, "operator changed their mind")
    assert done.state == CommandState.SUPERSEDED and "operator" in done.last_error
    assert claim(db) == []


def test_two_claimers_never_get_the_same_row(db):
    """Claimers on separate connections race; every row goes to exactly one of them."""
    rows = 120
    with db.begin() as conn:
        for i in range(rows):
            cmds.enqueue(conn, f"M-{i:03d}", CommandKind.TRIP, reason="r", requested_by="t", now=T0)
    got: dict[str, list[int]] = {}
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def claimer(name: str) -> None:
        mine: list[int] = []
        try:
            barrier.wait()
            while True:
                with db.begin() as conn:
                    batch = cmds.claim_due(conn, 7, owner=name, now=T0)
                if not batch:
                    break
                mine.extend(c.id for c in batch)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        got[name] = mine

    threads = [threading.Thread(target=claimer, args=(f"c{i}",)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    claimed = [i for ids in got.values() for i in ids]
    assert len(claimed) == len(set(claimed)) == rows
    with db.read() as conn:
        owners = {c.id: c.claimed_by for c in cmds.list_commands(conn, limit=rows)}
    for name, ids in got.items():
        assert all(owners[i] == name for i in ids)


def test_recent_command_times_for_the_rate_limit(db):
    enqueue(db, "E-101", "TRIP", at=T0)
    enqueue(db, "E-201", "TRIP", at=T0 + timedelta(seconds=30))
    enqueue(db, "E-201", "CLOSE", at=T0 + timedelta(seconds=40))  # supersedes the TRIP
    enqueue(db, "E-102", "TRIP", at=T0 + timedelta(seconds=50))
    with db.read() as conn:
        times = cmds.recent_command_times(conn, ["TRIP"], T0 + timedelta(seconds=10))
    assert times == [T0 + timedelta(seconds=50)]


def test_claimable_meters_lists_every_meter_a_claim_could_take(db):
    """The executor's look before claiming: a meter with a claimable command is always
    listed (claiming finds nothing the look missed); finished and future ones are not."""
    later = enqueue(db, "E-101", "TRIP", not_before=T0 + timedelta(hours=1))
    due = enqueue(db, "E-201", "TRIP")
    done = enqueue(db, "E-301", "TRIP")
    (held,) = claim(db, meters=["E-301"])
    with db.begin() as conn:
        cmds.mark_confirmed(conn, held.id, owner="x")
        assert cmds.claimable_meters(conn, now=T0) == {"E-201"}
    (taken,) = claim(db, meters=["E-201"])  # CLAIMED: its lease may expire, listed
    with db.begin() as conn:
        assert cmds.claimable_meters(conn, now=T0) == {"E-201"}
        assert cmds.claimable_meters(conn, now=T0, in_hand=[taken.id]) == set()
        hour = T0 + timedelta(hours=1)
        assert cmds.claimable_meters(conn, now=hour, in_hand=[taken.id]) == {"E-101"}
    assert (later.id, due.id, done.id) == (later.id, taken.id, held.id)
    # Whatever a claim takes, the look listed its meter first.
    for at in (T0, T0 + timedelta(minutes=1), T0 + timedelta(hours=2)):
        with db.begin() as conn:
            listed = cmds.claimable_meters(conn, now=at)
        assert {c.meter_id for c in claim(db, at=at)} <= listed
