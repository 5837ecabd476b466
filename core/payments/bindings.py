"""Payer bindings: a payer at a provider (WeChat's openid, from OAuth `snsapi_base`) bound
to a room by the tenant page, after the payer opened that room's signed QR link.

An openid alone is never authorisation: a binding exists only because its holder came
through a valid signed link, and the tenant page checks it on every request (a revoked
binding ends the sessions built on it). Rows are revoked, never deleted (the audit trail
keeps who bound and who revoked). The door (`core.operations.payer_bindings`) is the only
writer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..db import schema as t
from ..errors import RequestError

#: WeChat openids are 28 characters of [0-9A-Za-z_-]; other providers' payer ids similar.
_PAYER_ID = re.compile(r"^[0-9A-Za-z_-]{6,128}$")


@dataclass(frozen=True, slots=True)
class PayerBinding:
    id: int
    channel: str
    payer_id: str
    room: str
    created_at: datetime
    created_by: str
    last_seen_at: datetime
    revoked_at: datetime | None
    revoked_by: str | None

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def check_payer_id(payer_id: str) -> str:
    if not isinstance(payer_id, str) or not _PAYER_ID.match(payer_id):
        raise RequestError(
            "payer_id", f"expected 6..128 letters, digits, '_' or '-', got {payer_id!r}"
        )
    return payer_id


def _binding(row: object) -> PayerBinding:
    return PayerBinding(**{c: getattr(row, c) for c in PayerBinding.__slots__})  # type: ignore[attr-defined]


def find_binding(conn: Connection, channel: str, payer_id: str, room: str) -> PayerBinding | None:
    b = t.payer_binding.c
    row = conn.execute(
        sa.select(t.payer_binding).where(
            b.channel == channel, b.payer_id == payer_id, b.room == room
        )
    ).first()
    return _binding(row) if row is not None else None


def get_binding(conn: Connection, binding_id: int) -> PayerBinding:
    row = conn.execute(sa.select(t.payer_binding).where(t.payer_binding.c.id == binding_id)).first()
    if row is None:
        raise RequestError(
            "binding", f"no payer binding #{binding_id} (see `openprepay payer list`)"
        )
    return _binding(row)


def active_binding(conn: Connection, channel: str, payer_id: str, room: str) -> bool:
    """True while `payer_id` is bound to `room` and not revoked (checked on every request
    of a session built on the binding)."""
    found = find_binding(conn, channel, payer_id, room)
    return found is not None and found.active


def list_bindings(
    conn: Connection,
    *,
    room: str | None = None,
    payer_id: str | None = None,
    include_revoked: bool = False,
) -> list[PayerBinding]:
    b = t.payer_binding.c
    q = sa.select(t.payer_binding).order_by(b.room, b.id)
    if room is not None:
        q = q.where(b.room == room)
    if payer_id is not None:
        q = q.where(b.payer_id == payer_id)
    if not include_revoked:
        q = q.where(b.revoked_at.is_(None))
    return [_binding(r) for r in conn.execute(q).all()]


def rooms_of(conn: Connection, channel: str, payer_id: str) -> list[str]:
    """The rooms an (active) payer is bound to, most recently seen first."""
    b = t.payer_binding.c
    return list(
        conn.execute(
            sa.select(b.room)
            .where(b.channel == channel, b.payer_id == payer_id, b.revoked_at.is_(None))
            .order_by(b.last_seen_at.desc(), b.id.desc())
        ).scalars()
    )


def upsert_binding(
    conn: Connection, channel: str, payer_id: str, room: str, actor: str, now: datetime
) -> tuple[PayerBinding, bool]:
    """Bind (or bind again after a revocation, or just mark seen). → (binding, created)."""
    found = find_binding(conn, channel, payer_id, room)
    table = t.payer_binding
    if found is None:
        conn.execute(
            table.insert().values(
                channel=channel,
                payer_id=payer_id,
                room=room,
                created_at=now,
                created_by=actor,
                last_seen_at=now,
            )
        )
        created = True
    else:
        values: dict[str, object] = {"last_seen_at": now}
        if not found.active:
            values.update(revoked_at=None, revoked_by=None, created_at=now, created_by=actor)
        conn.execute(table.update().where(table.c.id == found.id).values(**values))
        created = not found.active
    again = find_binding(conn, channel, payer_id, room)
    assert again is not None
    return again, created


def revoke(conn: Connection, binding_id: int, actor: str, now: datetime) -> PayerBinding:
    found = get_binding(conn, binding_id)
    if not found.active:
        raise RequestError("binding", f"payer binding #{binding_id} is already revoked")
    table = t.payer_binding
    conn.execute(
        table.update().where(table.c.id == binding_id).values(revoked_at=now, revoked_by=actor)
    )
    return get_binding(conn, binding_id)
