"""Batch items as a clerk reads them: who each target is (the account's name and room, the
meter's room and account), the item's outcome — a WAITING item resolved from its device
commands now (`outcomes.py`), so a view is right before the service has recorded it —
and the counts of an occurrence: succeeded, failed, pending."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ...config.site import Site
from ...db import schema as t
from ...db.among import among
from ...ledger import format_fen
from .outcomes import load_commands, resolve


@dataclass(frozen=True, slots=True)
class ItemView:
    seq: int
    #: An account or meter id.
    target: str
    #: Who the target is: `Zhang San, room A-101` / `room A-101, account A-101 Zhang San`.
    who: str
    #: PENDING, RUNNING, WAITING (its device commands not finished), DONE or FAILED.
    state: str
    result: str
    command_ids: tuple[int, ...]
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Counts:
    total: int
    succeeded: int
    failed: int
    #: Not carried out yet, or waiting for their device commands.
    pending: int


def item_views(conn: Connection, site: Site, rows: Sequence[Any]) -> list[ItemView]:
    """`batch_item` rows as views, WAITING ones resolved from their commands now."""
    tz = site.info.tz
    waiting = [r for r in rows if r.state == "WAITING"]
    commands = load_commands(conn, (c for r in waiting for c in (r.command_ids or ())))
    who = _who(conn, site, [r.target for r in rows])
    out = []
    for r in rows:
        ids = tuple(int(c) for c in (r.command_ids or ()))
        state, result = r.state, r.result
        if state == "WAITING":
            outcome = resolve(commands, ids, tz)
            result = outcome.text
            if outcome.final:
                state = "DONE" if outcome.ok else "FAILED"
        out.append(
            ItemView(int(r.seq), r.target, who.get(r.target, ""), state, result, ids, r.updated_at)
        )
    return out


def counts(views: Sequence[ItemView]) -> Counts:
    succeeded = sum(1 for v in views if v.state == "DONE")
    failed = sum(1 for v in views if v.state == "FAILED")
    return Counts(len(views), succeeded, failed, len(views) - succeeded - failed)


def _who(conn: Connection, site: Site, targets: Sequence[str]) -> dict[str, str]:
    """Who each target is, in words a clerk knows (names and rooms, not only ids)."""
    meters = [m for m in targets if m in site.devices]
    accounts = [a for a in targets if a not in site.devices]
    am = t.account_meter
    holder = dict(
        conn.execute(
            sa.select(am.c.meter_id, am.c.account_id).where(
                among(conn, am.c.meter_id, meters), am.c.detached_at.is_(None)
            )
        ).all()
    )
    names = {
        r.id: (r.name, r.room)
        for r in conn.execute(
            sa.select(t.account.c.id, t.account.c.name, t.account.c.room).where(
                among(conn, t.account.c.id, {*accounts, *holder.values()})
            )
        ).all()
    }
    out = {}
    for a in accounts:
        name, room = names.get(a, ("", None))
        out[a] = ", ".join(x for x in (name, f"room {room}" if room else "") if x)
    for m in meters:
        device = site.devices[m]
        where = (
            f"room {device.room}"
            if device.room
            else f"building {device.building}"
            if device.building
            else "site"
        )
        account = holder.get(m)
        if account is not None:
            where += f", account {account} {names.get(account, ('', None))[0]}".rstrip()
        out[m] = where
    return out


def local_time(at: datetime | None, tz: tzinfo) -> str:
    """A stored UTC time as the site's wall clock, for people."""
    return at.astimezone(tz).strftime("%Y-%m-%d %H:%M") if at is not None else "-"


def describe_params(action: str, params: Mapping[str, Any]) -> str:
    """A job's parameters in words: `top-up 50.00 via cash`, `operator override`..."""
    p = params
    if action == "topup":
        amount = p.get("amount_fen")
        how = format_fen(amount) if amount is not None else "the amount of each CSV row"
        return f"top-up {how} via {p.get('channel') or 'cash'}"
    if action == "set_tariff":
        return f"tariff {p.get('tariff') or 'of each CSV row'}"
    if action == "set_thresholds":
        return ", ".join(
            f"{n} {format_fen(p[n]) if p.get(n) is not None else 'of each CSV row'}"
            for n in ("alarm1", "alarm2")
        )
    if action in ("disconnect", "reconnect"):
        how = "operator override" if p.get("override") else "through the policy gate"
        if action == "reconnect":
            how = "restore"
        return how + (f", {p['kind']} meters" if p.get("kind") else "")
    values = ", ".join(f"{k}={v}" for k, v in (p.get("values") or {}).items())
    return f"{p.get('command')} {values}".strip()


def describe_selection(selection: Mapping[str, Any]) -> str:
    """A job's selection in words: `building A`, `CSV topups.csv (12 rows)`..."""
    if selection.get("site"):
        return "the whole site"
    if selection.get("rows"):
        rows = selection["rows"]
        return f"CSV {selection.get('source', 'file')} ({len(rows)} row{'s' * (len(rows) != 1)})"
    for key, word in (
        ("buildings", "building"),
        ("floors", "floor"),
        ("rooms", "room"),
        ("accounts", "account"),
        ("meters", "meter"),
    ):
        if selection.get(key):
            values = list(selection[key])
            return f"{word}{'s' * (len(values) != 1)} {', '.join(map(str, values))}"
    return "nothing"
