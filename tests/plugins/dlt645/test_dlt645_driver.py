"""The driver against hand-made meters on a simulated bus: follow-up frames, answers from
the wrong meter, and the profiles as data."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from openprepay.core.config.site import DeviceConfig, LinkConfig, LinkProtocol, LinkType
from openprepay.core.contracts import SimulatorOptions
from openprepay.core.errors import GarbledResponse
from openprepay.core.model import PointRole
from openprepay.plugins.dlt645.codec import FRAMING, Frame, decode, di_bytes
from openprepay.plugins.dlt645.driver import Dlt645Driver
from openprepay.plugins.dlt645.plugin import PROFILES
from openprepay.plugins.dlt645.profile import PointFormat
from openprepay.plugins.framed import FramedTransport, SimulatedBus

ADDRESS = "000000000042"
ENERGY = PointFormat("e", 4, 2)


class HandMadeMeter:
    """Answers the energy block with `energies`, through `shape` (split, readdress...)."""

    silent = False
    garbage = False

    def __init__(self, shape: Callable[[Frame, bytes], bytes]) -> None:
        self.shape = shape
        self.requests: list[Frame] = []

    def answer(self, raw: bytes) -> bytes | None:
        frame = decode(raw)
        self.requests.append(frame)
        block = b"".join(ENERGY.encode(v) for v in (1234.56, 100.01, 200.02, 300.03, 634.5))
        return self.shape(frame, block)


def link(port: int) -> LinkConfig:
    return LinkConfig(
        "bus",
        LinkType.RTU_OVER_TCP,
        host="127.0.0.1",
        port=port,
        timeout_s=0.3,
        protocol=LinkProtocol.DLT645,
    )


@pytest.fixture
async def driver_for() -> AsyncIterator[Callable]:
    opened: list[tuple[SimulatedBus, FramedTransport]] = []

    async def make(meter: HandMadeMeter) -> Dlt645Driver:
        bus = SimulatedBus(link(0), FRAMING, {ADDRESS: meter}, SimulatorOptions())
        _, port = await bus.start()
        transport = FramedTransport(link(port), FRAMING)
        await transport.connect()
        opened.append((bus, transport))
        device = DeviceConfig("M", "dlt645.single_phase", "bus", None, address=ADDRESS)
        return Dlt645Driver(PROFILES["dlt645.single_phase"], device, transport)

    yield make
    for bus, transport in opened:
        await transport.close()
        await bus.stop()


async def test_follow_up_frames_are_joined(driver_for) -> None:
    def in_two_parts(frame: Frame, block: bytes) -> bytes:
        di = frame.data[:4]
        if frame.function == 0x11:
            return Frame(ADDRESS, 0xB1, di + block[:12]).encode()  # b5: more follows
        assert frame.function == 0x12 and frame.data[4] == 1
        return Frame(ADDRESS, 0x92, di + block[12:] + bytes([1])).encode()

    meter = HandMadeMeter(in_two_parts)
    driver = await driver_for(meter)
    raw = await driver.read_di(0x0001FF00)
    assert [ENERGY.decode(raw[i : i + 4]) for i in range(0, 20, 4)] == [
        1234.56,
        100.01,
        200.02,
        300.03,
        634.5,
    ]
    assert [f.function for f in meter.requests] == [0x11, 0x12]
    assert meter.requests[1].data == di_bytes(0x0001FF00) + b"\x01"


async def test_follow_up_out_of_sequence_is_garbled(driver_for) -> None:
    def wrong_seq(frame: Frame, block: bytes) -> bytes:
        di = frame.data[:4]
        if frame.function == 0x11:
            return Frame(ADDRESS, 0xB1, di + block[:12]).encode()
        return Frame(ADDRESS, 0x92, di + block[12:] + bytes([7])).encode()

    driver = await driver_for(HandMadeMeter(wrong_seq))
    with pytest.raises(GarbledResponse, match="follow-up frame 1 out of sequence"):
        await driver.read_di(0x0001FF00)


async def test_answer_from_another_meter_is_bad_not_a_value(driver_for) -> None:
    def other(frame: Frame, block: bytes) -> bytes:
        return Frame("000000000043", 0x91, frame.data[:4] + block).encode()

    driver = await driver_for(HandMadeMeter(other))
    with pytest.raises(GarbledResponse, match="answer from address 000000000043"):
        await driver.read()


async def test_short_answer_for_a_di_is_bad(driver_for) -> None:
    def short(frame: Frame, block: bytes) -> bytes:
        return Frame(ADDRESS, 0x91, frame.data[:4] + block[:6]).encode()

    driver = await driver_for(HandMadeMeter(short))
    with pytest.raises(GarbledResponse, match="answered 6 data bytes, expected 20"):
        await driver.read()


def test_profiles_mark_every_di_and_point_and_roll_over_like_the_meter() -> None:
    for profile in PROFILES.values():
        assert profile.model.protocol == "dlt645"
        assert all(read.source for read in profile.reads)
        for point in profile.model.points:
            assert point.source, (profile.model.name, point.name)
            if point.role is PointRole.CUMULATIVE:
                assert point.rollover == 1_000_000.0 and point.resolution == 0.01
        unverified = profile.model.unverified_points
        assert "energy_sharp" in unverified and "energy_total" not in unverified
    assert PROFILES["dlt645.state_grid_esam"].refuse is not None
    assert PROFILES["dlt645.single_phase"].refuse is None
