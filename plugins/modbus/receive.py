"""Reading a socket without a fresh 256 KiB buffer per read.

A plain `asyncio.Protocol` is fed by `sock.recv(256 KiB)`: a new bytes object of that size
per read, shrunk to what arrived — about 20 us each on this box, most of a Modbus
transaction's own cost. `StandingBufferProtocol` is read into one standing area per thread
(an event loop calls `get_buffer` and `buffer_updated` back to back, so the area is free
again before the next read) and hands `data_received` the bytes that arrived, as a plain
Protocol would: the lean client (connection.py) and the lean server (lean_server.py).
"""

from __future__ import annotations

import asyncio
import threading

RECEIVE_SIZE = 256 * 1024  # asyncio's own read size for a plain Protocol


class _ReceiveArea(threading.local):
    def __init__(self) -> None:
        self.view = memoryview(bytearray(RECEIVE_SIZE))


_RECEIVE = _ReceiveArea()


class StandingBufferProtocol(asyncio.BufferedProtocol):
    def get_buffer(self, sizehint: int) -> memoryview:
        return _RECEIVE.view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(_RECEIVE.view[:nbytes]))

    def data_received(self, data: bytes) -> None:
        raise NotImplementedError
