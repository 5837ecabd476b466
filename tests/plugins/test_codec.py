"""The Modbus toolkit's codec and profile format: wire types, byte orders, flags, optional
blocks and the error messages a profile author sees."""

from __future__ import annotations

import copy
import re
import struct
import tomllib
from pathlib import Path
from typing import Any

import pytest

from openprepay.core.errors import ConfigError, DeviceRejected
from openprepay.core.model import PointRole, ValueType
from openprepay.plugins.modbus.codec import ORDERS, BlockDecoder, PointCodec, WireType
from openprepay.plugins.modbus.profile import load_profile, parse_profile

from .conftest import Meter, StartBench

#: Per wire type: values that probe both ends of the range and the sign.
SAMPLES: dict[WireType, list[float | int]] = {
    WireType.U16: [0, 1, 0x1234, 0xFFFF],
    WireType.I16: [-32768, -1, 0, 0x1234, 32767],
    WireType.U32: [0, 1, 0x11223344, 0xFFFFFFFF],
    WireType.I32: [-(2**31), -1, 0, 0x11223344, 2**31 - 1],
    WireType.F32: [0.0, -1.5, 0.545, 3.4028234663852886e38, -1.1754943508222875e-38],
    WireType.U64: [0, 1, 0x1122334455667788, 2**64 - 1],
}


def decode(codec: PointCodec, registers: list[int], start: int = 0) -> Any:
    out: dict[str, Any] = {}
    BlockDecoder(start, len(registers), [codec]).decode(registers, out)
    return out[codec.name]


def expected_words(wire: WireType, value: float | int, order: str) -> list[int]:
    """The registers by the definition of the order letters, independently of the codec:
    the value's big-endian bytes are A B C D (E F G H for 64 bits)."""
    big = struct.pack(">" + wire.struct_code, value)
    words = [big[i : i + 2] for i in range(0, len(big), 2)]
    if order in ("CDAB", "DCBA"):
        words.reverse()
    if order in ("BADC", "DCBA"):
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("wire", list(WireType), ids=lambda w: w.value)
def test_every_wire_type_round_trips_in_every_order(wire: WireType, order: str) -> None:
    value_type = ValueType.FLOAT if wire.is_float else ValueType.INT
    codec = PointCodec("x", 0, wire, order, value_type=value_type)
    fmt = ">" + wire.struct_code
    for value in SAMPLES[wire]:
        words = codec.encode(value)
        assert words == expected_words(wire, value, order), value
        # What the register holds: the value itself, or its nearest float32 — published
        # as the shortest decimal that is that float32.
        held = struct.unpack(fmt, struct.pack(fmt, value))[0]
        decoded = decode(codec, words)
        assert struct.unpack(fmt, struct.pack(fmt, decoded))[0] == held, value
        assert codec.to_value(held) == decoded


def test_orders_of_a_32_bit_value() -> None:
    registers = {"ABCD": [0x1122, 0x3344], "CDAB": [0x3344, 0x1122]}
    registers |= {"BADC": [0x2211, 0x4433], "DCBA": [0x4433, 0x2211]}
    for order, words in registers.items():
        codec = PointCodec("x", 0, WireType.U32, order, value_type=ValueType.INT)
        assert decode(codec, words) == 0x11223344, order


def test_xintai_example_bytes_read_as_little_endian_float() -> None:
    # protocols.md §3.2: the register bytes 1E 85 0B 3F read as a DCBA float are 0.545.
    codec = PointCodec("flow", 0x0005, WireType.F32, "DCBA")
    assert decode(codec, [0x1E85, 0x0B3F], start=0x0005) == pytest.approx(0.545, abs=1e-7)
    # Read in the Modbus default order the same bytes are nonsense.
    default = PointCodec("flow", 0x0005, WireType.F32, "ABCD")
    assert decode(default, [0x1E85, 0x0B3F], start=0x0005) != pytest.approx(0.545)


def test_float_registers_are_published_at_their_resolution() -> None:
    # Issue 9 §10: a float32 volume of 0.6 m³ was published as 0.6000000238418579.
    volume = PointCodec("volume", 0, WireType.F32, "DCBA", resolution=0.001)
    assert decode(volume, volume.encode(0.6)) == 0.6
    assert decode(volume, volume.encode(98765.4321)) == 98765.43  # the register: 98765.4296875
    assert volume.to_value(struct.unpack(">f", struct.pack(">f", 0.6))[0]) == 0.6
    # Without a declared resolution: the shortest decimal the float32 register holds.
    setpoint = PointCodec("setpoint", 0, WireType.F32)
    assert decode(setpoint, setpoint.encode(0.6)) == 0.6
    assert decode(setpoint, setpoint.encode(1234.567)) == 1234.567
    assert setpoint.as_read(1234.567) == 1234.567


def test_scale_gives_exact_decimals_and_scaled_encoding() -> None:
    energy = PointCodec("e", 0, WireType.U32, scale=0.01)
    assert decode(energy, [0x0001, 0xE240]) == 1234.56  # 123456 × 0.01, no 1234.5600000001
    assert energy.encode(1234.56) == [0x0001, 0xE240]
    power = PointCodec("p", 0, WireType.I16, scale=0.001)
    assert decode(power, power.encode(-12.345)) == -12.345
    with pytest.raises(ValueError, match="does not fit a u16"):
        PointCodec("v", 0, WireType.U16, scale=0.1).encode(6553.6)


def test_bit_points_read_one_bit_of_a_register() -> None:
    status = 0b1010  # closed (bit 1) and battery low (bit 3)
    names = ("valve_open", "valve_closed", "valve_abnormal", "battery_low")
    codecs = [
        PointCodec(n, 0x1C, WireType.U16, bit=i, value_type=ValueType.INT)
        for i, n in enumerate(names)
    ]
    out: dict[str, Any] = {}
    BlockDecoder(0x1C, 1, codecs).decode([status], out)
    assert out == {"valve_open": 0, "valve_closed": 1, "valve_abnormal": 0, "battery_low": 1}
    with pytest.raises(ValueError, match="flag and mapped points"):
        codecs[0].encode(1)


def test_map_points_translate_raw_values_and_flag_unknown_ones() -> None:
    pipe = PointCodec("pipe_full", 7, WireType.U16, mapping={0x55: 0, 0xAA: 1})
    assert decode(pipe, [0x00AA], start=7) == 1
    assert decode(pipe, [0x0055], start=7) == 0
    assert decode(pipe, [0x0000], start=7) == -1


def test_shipped_map_and_bit_points_load_from_toml() -> None:
    from openprepay.plugins.water_valve.plugin import CATALOGUE

    profile = CATALOGUE.profiles["xintai.valve_meter"]
    assert profile.codecs["pipe_full"].mapping == {0x55: 0, 0xAA: 1}
    assert [profile.codecs[n].bit for n in ("valve_open", "valve_closed", "valve_abnormal")] == [
        0,
        1,
        2,
    ]
    assert profile.codecs["volume_forward"].order == "DCBA"
    assert profile.codecs["pipe_full"].order == "ABCD"  # a 16-bit register is not swapped
    assert profile.model.point("volume_forward").role is PointRole.CUMULATIVE


# -- optional blocks on a real socket ----------------------------------------------------------


async def test_optional_block_is_dropped_when_the_device_has_no_such_registers(
    bench: StartBench,
) -> None:
    # A DTSY1352 whose firmware lacks DDSY's 0x000B-0x0011 measurement registers (and the
    # 深谷 register at 0x5030) answers "illegal data address" there.
    one = await bench(Meter("acrel.DTSY1352", options={"sim_optional_blocks": False}))
    first = await one.driver.read()
    assert first.quality.is_good
    assert "voltage" not in first.values and "energy_deep_valley" not in first.values
    assert first.values["energy_total"] == one.sim.snapshot()["energy_total"]
    assert first.values["supply_on"] == 1
    assert all(not b.optional for run in one.driver._runs for b in run)  # not asked again
    transactions = one.transport.transactions
    second = await one.driver.read()
    assert set(second.values) == set(first.values)
    assert one.transport.transactions - transactions == len(one.driver._runs)


async def test_a_mandatory_block_answered_with_illegal_address_fails_the_read(
    bench: StartBench,
) -> None:
    one = await bench(Meter("acrel.DDSY1352"))
    for address in range(0x0046, 0x0046 + 28):  # a firmware without the prepaid block
        one.sim._image.pop(address)
    with pytest.raises(DeviceRejected) as caught:
        await one.driver.read()
    assert caught.value.code == 2


async def test_ddsy_without_frequency_register_still_reads_its_energy(bench: StartBench) -> None:
    # 0x0011 (frequency) is documented only for the DDSD1352 sibling: the DDSY profile keeps
    # it in an optional block so a meter without it still delivers energy.
    one = await bench(Meter("acrel.DDSY1352", options={"sim_optional_blocks": False}))
    sample = await one.driver.read()
    assert "frequency" not in sample.values
    assert sample.values["voltage"] == one.sim.snapshot()["voltage"]
    assert sample.values["energy_total"] == one.sim.snapshot()["energy_total"]


# -- profile validation ----------------------------------------------------------------------

MINIMAL: dict[str, Any] = {
    "model": {
        "name": "test.meter",
        "vendor": "Test",
        "product": "T1",
        "kind": "electric",
        "description": "A test meter",
        "total_point": "energy",
        "supply": {"cut": "TRIP", "restore": "CLOSE", "state_point": "relay"},
        "limits": {"rated_voltage": 230, "max_current": 40, "phases": 1},
    },
    "protocol": {"read_function": 3, "order": "ABCD"},
    "blocks": [{"start": 0, "count": 4}],
    "points": {
        "energy": {
            "address": 0,
            "type": "u32",
            "scale": 0.01,
            "unit": "kWh",
            "role": "cumulative",
            "description": "Energy",
        },
        "relay": {"address": 2, "type": "u16", "role": "state", "description": "Relay"},
    },
    "commands": {
        "TRIP": {
            "description": "Trip",
            "function": 6,
            "address": 2,
            "values": [1],
            "confirm": {"point": "relay", "expect": 1},
        },
        "CLOSE": {
            "description": "Close",
            "function": 16,
            "address": 2,
            "values": [0],
            "confirm": {"address": 2, "expect": [0]},
        },
    },
}


def errors_of(change: Any) -> list[str]:
    data = copy.deepcopy(MINIMAL)
    change(data)
    with pytest.raises(ConfigError) as caught:
        parse_profile(data, source="test.toml")
    return [str(e) for e in caught.value.errors]


def test_minimal_profile_is_valid() -> None:
    profile = parse_profile(copy.deepcopy(MINIMAL))
    assert profile.model.supply is not None and profile.model.total_point == "energy"


def _set(path: str, value: Any):
    def change(data: dict) -> None:
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node[key]
        if value is DELETE:
            del node[last]
        else:
            node[last] = value

    return change


DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (
            "points.relay.address",
            9,
            "points.relay.address: 0x0009 is outside every [[blocks]] range",
        ),
        ("points.energy.type", "u24", "points.energy.type: expected one of u16, i16, u32"),
        ("points.energy.order", "DABC", "points.energy.order: expected one of ABCD, CDAB"),
        ("points.energy.scal", 0.1, "points.energy.scal: unknown key"),
        ("points.energy.scale", 0, "points.energy.scale: must not be 0"),
        ("points.energy.resolution", 0.01, "points.energy.resolution: only f32 points take"),
        ("points.relay.bit", 16, "points.relay.bit: expected 0..15, got 16"),
        ("points.energy.bit", 3, 'points.energy.type: bit and map need type = "u16"'),
        ("points.relay.map", "full", "points.relay.map: expected a table of raw value"),
        ("points.relay.ratio", "vt", "points.relay.ratio: expected one of ct, pt, ctpt"),
        ("points.relay.description", DELETE, "points.relay.description: missing (required)"),
        ("commands.TRIP.confirm.point", "relais", "commands.TRIP.confirm.point: no point named"),
        ("commands.TRIP.function", 5, "commands.TRIP.function: expected 6 (write one register)"),
        ("commands.TRIP.values", [1, 1], "commands.TRIP.function: function 6 writes one register"),
        ("commands.TRIP.values", [70000], "commands.TRIP.values: expected a list of 16-bit"),
        ("commands.TRIP.confirm", DELETE, "commands.TRIP.confirm: missing (required)"),
        ("model.supply.cut", "OPEN", "model.supply.cut: no command named 'OPEN'"),
        ("model.supply.state_point", "relay2", "model.supply.state_point: no point named"),
        ("model.total_point", "relay", "model.total_point: point 'relay' must have role"),
        ("model.tariff_points", ["t1"], "model.tariff_points: no point named 't1'"),
        ("model.kind", "gas", "model.kind: expected one of electric, water"),
        ("model.limits", DELETE, "model.limits: missing (required for a model with total_point"),
        ("model.limits.max_current", DELETE, "model.limits.max_current: missing (required"),
        ("model.limits.phases", 4, "model.limits.phases: expected 1..3, got 4"),
        ("model.limits.max_amps", 60, "model.limits.max_amps: unknown key"),
        ("points.relay.legal", [0, "1"], "points.relay.legal: expected the list of values"),
        ("protocol.order", "ABDC", "protocol.order: expected one of ABCD"),
        ("blocks", [{"start": 0, "count": 200}], "blocks[0].count: expected 1..125, got 200"),
        ("blocks", [{"start": 0, "count": 1}], "points.energy.address: 0x0000 (u32) runs past"),
    ],
)
def test_profile_errors_name_the_exact_field(path: str, value: Any, expected: str) -> None:
    errors = errors_of(_set(path, value))
    assert any(e.startswith(expected) for e in errors), errors


def test_parameterised_command_confirm_must_name_one_of_its_parameters() -> None:
    def change(data: dict) -> None:
        data["commands"]["SET"] = {
            "description": "Set",
            "function": 16,
            "address": 0,
            "fields": [{"param": "energy", "type": "u32", "scale": 0.01}],
            "confirm": {"point": "energy", "expect_param": "amount"},
        }

    errors = errors_of(change)
    assert any(
        e.startswith("commands.SET.confirm.expect_param: the command has no parameter 'amount'")
        for e in errors
    ), errors


def test_every_error_of_a_profile_is_reported_at_once() -> None:
    def change(data: dict) -> None:
        data["points"]["energy"]["type"] = "u24"
        data["points"]["relay"]["address"] = 99
        data["commands"]["TRIP"]["confirm"]["point"] = "nope"

    errors = errors_of(change)
    assert len(errors) >= 3, errors


def test_shipped_profiles_load(tmp_path) -> None:
    from openprepay.plugins.meter_acrel.plugin import PROFILES as ACREL
    from openprepay.plugins.water_valve.plugin import PROFILES as WATER

    paths = sorted([*ACREL.glob("*.toml"), *WATER.glob("*.toml")])
    assert [p.stem for p in paths] == [
        "ADW300",
        "DDSY1352",
        "DTSD1352",
        "DTSY1352",
        "xintai_valve_meter",
    ]
    for path in paths:
        assert load_profile(path).path == path
    broken = tmp_path / "broken.toml"
    broken.write_text("[model\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_profile(broken)


def test_the_readme_example_profile_is_valid() -> None:
    readme = (Path(__file__).parents[2] / "plugins" / "modbus" / "README.md").read_text()
    example = re.search(r"```toml\n(# ACME Heat 1.*?)```", readme, re.S)
    assert example is not None
    profile = parse_profile(tomllib.loads(example.group(1)))
    assert profile.model.limits is not None and profile.model.limits.max_per_hour == 2.5
    assert profile.model.point("setpoint").resolution == 0.001
