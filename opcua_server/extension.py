"""The contract between the OPC UA service and a server extension.

An extension adds nodes to the address space and follows the core's events; the
prepayment part (opcua_server/accounts) is one. The service calls an extension only
through `ServerExtension`, and an extension sees the service only through `ExtensionHost`,
so neither module imports the other. Whoever assembles the service (assembly.py) passes
the extensions in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from asyncua import ua

from openprepay.core.events import Event

from .access import SessionUser
from .config import OpcUaConfig
from .events import ConditionMethodService, EventEmitter
from .guard import SecurityCounters
from .publisher import Publisher
from .space import Space
from .transport import OpenPrepayServer
from .users import Role

if TYPE_CHECKING:
    from openprepay.core.app.runtime import Runtime


class ExtensionHost(Protocol):
    """What a running OPC UA service offers its extensions (None: not built yet)."""

    config: OpcUaConfig
    runtime: Runtime
    server: OpenPrepayServer | None
    space: Space | None
    publisher: Publisher | None
    events: EventEmitter | None
    #: Roles allowed to call each method (the ruleset checks them before the call).
    method_roles: dict[ua.NodeId, frozenset[Role]]
    #: Serves methods called on ConditionIds (Acknowledge), which are not nodes.
    condition_methods: ConditionMethodService | None
    counters: SecurityCounters


class ServerExtension(Protocol):
    """A part of the address space the service builds, starts and feeds, in this order."""

    async def declare(self, host: ExtensionHost) -> None:
        """Add types and methods: after the base types, before the site tree."""

    async def build(self, host: ExtensionHost) -> None:
        """Add instances: after the site tree, before the server listens."""

    async def start(self, host: ExtensionHost) -> None:
        """Begin work: the server listens and the publisher runs."""

    async def stop(self, host: ExtensionHost) -> None:
        """End work, before the publisher and the server stop."""

    def on_event(self, host: ExtensionHost, event: Event) -> None:
        """A core event from the bus (after the service's own events for it)."""

    def refused(
        self, host: ExtensionHost, user: SessionUser | None, calls: list[ua.CallMethodRequest]
    ) -> None:
        """Method calls the role ruleset refused before they reached a callback."""
