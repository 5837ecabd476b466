"""Building many nodes fast, straight into asyncua's address space.

asyncua's AddNodes path costs about half a millisecond per node (attribute objects built
one by one, checks of the parent's references); a site of 2,000 meters has well over
100,000 nodes. `NodeWriter` creates the same `NodeData` records directly: per-node
attributes (NodeId, BrowseName, DisplayName, Value) are fresh objects, the constant ones
(NodeClass, AccessLevel, DataType, ValueRank...) share one immutable DataValue, and the
references are the ones AddNodes would have made (forward from the parent, inverse to it,
HasTypeDefinition). Nothing here is reachable by clients until the server starts, and
nodes are never written through these shared values (clients cannot write attributes
other than Value, and Value is per node).
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import cache

from asyncua import ua
from asyncua.server.address_space import AddressSpace, AttributeValue, NodeData

A = ua.AttributeIds
HAS_COMPONENT = ua.NodeId(ua.ObjectIds.HasComponent)
HAS_PROPERTY = ua.NodeId(ua.ObjectIds.HasProperty)
ORGANIZES = ua.NodeId(ua.ObjectIds.Organizes)
HAS_TYPE_DEFINITION = ua.NodeId(ua.ObjectIds.HasTypeDefinition)
HAS_NOTIFIER = ua.NodeId(ua.ObjectIds.HasNotifier)
PROPERTY_TYPE = ua.NodeId(ua.ObjectIds.PropertyType)
BASE_DATA_VARIABLE_TYPE = ua.NodeId(ua.ObjectIds.BaseDataVariableType)
FOLDER_TYPE = ua.NodeId(ua.ObjectIds.FolderType)

READ = ua.AccessLevel.CurrentRead.mask
READ_HISTORY = ua.AccessLevel.CurrentRead.mask | ua.AccessLevel.HistoryRead.mask


@cache
def _const(value: object, vtype: ua.VariantType) -> ua.DataValue:
    return ua.DataValue(ua.Variant(value, vtype))


def _dv(value: object, vtype: ua.VariantType) -> ua.DataValue:
    return ua.DataValue(ua.Variant(value, vtype))


class NodeWriter:
    def __init__(self, aspace: AddressSpace) -> None:
        self.aspace = aspace
        self.created = 0
        #: ServerTimestamp of the initial values (set once; nodes are built in one go).
        self.now = _now()
        self._class = {
            nc: _const(int(nc), ua.VariantType.Int32)
            for nc in (ua.NodeClass.Object, ua.NodeClass.Variable, ua.NodeClass.Method)
        }
        self._zero_u32 = _const(0, ua.VariantType.UInt32)
        self._no_dimensions = ua.DataValue(ua.Variant(None, ua.VariantType.UInt32, is_array=True))
        self._scalar = _const(int(ua.ValueRank.Scalar), ua.VariantType.Int32)
        self._false = _const(False, ua.VariantType.Boolean)
        self._true = _const(True, ua.VariantType.Boolean)
        self._names: dict[tuple[str, int, str | None], tuple[AttributeValue, AttributeValue]] = {}
        # Attributes that never change are shared between nodes (see the module docstring).
        self._common_attrs = {
            nc: {
                A.NodeClass: AttributeValue(self._class[nc]),
                A.WriteMask: AttributeValue(self._zero_u32),
                A.UserWriteMask: AttributeValue(self._zero_u32),
            }
            for nc in self._class
        }
        self._var_attrs: dict[tuple[ua.NodeId, int], dict[ua.AttributeIds, AttributeValue]] = {}
        self._descriptions: dict[str, AttributeValue] = {}
        self._type_names: dict[ua.NodeId, tuple[ua.QualifiedName, ua.LocalizedText]] = {}

    def _variable_attrs(
        self, datatype: ua.NodeId, level: int
    ) -> dict[ua.AttributeIds, AttributeValue]:
        key = (datatype, level)
        attrs = self._var_attrs.get(key)
        if attrs is None:
            attrs = self._var_attrs[key] = {
                A.DataType: AttributeValue(_const(datatype, ua.VariantType.NodeId)),
                A.ValueRank: AttributeValue(self._scalar),
                A.ArrayDimensions: AttributeValue(self._no_dimensions),
                A.AccessLevel: AttributeValue(_const(level, ua.VariantType.Byte)),
                A.UserAccessLevel: AttributeValue(_const(level, ua.VariantType.Byte)),
                A.Historizing: AttributeValue(self._true if level & 4 else self._false),
                A.MinimumSamplingInterval: AttributeValue(_const(0.0, ua.VariantType.Double)),
            }
        return attrs

    def _description(self, text: str) -> AttributeValue:
        av = self._descriptions.get(text)
        if av is None:
            av = self._descriptions[text] = AttributeValue(
                ua.DataValue(ua.Variant(ua.LocalizedText(text), ua.VariantType.LocalizedText))
            )
        return av

    def exists(self, nodeid: ua.NodeId) -> bool:
        return nodeid in self.aspace

    # -- node kinds -----------------------------------------------------------------------
    def object(
        self,
        nodeid: ua.NodeId,
        name: ua.QualifiedName,
        parent: ua.NodeId,
        type_definition: ua.NodeId,
        *,
        reference: ua.NodeId = ORGANIZES,
        display: str | None = None,
        description: str | None = None,
        event_notifier: int = 0,
    ) -> NodeData:
        node = self._node(nodeid, ua.NodeClass.Object, name, display, description)
        attrs = node.attributes
        attrs[A.EventNotifier] = AttributeValue(
            _const(event_notifier, ua.VariantType.Byte)
            if event_notifier == 0
            else _dv(event_notifier, ua.VariantType.Byte)
        )
        self._link(node, ua.NodeClass.Object, name, parent, reference, type_definition)
        return node

    def variable(
        self,
        nodeid: ua.NodeId,
        name: ua.QualifiedName,
        parent: ua.NodeId,
        value: ua.Variant,
        datatype: ua.NodeId,
        *,
        type_definition: ua.NodeId = BASE_DATA_VARIABLE_TYPE,
        reference: ua.NodeId = HAS_COMPONENT,
        display: str | None = None,
        description: str | None = None,
        history: bool = False,
        status: ua.StatusCode | None = None,
    ) -> NodeData:
        node = self._node(nodeid, ua.NodeClass.Variable, name, display, description)
        attrs = node.attributes
        attrs[A.Value] = AttributeValue(_datavalue(value, status or _GOOD, self.now))
        level = READ_HISTORY if history else READ
        attrs.update(self._variable_attrs(datatype, level))
        self._link(node, ua.NodeClass.Variable, name, parent, reference, type_definition)
        return node

    def property(
        self,
        nodeid: ua.NodeId,
        name: str | ua.QualifiedName,
        parent: ua.NodeId,
        value: ua.Variant,
        datatype: ua.NodeId,
        *,
        description: str | None = None,
    ) -> NodeData:
        """A property (HasProperty, PropertyType); standard names go in namespace 0."""
        if isinstance(name, str):
            name = ua.QualifiedName(
                name, 0 if name in _STANDARD_PROPERTIES else nodeid.NamespaceIndex
            )
        return self.variable(
            nodeid,
            name,
            parent,
            value,
            datatype,
            type_definition=PROPERTY_TYPE,
            reference=HAS_PROPERTY,
            description=description,
        )

    def method(
        self,
        nodeid: ua.NodeId,
        name: ua.QualifiedName,
        parent: ua.NodeId,
        inputs: list[ua.Argument],
        outputs: list[ua.Argument],
        *,
        description: str | None = None,
    ) -> NodeData:
        """A method with its InputArguments/OutputArguments properties (no callback yet)."""
        node = self._node(nodeid, ua.NodeClass.Method, name, None, description)
        node.attributes[A.Executable] = AttributeValue(self._true)
        node.attributes[A.UserExecutable] = AttributeValue(self._true)
        self._link(node, ua.NodeClass.Method, name, parent, HAS_COMPONENT, ua.NodeId())
        for prop, args in (("InputArguments", inputs), ("OutputArguments", outputs)):
            if not args:
                continue
            pid = ua.NodeId(f"{nodeid.Identifier}/{prop}", nodeid.NamespaceIndex)
            value = ua.Variant(args, ua.VariantType.ExtensionObject, is_array=True)
            prop_node = self.property(pid, prop, nodeid, value, ua.NodeId(ua.ObjectIds.Argument))
            prop_node.attributes[A.ValueRank] = AttributeValue(
                _const(int(ua.ValueRank.OneDimension), ua.VariantType.Int32)
            )
            prop_node.attributes[A.ArrayDimensions] = AttributeValue(
                ua.DataValue(ua.Variant([len(args)], ua.VariantType.UInt32, is_array=True))
            )
            self.mandatory(pid)
        return node

    def mandatory(self, nodeid: ua.NodeId, optional: bool = False) -> None:
        """Mark an instance declaration of a type Mandatory (or Optional)."""
        rule = (
            ua.ObjectIds.ModellingRule_Optional
            if optional
            else ua.ObjectIds.ModellingRule_Mandatory
        )
        self.reference(
            nodeid, ua.NodeId(rule), ua.NodeId(ua.ObjectIds.HasModellingRule), inverse=False
        )

    def reference(
        self,
        source: ua.NodeId,
        target: ua.NodeId,
        reference: ua.NodeId,
        *,
        inverse: bool = True,
    ) -> None:
        """A reference between two existing nodes (e.g. an instance to a shared method)."""
        src = self.aspace[source]
        dst = self.aspace[target]
        src.references.append(self._describe(dst, reference, True))
        if inverse:
            dst.references.append(self._describe(src, reference, False))

    # -- plumbing -------------------------------------------------------------------------
    def _node(
        self,
        nodeid: ua.NodeId,
        node_class: ua.NodeClass,
        name: ua.QualifiedName,
        display: str | None,
        description: str | None,
    ) -> NodeData:
        if nodeid in self.aspace:
            raise ValueError(f"node {nodeid.to_string()} exists already")
        node = NodeData(nodeid)
        attrs = node.attributes
        attrs[A.NodeId] = AttributeValue(_datavalue(_scalar(nodeid, ua.VariantType.NodeId)))
        # Names repeat (every meter has an `energy_total`): share their attribute holders.
        key = (name.Name, name.NamespaceIndex, display)
        names = self._names.get(key)
        if names is None:
            names = self._names[key] = (
                AttributeValue(ua.DataValue(ua.Variant(name, ua.VariantType.QualifiedName))),
                AttributeValue(
                    ua.DataValue(
                        ua.Variant(
                            ua.LocalizedText(display or name.Name), ua.VariantType.LocalizedText
                        )
                    )
                ),
            )
        attrs[A.BrowseName], attrs[A.DisplayName] = names
        if description:
            attrs[A.Description] = self._description(description)
        attrs.update(self._common_attrs[node_class])
        self.aspace[nodeid] = node
        self.created += 1
        return node

    def _link(
        self,
        node: NodeData,
        node_class: ua.NodeClass,
        name: ua.QualifiedName,
        parent: ua.NodeId,
        reference: ua.NodeId,
        type_definition: ua.NodeId,
    ) -> None:
        parent_node = self.aspace[parent]
        display = node.attributes[A.DisplayName].value.Value.Value  # type: ignore[union-attr]
        parent_node.references.append(
            _ref(reference, True, node.nodeid, name, display, node_class, type_definition)
        )
        pattrs = parent_node.attributes
        node.references.append(
            _ref(
                reference,
                False,
                parent,
                pattrs[A.BrowseName].value.Value.Value,  # type: ignore[union-attr]
                pattrs[A.DisplayName].value.Value.Value,  # type: ignore[union-attr]
                self._class_of(parent, parent_node),
                _NULL_ID,
            )
        )
        if type_definition.is_null():
            return  # methods have no type definition
        names = self._type_names.get(type_definition)
        if names is None:
            type_node = self.aspace.get(type_definition)
            if type_node is not None:
                names = (
                    type_node.attributes[A.BrowseName].value.Value.Value,  # type: ignore[union-attr]
                    type_node.attributes[A.DisplayName].value.Value.Value,  # type: ignore[union-attr]
                )
            else:
                names = (ua.QualifiedName(), ua.LocalizedText())
            self._type_names[type_definition] = names
        typeclass = (
            ua.NodeClass.VariableType
            if node_class is ua.NodeClass.Variable
            else ua.NodeClass.ObjectType
        )
        node.references.append(
            _ref(
                HAS_TYPE_DEFINITION, True, type_definition, names[0], names[1], typeclass, _NULL_ID
            )
        )

    @staticmethod
    def _class_of(nodeid: ua.NodeId, node: NodeData) -> ua.NodeClass:
        return ua.NodeClass(node.attributes[A.NodeClass].value.Value.Value)  # type: ignore[union-attr]

    def _describe(
        self, node: NodeData, reference: ua.NodeId, forward: bool
    ) -> ua.ReferenceDescription:
        typedef = _NULL_ID
        for ref in node.references:
            if ref.IsForward and ref.ReferenceTypeId == HAS_TYPE_DEFINITION:
                typedef = ref.NodeId
                break
        return _ref(
            reference,
            forward,
            node.nodeid,
            node.attributes[A.BrowseName].value.Value.Value,  # type: ignore[union-attr]
            node.attributes[A.DisplayName].value.Value.Value,  # type: ignore[union-attr]
            self._class_of(node.nodeid, node),
            typedef,
        )


def _ref(
    reference: ua.NodeId,
    forward: bool,
    target: ua.NodeId,
    name: ua.QualifiedName,
    display: ua.LocalizedText,
    node_class: ua.NodeClass,
    type_definition: ua.NodeId,
) -> ua.ReferenceDescription:
    """A ReferenceDescription without its dataclass __init__ (five default factories that
    would all be overwritten: the dominant cost of building a large tree)."""
    r = _new_ref(ua.ReferenceDescription)
    r.ReferenceTypeId = reference
    r.IsForward = forward
    r.NodeId = target
    r.BrowseName = name
    r.DisplayName = display
    r.NodeClass = node_class
    r.TypeDefinition = type_definition
    return r


_new_ref = object.__new__


def _scalar(value: object, vtype: ua.VariantType) -> ua.Variant:
    """A scalar Variant of a known type without the dataclass checks (hot path; the value
    is of the right type by construction)."""
    v = _new_ref(ua.Variant)
    v.Value = value
    v.VariantType = vtype
    v.Dimensions = None
    v.is_array = False
    return v


def _datavalue(
    value: ua.Variant, status: ua.StatusCode | None = None, server_time: datetime | None = None
) -> ua.DataValue:
    dv = _new_ref(ua.DataValue)
    dv.Encoding = 0
    dv.Value = value
    dv.StatusCode = status if status is not None else _GOOD
    dv.SourceTimestamp = None
    dv.ServerTimestamp = server_time
    dv.SourcePicoseconds = None
    dv.ServerPicoseconds = None
    return dv


_NULL_ID = ua.NodeId()
_GOOD = ua.StatusCode()


_STANDARD_PROPERTIES = frozenset(
    {"EngineeringUnits", "EURange", "InputArguments", "OutputArguments"}
)


def _now() -> datetime:
    return datetime.now(UTC)
