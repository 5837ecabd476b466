"""Links that carry DL/T 645 or CJ/T 188 frames, and meters addressed by their nameplate
address instead of a Modbus unit id."""

from __future__ import annotations

import copy

import pytest

from openprepay.core.config.site import (
    LinkProtocol,
    check_devices_against_models,
    parse_site,
)
from openprepay.core.errors import ConfigError
from openprepay.core.model import DeviceModel, MeterKind

BASE = {
    "site": {"id": "s1"},
    "links": {
        "gw1": {"type": "rtu_over_tcp", "host": "10.0.0.2", "port": 502},
        "bus645": {"type": "serial", "device": "/dev/ttyUSB0", "protocol": "dlt645"},
    },
    "devices": {
        "E1": {"model": "acrel.DDSY1352", "link": "gw1", "unit_id": 1},
        "D1": {"model": "dlt645.single_phase", "link": "bus645", "address": "000012345678"},
    },
}


def errors_of(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_site(data)
    return [str(e) for e in info.value.errors]


def changed(**devices: dict) -> dict:
    data = copy.deepcopy(BASE)
    data["devices"].update(devices)
    return data


def test_protocol_defaults_modbus_and_framed_links_default_to_2400_8e1() -> None:
    site = parse_site(BASE)
    assert site.links["gw1"].protocol is LinkProtocol.MODBUS
    bus = site.links["bus645"]
    assert bus.protocol is LinkProtocol.DLT645
    assert (bus.baudrate, bus.parity, bus.bytesize, bus.stopbits) == (2400, "E", 8, 1)
    assert bus.bits_per_char == 11
    device = site.devices["D1"]
    assert device.address == "000012345678" and device.unit_id is None
    assert device.bus_id == "000012345678"


def test_explicit_serial_settings_win_over_the_protocol_defaults() -> None:
    data = copy.deepcopy(BASE)
    data["links"]["bus645"].update(baudrate=9600, parity="N")
    bus = parse_site(data).links["bus645"]
    assert (bus.baudrate, bus.parity) == (9600, "N")


def test_framed_protocol_on_a_modbus_tcp_link_is_refused_with_the_fix() -> None:
    data = copy.deepcopy(BASE)
    data["links"]["bus645"] = {"type": "modbus_tcp", "host": "h", "protocol": "cjt188"}
    [error] = [e for e in errors_of(data) if e.startswith("links.bus645")]
    assert "links.bus645.protocol" in error
    assert 'type = "rtu_over_tcp"' in error


def test_unknown_protocol_lists_the_choices() -> None:
    data = copy.deepcopy(BASE)
    data["links"]["bus645"]["protocol"] = "iec62056"
    [error] = errors_of(data)
    assert error.startswith("links.bus645.protocol: expected one of modbus, dlt645, cjt188")


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("12345678", "expected exactly 12 digits"),
        ("00001234567A", "expected exactly 12 digits"),
        ("AAAAAAAAAAAA", "expected exactly 12 digits"),
        ("999999999999", "broadcast address"),
        (12345678, "as a string of digits in quotes"),
    ],
)
def test_bad_dlt645_address_names_the_field_and_the_form(address: object, expected: str) -> None:
    data = changed(D1={"model": "dlt645.single_phase", "link": "bus645", "address": address})
    [error] = errors_of(data)
    assert error.startswith("devices.D1.address: ")
    assert expected in error


def test_missing_address_on_a_dlt645_link_shows_an_example() -> None:
    [error] = errors_of(changed(D1={"model": "dlt645.single_phase", "link": "bus645"}))
    assert error.startswith("devices.D1.address: missing (required)")
    assert "12-digit dlt645 address" in error


def test_cjt188_addresses_have_14_digits() -> None:
    data = copy.deepcopy(BASE)
    data["links"]["bus188"] = {"type": "serial", "device": "/dev/ttyS1", "protocol": "cjt188"}
    data["devices"]["W1"] = {"model": "x", "link": "bus188", "address": "000012345678"}
    [error] = errors_of(data)
    assert error.startswith("devices.W1.address: expected exactly 14 digits")
    data["devices"]["W1"]["address"] = "00000012345678"
    assert parse_site(data).devices["W1"].address == "00000012345678"


def test_modbus_devices_still_need_a_unit_id_and_take_no_address() -> None:
    errors = errors_of(changed(E1={"model": "acrel.DDSY1352", "link": "gw1", "address": "1"}))
    assert "devices.E1.unit_id: missing (required)" in errors
    assert any(e.startswith("devices.E1.address: link 'gw1' carries Modbus") for e in errors)


def test_an_address_is_used_once_per_link() -> None:
    data = changed(D2={"model": "dlt645.single_phase", "link": "bus645", "address": "000012345678"})
    [error] = errors_of(data)
    assert error == (
        "devices.D2.address: address 000012345678 is already used on link 'bus645' by devices.D1"
    )


def test_unit_id_is_optional_and_allowed_on_framed_links() -> None:
    data = changed(D1={"model": "m", "link": "bus645", "address": "000012345678", "unit_id": 7})
    assert parse_site(data).devices["D1"].unit_id == 7


def _model(name: str, protocol: str) -> DeviceModel:
    return DeviceModel(name, "v", "p", MeterKind.ELECTRIC, "d", (), protocol=protocol)


def test_a_model_must_sit_on_a_link_of_its_protocol() -> None:
    site = parse_site(BASE)
    models = {
        "acrel.DDSY1352": _model("acrel.DDSY1352", "modbus"),
        "dlt645.single_phase": _model("dlt645.single_phase", "modbus"),
    }
    with pytest.raises(ConfigError) as info:
        check_devices_against_models(site, models)
    [error] = [str(e) for e in info.value.errors]
    assert error.startswith("devices.D1.model: dlt645.single_phase speaks modbus but link")
    models["dlt645.single_phase"] = _model("dlt645.single_phase", "dlt645")
    check_devices_against_models(site, models)


def test_framed_serial_links_keep_two_characters_of_silence() -> None:
    site = parse_site(BASE)
    assert site.links["bus645"].gap_s == pytest.approx(2 * 11 / 2400)
    data = copy.deepcopy(BASE)
    data["links"]["bus645"]["frame_gap_ms"] = 50
    assert parse_site(data).links["bus645"].gap_s == pytest.approx(0.05)
