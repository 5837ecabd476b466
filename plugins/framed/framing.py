"""What a protocol tells the framed transport: its wake-up preamble and where a frame ends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class FrameScan:
    """The outcome of looking for a frame in the bytes received so far.

    Exactly one of: `end` (the frame is `buffer[start:end]`), `problem` (these bytes can
    never become a valid frame), or neither (more bytes are needed).
    """

    start: int = 0
    end: int | None = None
    problem: str | None = None

    @property
    def complete(self) -> bool:
        return self.end is not None


class Framing(Protocol):
    """One protocol's framing, as the transport and the simulated bus need it."""

    #: Protocol name for messages ("DL/T 645").
    name: str
    #: Bytes sent before every request to wake the meters' receivers (FE FE FE FE).
    preamble: bytes

    def scan(self, buffer: bytes) -> FrameScan:
        """Find the first complete frame in `buffer` (leading preamble bytes skipped)."""
        ...


def skip_preamble(buffer: bytes, fill: int = 0xFE) -> int:
    """Index of the first byte after any run of preamble bytes."""
    i = 0
    while i < len(buffer) and buffer[i] == fill:
        i += 1
    return i
