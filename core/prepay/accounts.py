"""Prepaid accounts: who pays for which meters, with what thresholds.

An account (one tenant, usually one room) has one or several meters — electric and water
alike, by their site-file device ids — and two wallets in the ledger: the **energy**
wallet, which fee control reads and usage is deducted from, and the **general** wallet
for property fee, rent and services (debt there never cuts supply, Civil Code Art. 944).

Life cycle::

    create_account(open_now=False) ──► PREREGISTERED ──open_account()──► OPEN
    create_account(open_now=True)  ───────────────────────────────────► OPEN
                                                 close_account() (wallets at 0)
                                                       ▼
                                                    CLOSED  (meters freed)

A meter belongs to at most one account that is not closed. Each attached meter has its
control mode (REMOTE / LOCAL / POSTPAID), copied from the site file when attached unless
overridden, so that the ledger decides LOCAL deliveries from the database alone.

Thresholds follow domain.md §1.2 and are fee control's `FeeThresholds` (defaults: alarm1
20.00, alarm2 5.00, overdraft limit 0.00, close-allowed limit 0.00, hoarding limit
5,000.00; 0 = no hoarding limit; a site changes the defaults in `[prepay.thresholds]`).
The fee-control engine reads them with the account, and the account's last fee state
(`fee_state`, sticky OVERDRAFT included) is stored with it (`set_fee_state`).

Bulk opening from CSV is `core.prepay.account_import.import_accounts`.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..config.reader import ID_PATTERN
from ..config.site import ControlMode, Site
from ..db import schema as t
from ..db.among import among
from ..events import utcnow
from ..ledger import (
    CAPACITY_FEN,
    RequestError,
    WalletKind,
    format_fen,
    insert_ignore,
    wallet_code,
)
from ..model import DeviceModel, MeterKind
from .commands import UNFINISHED, CommandKind
from .feecontrol import FeeState, FeeThresholds


class AccountState(enum.StrEnum):
    PREREGISTERED = "PREREGISTERED"
    OPEN = "OPEN"
    CLOSED = "CLOSED"


#: The thresholds of an account are fee control's own type (same names as the columns).
Thresholds = FeeThresholds


def threshold_problems(thresholds: FeeThresholds) -> list[tuple[str, str]]:
    """(field, message) for each reason `thresholds` cannot be saved; field names are
    those of the CLI and the CSV (`alarm1`, `hoard_limit`...)."""
    out = []
    for name in ("alarm1", "alarm2", "overdraft_limit", "close_limit", "hoard_limit"):
        value = getattr(thresholds, f"{name}_fen")
        if isinstance(value, bool) or not isinstance(value, int):
            out.append((name, f"expected integer fen, got {value!r}"))
        elif value < 0:
            out.append((name, f"expected an amount >= 0.00, got {format_fen(value)}"))
        elif value > CAPACITY_FEN:
            out.append(
                (name, f"expected at most {format_fen(CAPACITY_FEN)}, got {format_fen(value)}")
            )
    if not out:
        out.extend((p.path.removesuffix("_fen"), p.message) for p in thresholds.problems())
    return out


@dataclass(frozen=True, slots=True)
class MeterAssignment:
    meter_id: str
    kind: MeterKind
    control_mode: ControlMode = ControlMode.REMOTE


@dataclass(frozen=True, slots=True)
class AccountSpec:
    """What is needed to create an account."""

    id: str
    name: str
    meters: tuple[MeterAssignment, ...] = ()
    room: str | None = None
    tariff_id: str | None = None
    thresholds: Thresholds = field(default_factory=Thresholds)
    #: 保电: fee control never cuts supply.
    protected: bool = False
    #: Notification channels, `channel:recipient` (email:a@b.c, sms:+86..., webhook:https://...).
    notify: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AccountMeter:
    meter_id: str
    kind: str
    control_mode: str
    buy_count: int
    confirmed_buy_count: int


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    name: str
    room: str | None
    state: AccountState
    tariff_id: str | None
    thresholds: Thresholds
    protected: bool
    notify: tuple[str, ...]
    meters: tuple[AccountMeter, ...]
    energy_fen: int
    general_fen: int
    #: Fee control's last state (core.prepay.feecontrol.FeeState value).
    fee_state: str
    created_at: datetime
    opened_at: datetime | None
    closed_at: datetime | None


_NOTIFY = re.compile(r"^[a-z][a-z0-9_]{0,31}:\S{1,200}$")


def validate_spec(spec: AccountSpec) -> None:
    """Raise `RequestError` naming the first field of `spec` that cannot be saved."""
    if not isinstance(spec.id, str) or not ID_PATTERN.match(spec.id):
        raise RequestError(
            "id", f"expected letters, digits, '_', '-', '.' (at most 64); got {spec.id!r}"
        )
    if not isinstance(spec.name, str) or not spec.name.strip() or len(spec.name) > 200:
        raise RequestError("name", f"required, at most 200 characters; got {spec.name!r}")
    if spec.room is not None and not ID_PATTERN.match(spec.room):
        raise RequestError("room", f"expected a room id; got {spec.room!r}")
    if spec.tariff_id is not None and not ID_PATTERN.match(spec.tariff_id):
        raise RequestError("tariff", f"expected a tariff id; got {spec.tariff_id!r}")
    for name, message in threshold_problems(spec.thresholds):
        raise RequestError(name, message)
    seen = set()
    for m in spec.meters:
        if not ID_PATTERN.match(m.meter_id):
            raise RequestError("meters", f"expected a meter id; got {m.meter_id!r}")
        if m.meter_id in seen:
            raise RequestError("meters", f"meter {m.meter_id!r} is listed twice")
        seen.add(m.meter_id)
    for channel in spec.notify:
        if not _NOTIFY.match(channel):
            raise RequestError(
                "notify", f"expected channel:recipient such as email:a@example.com; got {channel!r}"
            )


def create_account(
    conn: Connection,
    spec: AccountSpec,
    *,
    open_now: bool = True,
    now: datetime | None = None,
) -> Account:
    """Create an account with its wallets and meters; OPEN, or PREREGISTERED to be opened
    later with `open_account`. Refused (nothing written) when the id exists or a meter
    belongs to another account that is not closed."""
    validate_spec(spec)
    if conn.execute(sa.select(t.account.c.id).where(t.account.c.id == spec.id)).first():
        raise RequestError("id", f"account {spec.id!r} already exists")
    _check_meters_free(conn, spec.meters)
    insert_account(conn, spec, open_now, now or utcnow())
    return get_account(conn, spec.id)


def insert_account(conn: Connection, spec: AccountSpec, open_now: bool, now: datetime) -> None:
    """The rows of a new account, its wallets and meters (checks done by the caller)."""
    th = spec.thresholds
    conn.execute(
        t.account.insert(),
        {
            "id": spec.id,
            "name": spec.name.strip(),
            "room": spec.room,
            "state": (AccountState.OPEN if open_now else AccountState.PREREGISTERED).value,
            "tariff_id": spec.tariff_id,
            "protected": bool(spec.protected),
            "alarm1_fen": th.alarm1_fen,
            "alarm2_fen": th.alarm2_fen,
            "overdraft_limit_fen": th.overdraft_limit_fen,
            "close_limit_fen": th.close_limit_fen,
            "hoard_limit_fen": th.hoard_limit_fen,
            "notify": list(spec.notify),
            "created_at": now,
            "opened_at": now if open_now else None,
            "updated_at": now,
        },
    )
    for kind in WalletKind:
        code = wallet_code(spec.id, kind)
        conn.execute(t.ledger_account.insert(), {"code": code, "type": "liab", "created_at": now})
        conn.execute(
            t.wallet.insert(),
            {
                "account_id": spec.id,
                "kind": kind.value,
                "ledger_account": code,
                "balance_fen": 0,
                "version": 0,
            },
        )
    _attach(conn, spec.id, spec.meters, now)


def _check_meters_free(conn: Connection, meters: Sequence[MeterAssignment]) -> None:
    if not meters:
        return
    taken = conn.execute(
        sa.select(t.account_meter.c.meter_id, t.account_meter.c.account_id).where(
            t.account_meter.c.meter_id.in_([m.meter_id for m in meters]),
            t.account_meter.c.detached_at.is_(None),
        )
    ).first()
    if taken is not None:
        raise RequestError(
            "meters", f"meter {taken.meter_id!r} already belongs to account {taken.account_id!r}"
        )


def _attach(
    conn: Connection, account_id: str, meters: Sequence[MeterAssignment], now: datetime
) -> None:
    """Attach `meters`; a LOCAL meter's own purchase count is to be read and aligned with
    before the platform delivers money to it (it may come with purchases of its own)."""
    for m in meters:
        conn.execute(
            insert_ignore(conn, t.meter),
            {
                "id": m.meter_id,
                "kind": MeterKind(m.kind).value,
                "buy_count": 0,
                "confirmed_buy_count": 0,
                "updated_at": now,
            },
        )
        conn.execute(
            t.account_meter.insert(),
            {
                "account_id": account_id,
                "meter_id": m.meter_id,
                "kind": MeterKind(m.kind).value,
                "control_mode": ControlMode(m.control_mode).value,
                "attached_at": now,
            },
        )
        if ControlMode(m.control_mode) is ControlMode.LOCAL:
            conn.execute(
                t.meter.update()
                .where(t.meter.c.id == m.meter_id)
                .values(align_requested_at=now, updated_at=now)
            )


def attach_meter(
    conn: Connection, account_id: str, meter: MeterAssignment, *, now: datetime | None = None
) -> Account:
    """Add a meter to an account that is not closed."""
    account = get_account(conn, account_id)
    if account.state is AccountState.CLOSED:
        raise RequestError("account", f"account {account_id!r} is closed")
    _check_meters_free(conn, [meter])
    _attach(conn, account_id, [meter], now or utcnow())
    return get_account(conn, account_id)


def open_account(conn: Connection, account_id: str, *, now: datetime | None = None) -> Account:
    """Open a pre-registered account (one action). Opening an open account changes nothing."""
    account = get_account(conn, account_id)
    if account.state is AccountState.OPEN:
        return account
    if account.state is AccountState.CLOSED:
        raise RequestError("account", f"account {account_id!r} is closed; create a new one")
    now = now or utcnow()
    conn.execute(
        t.account.update()
        .where(t.account.c.id == account_id, t.account.c.state == AccountState.PREREGISTERED.value)
        .values(state=AccountState.OPEN.value, opened_at=now, updated_at=now)
    )
    return get_account(conn, account_id)


def close_account(conn: Connection, account_id: str, *, now: datetime | None = None) -> Account:
    """Close an account: refused while a wallet is not at 0.00 (refund or settle first) or
    a money command (RECHARGE/REFUND) is unfinished. Its meters are freed for the next
    tenant; the purchase counters stay with the meters."""
    account = get_account(conn, account_id)
    if account.state is AccountState.CLOSED:
        return account
    conn.execute(
        sa.select(t.wallet.c.kind).where(t.wallet.c.account_id == account_id).with_for_update()
    ).all()
    account = get_account(conn, account_id)
    if account.energy_fen or account.general_fen:
        raise RequestError(
            "account",
            f"account {account_id!r} still holds energy {format_fen(account.energy_fen)} and "
            f"general {format_fen(account.general_fen)}: refund or settle to 0.00 before closing",
        )
    busy = conn.execute(
        sa.select(t.meter_command.c.id).where(
            t.meter_command.c.account_id == account_id,
            t.meter_command.c.kind.in_([CommandKind.RECHARGE.value, CommandKind.REFUND.value]),
            t.meter_command.c.state.in_([s.value for s in UNFINISHED]),
        )
    ).first()
    if busy is not None:
        raise RequestError(
            "account", f"account {account_id!r} has an unfinished money command ({busy.id})"
        )
    now = now or utcnow()
    conn.execute(
        t.account.update()
        .where(t.account.c.id == account_id)
        .values(state=AccountState.CLOSED.value, closed_at=now, updated_at=now)
    )
    conn.execute(
        t.account_meter.update()
        .where(t.account_meter.c.account_id == account_id, t.account_meter.c.detached_at.is_(None))
        .values(detached_at=now)
    )
    return get_account(conn, account_id)


def check_settable(account: Account) -> None:
    """Refuse to change the settings of a closed account (`update_account` and the
    door's read-only checks both ask here)."""
    if account.state is AccountState.CLOSED:
        raise RequestError("account", f"account {account.id!r} is closed")


def update_account(
    conn: Connection,
    account_id: str,
    *,
    name: str | None = None,
    tariff_id: str | None = None,
    thresholds: Thresholds | None = None,
    protected: bool | None = None,
    notify: Sequence[str] | None = None,
    now: datetime | None = None,
) -> Account:
    """Change an account's settings (not its state, meters or money)."""
    account = get_account(conn, account_id)
    check_settable(account)
    spec = AccountSpec(
        account.id,
        name if name is not None else account.name,
        room=account.room,
        tariff_id=tariff_id if tariff_id is not None else account.tariff_id,
        thresholds=thresholds or account.thresholds,
        protected=account.protected if protected is None else protected,
        notify=tuple(notify) if notify is not None else account.notify,
    )
    validate_spec(spec)
    th = spec.thresholds
    conn.execute(
        t.account.update()
        .where(t.account.c.id == account_id)
        .values(
            name=spec.name,
            tariff_id=spec.tariff_id,
            protected=spec.protected,
            notify=list(spec.notify),
            alarm1_fen=th.alarm1_fen,
            alarm2_fen=th.alarm2_fen,
            overdraft_limit_fen=th.overdraft_limit_fen,
            close_limit_fen=th.close_limit_fen,
            hoard_limit_fen=th.hoard_limit_fen,
            updated_at=now or utcnow(),
        )
    )
    return get_account(conn, account_id)


def set_fee_state(
    conn: Connection,
    account_id: str,
    state: str,
    *,
    expected: str | None = None,
    now: datetime | None = None,
) -> bool:
    """Store fee control's new state for the account (in the transaction that acted on it).

    With `expected`, the update only happens if the stored state is still `expected`
    (optimistic check for concurrent evaluators); returns whether it was stored.
    """
    try:
        state = FeeState(state).value
    except ValueError:
        known = ", ".join(s.value for s in FeeState)
        raise RequestError("fee_state", f"expected one of {known}; got {state!r}") from None
    q = t.account.update().where(t.account.c.id == account_id)
    if expected is not None:
        q = q.where(t.account.c.fee_state == str(expected))
    done = conn.execute(q.values(fee_state=state, fee_state_at=now or utcnow())).rowcount
    if not done and expected is None:
        raise RequestError("account", f"unknown account {account_id!r}")
    return bool(done)


def find_account(conn: Connection, account_id: str) -> Account | None:
    row = conn.execute(sa.select(t.account).where(t.account.c.id == account_id)).first()
    if row is None:
        return None
    meters = conn.execute(
        sa.select(
            t.account_meter.c.meter_id,
            t.account_meter.c.kind,
            t.account_meter.c.control_mode,
            t.meter.c.buy_count,
            t.meter.c.confirmed_buy_count,
        )
        .join(t.meter, t.meter.c.id == t.account_meter.c.meter_id)
        .where(t.account_meter.c.account_id == account_id)
        .where(
            t.account_meter.c.detached_at.is_(None)
            if row.state != AccountState.CLOSED.value
            else t.account_meter.c.detached_at == row.closed_at
        )
        .order_by(t.account_meter.c.id)
    ).all()
    wallets = dict(
        conn.execute(
            sa.select(t.wallet.c.kind, t.wallet.c.balance_fen).where(
                t.wallet.c.account_id == account_id
            )
        ).all()
    )
    return _account(row, meters, wallets)


def _account(row: Any, meters: Iterable[Any], wallets: Mapping[str, int]) -> Account:
    return Account(
        id=row.id,
        name=row.name,
        room=row.room,
        state=AccountState(row.state),
        tariff_id=row.tariff_id,
        thresholds=Thresholds(
            row.alarm1_fen,
            row.alarm2_fen,
            row.overdraft_limit_fen,
            row.close_limit_fen,
            row.hoard_limit_fen,
        ),
        protected=bool(row.protected),
        notify=tuple(row.notify or ()),
        meters=tuple(
            AccountMeter(m.meter_id, m.kind, m.control_mode, m.buy_count, m.confirmed_buy_count)
            for m in meters
        ),
        energy_fen=int(wallets.get("energy", 0)),
        general_fen=int(wallets.get("general", 0)),
        fee_state=row.fee_state,
        created_at=row.created_at,
        opened_at=row.opened_at,
        closed_at=row.closed_at,
    )


def get_account(conn: Connection, account_id: str) -> Account:
    account = find_account(conn, account_id)
    if account is None:
        raise RequestError("account", f"unknown account {account_id!r}")
    return account


def list_accounts(
    conn: Connection,
    *,
    state: AccountState | str | None = None,
    room: str | None = None,
    limit: int | None = None,
    ids: Collection[str] | None = None,
) -> list[Account]:
    """Accounts ordered by id, with their meters and balances (three queries in all);
    `ids`: only these (unknown ones are left out)."""
    q = sa.select(t.account).order_by(t.account.c.id)
    if ids is not None:
        q = q.where(among(conn, t.account.c.id, ids))
    if state is not None:
        q = q.where(t.account.c.state == AccountState(state).value)
    if room is not None:
        q = q.where(t.account.c.room == room)
    if limit is not None:
        q = q.limit(limit)
    rows = conn.execute(q).all()
    if not rows:
        return []
    ids = [r.id for r in rows]
    meters: dict[str, list[Any]] = {}
    for m in conn.execute(
        sa.select(
            t.account_meter.c.account_id,
            t.account_meter.c.meter_id,
            t.account_meter.c.kind,
            t.account_meter.c.control_mode,
            t.account_meter.c.detached_at,
            t.meter.c.buy_count,
            t.meter.c.confirmed_buy_count,
        )
        .join(t.meter, t.meter.c.id == t.account_meter.c.meter_id)
        .where(among(conn, t.account_meter.c.account_id, ids))
        .order_by(t.account_meter.c.id)
    ):
        meters.setdefault(m.account_id, []).append(m)
    wallets: dict[str, dict[str, int]] = {}
    for w in conn.execute(
        sa.select(t.wallet.c.account_id, t.wallet.c.kind, t.wallet.c.balance_fen).where(
            among(conn, t.wallet.c.account_id, ids)
        )
    ):
        wallets.setdefault(w.account_id, {})[w.kind] = w.balance_fen
    out = []
    for r in rows:
        mine = [
            m
            for m in meters.get(r.id, [])
            if (m.detached_at is None) == (r.state != AccountState.CLOSED.value)
        ]
        out.append(_account(r, mine, wallets.get(r.id, {})))
    return out


def account_for_meter(conn: Connection, meter_id: str) -> str | None:
    """The account (pre-registered or open) a meter belongs to: what metering bills."""
    return conn.execute(
        sa.select(t.account_meter.c.account_id).where(
            t.account_meter.c.meter_id == meter_id, t.account_meter.c.detached_at.is_(None)
        )
    ).scalar()


# -- against the site file --------------------------------------------------------------------


def resolve_meter(
    site: Site,
    models: Mapping[str, DeviceModel],
    meter_id: str,
    mode: ControlMode | str | None = None,
    field: str = "meters",
) -> MeterAssignment:
    """A site-file device as an account meter: kind from its model, control mode from the
    site file unless `mode` overrides it. Raises `RequestError` naming `field`."""
    device = site.devices.get(meter_id)
    if device is None:
        known = sorted(site.devices)
        shown = ", ".join(known[:8]) + (", ..." if len(known) > 8 else "")
        raise RequestError(field, f"unknown meter {meter_id!r} (site devices: {shown or 'none'})")
    model = models.get(device.model)
    if model is None:
        raise RequestError(field, f"meter {meter_id!r} has model {device.model!r}, not installed")
    if model.kind not in (MeterKind.ELECTRIC, MeterKind.WATER):
        raise RequestError(field, f"meter {meter_id!r} is a {model.kind}, not a billing meter")
    if mode is not None:
        try:
            mode = ControlMode(str(mode).upper())
        except ValueError:
            raise RequestError(
                field,
                f"control mode of {meter_id!r}: expected REMOTE, LOCAL or POSTPAID; got {mode!r}",
            ) from None
    return MeterAssignment(meter_id, model.kind, mode or device.control_mode)


def parse_meter_list(text: str) -> list[tuple[str, str | None]]:
    """`"E-A-101; W-A-101:LOCAL"` → [("E-A-101", None), ("W-A-101", "LOCAL")]."""
    out = []
    for part in re.split(r"[;\s]+", text.strip()):
        if not part:
            continue
        meter, _, mode = part.partition(":")
        out.append((meter, mode or None))
    return out
