"""The OPC UA service put together: the server and every extension this installation has."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .accounts.view import AccountView
from .config import OpcUaConfig
from .payments import PaymentsView
from .service import OpcUaService

if TYPE_CHECKING:
    from openprepay.core.app.runtime import Runtime


def make_service(config: OpcUaConfig, runtime: Runtime) -> OpcUaService:
    """The service with every part of the address space this installation has."""
    return OpcUaService(config, runtime, extensions=[AccountView(), PaymentsView()])
