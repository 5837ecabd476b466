"""Batch and scheduled operations over many accounts or meters (AcrelCloud §4.6).

A **job** is an action — `set_tariff`, `set_thresholds`, `topup` (accounts); `disconnect`,
`reconnect`, `set_price`, `set_params` (meters) — over a **selection**: the whole site,
buildings, floors, rooms, listed accounts or meters, or the rows of a CSV file (each row
may carry its own parameter, e.g. an amount). It runs now, at a time, or every day, week
or month at that time. It is a database row (`batch_job`), so it survives restarts; each
occurrence resolves its targets into **one item per target** (`batch_item`) with its own
result.

Running: the service (or `openprepay batch run` on the command line) **claims** a due job
with a lease, like the durable command queue (`SELECT … FOR UPDATE SKIP LOCKED` on
PostgreSQL, the write lock on SQLite), so several instances never run one twice; an
instance that dies leaves a lease that expires, and the next one resumes with the items not
done yet. Items that may have been carried out just before the crash are never done twice:
top-ups carry the reference `batch-<job>-<run>-<seq>` (a replay changes nothing), meter
parameters the command key `batch:<job>:<run>:<seq>`, and a supply item found RUNNING is
looked up in the command table by its tag before anything is sent again.

Everything goes through `core.operations.Operations` — the policy gate (protected supply,
quiet hours, notice, **mass-disconnect rate limit**), fee control, the audit trail and the
durable command queue — exactly as an operator's single action would. Meter parameters
(`set_price`: the meter's 尖/峰/平/谷 prices, `set_params`: any command of the model such
as `SET_ALARMS`) are `SET_PARAMS` commands in the durable queue, checked against the
model's commands first.

`plan()` is the dry run: every item with what would happen or why it would fail, nothing
written. Progress is published on the event bus as samples of the pseudo-model
`openprepay.batch` (source `batch-<job>`, points total/done/failed/state), which the OPC UA
server exposes under Diagnostics and the historian stores.
"""

from __future__ import annotations

import csv
import datetime as dt
import enum
import io
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..config.reader import ID_PATTERN, NUMBER_LIMIT
from ..config.site import Site
from ..db import Database
from ..db import schema as t
from ..events import utcnow
from ..ledger import RequestError, format_fen, parse_yuan
from ..model import DeviceModel, MeterKind, PointRole, PointSpec, Sample, ValueType
from ..numbers import NumberRefused, read_decimal
from ..prepay import commands as cmds
from ..rating.tariffs import MAX_PRICE

log = logging.getLogger("openprepay.batch")


class Action(enum.StrEnum):
    SET_TARIFF = "set_tariff"
    SET_THRESHOLDS = "set_thresholds"
    TOPUP = "topup"
    DISCONNECT = "disconnect"
    RECONNECT = "reconnect"
    SET_PRICE = "set_price"
    SET_PARAMS = "set_params"


ACCOUNT_ACTIONS = frozenset({Action.SET_TARIFF, Action.SET_THRESHOLDS, Action.TOPUP})
CONTROL_ACTIONS = frozenset({Action.DISCONNECT, Action.RECONNECT})


class JobState(enum.StrEnum):
    SCHEDULED = "SCHEDULED"
    RUNNING = "RUNNING"
    DONE = "DONE"
    CANCELLED = "CANCELLED"


#: The `state` point of the progress samples.
STATE_CODES = {
    JobState.SCHEDULED: 0,
    JobState.RUNNING: 1,
    JobState.DONE: 2,
    JobState.CANCELLED: 3,
}
EVERY = ("day", "week", "month")


def _diag(name: str, description: str) -> PointSpec:
    return PointSpec(name, "", description, PointRole.DIAGNOSTIC, ValueType.INT)


#: Progress of a batch job, published as samples with source `batch-<job id>`.
BATCH_MODEL = DeviceModel(
    name="openprepay.batch",
    vendor="OpenPrepay",
    product="Batch job progress",
    kind=MeterKind.HEALTH,
    description="Progress of one batch job (its current occurrence)",
    points=(
        _diag("total", "Items of the current occurrence"),
        _diag("done", "Items carried out"),
        _diag("failed", "Items that failed (each with its own result)"),
        _diag("state", "0 scheduled, 1 running, 2 done, 3 cancelled"),
        _diag("run_no", "Occurrence number (recurring jobs)"),
    ),
    plugin="core",
)


def progress_sample(job: Any, at: dt.datetime) -> Sample:
    return Sample(
        f"batch-{job.id}",
        BATCH_MODEL,
        at,
        {
            "total": int(job.total),
            "done": int(job.done),
            "failed": int(job.failed),
            "state": STATE_CODES[JobState(job.state)],
            "run_no": int(job.run_no),
        },
    )


@dataclass(frozen=True, slots=True)
class Item:
    target: str
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PlanLine:
    target: str
    ok: bool
    text: str


@dataclass(frozen=True, slots=True)
class JobView:
    id: int
    action: str
    params: Mapping[str, Any]
    selection: Mapping[str, Any]
    state: str
    reason: str
    created_by: str
    every: str | None
    first_run_at: dt.datetime
    next_run_at: dt.datetime | None
    run_no: int
    total: int
    done: int
    failed: int
    last_error: str | None
    started_at: dt.datetime | None
    finished_at: dt.datetime | None


def _job_view(row: Any) -> JobView:
    return JobView(
        row.id,
        row.action,
        dict(row.params),
        dict(row.selection),
        row.state,
        row.reason,
        row.created_by,
        row.every,
        row.first_run_at,
        row.next_run_at,
        int(row.run_no),
        int(row.total),
        int(row.done),
        int(row.failed),
        row.last_error,
        row.started_at,
        row.finished_at,
    )


# -- selections --------------------------------------------------------------------------


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


class Batches:
    """Creating, planning, claiming and running batch jobs of one site."""

    def __init__(
        self,
        site: Site,
        models: Mapping[str, DeviceModel],
        db: Database,
        operations: Any,
        *,
        owner: str = "batch",
        lease_s: float = 60.0,
        clock: Callable[[], dt.datetime] = utcnow,
        publish: Callable[[object], None] | None = None,
    ) -> None:
        self.site = site
        self.models = models
        self.db = db
        self.ops = operations
        self.owner = owner
        self.lease_s = lease_s
        self.clock = clock
        self.publish = publish or (lambda item: None)

    # -- checking -----------------------------------------------------------------------
    def check_params(self, action: Action, params: Mapping[str, Any]) -> dict[str, Any]:
        """Validated parameters of `action` (amounts in fen); errors name the field."""
        p = dict(params)
        out: dict[str, Any] = {}
        if action is Action.SET_TARIFF:
            tariff = p.pop("tariff", None)
            self.ops.binding.check_known(tariff)
            out["tariff"] = tariff
        elif action is Action.SET_THRESHOLDS:
            for name in ("alarm1", "alarm2"):
                value = p.pop(name, None)
                out[name] = None if value is None else _fen(value, name)
        elif action is Action.TOPUP:
            value = p.pop("amount", None)
            out["amount_fen"] = None if value is None else _fen(value, "amount", positive=True)
            out["channel"] = p.pop("channel", "cash")
        elif action in CONTROL_ACTIONS:
            out["override"] = bool(p.pop("override", False))
            kind = p.pop("kind", None)
            if kind not in (None, "electric", "water"):
                raise RequestError("kind", f"expected electric or water, got {kind!r}")
            out["kind"] = kind
        elif action is Action.SET_PRICE:
            prices = {}
            for rate in ("sharp", "peak", "flat", "valley"):
                value = p.pop(rate, None)
                if value is None:
                    raise RequestError(rate, "required: the meter holds all four prices")
                prices[rate] = _price(value, rate)
            out["command"] = "SET_PRICES"
            out["values"] = prices
        elif action is Action.SET_PARAMS:
            command = p.pop("command", None)
            if not isinstance(command, str) or not command:
                raise RequestError("command", "required: the model's command, e.g. SET_ALARMS")
            values = p.pop("values", {})
            if not isinstance(values, Mapping) or not values:
                raise RequestError("param", "give the command's parameters (--param NAME=VALUE)")
            out["command"] = command
            out["values"] = {str(k): _number(v, f"param {k}") for k, v in values.items()}
        if p:
            raise RequestError(next(iter(p)), f"not a parameter of {action.value}")
        return out

    def _action(self, action: str) -> Action:
        try:
            return Action(action)
        except ValueError:
            raise RequestError(
                "action", f"expected one of {', '.join(a.value for a in Action)}; got {action!r}"
            ) from None

    def resolve(
        self,
        conn: Connection,
        action: Action,
        params: Mapping[str, Any],
        selection: Mapping[str, Any],
    ) -> list[Item]:
        """The items of `selection` now (errors name what is wrong; nothing is written)."""
        site = self.site
        kinds = set(selection)
        allowed = {"site", "buildings", "floors", "rooms", "accounts", "meters", "rows", "source"}
        if kinds - allowed:
            raise RequestError("selection", f"unknown selector {sorted(kinds - allowed)[0]!r}")
        chosen = [
            k
            for k in ("site", "buildings", "floors", "rooms", "accounts", "meters", "rows")
            if selection.get(k)
        ]
        if len(chosen) != 1:
            raise RequestError(
                "selection",
                "choose exactly one of: the site, buildings, floors, rooms, accounts, meters "
                "or a CSV file",
            )
        how = chosen[0]
        rows: list[dict[str, str]] = list(selection.get("rows") or [])
        rooms: list[str] | None = None
        if how == "site":
            rooms = sorted(site.rooms)
        elif how == "buildings":
            for b in selection["buildings"]:
                if b not in site.buildings:
                    raise RequestError(
                        "building",
                        f"unknown building {b!r} (site: {', '.join(sorted(site.buildings))})",
                    )
            rooms = sorted(
                r.id for r in site.rooms.values() if r.building in selection["buildings"]
            )
        elif how == "floors":
            wanted = set()
            for f in selection["floors"]:
                b, _, floor = str(f).partition(":")
                if b not in site.buildings or floor not in site.buildings[b].floors:
                    raise RequestError(
                        "floor", f"unknown floor {f!r} (write BUILDING:FLOOR, e.g. A:3)"
                    )
                wanted.add((b, floor))
            rooms = sorted(r.id for r in site.rooms.values() if (r.building, r.floor) in wanted)
        elif how == "rooms":
            for room in selection["rooms"]:
                if room not in site.rooms:
                    raise RequestError("room", f"unknown room {room!r}")
            rooms = sorted(selection["rooms"])
        open_accounts = {
            r.id: r.room
            for r in conn.execute(
                sa.select(t.account.c.id, t.account.c.room).where(t.account.c.state == "OPEN")
            ).all()
        }
        all_accounts = {
            r[0]: r[1] for r in conn.execute(sa.select(t.account.c.id, t.account.c.state)).all()
        }
        meter_kind = params.get("kind")
        items: list[Item] = []
        if action in ACCOUNT_ACTIONS:
            if rooms is not None:
                chosen_rooms = set(rooms)
                items = [
                    Item(a) for a, room in sorted(open_accounts.items()) if room in chosen_rooms
                ]
            elif how == "accounts":
                for a in selection["accounts"]:
                    if a not in all_accounts:
                        raise RequestError("account", f"unknown account {a!r}")
                items = [Item(a) for a in selection["accounts"]]
            elif how == "meters":
                raise RequestError(
                    "selection",
                    f"{action.value} works on accounts: select accounts, rooms, floors...",
                )
            else:
                by_room = {}
                for a, room in open_accounts.items():
                    by_room.setdefault(room, a)
                for row in rows:
                    key, where = (
                        row["_key"],
                        f"{selection.get('source', 'CSV')}:line {row['_line']}",
                    )
                    value = row[key]
                    if key == "account":
                        if value not in all_accounts:
                            raise RequestError(
                                "csv", f"{where}: account: unknown account {value!r}"
                            )
                        target = value
                    elif key == "room":
                        if value not in site.rooms:
                            raise RequestError("csv", f"{where}: room: unknown room {value!r}")
                        if value not in by_room:
                            raise RequestError(
                                "csv", f"{where}: room: room {value!r} has no open account"
                            )
                        target = by_room[value]
                    else:
                        raise RequestError(
                            "csv",
                            f"{where}: {action.value} works on accounts; "
                            "use an account or room column",
                        )
                    item_params = {}
                    try:
                        if row.get("amount"):
                            item_params["amount_fen"] = _fen(row["amount"], "amount", positive=True)
                        if row.get("tariff"):
                            item_params.update(
                                self.check_params(Action.SET_TARIFF, {"tariff": row["tariff"]})
                            )
                        for name in ("alarm1", "alarm2"):
                            if row.get(name):
                                item_params[name] = _fen(row[name], name)
                        if row.get("channel"):
                            item_params["channel"] = row["channel"]
                    except RequestError as exc:
                        raise RequestError("csv", f"{where}: {exc}") from None
                    items.append(Item(target, item_params))
        else:
            device_ok = self._meter_filter(action, params, meter_kind)
            if rooms is not None:
                chosen_rooms = set(rooms)
                items = [
                    Item(d.id)
                    for d in sorted(site.devices.values(), key=lambda d: d.id)
                    if d.room in chosen_rooms and device_ok(d.id) is None
                ]
            elif how == "meters":
                for m in selection["meters"]:
                    why = device_ok(m, explicit=True)
                    if why:
                        raise RequestError("meter", why)
                items = [Item(m) for m in selection["meters"]]
            elif how == "accounts":
                attached = conn.execute(
                    sa.select(t.account_meter.c.account_id, t.account_meter.c.meter_id).where(
                        t.account_meter.c.account_id.in_(list(selection["accounts"])),
                        t.account_meter.c.detached_at.is_(None),
                    )
                ).all()
                for a in selection["accounts"]:
                    if a not in all_accounts:
                        raise RequestError("account", f"unknown account {a!r}")
                items = [
                    Item(m)
                    for _, m in sorted(attached, key=lambda r: (r[0], r[1]))
                    if device_ok(m) is None
                ]
            else:
                for row in rows:
                    key, where = (
                        row["_key"],
                        f"{selection.get('source', 'CSV')}:line {row['_line']}",
                    )
                    value = row[key]
                    if key == "meter":
                        why = device_ok(value, explicit=True)
                        if why:
                            raise RequestError("csv", f"{where}: meter: {why}")
                        items.append(Item(value))
                    elif key == "room":
                        if value not in site.rooms:
                            raise RequestError("csv", f"{where}: room: unknown room {value!r}")
                        items.extend(
                            Item(d.id)
                            for d in sorted(site.devices.values(), key=lambda d: d.id)
                            if d.room == value and device_ok(d.id) is None
                        )
                    else:
                        raise RequestError(
                            "csv",
                            f"{where}: {action.value} works on meters; use a meter or room column",
                        )
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
        if not items:
            raise RequestError(
                "selection", "it selects nothing (no open account or suitable meter)"
            )
        return items

    def _meter_filter(
        self, action: Action, params: Mapping[str, Any], kind: str | None
    ) -> Callable[..., str | None]:
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

    # -- creating ------------------------------------------------------------------------
    def create(
        self,
        action: str,
        params: Mapping[str, Any],
        selection: Mapping[str, Any],
        *,
        reason: str,
        actor: str,
        at: dt.datetime | None = None,
        every: str | None = None,
    ) -> JobView:
        """Check everything, then store the job (due now, at `at`, or every day/week/month
        from `at`). A bad job raises `RequestError` naming the field and writes nothing."""
        act = self._action(action)
        checked = self.check_params(act, params)
        if not reason or not reason.strip():
            raise RequestError("reason", "required: say why (every batch is audited)")
        if not actor or not actor.strip():
            raise RequestError("actor", "required (audit)")
        now = self.clock()
        if at is not None:
            if at.tzinfo is None:
                raise RequestError("at", "expected a time with its zone")
            if at < now - dt.timedelta(seconds=1):
                local = at.astimezone(self.site.info.tz)
                raise RequestError("at", f"{local:%Y-%m-%d %H:%M} is in the past")
        if every is not None and every not in EVERY:
            raise RequestError("every", f"expected one of {', '.join(EVERY)}; got {every!r}")
        with self.db.begin() as conn:
            self.resolve(conn, act, checked, selection)
            job_id = conn.execute(
                t.batch_job.insert().returning(t.batch_job.c.id),
                {
                    "action": act.value,
                    "params": checked,
                    "selection": dict(selection),
                    "state": JobState.SCHEDULED.value,
                    "reason": reason.strip()[:500],
                    "created_by": actor[:100],
                    "every": every,
                    "first_run_at": at or now,
                    "next_run_at": at or now,
                    "run_no": 0,
                    "created_at": now,
                    "updated_at": now,
                },
            ).scalar_one()
            row = conn.execute(sa.select(t.batch_job).where(t.batch_job.c.id == job_id)).one()
        self.publish(progress_sample(row, now))
        return _job_view(row)

    def plan(
        self, action: str, params: Mapping[str, Any], selection: Mapping[str, Any]
    ) -> list[PlanLine]:
        """The dry run: every item with what it would do, or why it would fail."""
        act = self._action(action)
        checked = self.check_params(act, params)
        with self.db.read() as conn:
            items = self.resolve(conn, act, checked, selection)
            return [self._preview(conn, act, checked, item) for item in items]

    def _preview(
        self, conn: Connection, action: Action, params: Mapping[str, Any], item: Item
    ) -> PlanLine:
        p = {**params, **item.params}
        a = t.account
        if action in ACCOUNT_ACTIONS:
            row = conn.execute(
                sa.select(a.c.state, a.c.tariff_id).where(a.c.id == item.target)
            ).first()
            if row is None or row.state != "OPEN":
                return PlanLine(item.target, False, f"account {item.target} is not open")
            if action is Action.SET_TARIFF:
                meters = conn.execute(
                    sa.select(t.account_meter.c.meter_id).where(
                        t.account_meter.c.account_id == item.target,
                        t.account_meter.c.detached_at.is_(None),
                    )
                ).scalars()
                try:
                    self.ops.binding.check_account(p["tariff"], list(meters))
                except RequestError as exc:
                    return PlanLine(item.target, False, exc.message)
                return PlanLine(item.target, True, f"tariff {row.tariff_id or '-'} → {p['tariff']}")
            if action is Action.SET_THRESHOLDS:
                return PlanLine(
                    item.target,
                    True,
                    f"alarm1 {format_fen(p['alarm1'])}, alarm2 {format_fen(p['alarm2'])}",
                )
            balance = conn.execute(
                sa.select(t.wallet.c.balance_fen).where(
                    t.wallet.c.account_id == item.target, t.wallet.c.kind == "energy"
                )
            ).scalar()
            hoard = conn.execute(
                sa.select(a.c.hoard_limit_fen).where(a.c.id == item.target)
            ).scalar()
            after = int(balance or 0) + p["amount_fen"]
            if hoard and after > hoard:
                return PlanLine(
                    item.target,
                    False,
                    f"top-up {format_fen(p['amount_fen'])} would exceed the hoarding limit "
                    f"{format_fen(hoard)} (balance {format_fen(int(balance or 0))})",
                )
            return PlanLine(
                item.target,
                True,
                f"top-up {format_fen(p['amount_fen'])} → balance {format_fen(after)}",
            )
        if action in CONTROL_ACTIONS:
            model = self.models[self.site.devices[item.target].model]
            assert model.supply is not None
            cmd = model.supply.cut if action is Action.DISCONNECT else model.supply.restore
            how = "operator override" if p.get("override") else "through the policy gate"
            return PlanLine(item.target, True, f"{cmd} ({how}, rate-limited)")
        values = ", ".join(f"{k}={v}" for k, v in p["values"].items())
        return PlanLine(item.target, True, f"SET_PARAMS {p['command']} {values}")

    # -- reading -------------------------------------------------------------------------
    def get(self, job_id: int) -> JobView:
        with self.db.read() as conn:
            row = conn.execute(sa.select(t.batch_job).where(t.batch_job.c.id == job_id)).first()
        if row is None:
            raise RequestError("job", f"unknown batch job {job_id}")
        return _job_view(row)

    def list(self, *, state: str | None = None, limit: int = 50) -> list[JobView]:
        q = sa.select(t.batch_job).order_by(t.batch_job.c.id.desc()).limit(limit)
        if state is not None:
            q = q.where(t.batch_job.c.state == state)
        with self.db.read() as conn:
            return [_job_view(r) for r in conn.execute(q).all()]

    def items(self, job_id: int, run_no: int | None = None) -> list[Any]:
        i = t.batch_item
        with self.db.read() as conn:
            job = conn.execute(
                sa.select(t.batch_job.c.run_no).where(t.batch_job.c.id == job_id)
            ).scalar()
            if job is None:
                raise RequestError("job", f"unknown batch job {job_id}")
            return list(
                conn.execute(
                    sa.select(i)
                    .where(i.c.job_id == job_id, i.c.run_no == (run_no or job))
                    .order_by(i.c.seq)
                ).all()
            )

    def cancel(self, job_id: int, *, actor: str) -> JobView:
        """Stop a job: no further occurrence; a running one stops after its current item."""
        now = self.clock()
        with self.db.begin() as conn:
            row = conn.execute(
                sa.select(t.batch_job).where(t.batch_job.c.id == job_id).with_for_update()
            ).first()
            if row is None:
                raise RequestError("job", f"unknown batch job {job_id}")
            if row.state in (JobState.DONE.value, JobState.CANCELLED.value) and row.every is None:
                raise RequestError("job", f"batch job {job_id} is already {row.state}")
            conn.execute(
                t.batch_job.update()
                .where(t.batch_job.c.id == job_id)
                .values(
                    state=JobState.CANCELLED.value,
                    next_run_at=None,
                    last_error=f"cancelled by {actor}"[:1000],
                    updated_at=now,
                    finished_at=now,
                )
            )
            row = conn.execute(sa.select(t.batch_job).where(t.batch_job.c.id == job_id)).one()
        self.publish(progress_sample(row, now))
        return _job_view(row)

    # -- claiming and running ------------------------------------------------------------
    def claim(self, *, job_id: int | None = None, limit: int = 1) -> list[int]:
        """Claim due jobs (or `job_id` when it is due) for this instance; a scheduled job
        starts its next occurrence, whose items are resolved and stored now."""
        now = self.clock()
        j = t.batch_job
        due = sa.or_(
            sa.and_(j.c.state == JobState.SCHEDULED.value, j.c.next_run_at <= now),
            sa.and_(j.c.state == JobState.RUNNING.value, j.c.lease_until < now),
        )
        q = sa.select(j).where(due).order_by(j.c.next_run_at, j.c.id).limit(limit)
        if job_id is not None:
            q = q.where(j.c.id == job_id)
        q = q.with_for_update(skip_locked=True)
        claimed = []
        with self.db.begin() as conn:
            for row in conn.execute(q).all():
                values: dict[str, Any] = {
                    "state": JobState.RUNNING.value,
                    "claimed_by": self.owner[:100],
                    "lease_until": now + dt.timedelta(seconds=self.lease_s),
                    "updated_at": now,
                }
                if row.state == JobState.SCHEDULED.value:
                    run_no = int(row.run_no) + 1
                    try:
                        items = self.resolve(conn, Action(row.action), row.params, row.selection)
                        error = None
                    except RequestError as exc:
                        items, error = [], str(exc)
                    if items:
                        conn.execute(
                            t.batch_item.insert(),
                            [
                                {
                                    "job_id": row.id,
                                    "run_no": run_no,
                                    "seq": n,
                                    "target": item.target,
                                    "params": dict(item.params),
                                    "state": "PENDING",
                                    "result": "",
                                    "updated_at": now,
                                }
                                for n, item in enumerate(items, start=1)
                            ],
                        )
                    values.update(
                        run_no=run_no,
                        total=len(items),
                        done=0,
                        failed=0,
                        started_at=now,
                        finished_at=None,
                        last_error=error,
                    )
                conn.execute(j.update().where(j.c.id == row.id).values(**values))
                claimed.append(int(row.id))
        return claimed

    def run(self, job_id: int, *, stop: Callable[[], bool] | None = None) -> JobView:
        """Carry out the claimed job's pending items, one result each, then finish the
        occurrence (DONE, or SCHEDULED again for the next one of a recurring job)."""
        while True:
            with self.db.read() as conn:
                job = conn.execute(sa.select(t.batch_job).where(t.batch_job.c.id == job_id)).one()
                if job.state != JobState.RUNNING.value or job.claimed_by != self.owner[:100]:
                    return _job_view(job)
                pending = conn.execute(
                    sa.select(t.batch_item)
                    .where(
                        t.batch_item.c.job_id == job_id,
                        t.batch_item.c.run_no == job.run_no,
                        t.batch_item.c.state.in_(["PENDING", "RUNNING"]),
                    )
                    .order_by(t.batch_item.c.seq)
                    .limit(50)
                ).all()
            if not pending:
                return self._finish(job_id)
            for item in pending:
                if stop is not None and stop():
                    return self.get(job_id)
                if not self._renew(job_id):
                    return self.get(job_id)
                self._carry_out(job, item)

    def _renew(self, job_id: int) -> bool:
        now = self.clock()
        with self.db.begin() as conn:
            done = conn.execute(
                t.batch_job.update()
                .where(
                    t.batch_job.c.id == job_id,
                    t.batch_job.c.state == JobState.RUNNING.value,
                    t.batch_job.c.claimed_by == self.owner[:100],
                )
                .values(lease_until=now + dt.timedelta(seconds=self.lease_s))
            ).rowcount
        return bool(done)

    def _tag(self, job: Any, item: Any) -> str:
        return f"[batch {job.id} #{job.run_no}.{item.seq}]"

    def _actor(self, job: Any) -> str:
        return f"{job.created_by} (batch {job.id})"[:100]

    def _carry_out(self, job: Any, item: Any) -> None:
        action = Action(job.action)
        params = {**dict(job.params), **dict(item.params)}
        now = self.clock()
        if action in CONTROL_ACTIONS:
            if item.state == "RUNNING":
                found = self._queued_before(job, item)
                if found is not None:
                    self._record(job, item, True, f"{found} (queued before a restart)")
                    return
            with self.db.begin() as conn:
                conn.execute(
                    t.batch_item.update()
                    .where(t.batch_item.c.id == item.id)
                    .values(state="RUNNING", updated_at=now)
                )
        try:
            text = self._execute(job, item, action, params)
            ok = True
        except RequestError as exc:
            ok, text = False, str(exc)
        except Exception as exc:  # one item's bug must not stop the job
            log.exception("batch job %s item %s (%s) failed", job.id, item.seq, item.target)
            ok, text = False, f"error: {exc}"
        self._record(job, item, ok, text)

    def _queued_before(self, job: Any, item: Any) -> str | None:
        mc = t.meter_command
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(mc.c.id, mc.c.kind)
                .where(mc.c.meter_id == item.target, mc.c.reason.like(f"%{self._tag(job, item)}%"))
                .order_by(mc.c.id.desc())
                .limit(1)
            ).first()
        return None if row is None else f"{row.kind} #{row.id} for {item.target}"

    def _execute(self, job: Any, item: Any, action: Action, p: Mapping[str, Any]) -> str:
        ops = self.ops
        actor = self._actor(job)
        target = item.target
        if action is Action.SET_TARIFF:
            account = ops.set_tariff(target, p["tariff"], actor=actor)
            return f"tariff {account.tariff_id}"
        if action is Action.SET_THRESHOLDS:
            account = ops.set_thresholds(
                target, alarm1_fen=p["alarm1"], alarm2_fen=p["alarm2"], actor=actor
            )
            th = account.thresholds
            return f"alarm1 {format_fen(th.alarm1_fen)}, alarm2 {format_fen(th.alarm2_fen)}"
        if action is Action.TOPUP:
            result = ops.topup(
                target,
                int(p["amount_fen"]),
                f"batch-{job.id}-{job.run_no}-{item.seq}",
                channel=p.get("channel") or "cash",
                actor=actor,
            )
            return (
                f"top-up {format_fen(result.amount_fen)}"
                + (" (already done)" if result.replayed else "")
                + f", balance {format_fen(result.balance_fen)}"
            )
        reason = f"{job.reason} {self._tag(job, item)}"
        if action is Action.DISCONNECT:
            queued = ops.disconnect(target, reason, actor=actor, override=bool(p.get("override")))
        elif action is Action.RECONNECT:
            queued = ops.reconnect(target, reason, actor=actor)
        else:
            queued = [self._set_params(job, item, p, reason, actor)]
        return (
            ", ".join(
                f"{c.kind} #{c.id} queued"
                + (
                    f" for {c.next_attempt_at:%Y-%m-%d %H:%M} UTC"
                    if c.next_attempt_at > c.created_at + dt.timedelta(seconds=1)
                    else ""
                )
                for c in queued
            )
            or "nothing to do"
        )

    def _set_params(
        self, job: Any, item: Any, p: Mapping[str, Any], reason: str, actor: str
    ) -> cmds.MeterCommand:
        from ..prepay.effects import Effects, audit

        now = self.clock()
        effects = Effects()
        with self.db.begin() as conn:
            command = cmds.enqueue(
                conn,
                item.target,
                cmds.CommandKind.SET_PARAMS,
                params={"command": p["command"], **dict(p["values"])},
                reason=reason,
                requested_by=actor,
                idempotency_key=f"batch:{job.id}:{job.run_no}:{item.seq}",
                now=now,
            )
            audit(
                conn,
                effects,
                actor,
                "set_params",
                item.target,
                f"{p['command']} #{command.id}: {reason}",
                now=now,
            )
        for event in effects.events:
            self.publish(event)
        effects.commands.append(command)
        for listener in getattr(self.ops, "committed", []):
            try:
                listener(effects)
            except Exception:
                log.exception("commit listener failed")
        return command

    def _record(self, job: Any, item: Any, ok: bool, text: str) -> None:
        now = self.clock()
        with self.db.begin() as conn:
            changed = conn.execute(
                t.batch_item.update()
                .where(
                    t.batch_item.c.id == item.id, t.batch_item.c.state.in_(["PENDING", "RUNNING"])
                )
                .values(state="DONE" if ok else "FAILED", result=text[:1000], updated_at=now)
            ).rowcount
            if changed:
                conn.execute(
                    t.batch_job.update()
                    .where(t.batch_job.c.id == job.id)
                    .values(
                        done=t.batch_job.c.done + (1 if ok else 0),
                        failed=t.batch_job.c.failed + (0 if ok else 1),
                        updated_at=now,
                    )
                )
            row = conn.execute(sa.select(t.batch_job).where(t.batch_job.c.id == job.id)).one()
        self.publish(progress_sample(row, now))

    def _finish(self, job_id: int) -> JobView:
        now = self.clock()
        with self.db.begin() as conn:
            row = conn.execute(
                sa.select(t.batch_job).where(t.batch_job.c.id == job_id).with_for_update()
            ).one()
            if row.state == JobState.RUNNING.value and row.claimed_by == self.owner[:100]:
                if row.every:
                    nxt = next_occurrence(row.first_run_at, row.every, now, self.site.info.tz)
                    values = {"state": JobState.SCHEDULED.value, "next_run_at": nxt}
                else:
                    values = {"state": JobState.DONE.value, "next_run_at": None}
                conn.execute(
                    t.batch_job.update()
                    .where(t.batch_job.c.id == job_id)
                    .values(
                        **values, claimed_by=None, lease_until=None, finished_at=now, updated_at=now
                    )
                )
            row = conn.execute(sa.select(t.batch_job).where(t.batch_job.c.id == job_id)).one()
        self.publish(progress_sample(row, now))
        log.info(
            "batch job %s (%s) occurrence %s: %s done, %s failed of %s",
            row.id,
            row.action,
            row.run_no,
            row.done,
            row.failed,
            row.total,
        )
        return _job_view(row)

    def run_due(self, *, stop: Callable[[], bool] | None = None) -> list[JobView]:
        """Claim and run every due job, one after the other (the service's loop)."""
        out = []
        while stop is None or not stop():
            claimed = self.claim()
            if not claimed:
                break
            for job_id in claimed:
                out.append(self.run(job_id, stop=stop))
        return out


def next_occurrence(first: dt.datetime, every: str, after: dt.datetime, tz: Any) -> dt.datetime:
    """The first occurrence of a recurring job strictly after `after` (site-local time of
    day of `first`; monthly on its day, or the month's last day when shorter)."""
    local = first.astimezone(tz)
    k = 1
    while True:
        if every == "day":
            day = local.date() + dt.timedelta(days=k)
        elif every == "week":
            day = local.date() + dt.timedelta(weeks=k)
        else:
            month0 = local.month - 1 + k
            year, month = local.year + month0 // 12, month0 % 12 + 1
            import calendar

            day = dt.date(year, month, min(local.day, calendar.monthrange(year, month)[1]))
        at = dt.datetime.combine(day, local.time().replace(tzinfo=None), tzinfo=tz).astimezone(
            dt.UTC
        )
        if at > after:
            return at
        k += 1


def _fen(value: Any, field: str, positive: bool = False) -> int:
    return parse_yuan(value, field, low_fen=1 if positive else 0)


def _price(value: Any, field: str) -> float:
    """A meter price: the one number form, 0 to 1000 CNY, at most 4 decimals."""
    try:
        d = read_decimal(value, places=4, low=Decimal(0), high=MAX_PRICE, example="0.6170")
    except NumberRefused as refused:
        raise RequestError(field, refused.message) from None
    return float(d)  # a device parameter: the meter stores it in 0.0001 CNY (rounded)


def _number(value: Any, field: str) -> float | int:
    """A device parameter: the one number form, within ±10^12; whole numbers stay int."""
    try:
        d = read_decimal(value, places=None, low=Decimal(-NUMBER_LIMIT), high=Decimal(NUMBER_LIMIT))
    except NumberRefused as refused:
        raise RequestError(field, refused.message) from None
    return int(d) if d == d.to_integral_value() and "." not in str(value) else float(d)
