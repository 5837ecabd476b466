"""Value writes into asyncua's address space without a coroutine per write.

`AddressSpace.write_attribute_value` is a coroutine: for each of the tens of thousands of
variables a large site writes a second it looks the node up, checks the variant type
against the node's, stores the DataValue, then awaits each subscriber's callback. The
publisher's values already carry the variable's own VariantType (its binding's), so the
check can never refuse them. `DirectWriter.write` stores the value in the variable's
`AttributeValue` itself (what asyncua's method does for it) and returns None when no client
monitors the variable; when one does it returns a coroutine that calls the monitored
items' callbacks as asyncua would, which the caller awaits, so subscriptions see every
write. A variable with a value setter goes through asyncua's own method.

It reaches into asyncua 2.1's `NodeData.attributes` / `AttributeValue` (setup.cfg pins
asyncua to 2.1.x); tests/opcua_server/test_direct_write.py fails if those change.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Coroutine
from typing import Any

from asyncua import ua
from asyncua.server.address_space import AddressSpace, AttributeValue

from .bindings import PointBinding

log = logging.getLogger("openprepay.opcua")

VALUE = ua.AttributeIds.Value
NULL = ua.Variant(None, ua.VariantType.Null)


class SharedDataValue(ua.DataValue):
    """A DataValue nobody changes once it is built. asyncua deep-copies every value it
    hands to a monitored item (`MonitoredItemValues.set_current_datavalue`), in case the
    writer changes its object later; the publisher builds a fresh one per write and never
    touches it again (its Variant is frozen), so the copy can be the value itself — the
    copy was a fifth of the publisher's time with one client on every meter."""

    __slots__ = ()

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedDataValue:
        return self


class DirectWriter:
    def __init__(self, aspace: AddressSpace) -> None:
        self.aspace = aspace
        #: Writes stored directly, and those subscribers were told of.
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
        if attval.value_setter is not None:
            self.awaited += 1
            return self.aspace.write_attribute_value(point.nodeid, VALUE, value)
        if value.StatusCode is not None and value.StatusCode.is_bad():
            value = dataclasses.replace(value, Value=NULL)  # as asyncua stores a Bad value
        attval.value = value
        attval.value_callback = None
        if not attval.datachange_callbacks:
            self.direct += 1
            return None
        self.awaited += 1
        return _tell(attval, value)


async def _tell(attval: AttributeValue, value: ua.DataValue) -> None:
    """Each monitored item of the variable hears of the value (what asyncua's
    `write_attribute_value` does after storing it)."""
    for handle, callback in list(attval.datachange_callbacks.items()):
        try:
            await callback(handle, value)
        except Exception:
            log.exception("telling monitored item %s of a value failed", handle)
