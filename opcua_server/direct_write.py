"""Value writes into asyncua's address space without a coroutine per write.

`AddressSpace.write_attribute_value` is a coroutine: for each of the tens of thousands of
variables a large site writes a second it looks the node up, checks the variant type
against the node's, stores the DataValue, then awaits each subscriber's callback. The
publisher's values already carry the variable's own VariantType (its binding's), so the
check can never refuse them, and most variables have no subscriber. `DirectWriter.write`
stores such a value in the variable's `AttributeValue` itself (what asyncua's method does
for it) and returns None; a variable with a monitored item or a value setter returns
asyncua's own coroutine, which the caller awaits, so subscriptions see every write.

It reaches into asyncua 2.1's `NodeData.attributes` / `AttributeValue` (setup.cfg pins
asyncua to 2.1.x); tests/opcua_server/test_direct_write.py fails if those change.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

from asyncua import ua
from asyncua.server.address_space import AddressSpace, AttributeValue

from .bindings import PointBinding

VALUE = ua.AttributeIds.Value


class DirectWriter:
    def __init__(self, aspace: AddressSpace) -> None:
        self.aspace = aspace
        #: Writes stored directly, and handed to asyncua (a subscriber or a setter).
        self.direct = 0
        self.awaited = 0

    def write(self, point: PointBinding, value: ua.DataValue) -> Coroutine[Any, Any, Any] | None:
        """Store `value` (of the variable's own VariantType) as the Value of `point`'s
        variable; returns a coroutine to await when subscribers must hear of it, else None.
        The variable's storage is looked up once and kept on the binding (nodes are never
        deleted from a running address space)."""
        attval: AttributeValue | None = point.target
        if attval is None:
            node = self.aspace._nodes.get(point.nodeid)
            if node is None or VALUE not in node.attributes:
                return self.aspace.write_attribute_value(point.nodeid, VALUE, value)  # its error
            attval = point.target = node.attributes[VALUE]
        if attval.datachange_callbacks or attval.value_setter is not None:
            self.awaited += 1
            return self.aspace.write_attribute_value(point.nodeid, VALUE, value)
        attval.value = value
        attval.value_callback = None
        self.direct += 1
        return None
