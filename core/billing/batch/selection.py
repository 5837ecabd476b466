"""Selections: which accounts or meters a batch job works on — the whole site, buildings,
floors, rooms, listed accounts or meters, or the rows of a CSV file (each row may carry its
own parameter, e.g. an amount) — resolved into one item per target."""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ...config.reader import ID_PATTERN
from ...config.site import Site
from ...db import schema as t
from ...db.among import among
from ...ledger import RequestError
from ...model import DeviceModel, MeterKind
from ...prepay.binding import TariffBinding
from .model import ACCOUNT_ACTIONS, CONTROL_ACTIONS, Action, Item
from .params import check_params, fen


def read_csv_rows(text: str, source: str = "CSV") -> list[dict[str, str]]:
    """Rows of a selection CSV: a header with one of `account`, `meter`, `room` and
    optional parameter columns. Errors name the line."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    if not reader.fieldnames:
        raise RequestError("csv", f"{source}: empty file (expected a header row)")
    header = [h.strip() for h in reader.fieldnames]
    keys = [k for k in ("account", "meter", "room") if k in header]
    if len(keys) != 1:
        raise RequestError(
            "csv", f"{source}: the header needs exactly one of account, meter, room; got {header}"
        )
    allowed = {keys[0], "amount", "tariff", "alarm1", "alarm2", "channel"}
    unknown = [h for h in header if h not in allowed]
    if unknown:
        raise RequestError(
            "csv",
            f"{source}: unknown column {unknown[0]!r} (columns: {', '.join(sorted(allowed))})",
        )
    rows = []
    for n, raw in enumerate(reader, start=2):
        row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
        if not any(row.values()):
            continue
        if not ID_PATTERN.match(row.get(keys[0], "")):
            raise RequestError(
                "csv", f"{source}:line {n}: {keys[0]}: expected an id, got {row.get(keys[0])!r}"
            )
        row["_line"] = str(n)
        row["_key"] = keys[0]
        rows.append(row)
    if not rows:
        raise RequestError("csv", f"{source}: no rows")
    return rows


class Selector:
    """Resolves a job's selection into its items (one per target) against the site and
    the accounts now; errors name what is wrong, nothing is written."""

    def __init__(
        self, site: Site, models: Mapping[str, DeviceModel], binding: TariffBinding
    ) -> None:
        self.site = site
        self.models = models
        self.binding = binding

    def resolve(
        self,
        conn: Connection,
        action: Action,
        params: Mapping[str, Any],
        selection: Mapping[str, Any],
    ) -> list[Item]:
        """The items of `selection` now (errors name what is wrong; nothing is written)."""
        how = _selector_of(selection)
        rooms = self._rooms(how, selection)
        open_accounts = {
            r.id: r.room
            for r in conn.execute(
                sa.select(t.account.c.id, t.account.c.room).where(t.account.c.state == "OPEN")
            ).all()
        }
        all_accounts = {
            r[0]: r[1] for r in conn.execute(sa.select(t.account.c.id, t.account.c.state)).all()
        }
        if action in ACCOUNT_ACTIONS:
            items = self._account_items(action, how, selection, rooms, open_accounts, all_accounts)
        else:
            items = self._meter_items(conn, action, params, how, selection, rooms, all_accounts)
        _check_required(action, params, items)
        if not items:
            raise RequestError(
                "selection", "it selects nothing (no open account or suitable meter)"
            )
        return items

    def _rooms(self, how: str, selection: Mapping[str, Any]) -> list[str] | None:
        """The rooms selected by the site, buildings, floors or rooms (None: by another
        selector)."""
        site = self.site
        if how == "site":
            return sorted(site.rooms)
        if how == "buildings":
            for b in selection["buildings"]:
                if b not in site.buildings:
                    raise RequestError(
                        "building",
                        f"unknown building {b!r} (site: {', '.join(sorted(site.buildings))})",
                    )
            return sorted(r.id for r in site.rooms.values() if r.building in selection["buildings"])
        if how == "floors":
            wanted = set()
            for f in selection["floors"]:
                b, _, floor = str(f).partition(":")
                if b not in site.buildings or floor not in site.buildings[b].floors:
                    raise RequestError(
                        "floor", f"unknown floor {f!r} (write BUILDING:FLOOR, e.g. A:3)"
                    )
                wanted.add((b, floor))
            return sorted(r.id for r in site.rooms.values() if (r.building, r.floor) in wanted)
        if how == "rooms":
            for room in selection["rooms"]:
                if room not in site.rooms:
                    raise RequestError("room", f"unknown room {room!r}")
            return sorted(selection["rooms"])
        return None

    # -- accounts ------------------------------------------------------------------------
    def _account_items(
        self,
        action: Action,
        how: str,
        selection: Mapping[str, Any],
        rooms: list[str] | None,
        open_accounts: Mapping[str, str | None],
        all_accounts: Mapping[str, str],
    ) -> list[Item]:
        if rooms is not None:
            chosen_rooms = set(rooms)
            return [Item(a) for a, room in sorted(open_accounts.items()) if room in chosen_rooms]
        if how == "accounts":
            for a in selection["accounts"]:
                if a not in all_accounts:
                    raise RequestError("account", f"unknown account {a!r}")
            return [Item(a) for a in selection["accounts"]]
        if how == "meters":
            raise RequestError(
                "selection",
                f"{action.value} works on accounts: select accounts, rooms, floors...",
            )
        by_room: dict[str | None, str] = {}
        for a, room in open_accounts.items():
            by_room.setdefault(room, a)
        items = []
        for row in selection.get("rows") or []:
            key, where = row["_key"], _where(selection, row)
            value = row[key]
            if key == "account":
                if value not in all_accounts:
                    raise RequestError("csv", f"{where}: account: unknown account {value!r}")
                target = value
            elif key == "room":
                if value not in self.site.rooms:
                    raise RequestError("csv", f"{where}: room: unknown room {value!r}")
                if value not in by_room:
                    raise RequestError("csv", f"{where}: room: room {value!r} has no open account")
                target = by_room[value]
            else:
                raise RequestError(
                    "csv",
                    f"{where}: {action.value} works on accounts; use an account or room column",
                )
            items.append(Item(target, self._row_params(row, where)))
        return items

    def _row_params(self, row: Mapping[str, str], where: str) -> dict[str, Any]:
        """A CSV row's own parameters (amount, tariff, alarm levels, channel), checked."""
        item_params: dict[str, Any] = {}
        try:
            if row.get("amount"):
                item_params["amount_fen"] = fen(row["amount"], "amount", positive=True)
            if row.get("tariff"):
                item_params.update(
                    check_params(self.binding, Action.SET_TARIFF, {"tariff": row["tariff"]})
                )
            for name in ("alarm1", "alarm2"):
                if row.get(name):
                    item_params[name] = fen(row[name], name)
            if row.get("channel"):
                item_params["channel"] = row["channel"]
        except RequestError as exc:
            raise RequestError("csv", f"{where}: {exc}") from None
        return item_params

    # -- meters --------------------------------------------------------------------------
    def _meter_items(
        self,
        conn: Connection,
        action: Action,
        params: Mapping[str, Any],
        how: str,
        selection: Mapping[str, Any],
        rooms: list[str] | None,
        all_accounts: Mapping[str, str],
    ) -> list[Item]:
        device_ok = self._meter_filter(action, params, params.get("kind"))
        devices = sorted(self.site.devices.values(), key=lambda d: d.id)
        if rooms is not None:
            chosen_rooms = set(rooms)
            return [
                Item(d.id) for d in devices if d.room in chosen_rooms and device_ok(d.id) is None
            ]
        if how == "meters":
            for m in selection["meters"]:
                why = device_ok(m, explicit=True)
                if why:
                    raise RequestError("meter", why)
            return [Item(m) for m in selection["meters"]]
        if how == "accounts":
            attached = conn.execute(
                sa.select(t.account_meter.c.account_id, t.account_meter.c.meter_id).where(
                    among(conn, t.account_meter.c.account_id, selection["accounts"]),
                    t.account_meter.c.detached_at.is_(None),
                )
            ).all()
            for a in selection["accounts"]:
                if a not in all_accounts:
                    raise RequestError("account", f"unknown account {a!r}")
            return [
                Item(m)
                for _, m in sorted(attached, key=lambda r: (r[0], r[1]))
                if device_ok(m) is None
            ]
        items = []
        for row in selection.get("rows") or []:
            key, where = row["_key"], _where(selection, row)
            value = row[key]
            if key == "meter":
                why = device_ok(value, explicit=True)
                if why:
                    raise RequestError("csv", f"{where}: meter: {why}")
                items.append(Item(value))
            elif key == "room":
                if value not in self.site.rooms:
                    raise RequestError("csv", f"{where}: room: unknown room {value!r}")
                items.extend(
                    Item(d.id) for d in devices if d.room == value and device_ok(d.id) is None
                )
            else:
                raise RequestError(
                    "csv",
                    f"{where}: {action.value} works on meters; use a meter or room column",
                )
        return items

    def _meter_filter(
        self, action: Action, params: Mapping[str, Any], kind: str | None
    ) -> Callable[..., str | None]:
        """check(meter, explicit=False) → why `meter` is not a target of `action` (None:
        it is). A meter listed by name (`explicit`) is not filtered by `kind`."""

        def check(meter: str, explicit: bool = False) -> str | None:
            device = self.site.devices.get(meter)
            if device is None:
                return f"unknown meter {meter!r}"
            model = self.models.get(device.model)
            if model is None:
                return f"meter {meter!r}: model {device.model} is not installed"
            if model.kind not in (MeterKind.ELECTRIC, MeterKind.WATER):
                return f"meter {meter!r} is not an electric or water meter"
            if kind is not None and model.kind.value != kind and not explicit:
                return f"meter {meter!r} is not {kind}"
            if action in CONTROL_ACTIONS and model.supply is None:
                return f"meter {meter!r} ({model.name}) has no relay or valve"
            if action in (Action.SET_PRICE, Action.SET_PARAMS):
                try:
                    model.command(params["command"])
                except KeyError as exc:
                    return str(exc.args[0])
            return None

        return check


SELECTORS = ("site", "buildings", "floors", "rooms", "accounts", "meters", "rows")


def _selector_of(selection: Mapping[str, Any]) -> str:
    """The one selector `selection` uses (CSV rows come with their `source` name)."""
    unknown = set(selection) - {*SELECTORS, "source"}
    if unknown:
        raise RequestError("selection", f"unknown selector {sorted(unknown)[0]!r}")
    chosen = [k for k in SELECTORS if selection.get(k)]
    if len(chosen) != 1:
        raise RequestError(
            "selection",
            "choose exactly one of: the site, buildings, floors, rooms, accounts, meters "
            "or a CSV file",
        )
    return chosen[0]


def _where(selection: Mapping[str, Any], row: Mapping[str, str]) -> str:
    """Where a CSV row came from, for its errors: `topups.csv:line 3`."""
    return f"{selection.get('source', 'CSV')}:line {row['_line']}"


def _check_required(action: Action, params: Mapping[str, Any], items: Sequence[Item]) -> None:
    """A parameter the job leaves out must come with every item (a CSV column)."""
    if action is Action.TOPUP and params.get("amount_fen") is None:
        missing = [i.target for i in items if "amount_fen" not in i.params]
        if missing:
            raise RequestError(
                "amount", f"required (or an amount column in the CSV); {missing[0]} has none"
            )
    if action is Action.SET_THRESHOLDS:
        for name in ("alarm1", "alarm2"):
            if params.get(name) is None:
                missing = [i.target for i in items if name not in i.params]
                if missing:
                    raise RequestError(
                        name,
                        f"required (or an {name} column in the CSV); {missing[0]} has none",
                    )
    if action is Action.SET_TARIFF and params.get("tariff") is None:
        missing = [i.target for i in items if "tariff" not in i.params]
        if missing:
            raise RequestError(
                "tariff", f"required (or a tariff column in the CSV); {missing[0]} has none"
            )
