"""The OPC UA standard address space, loaded once per process and cloned after that.

asyncua builds the standard nodes (types, the Server object...) through its AddNodes path
at every `Server.init()`: 1–5 s of CPU on a small machine, for every server start — the
test suites of every part of OpenPrepay start runtimes, and each runtime with a site file
starts an OPC UA server. `FastInternalServer` builds it the normal way once, keeps a
pristine copy, and gives later servers in the same process a clone: new node records and
attribute holders, sharing only the immutable parts (scalar DataValues, reference
descriptions). Values that hold lists or structures are deep-copied, because asyncua
itself edits some of them in place (NamespaceArray, ServerArray). Anything unexpected
falls back to the normal build.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import logging
import threading
from pathlib import Path

from asyncua import ua
from asyncua.server.address_space import AttributeValue, NodeData
from asyncua.server.internal_server import InternalServer

log = logging.getLogger("openprepay.opcua")

_template: dict[ua.NodeId, NodeData] | None = None
_lock = threading.Lock()
_IMMUTABLE = (
    type(None),
    bool,
    int,
    float,
    str,
    bytes,
    ua.NodeId,
    ua.QualifiedName,
    ua.LocalizedText,
)


def _clone_value(dv: ua.DataValue | None) -> ua.DataValue | None:
    if dv is None or dv.Value is None or isinstance(dv.Value.Value, _IMMUTABLE):
        return dv
    return copy.deepcopy(dv)


def clone_nodes(nodes: dict[ua.NodeId, NodeData]) -> dict[ua.NodeId, NodeData]:
    enabled = gc.isenabled()
    gc.disable()  # ~75,000 long-lived objects: collecting while allocating them triples the cost
    try:
        return _clone(nodes)
    finally:
        if enabled:
            gc.enable()


def _clone(nodes: dict[ua.NodeId, NodeData]) -> dict[ua.NodeId, NodeData]:
    out: dict[ua.NodeId, NodeData] = {}
    value_attr = ua.AttributeIds.Value
    for nodeid, node in nodes.items():
        twin = NodeData(nodeid)
        attrs = twin.attributes
        for attr, av in node.attributes.items():
            if av.value_callback is not None or av.value_setter is not None:
                raise ValueError(f"{nodeid}: attribute {attr} has a callback")
            attrs[attr] = AttributeValue(_clone_value(av.value) if attr == value_attr else av.value)
        twin.references = list(node.references)
        if node.call is not None:
            raise ValueError(f"{nodeid}: method callback in the template")
        out[nodeid] = twin
    return out


class FastInternalServer(InternalServer):
    async def load_standard_address_space(self, shelf_file: Path | None = None) -> None:
        global _template
        template = _template
        if template is not None and shelf_file is None:
            try:
                self.aspace._nodes = await asyncio.to_thread(clone_nodes, template)  # type: ignore[assignment]
                return
            except Exception as exc:  # never let the shortcut stop a server
                log.warning("cloning the standard address space failed (%s); building it", exc)
                self.aspace._nodes = {}  # type: ignore[assignment]
        await super().load_standard_address_space(shelf_file)
        if shelf_file is None:
            try:
                snapshot = await asyncio.to_thread(clone_nodes, dict(self.aspace._nodes))
            except Exception as exc:
                log.debug("standard address space not cached: %s", exc)
                return
            with _lock:
                if _template is None:
                    _template = snapshot
