"""Accounts in the address space: AccountType's variables, and one object per account.

`OpenPrepay/Accounts/<account>` (AccountType), also organised by its room, carries the
balances, alarm level and supply state (fed by the account samples the prepayment engine
publishes, `core.prepay.account_points`) and the rest of `account_snapshot` (tariff,
control mode, today's energy and cost, thresholds, 保电), each variable bound so the older
of two values never overwrites the newer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from asyncua import ua

from openprepay.core.model import DeviceModel, MeterKind
from openprepay.core.operations import AccountSnapshot
from openprepay.core.prepay.account_points import ACCOUNT_MODEL
from openprepay.core.prepay.feecontrol import FeeState

from ..bindings import NULL, WAITING, HistoryTarget, PointBinding, SourceBinding, Target
from ..space import Space, datatype_of
from ..units import eu_information

V = ua.VariantType
FEE_STATES = [s.value for s in sorted(FeeState, key=lambda s: s.severity)]

#: The snapshot as a pseudo-model, so it flows through the publisher like a sample (it is
#: never published on the bus: the historian has the account samples).
SNAPSHOT_MODEL = DeviceModel(
    name="openprepay.opcua.account_snapshot",
    vendor="OpenPrepay",
    product="Account snapshot",
    kind=MeterKind.ACCOUNT,
    description="What core.operations.account_snapshot returns",
    points=(),
    plugin="opcua",
)


def yuan(fen: Any) -> float:
    return int(fen) / 100  # display only; the ledger's integer fen are the truth


def fee_name(level: Any) -> str:
    level = int(level)
    return FEE_STATES[level] if 0 <= level < len(FEE_STATES) else str(level)


@dataclass(frozen=True, slots=True)
class AccountVar:
    """One AccountType variable and what feeds it."""

    name: str
    vtype: ua.VariantType
    unit: str
    description: str
    #: Point of the account samples (core.prepay.account_points) that also feeds it, if any.
    sample_point: str | None
    #: Key of `snapshot_values()`.
    snapshot_key: str
    convert: Callable[[Any], Any]
    history: bool = False


_A = AccountVar
ACCOUNT_VARIABLES = (
    _A("Balance", V.Double, "CNY", "Energy wallet balance (what fee control reads)",
       "energy_balance_fen", "balance_fen", yuan, True),
    _A("BalanceFen", V.Int64, "", "Energy wallet balance in fen (exact)",
       "energy_balance_fen", "balance_fen", int, True),
    _A("GeneralBalance", V.Double, "CNY", "General wallet (property fee, rent, services)",
       "general_balance_fen", "general_fen", yuan),
    _A("GeneralBalanceFen", V.Int64, "", "General wallet in fen (exact)",
       "general_balance_fen", "general_fen", int),
    _A("EmergencyCredit", V.Double, "CNY", "Emergency credit advanced, not yet repaid",
       "emergency_credit_fen", "emergency_fen", yuan),
    _A("AlarmLevel", V.Int32, "", "0 normal, 1 alarm 1, 2 alarm 2, 3 at or below zero, "
       "4 overdraft limit reached", "alarm_level", "alarm_level", int, True),
    _A("FeeState", V.String, "", "NORMAL, ALARM1, ALARM2, OVER_ZERO or OVERDRAFT",
       "alarm_level", "alarm_level", fee_name),
    _A("SupplyOn", V.Boolean, "", "True while no meter of the account is cut",
       "supply_on", "supply_on", bool, True),
    _A("State", V.String, "", "PREREGISTERED, OPEN or CLOSED", None, "state", str),
    _A("ControlMode", V.String, "", "REMOTE, LOCAL or POSTPAID (several: comma-separated)",
       None, "control_mode", str),
    _A("TariffId", V.String, "", "The account's tariff ('' = the site's default)",
       None, "tariff_id", str),
    _A("Protected", V.Boolean, "", "保电: fee control never cuts this account",
       None, "protected", bool),
    _A("EnergyToday", V.Double, "kWh", "Electricity used since local midnight",
       None, "energy_today_kwh", float),
    _A("WaterToday", V.Double, "m³", "Water used since local midnight",
       None, "water_today_m3", float),
    _A("CostToday", V.Double, "CNY", "Usage deducted since local midnight",
       None, "cost_today_fen", yuan),
    _A("CostTodayFen", V.Int64, "", "Usage deducted since local midnight, fen",
       None, "cost_today_fen", int),
    _A("Alarm1", V.Double, "CNY", "Alarm level 1 threshold", None, "alarm1_fen", yuan),
    _A("Alarm2", V.Double, "CNY", "Alarm level 2 / pre-trip threshold",
       None, "alarm2_fen", yuan),
    _A("OverdraftLimit", V.Double, "CNY", "Overdraft allowed before the trip",
       None, "overdraft_limit_fen", yuan),
    _A("CloseLimit", V.Double, "CNY", "Balance above which supply may be restored",
       None, "close_limit_fen", yuan),
    _A("SupplyDesired", V.Boolean, "", "True unless the platform decided to cut a meter "
       "of the account (SupplyOn: what the meters read)", None, "supply_desired", bool),
    _A("Owed", V.Double, "CNY", "What the tenant owes: energy and general-wallet arrears, "
       "unpaid bills and charges", None, "owed_fen", yuan),
    _A("OwedFen", V.Int64, "", "What the tenant owes, fen", None, "owed_fen", int),
    _A("UnbilledMeters", V.Int32, "", "Meters of the account that are not billed (each a "
       "BillingAlarm)", None, "unbilled", int),
    _A("FailedDeliveries", V.Int32, "", "FAILED RECHARGE/REFUND commands not retried or "
       "refunded (each a DeliveryFailedAlarm)", None, "failed_deliveries", int),
)  # fmt: skip
ACCOUNT_PROPERTIES = ("AccountId", "Name", "Room")


def snapshot_values(s: AccountSnapshot) -> dict[str, Any]:
    modes = sorted({m.control_mode for m in s.meters})
    th = s.thresholds
    return {
        "balance_fen": s.balance_fen,
        "general_fen": s.general_fen,
        "emergency_fen": s.emergency_outstanding_fen,
        "alarm_level": s.alarm_level,
        "supply_on": s.supply_on,
        "state": s.state,
        "control_mode": ",".join(modes),
        "tariff_id": s.tariff_id or "",
        "protected": s.protected,
        "energy_today_kwh": float(s.energy_today_kwh),
        "water_today_m3": float(s.water_today_m3),
        "cost_today_fen": s.cost_today_fen,
        "alarm1_fen": th.alarm1_fen,
        "alarm2_fen": th.alarm2_fen,
        "overdraft_limit_fen": th.overdraft_limit_fen,
        "close_limit_fen": th.close_limit_fen,
        "supply_desired": s.desired_supply_on,
        "owed_fen": s.owed_fen,
        "unbilled": len(s.billing_problems),
        "failed_deliveries": len(s.failed_commands),
    }


def declare_account_type(space: Space) -> None:
    """AccountType's properties and variables (before the site tree)."""
    for prop in ACCOUNT_PROPERTIES:
        space.type_property("AccountType", prop, "")
    for var in ACCOUNT_VARIABLES:
        nid = space.tid(f"AccountType/{var.name}")
        _variable(space, nid, space.tid("AccountType"), var, history=False, status=None)
        space.writer.mandatory(nid)


def add_account(space: Space, snap: AccountSnapshot) -> None:
    """The account's object, its variables bound to the account samples and snapshots,
    its methods, and its place under its room."""
    account_id = snap.account_id
    w = space.writer
    base = f"Account:{account_id}"
    node = w.object(
        space.iid(base),
        space.iq(account_id),
        space.iid("OpenPrepay/Accounts"),
        space.types["AccountType"],
        display=f"{account_id} {snap.name}".strip(),
        event_notifier=ua.EventNotifier.SubscribeToEvents.mask,
    )
    space.add_properties(
        node.nodeid, base, {"AccountId": account_id, "Name": snap.name, "Room": snap.room or ""}
    )
    samples = SourceBinding(account_id, node.nodeid)
    snapshot = SourceBinding(account_id, node.nodeid)
    for var in ACCOUNT_VARIABLES:
        nid = space.iid(f"{base}/{var.name}")
        history = var.history and space.history
        _variable(space, nid, node.nodeid, var, history=history, status=WAITING)
        pb = PointBinding(nid, var.vtype, var.convert, guard=True)
        snapshot.points.append((var.snapshot_key, pb))
        if var.sample_point is not None:
            # The same variable, fed by the account samples too (same binding: the
            # older of the two never overwrites the newer).
            samples.points.append((var.sample_point, pb))
            if history:
                space.history_targets[nid] = HistoryTarget(
                    account_id, var.sample_point, var.vtype, var.convert
                )
    space.bindings[(account_id, ACCOUNT_MODEL.name)] = samples
    space.bindings[(account_id, SNAPSHOT_MODEL.name)] = snapshot
    space.attach_methods(node.nodeid, "AccountType")
    if snap.room is not None and snap.room in space.room_nodes:
        w.reference(
            space.room_nodes[snap.room],
            node.nodeid,
            ua.NodeId(ua.ObjectIds.Organizes),
            inverse=True,
        )
    space.account_nodes[account_id] = node.nodeid
    space.targets[node.nodeid] = Target("account", account_id)


def _variable(
    space: Space,
    nid: ua.NodeId,
    parent: ua.NodeId,
    var: AccountVar,
    *,
    history: bool,
    status: ua.StatusCode | None,
) -> None:
    w = space.writer
    kwargs: dict[str, Any] = {}
    if var.unit:
        kwargs["type_definition"] = ua.NodeId(ua.ObjectIds.BaseAnalogType)
    w.variable(
        nid,
        space.tq(var.name),
        parent,
        NULL,
        datatype_of(var.vtype),
        description=var.description,
        history=history,
        status=status,
        **kwargs,
    )
    if var.unit:
        w.property(
            ua.NodeId(f"{nid.Identifier}/EngineeringUnits", nid.NamespaceIndex),
            "EngineeringUnits",
            nid,
            ua.Variant(eu_information(var.unit), V.ExtensionObject),
            ua.NodeId(ua.ObjectIds.EUInformation),
        )
