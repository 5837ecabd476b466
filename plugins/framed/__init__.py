"""Protocol-neutral framed links: a transport for meters whose frames carry their own length
(DL/T 645-2007, CJ/T 188-2004) on an RS-485 bus or behind a transparent TCP gateway, and a
simulated bus that delivers bytes at the link's baud rate. A protocol plugin supplies a
`Framing` (preamble, how to find a complete frame); the link arbiter owns the transport
exactly as it owns a Modbus one. See README.md in this folder."""

from .framing import FrameScan, Framing
from .simulation import BusDevice, SimulatedBus
from .streams import ByteStream, SerialStream, TcpStream, open_stream
from .transport import FramedTransport

__all__ = [
    "BusDevice",
    "ByteStream",
    "FrameScan",
    "FramedTransport",
    "Framing",
    "SerialStream",
    "SimulatedBus",
    "TcpStream",
    "open_stream",
]
