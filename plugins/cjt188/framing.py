"""How a CJ/T 188 frame is found in the bytes of a link (for plugins/framed)."""

from __future__ import annotations

from openprepay.plugins.framed import FrameScan

from . import codec


class Cjt188Framing:
    name = "CJ/T 188"
    #: FE FE before each request, as the standard's implementations send it [C1, C2].
    preamble = bytes([codec.WAKE]) * 2

    def scan(self, buffer: bytes) -> FrameScan:
        start = 0
        while start < len(buffer) and buffer[start] == codec.WAKE:
            start += 1
        try:
            length = codec.frame_length(buffer)
        except codec.FrameError as exc:
            return FrameScan(start, problem=str(exc))
        if length is None or len(buffer) < length:
            return FrameScan(start)
        return FrameScan(start, length)


FRAMING = Cjt188Framing()
