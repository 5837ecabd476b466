"""Payer bindings through the door: the tenant page binds a payer (WeChat openid) to the
room whose signed link it came through; an operator lists and revokes them
(`openprepay payer list|revoke`). Reads (is this payer bound to this room?) are not
audited; the tenant page asks on every request of a session built on a binding."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.engine import Connection

from ..errors import RequestError
from ..payments import bindings as pb
from ..prepay.effects import Effects
from .door import Door


class PayerBindingDoor(Door):
    def bind_payer(self, channel: str, payer_id: str, room: str, *, actor: str) -> pb.PayerBinding:
        """Bind `payer_id` at `channel` to `room` (again, after a revocation), or mark the
        binding seen. The caller has checked the room's signed link."""
        pb.check_payer_id(payer_id)
        if room not in self.site.rooms:
            raise RequestError("room", f"unknown room {room!r} (see the site file's [rooms])")
        if not isinstance(channel, str) or not channel.isidentifier():
            raise RequestError(
                "channel", f"expected a channel name such as wechat, got {channel!r}"
            )

        def work(conn: Connection, effects: Effects, now: datetime) -> pb.PayerBinding:
            binding, _ = pb.upsert_binding(conn, channel, payer_id, room, actor, now)
            return binding

        return self._call(
            "bind_payer",
            room,
            actor,
            work,
            lambda b: f"payer binding #{b.id}: {channel} payer {_short(payer_id)} → room {room}",
        )

    def revoke_payer(self, binding_id: int, *, actor: str) -> pb.PayerBinding:
        """Revoke a binding: the sessions built on it end at their next request."""
        if isinstance(binding_id, bool) or not isinstance(binding_id, int) or binding_id < 1:
            raise RequestError("binding", f"expected a binding number, got {binding_id!r}")

        def work(conn: Connection, effects: Effects, now: datetime) -> pb.PayerBinding:
            return pb.revoke(conn, binding_id, actor, now)

        return self._call(
            "revoke_payer",
            str(binding_id),
            actor,
            work,
            lambda b: f"payer binding #{b.id} revoked (room {b.room}, {b.channel})",
        )

    def payer_bindings(
        self, *, room: str | None = None, include_revoked: bool = False
    ) -> list[pb.PayerBinding]:
        with self.db.read() as conn:
            return pb.list_bindings(conn, room=room, include_revoked=include_revoked)

    def payer_bound(self, channel: str, payer_id: str, room: str) -> bool:
        with self.db.read() as conn:
            return pb.active_binding(conn, channel, payer_id, room)

    def payer_rooms(self, channel: str, payer_id: str) -> list[str]:
        with self.db.read() as conn:
            return pb.rooms_of(conn, channel, payer_id)


def _short(payer_id: str) -> str:
    """Audit text shows enough of an openid to tell bindings apart, not the whole id."""
    return payer_id[:6] + "…" if len(payer_id) > 8 else payer_id
