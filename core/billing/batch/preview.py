"""The dry run of one item: what it would do, or why it would fail (nothing written)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ...config.site import Site
from ...db import schema as t
from ...ledger import RequestError, format_fen
from ...model import DeviceModel
from ...prepay.binding import TariffBinding
from .model import ACCOUNT_ACTIONS, CONTROL_ACTIONS, Action, Item, PlanLine


def preview(
    conn: Connection,
    site: Site,
    models: Mapping[str, DeviceModel],
    binding: TariffBinding,
    action: Action,
    params: Mapping[str, Any],
    item: Item,
) -> PlanLine:
    """What `item` of a job would do (its own parameters over the job's)."""
    p = {**params, **item.params}
    if action in ACCOUNT_ACTIONS:
        return _account_preview(conn, binding, action, p, item.target)
    if action in CONTROL_ACTIONS:
        model = models[site.devices[item.target].model]
        assert model.supply is not None
        cmd = model.supply.cut if action is Action.DISCONNECT else model.supply.restore
        how = "operator override" if p.get("override") else "through the policy gate"
        return PlanLine(item.target, True, f"{cmd} ({how}, rate-limited)")
    values = ", ".join(f"{k}={v}" for k, v in p["values"].items())
    return PlanLine(item.target, True, f"SET_PARAMS {p['command']} {values}")


def _account_preview(
    conn: Connection,
    binding: TariffBinding,
    action: Action,
    p: Mapping[str, Any],
    target: str,
) -> PlanLine:
    a = t.account
    row = conn.execute(sa.select(a.c.state, a.c.tariff_id).where(a.c.id == target)).first()
    if row is None or row.state != "OPEN":
        return PlanLine(target, False, f"account {target} is not open")
    if action is Action.SET_TARIFF:
        meters = conn.execute(
            sa.select(t.account_meter.c.meter_id).where(
                t.account_meter.c.account_id == target,
                t.account_meter.c.detached_at.is_(None),
            )
        ).scalars()
        try:
            binding.check_account(p["tariff"], list(meters))
        except RequestError as exc:
            return PlanLine(target, False, exc.message)
        return PlanLine(target, True, f"tariff {row.tariff_id or '-'} → {p['tariff']}")
    if action is Action.SET_THRESHOLDS:
        return PlanLine(
            target, True, f"alarm1 {format_fen(p['alarm1'])}, alarm2 {format_fen(p['alarm2'])}"
        )
    return _topup_preview(conn, p, target)


def _topup_preview(conn: Connection, p: Mapping[str, Any], target: str) -> PlanLine:
    a = t.account
    balance = conn.execute(
        sa.select(t.wallet.c.balance_fen).where(
            t.wallet.c.account_id == target, t.wallet.c.kind == "energy"
        )
    ).scalar()
    hoard = conn.execute(sa.select(a.c.hoard_limit_fen).where(a.c.id == target)).scalar()
    after = int(balance or 0) + p["amount_fen"]
    if hoard and after > hoard:
        return PlanLine(
            target,
            False,
            f"top-up {format_fen(p['amount_fen'])} would exceed the hoarding limit "
            f"{format_fen(hoard)} (balance {format_fen(int(balance or 0))})",
        )
    return PlanLine(
        target, True, f"top-up {format_fen(p['amount_fen'])} → balance {format_fen(after)}"
    )
