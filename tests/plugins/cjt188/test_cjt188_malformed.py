"""Malformed answers on a real socket: a meter on a loopback gateway whose every answer is
rewritten by the test (checksum, address, SER, DI, BCD, unit, length, preamble) gives the
driver a garbled answer — never a value — and the arbiter a Bad sample."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from decimal import Decimal

import pytest

from openprepay.core.config.site import DeviceConfig, LinkConfig, LinkProtocol, LinkType
from openprepay.core.errors import DeviceRejected, GarbledResponse
from openprepay.core.model import Quality
from openprepay.plugins.cjt188 import codec
from openprepay.plugins.cjt188.codec import Frame
from openprepay.plugins.cjt188.driver import Cjt188Driver
from openprepay.plugins.cjt188.framing import FRAMING
from openprepay.plugins.cjt188.plugin import profiles
from openprepay.plugins.framed import FramedTransport

ADDRESS = "00000000004711"
Rewrite = Callable[[Frame], bytes]


def metering(volume: str = "12.34", unit: int = codec.M3, status: int = 0) -> bytes:
    return (
        codec.encode_quantity(Decimal(volume), unit)
        + codec.encode_quantity(Decimal(volume), unit)
        + bytes(7)
        + status.to_bytes(2, "little")
    )


def answer(request: Frame, **changes: object) -> Frame:
    reply = codec.reply_for(request, metering())
    return replace(reply, **changes)  # type: ignore[arg-type]


def encode(frame: Frame) -> bytes:
    return codec.encode(frame, preamble=2)


def corrupt_checksum(request: Frame) -> bytes:
    raw = bytearray(encode(answer(request)))
    raw[-2] ^= 0x01
    return bytes(raw)


CASES: dict[str, tuple[Rewrite, str]] = {
    "bad checksum": (corrupt_checksum, "checksum"),
    "another meter": (
        lambda r: encode(answer(r, address="00000000004712")),
        "reply from address 00000000004712",
    ),
    "stale SER": (lambda r: encode(answer(r, ser=(r.ser + 1) & 0xFF)), "stale reply"),
    "another DI": (lambda r: encode(answer(r, di=0x8102)), "is not the DI asked for"),
    "meter type": (lambda r: encode(answer(r, meter_type=0x30)), "meter type 0x30"),
    "non-BCD volume": (
        lambda r: encode(answer(r, data=b"\x3a" + metering()[1:])),
        "not BCD",
    ),
    "unknown unit": (lambda r: encode(answer(r, data=metering(unit=0x77))), "unit code 0x77"),
    "short data": (lambda r: encode(answer(r, data=metering()[:-1])), "expected 19"),
    "not a reply": (lambda r: encode(replace(answer(r), control=0x01)), "does not answer"),
    "cut short": (lambda r: encode(answer(r))[:-3], "cut short"),
    "extra preamble": (lambda r: b"\xfe" * 5 + encode(answer(r))[2:], "5 preamble bytes"),
    "DL/T 645 +33H applied": (
        lambda r: encode(answer(r, data=bytes((b + 0x33) & 0xFF for b in metering()))),
        "unit code 0x5F",
    ),
}


class ScriptedMeter:
    """A gateway socket whose one meter answers with `rewrite(request)`."""

    def __init__(self) -> None:
        self.rewrite: Rewrite = lambda r: encode(answer(r))
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        buffer = b""
        try:
            while chunk := await reader.read(1024):
                buffer += chunk
                scan = FRAMING.scan(buffer)
                if scan.end is None:
                    continue
                request = codec.decode(buffer[scan.start : scan.end])
                buffer = buffer[scan.end :]
                writer.write(self.rewrite(request))
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[ScriptedMeter, Cjt188Driver]]:
    meter = ScriptedMeter()
    port = await meter.start()
    link = LinkConfig(
        "gw",
        LinkType.RTU_OVER_TCP,
        host="127.0.0.1",
        port=port,
        timeout_s=0.3,
        protocol=LinkProtocol.CJT188,
    )
    transport = FramedTransport(link, FRAMING)
    await transport.connect()
    profile = profiles()["cjt188.cold_water_dn15"]
    device = DeviceConfig("W", profile.model.name, "gw", None, address=ADDRESS, building="A")
    yield meter, Cjt188Driver(profile, device, transport)
    await transport.close()
    await meter.stop()


async def test_a_well_formed_answer_reads(scripted: tuple[ScriptedMeter, Cjt188Driver]) -> None:
    _, driver = scripted
    sample = await driver.read()
    assert sample.quality is Quality.GOOD and sample.values["volume"] == pytest.approx(12.34)


@pytest.mark.parametrize("case", list(CASES))
async def test_a_malformed_answer_is_garbled_never_a_value(
    scripted: tuple[ScriptedMeter, Cjt188Driver], case: str
) -> None:
    meter, driver = scripted
    meter.rewrite, why = CASES[case]
    with pytest.raises(GarbledResponse, match=why):
        await driver.read()
    # The next well-formed answer reads again: one bad frame does not poison the link.
    meter.rewrite = lambda r: encode(answer(r))
    assert (await driver.read()).values["volume"] == pytest.approx(12.34)


async def test_an_error_reply_is_a_rejection(
    scripted: tuple[ScriptedMeter, Cjt188Driver],
) -> None:
    meter, driver = scripted
    meter.rewrite = lambda r: encode(codec.reply_for(r, b"\x00\x00", error=True))
    with pytest.raises(DeviceRejected, match="error reply 0xC1 to DI 901F"):
        await driver.read()
