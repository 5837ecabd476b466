"""The site file: a valid file loads; every mistake is reported with its exact field."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from openprepay.core.config.site import (
    ControlMode,
    LinkType,
    check_devices_against_models,
    load_site,
    parse_site,
)
from openprepay.core.errors import ConfigError

EXAMPLE = Path(__file__).parents[3] / "examples" / "site.toml"

BASE = {
    "site": {"id": "s1", "timezone": "Asia/Shanghai"},
    "links": {"gw1": {"type": "rtu_over_tcp", "host": "10.0.0.2", "port": 502}},
    "buildings": {"A": {"floors": ["1", "2"]}},
    "rooms": {"A-101": {"building": "A", "floor": "1", "area_m2": 45.5}},
    "devices": {
        "E1": {"model": "acrel.DDSY1352", "link": "gw1", "unit_id": 1, "room": "A-101"},
    },
}


def errors_of(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_site(data)
    return [str(e) for e in info.value.errors]


def with_change(path: str, value: object) -> dict:
    data = copy.deepcopy(BASE)
    node = data
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value
    return data


def test_example_site_file_loads() -> None:
    site = load_site(EXAMPLE)
    assert site.id == "harbour-view"
    assert site.links["gw-a1"].type is LinkType.RTU_OVER_TCP
    assert site.links["bus-b"].gap_s == pytest.approx(3.5 * 11 / 9600)
    assert site.devices["E-A-102"].control_mode is ControlMode.LOCAL
    assert site.poll_interval(site.devices["E-A-201"]) == 30
    assert site.building_of(site.devices["M-A"]) == "A"
    assert site.rooms["A-101"].area_m2 == 45.5


def test_port_out_of_range_names_field_and_expectation() -> None:
    assert errors_of(with_change("links.gw1.port", 70000)) == [
        "links.gw1.port: expected 1..65535, got 70000"
    ]


def test_every_error_is_reported_at_once() -> None:
    data = with_change("links.gw1.port", 0)
    data["devices"]["E1"]["unit_id"] = 300
    data["rooms"]["A-101"]["area_m2"] = -3
    errors = errors_of(data)
    assert "links.gw1.port: expected 1..65535, got 0" in errors
    assert "devices.E1.unit_id: expected 1..247, got 300" in errors
    assert "rooms.A-101.area_m2: expected more than 0.0, got -3" in errors


def test_typo_in_a_key_is_not_silently_ignored() -> None:
    errors = errors_of(with_change("links.gw1.timout_ms", 300))
    assert len(errors) == 1
    assert errors[0].startswith("links.gw1.timout_ms: unknown key (expected one of:")
    assert "timeout_ms" in errors[0]


def test_unknown_section_is_reported() -> None:
    assert errors_of(with_change("histroian", {}))[0].startswith("histroian: unknown key")


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (
            "links.gw1.type",
            "rtu",
            "links.gw1.type: expected one of serial, rtu_over_tcp, modbus_tcp; got 'rtu'",
        ),
        ("links.gw1.parity", "X", "links.gw1.parity: expected one of N, E, O; got 'X'"),
        ("devices.E1.link", "gw9", "devices.E1.link: unknown link 'gw9' (defined: gw1)"),
        ("devices.E1.room", "A-999", "devices.E1.room: unknown room 'A-999' (defined: A-101)"),
        (
            "devices.E1.control_mode",
            "AUTO",
            "devices.E1.control_mode: expected one of REMOTE, LOCAL, POSTPAID; got 'AUTO'",
        ),
        (
            "rooms.A-101.floor",
            "7",
            "rooms.A-101.floor: building 'A' has no floor '7' (its floors: 1, 2)",
        ),
        (
            "site.timezone",
            "Mars/Olympus",
            "site.timezone: unknown IANA time zone 'Mars/Olympus' (e.g. Asia/Shanghai)",
        ),
        ("devices.E1.unit_id", "1", "devices.E1.unit_id: expected an integer (1..247), got '1'"),
    ],
)
def test_field_errors(path: str, value: object, expected: str) -> None:
    assert expected in errors_of(with_change(path, value))


def test_missing_required_fields() -> None:
    data = copy.deepcopy(BASE)
    del data["devices"]["E1"]["unit_id"]
    del data["links"]["gw1"]["host"]
    errors = errors_of(data)
    assert "devices.E1.unit_id: missing (required)" in errors
    assert "links.gw1.host: missing (required)" in errors


def test_unit_id_used_twice_on_one_link() -> None:
    data = copy.deepcopy(BASE)
    data["devices"]["E2"] = {
        "model": "acrel.DDSY1352",
        "link": "gw1",
        "unit_id": 1,
        "room": "A-101",
    }
    assert errors_of(data) == [
        "devices.E2.unit_id: unit id 1 is already used on link 'gw1' by devices.E1"
    ]


def test_parallel_transactions_only_on_native_tcp() -> None:
    errors = errors_of(with_change("links.gw1.in_flight", 4))
    assert errors == [
        "links.gw1.in_flight: expected 1 on a rtu_over_tcp link (one transaction at a time on "
        "a shared bus), got 4"
    ]


def test_room_and_building_together_is_ambiguous() -> None:
    errors = errors_of(with_change("devices.E1.building", "A"))
    assert errors == [
        "devices.E1.building: give either room or building (a common-area meter), not both"
    ]


def test_unknown_model_lists_installed_models() -> None:
    site = parse_site(with_change("devices.E1.model", "acrel.DDSY135"))
    with pytest.raises(ConfigError) as info:
        check_devices_against_models(site, {})
    assert str(info.value.errors[0]).startswith("devices.E1.model: unknown model 'acrel.DDSY135'")


def test_toml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    broken = tmp_path / "site.toml"
    broken.write_text("[site\nid = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_site(broken)
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_site(tmp_path / "absent.toml")
