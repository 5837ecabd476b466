"""Payer bindings through the door (SQLite and PostgreSQL): bind, see, revoke, bind again;
bad input refused naming the field, changing nothing; and the room's tenant reads."""

from __future__ import annotations

import pytest

from openprepay.core.db import Database
from openprepay.core.errors import RequestError
from openprepay.core.operations import Operations
from openprepay.core.prepay import accounts as acc

OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"


def test_bind_list_revoke_and_bind_again(ops: Operations) -> None:
    first = ops.bind_payer("wechat", OPENID, "A-101", actor="web:tenant")
    assert first.active and first.room == "A-101"
    assert ops.payer_bound("wechat", OPENID, "A-101")
    assert not ops.payer_bound("wechat", OPENID, "A-102")
    again = ops.bind_payer("wechat", OPENID, "A-101", actor="web:tenant")
    assert again.id == first.id  # seen again: one row
    assert [b.id for b in ops.payer_bindings()] == [first.id]
    revoked = ops.revoke_payer(first.id, actor="cli:alice")
    assert not revoked.active and revoked.revoked_by == "cli:alice"
    assert not ops.payer_bound("wechat", OPENID, "A-101")
    assert ops.payer_bindings() == []
    assert [b.id for b in ops.payer_bindings(include_revoked=True)] == [first.id]
    with pytest.raises(RequestError) as twice:
        ops.revoke_payer(first.id, actor="cli:alice")
    assert twice.value.field == "binding"
    # The tenant opens the room's signed link again: bound again.
    assert ops.bind_payer("wechat", OPENID, "A-101", actor="web:tenant").active
    assert ops.payer_rooms("wechat", OPENID) == ["A-101"]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("wechat", "x", "A-101"), "payer_id"),
        (("wechat", OPENID + "/../", "A-101"), "payer_id"),
        (("wechat", OPENID, "Z-999"), "room"),
        (("we chat", OPENID, "A-101"), "channel"),
    ],
)
def test_bad_bindings_are_refused_naming_the_field(
    ops: Operations, args: tuple[str, str, str], field: str
) -> None:
    with pytest.raises(RequestError) as refused:
        ops.bind_payer(*args, actor="web:tenant")
    assert refused.value.field == field
    assert ops.payer_bindings(include_revoked=True) == []


def test_unknown_binding_cannot_be_revoked(ops: Operations) -> None:
    with pytest.raises(RequestError) as refused:
        ops.revoke_payer(42, actor="cli:alice")
    assert refused.value.field == "binding"


def test_the_room_view_shows_the_rooms_own_account(ops: Operations) -> None:
    assert ops.room_account("A-101") == "A-101"
    assert ops.room_account("A-102") is None
    ops.topup("A-101", 5000, "counter-1", actor="test")
    view = ops.room_view("A-101", "A-101")
    assert view.snapshot.balance_fen == 5000
    assert [r.amount_fen for r in view.recharges] == [5000]
    assert {p.kind for p in view.prices} == {"electric", "water"}
    assert view.open_bills == ()
    assert view.month_kwh >= view.snapshot.energy_today_kwh


def test_a_rooms_account_is_found_by_its_meters_when_it_names_no_room(
    ops: Operations, db: Database
) -> None:
    with db.begin() as conn:
        acc.create_account(
            conn,
            acc.AccountSpec(
                "B-1", "tenant B-1", (acc.resolve_meter(ops.site, ops.models, "E-102"),)
            ),
        )
    assert ops.room_account("A-102") == "B-1"
    assert ops.room_account("A-101") == "A-101"
