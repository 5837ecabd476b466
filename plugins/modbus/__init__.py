"""Modbus toolkit: links (serial, RTU over TCP, Modbus TCP), register profiles, a
profile-driven driver and a simulator host. Device plugins for Modbus meters build on it;
a third-party Modbus meter plugin needs only a profile file and a few lines of hooks."""

from .catalogue import ProfileCatalogue
from .codec import PointCodec, WireType
from .driver import ProfileDriver
from .profile import RegisterProfile, load_profile, load_profiles
from .simulation import GatewaySimulator, RegisterDeviceSimulator, SimClock
from .transport import ModbusTransport

__all__ = [
    "GatewaySimulator",
    "ModbusTransport",
    "PointCodec",
    "ProfileCatalogue",
    "ProfileDriver",
    "RegisterDeviceSimulator",
    "RegisterProfile",
    "SimClock",
    "WireType",
    "load_profile",
    "load_profiles",
]
