"""The door's tests run on the prepayment engine's fixtures (a simulated site, the device
and notify plugins only)."""

from tests.core.prepay.conftest import _without_other_services, kinds, plugins, running

__all__ = ["_without_other_services", "kinds", "plugins", "running"]
