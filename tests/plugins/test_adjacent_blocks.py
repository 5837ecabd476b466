"""Register blocks that follow one another are read in one request (a DDSY1352's energy and
frequency blocks, a valve meter's main block and its pulse coefficient); a device that
rejects the joined span — it lacks the optional block — is read block by block from then
on, and still delivers its other points."""

from __future__ import annotations

from openprepay.core.model import Quality
from openprepay.plugins.modbus.driver import adjacent_runs
from openprepay.plugins.modbus.profile import Block

from .conftest import Meter, StartBench

WATER = "xintai.valve_meter"


def test_adjacent_runs() -> None:
    a, b, c = Block(0, 17), Block(17, 1, optional=True), Block(0x46, 28)
    d = Block(0x62, 2, function=4)  # right after c, another function
    assert adjacent_runs([a, b, c, d]) == [(a, b), (c,), (d,)]
    fills, past = Block(0x62, 97), Block(0xC3, 1)  # 28 + 97 = 125 registers: the most
    assert adjacent_runs([c, fills, past]) == [(c, fills), (past,)]
    assert adjacent_runs([b, a]) == [(b,), (a,)]  # in the profile's order only


async def transactions_per_poll(bench: StartBench, meter: Meter) -> tuple[int, int, object]:
    one = await bench(meter)
    first = await one.driver.read()  # may find out that an optional block is missing
    before = one.transport.transactions
    sample = await one.driver.read()
    return before, one.transport.transactions - before, (first, sample)


async def test_adjacent_blocks_share_a_request(bench: StartBench) -> None:
    _, per_poll, (_, sample) = await transactions_per_poll(bench, Meter("acrel.DDSY1352"))
    assert per_poll == 3  # 0x0000+17 and 0x0011+1 together, 0x0046+28, 0x5030+2
    assert {"energy_total", "frequency", "energy_deep_valley"} <= set(sample.values)  # type: ignore[attr-defined]

    _, per_poll, (_, water) = await transactions_per_poll(bench, Meter(WATER))
    assert per_poll == 1
    assert "pulse_coefficient" in water.values  # type: ignore[attr-defined]


async def test_a_device_without_the_optional_block_is_read_block_by_block(
    bench: StartBench,
) -> None:
    meter = Meter("acrel.DDSY1352", options={"sim_optional_blocks": False})
    one = await bench(meter)
    first = await one.driver.read()
    # The joined span rejected, then its blocks one by one: 0x0000 read, 0x0011 rejected;
    # 0x0046 read; 0x5030 rejected.
    assert one.transport.transactions == 5
    assert first.quality is Quality.GOOD and "energy_total" in first.values
    assert "frequency" not in first.values and "energy_deep_valley" not in first.values
    before = one.transport.transactions
    again = await one.driver.read()
    assert one.transport.transactions - before == 2  # 0x0000+17 and 0x0046+28 only
    assert again.values["energy_total"] == first.values["energy_total"]
