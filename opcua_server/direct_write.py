"""Values into asyncua's address space without a coroutine, or a DataValue, per write.

`AddressSpace.write_attribute_value` is a coroutine: for each of the tens of thousands of
variables a large site writes a second it looks the node up, checks the variant type
against the node's, stores a DataValue, then awaits each subscriber's callback. The
publisher's values already carry the variable's own VariantType (its binding's), so the
check can never refuse them, and most variables have no subscriber.

So `DirectWriter.store(point)` takes what the point's binding now shows (value, status,
source and server time, set by the publisher) and:

- when no client monitors the variable, makes the binding itself the variable's value
  callback (a `PointBinding` called is its `data_value`): nothing is built until a client
  reads it, and the address space holds no DataValue, Variant and StatusCode objects per
  variable, nor a bound method (fewer long-lived objects for the collector to walk);
  returns None;
- when a client monitors it, stores a DataValue and returns a coroutine that calls the
  monitored items' callbacks as asyncua would, for the caller to await: subscriptions see
  every write, and a new monitored item reads the current value through the callback;
  once told, a monitored item lets go of the value before the one it holds (below);
- a variable with a value setter (or one not found) goes through asyncua's own method.

asyncua's monitored item keeps the value before its current one (`old_dvalue`) until the
next change, though it only compares the two while it is told of that change: dropped
after telling, a monitored variable holds one DataValue and Variant (shared with the
address space) instead of two of each, for every full collection to walk.

It reaches into asyncua 2.1's `NodeData.attributes` / `AttributeValue` and the monitored
item service's `_monitored_datachange` / `_monitored_items` (setup.cfg pins asyncua to
2.1.x); tests/opcua_server/test_direct_write.py fails if those change.
"""

from __future__ import annotations

import logging
from collections.abc import Coroutine
from typing import Any

from asyncua import ua
from asyncua.server.address_space import AddressSpace, AttributeValue

from .bindings import PointBinding

log = logging.getLogger("openprepay.opcua")

VALUE = ua.AttributeIds.Value


class DirectWriter:
    def __init__(self, aspace: AddressSpace) -> None:
        self.aspace = aspace
        #: Values stored without a coroutine, and those subscribers were told of.
        self.direct = 0
        self.awaited = 0

    def store(self, point: PointBinding) -> Coroutine[Any, Any, Any] | None:
        """Show what `point` now holds in its variable (see the module docstring); returns
        a coroutine to await when subscribers must hear of it, else None. The variable's
        storage is looked up once and kept on the binding (nodes are never deleted from a
        running address space)."""
        attval: AttributeValue | None = point.target
        if attval is None:
            node = self.aspace._nodes.get(point.nodeid)
            if node is None or VALUE not in node.attributes:
                return self._through_asyncua(point)  # its error
            attval = point.target = node.attributes[VALUE]
        if attval.value_setter is not None:
            return self._through_asyncua(point)
        if attval.datachange_callbacks:
            self.awaited += 1
            value = point.data_value()
            attval.value = value
            attval.value_callback = None
            return _tell(attval, value)
        if attval.value_callback is not point:
            # The binding itself, not `point.data_value`: a bound method would be one more
            # object per variable for the collector to walk (~300,000 per 10,000 meters).
            attval.value_callback = point
            attval.value = None  # the callback answers reads
        self.direct += 1
        return None

    def _through_asyncua(self, point: PointBinding) -> Coroutine[Any, Any, Any]:
        self.awaited += 1
        return self.aspace.write_attribute_value(point.nodeid, VALUE, point.data_value())


async def _tell(attval: AttributeValue, value: ua.DataValue) -> None:
    """Each monitored item of the variable hears of the value (what asyncua's
    `write_attribute_value` does after storing it)."""
    for handle, callback in list(attval.datachange_callbacks.items()):
        try:
            await callback(handle, value)
        except Exception:
            log.exception("telling monitored item %s of a value failed", handle)
        _forget_the_value_before(callback, handle)


def _forget_the_value_before(callback: Any, handle: int) -> None:
    """The monitored item behind `callback` (asyncua's `MonitoredItemService.
    datachange_callback`) no longer holds its previous value: the next change moves the
    current one there before comparing, so nothing reads it again."""
    service = getattr(callback, "__self__", None)
    try:
        item = service._monitored_items[service._monitored_datachange[handle]]  # type: ignore[union-attr]
        item.mvalue.old_dvalue = None
    except (AttributeError, KeyError):  # another kind of callback, or the item just left
        pass
