"""The address space: its namespaces, object types, methods, point variables and lookups.

Two namespaces:

- `urn:openprepay:types` — the object types a SCADA templates its screens on (SiteType,
  BuildingType, FloorType, RoomType, MeterType → ElectricMeterType / WaterMeterType,
  DeviceHealthType, LinkType, AccountType), their instance declarations, their methods
  and the event types. Child browse names (`energy_total`, `Balance`...) live here too.
- `urn:openprepay:site:<site id>` — the instances. NodeIds are strings built from the
  ids in the site file and the ledger (`Meter:E-A-101/energy_total`, `Account:A-101`,
  `Room:A-101`), so they are the same after every restart and a SCADA screen keeps working.

The tree of sites, buildings, rooms, meters and links is built by site_tree.py, accounts
by the accounts extension (accounts/nodes.py); this module adds the
`OpenPrepay/Diagnostics/<source>` objects (historian statistics...) on their first sample,
and keeps the lookups all of them fill. Which variable shows which point: bindings.py.

Methods are declared once on the types and referenced by every instance; the Call's
ObjectId tells which meter or account it is about.

A meter variable whose register the device profile marks unverified (`PointSpec.verified`
is false: a single source, or inference) has a `Verified` property (Boolean, false).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from asyncua import Node, Server, ua

from openprepay.core.config.site import Site
from openprepay.core.field.diagnostics import HEALTH_MODEL, LINK_MODEL
from openprepay.core.model import DeviceModel, MeterKind, PointRole, PointSpec, ValueType

from .bindings import NULL, WAITING, HistoryTarget, PointBinding, SourceBinding, Target
from .nodes import FOLDER_TYPE, HAS_COMPONENT, NodeWriter
from .units import eu_information

TYPES_URI = "urn:openprepay:types"
ANALOG_ITEM = ua.NodeId(ua.ObjectIds.AnalogItemType)
BASE_ANALOG = ua.NodeId(ua.ObjectIds.BaseAnalogType)
SUBSCRIBE_TO_EVENTS = ua.EventNotifier.SubscribeToEvents.mask

_VTYPE = {
    ValueType.FLOAT: (ua.VariantType.Double, ua.NodeId(ua.ObjectIds.Double), float),
    ValueType.INT: (ua.VariantType.Int32, ua.NodeId(ua.ObjectIds.Int32), int),
    ValueType.BOOL: (ua.VariantType.Boolean, ua.NodeId(ua.ObjectIds.Boolean), bool),
}


def site_uri(site_id: str) -> str:
    return f"urn:openprepay:site:{site_id}"


def history_worthy(model: DeviceModel, spec: PointSpec) -> bool:
    """Energy, power, valve/relay state (and account balances): served by HistoryRead."""
    if model.kind is MeterKind.ACCOUNT:
        return spec.name.endswith("_fen") or spec.name in ("alarm_level", "supply_on")
    if model.kind not in (MeterKind.ELECTRIC, MeterKind.WATER):
        return False
    if spec.role in (PointRole.CUMULATIVE, PointRole.STATE):
        return True
    return spec.name.startswith(("power", "flow"))


class Space:
    """Builds the address space and keeps the lookups the publisher and methods need."""

    def __init__(
        self,
        server: Server,
        site: Site,
        models: Mapping[str, DeviceModel],
        *,
        history: bool = True,
        timestamp_refresh_s: float | None = None,
    ) -> None:
        self.server = server
        self.site = site
        self.models = models
        self.history = history
        #: None: each meter's poll interval.
        self.timestamp_refresh_s = timestamp_refresh_s
        self.writer = NodeWriter(server.iserver.aspace)
        self.t = 0  # types namespace index
        self.i = 0  # instances namespace index
        self.bindings: dict[tuple[str, str], SourceBinding] = {}
        self.history_targets: dict[ua.NodeId, HistoryTarget] = {}
        self.targets: dict[ua.NodeId, Target] = {}
        self.meter_nodes: dict[str, ua.NodeId] = {}
        self.link_nodes: dict[str, ua.NodeId] = {}
        self.room_nodes: dict[str, ua.NodeId] = {}
        self.room_online: dict[str, ua.NodeId] = {}
        self.meter_bindings: dict[str, SourceBinding] = {}
        self.account_nodes: dict[str, ua.NodeId] = {}
        #: room id -> meter ids, for the room's Online variable
        self.room_meters: dict[str, list[str]] = {}
        self.meter_room: dict[str, str] = {}
        self.types: dict[str, ua.NodeId] = {}
        #: method name -> method node on its type, filled by `declare_method`
        self.methods: dict[tuple[str, str], ua.NodeId] = {}

    # -- ids --------------------------------------------------------------------------------
    def tid(self, name: str) -> ua.NodeId:
        return ua.NodeId(name, self.t)

    def tq(self, name: str) -> ua.QualifiedName:
        return ua.QualifiedName(name, self.t)

    def iid(self, name: str) -> ua.NodeId:
        return ua.NodeId(name, self.i)

    def iq(self, name: str) -> ua.QualifiedName:
        return ua.QualifiedName(name, self.i)

    # -- namespaces and types -----------------------------------------------------------------
    async def register_namespaces(self) -> None:
        self.t = await self.server.register_namespace(TYPES_URI)
        self.i = await self.server.register_namespace(site_uri(self.site.id))

    async def build_types(self) -> None:
        base = self.server.nodes.base_object_type
        folder = Node(self.server.iserver.isession, FOLDER_TYPE)
        for name in ("SiteType", "BuildingType", "FloorType", "RoomType"):
            await self._object_type(folder, name)
        meter = await self._object_type(base, "MeterType", abstract=True)
        electric = await self._object_type(meter, "ElectricMeterType")
        water = await self._object_type(meter, "WaterMeterType")
        health = await self._object_type(base, "DeviceHealthType")
        link = await self._object_type(base, "LinkType")
        await self._object_type(base, "AccountType")
        await self._object_type(base, "DiagnosticsType")

        w = self.writer
        for prop in ("Name", "TimeZone", "Currency"):
            self.type_property("SiteType", prop, "")
        self.type_property("BuildingType", "Name", "")
        self.type_property("RoomType", "Name", "")
        self.type_property("RoomType", "AreaM2", 0.0, ua.VariantType.Double, optional=True)
        self._type_variable("RoomType", "Online", ua.VariantType.Boolean, None)

        for prop in ("MeterId", "Model", "Vendor", "Product", "ControlMode", "LinkId", "Location"):
            self.type_property("MeterType", prop, "")
        self.type_property("MeterType", "UnitId", 0, ua.VariantType.Int32)
        self._type_variable("MeterType", "Online", ua.VariantType.Boolean, None)
        comm = w.object(
            self.tid("MeterType/Communication"),
            self.tq("Communication"),
            meter.nodeid,
            health.nodeid,
            reference=HAS_COMPONENT,
        )
        w.mandatory(comm.nodeid)
        for spec in HEALTH_MODEL.points:
            self._type_point("DeviceHealthType", HEALTH_MODEL, spec)
            self._type_point("MeterType/Communication", HEALTH_MODEL, spec)
        for spec in LINK_MODEL.points:
            self._type_point("LinkType", LINK_MODEL, spec)
        self.type_property("LinkType", "Address", "")
        self.type_property("LinkType", "LinkKind", "")

        # Every point any installed model of the kind has, as an Optional declaration.
        for type_name, kind in (
            ("ElectricMeterType", MeterKind.ELECTRIC),
            ("WaterMeterType", MeterKind.WATER),
        ):
            seen: set[str] = set()
            for model in sorted(self.models.values(), key=lambda m: m.name):
                if model.kind is not kind:
                    continue
                for spec in model.points:
                    if spec.name in seen:
                        continue
                    seen.add(spec.name)
                    self._type_point(type_name, model, spec, optional=True)
        self.types.update(
            {
                "ElectricMeterType": electric.nodeid,
                "WaterMeterType": water.nodeid,
                "MeterType": meter.nodeid,
                "DeviceHealthType": health.nodeid,
                "LinkType": link.nodeid,
            }
        )

    async def _object_type(self, parent: Node, name: str, abstract: bool = False) -> Node:
        node = await parent.add_object_type(self.tid(name), self.tq(name))
        if abstract:
            await node.write_attribute(
                ua.AttributeIds.IsAbstract, ua.DataValue(ua.Variant(True, ua.VariantType.Boolean))
            )
        self.types[name] = node.nodeid
        return node

    def type_property(
        self,
        owner: str,
        name: str,
        value: Any,
        vtype: ua.VariantType = ua.VariantType.String,
        *,
        optional: bool = False,
    ) -> None:
        nid = self.tid(f"{owner}/{name}")
        self.writer.property(
            nid, self.tq(name), self.tid(owner), ua.Variant(value, vtype), datatype_of(vtype)
        )
        self.writer.mandatory(nid, optional=optional)

    def _type_variable(self, owner: str, name: str, vtype: ua.VariantType, value: Any) -> None:
        nid = self.tid(f"{owner}/{name}")
        self.writer.variable(
            nid,
            self.tq(name),
            self.tid(owner),
            NULL if value is None else ua.Variant(value, vtype),
            datatype_of(vtype),
        )
        self.writer.mandatory(nid)

    def _type_point(
        self, owner: str, model: DeviceModel, spec: PointSpec, *, optional: bool = False
    ) -> None:
        nid = self.tid(f"{owner}/{spec.name}")
        self._point_variable(nid, self.tid(owner), model, spec, history=False, initial=None)
        self.writer.mandatory(nid, optional=optional)

    # -- methods ------------------------------------------------------------------------------
    def declare_method(
        self,
        owner: str,
        name: str,
        inputs: list[ua.Argument],
        outputs: list[ua.Argument],
        callback: Callable[..., Any],
        description: str,
    ) -> ua.NodeId:
        nid = self.tid(f"{owner}/{name}")
        self.writer.method(
            nid, self.tq(name), self.tid(owner), inputs, outputs, description=description
        )
        self.writer.mandatory(nid)
        self.server.iserver.isession.add_method_callback(nid, callback)
        self.methods[(owner, name)] = nid
        return nid

    def attach_methods(self, instance: ua.NodeId, *owners: str) -> None:
        for (owner, _name), method in self.methods.items():
            if owner in owners:
                self.writer.reference(instance, method, HAS_COMPONENT, inverse=False)

    def bind_points(
        self, source: str, model: DeviceModel, parent: ua.NodeId, base: str
    ) -> SourceBinding:
        binding = SourceBinding(source, parent)
        for spec in model.points:
            nid = self.iid(f"{base}/{spec.name}")
            history = self.history and history_worthy(model, spec)
            self._point_variable(nid, parent, model, spec, history=history, initial=WAITING)
            if not spec.verified:
                self.writer.property(
                    ua.NodeId(f"{nid.Identifier}/Verified", nid.NamespaceIndex),
                    self.tq("Verified"),
                    nid,
                    ua.Variant(False, ua.VariantType.Boolean),
                    datatype_of(ua.VariantType.Boolean),
                    description="False: the register rests on a single source or on "
                    "inference (the device profile), not on a test with the hardware"
                    + (f"; source: {spec.source}" if spec.source else ""),
                )
            vtype, _, convert = _VTYPE[spec.value_type]
            binding.points.append((spec.name, PointBinding(nid, vtype, convert)))
            if history:
                self.history_targets[nid] = HistoryTarget(source, spec.name, vtype, convert)
        self.bindings[(source, model.name)] = binding
        return binding

    def _point_variable(
        self,
        nid: ua.NodeId,
        parent: ua.NodeId,
        model: DeviceModel,
        spec: PointSpec,
        *,
        history: bool,
        initial: ua.StatusCode | None,
    ) -> None:
        w = self.writer
        _, datatype, _ = _VTYPE[spec.value_type]
        analog = bool(spec.unit) and spec.value_type is not ValueType.BOOL
        low, high = _range(spec)
        typedef = (ANALOG_ITEM if low is not None else BASE_ANALOG) if analog else None
        kwargs: dict[str, Any] = {}
        if typedef is not None:
            kwargs["type_definition"] = typedef
        w.variable(
            nid,
            self.tq(spec.name),
            parent,
            NULL,
            datatype,
            description=spec.description + (f" [{spec.unit}]" if spec.unit else ""),
            history=history,
            status=initial,
            **kwargs,
        )
        if analog:
            w.property(
                ua.NodeId(f"{nid.Identifier}/EngineeringUnits", nid.NamespaceIndex),
                "EngineeringUnits",
                nid,
                ua.Variant(eu_information(spec.unit), ua.VariantType.ExtensionObject),
                ua.NodeId(ua.ObjectIds.EUInformation),
            )
            if low is not None:
                w.property(
                    ua.NodeId(f"{nid.Identifier}/EURange", nid.NamespaceIndex),
                    "EURange",
                    nid,
                    ua.Variant(ua.Range(low, high), ua.VariantType.ExtensionObject),
                    ua.NodeId(ua.ObjectIds.Range),
                )

    # -- accounts and other late sources ----------------------------------------------------------
    def add_pseudo_source(self, source: str, model: DeviceModel) -> SourceBinding:
        """Statistics of a source the site file does not know (the historian): created on
        its first sample under OpenPrepay/Diagnostics."""
        folder = self.iid("OpenPrepay/Diagnostics")
        if not self.writer.exists(folder):
            self.folder("OpenPrepay/Diagnostics", "Diagnostics", self.iid("OpenPrepay"))
        base = f"Diagnostics:{source}"
        node = self.iid(base)
        if not self.writer.exists(node):
            self.writer.object(
                node,
                self.iq(source),
                folder,
                self.types["DiagnosticsType"],
                description=model.description,
                event_notifier=SUBSCRIBE_TO_EVENTS,
            )
        return self.bind_points(source, model, node, f"{base}/{model.name}")

    # -- helpers ------------------------------------------------------------------------------
    def folder(self, ident: str, name: str, parent: ua.NodeId) -> ua.NodeId:
        node = self.writer.object(self.iid(ident), self.tq(name), parent, FOLDER_TYPE)
        return node.nodeid

    def add_properties(self, parent: ua.NodeId, base: str, props: Mapping[str, Any]) -> None:
        for name, value in props.items():
            self.add_property(parent, f"{base}/{name}", name, value or "", ua.VariantType.String)

    def add_property(
        self, parent: ua.NodeId, ident: str, name: str, value: Any, vtype: ua.VariantType
    ) -> None:
        nid = self.iid(ident)
        value = ua.Variant(value, vtype)
        self.writer.property(nid, self.tq(name), parent, value, datatype_of(vtype))

    def meters_of_room(self, room: str) -> Iterable[str]:
        return self.room_meters.get(room, ())


def datatype_of(vtype: ua.VariantType) -> ua.NodeId:
    return ua.NodeId(int(vtype)) if int(vtype) <= 25 else ua.NodeId(ua.ObjectIds.BaseDataType)


def _range(spec: PointSpec) -> tuple[float | None, float | None]:
    if spec.low is not None and spec.high is not None:
        return float(spec.low), float(spec.high)
    if spec.role is PointRole.CUMULATIVE and spec.rollover is not None:
        return 0.0, float(spec.rollover)
    return None, None
