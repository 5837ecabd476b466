"""The site file: links, devices and the building tree of one installation (TOML).

`load_site(path)` parses and validates a file; `parse_site(data)` does the same for a dict
(the demo builds its site in memory). Every problem is collected with the exact field that
holds it and raised together as one `ConfigError`. Checks that need the installed plugins
(is `acrel.DDSY1352` a known model?) are done by `check_devices_against_models`.

The format is documented in README.md ("Configuration reference") and in
examples/site.toml.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..errors import ConfigError, FieldError
from ..model import DeviceModel
from .reader import TableReader
from .tomlfile import read_toml


class LinkType(enum.StrEnum):
    #: A local RS-485 port (pyserial device or URL such as socket://host:port).
    SERIAL = "serial"
    #: A TCP-to-RS-485 gateway that passes RTU frames through unchanged.
    RTU_OVER_TCP = "rtu_over_tcp"
    #: A native Modbus TCP device or a gateway converting Modbus TCP to RTU.
    MODBUS_TCP = "modbus_tcp"


class LinkProtocol(enum.StrEnum):
    """The frames a link carries; one protocol per link."""

    MODBUS = "modbus"
    #: DL/T 645-2007 electricity meters (plugins/dlt645).
    DLT645 = "dlt645"
    #: CJ/T 188-2004 water, heat and gas meters (plugins/cjt188).
    CJT188 = "cjt188"


#: Protocols whose frames pass through a serial bus or a transparent TCP gateway only.
FRAMED_PROTOCOLS = (LinkProtocol.DLT645, LinkProtocol.CJT188)
#: Digits of a device address, per protocol (12 BCD digits for DL/T 645, 14 for CJ/T 188).
ADDRESS_DIGITS = {LinkProtocol.DLT645: 12, LinkProtocol.CJT188: 14}
#: Serial settings these meters ship with (DL/T 645-2007 default 2400 8E1).
FRAMED_DEFAULT_BAUDRATE = 2400
FRAMED_DEFAULT_PARITY = "E"


class ControlMode(enum.StrEnum):
    #: The platform rates consumption and commands the relay or valve.
    REMOTE = "REMOTE"
    #: The meter keeps its own balance; the platform delivers top-ups and reconciles.
    LOCAL = "LOCAL"
    #: Metering only: bills afterwards, never trips automatically.
    POSTPAID = "POSTPAID"


@dataclass(frozen=True, slots=True)
class SiteInfo:
    id: str
    name: str
    timezone: str
    currency: str = "CNY"

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


@dataclass(frozen=True, slots=True)
class PollPolicy:
    """How devices are polled and how a failing device is backed off."""

    interval_s: float = 10.0
    #: Consecutive failed polls after which a device counts as offline.
    offline_after: int = 1
    #: Back-off after a failure: initial delay, doubled per failure up to the maximum.
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    #: After this many consecutive failures the device is quarantined and probed rarely.
    quarantine_after: int = 5
    quarantine_probe_s: float = 300.0
    #: How often link and device statistics are published as points.
    stats_interval_s: float = 5.0
    #: How often the service runs a full garbage collection (core/app/vitals.py): a pause
    #: that walks every object made since start-up and still alive (0.33-0.37 s per
    #: instance at 20,000 meters on two), while the cyclic garbage of the interval waits.
    full_collection_s: float = 3600.0
    #: Simulated sites only: device time runs this many times faster than the clock (the
    #: demo's speed-up), so the plausibility bound on energy per hour scales with it.
    time_scale: float = 1.0


@dataclass(frozen=True, slots=True)
class LinkConfig:
    id: str
    type: LinkType
    host: str | None = None
    port: int | None = None
    #: Serial device path or pyserial URL (serial links only).
    device: str | None = None
    #: Baud rate of the RS-485 bus (serial links, and the bus behind an RTU gateway).
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8
    timeout_s: float = 0.5
    #: Silence enforced between transactions; None derives it from the baud rate on
    #: serial links (3.5 characters) and leaves pacing to the gateway on TCP links.
    frame_gap_s: float | None = None
    #: Transactions in flight at once; more than 1 only for native Modbus TCP.
    in_flight: int = 1
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 30.0
    #: The frames the link carries (Modbus RTU/TCP, DL/T 645, CJ/T 188).
    protocol: LinkProtocol = LinkProtocol.MODBUS

    @property
    def bits_per_char(self) -> int:
        """Start bit + data bits + parity bit + stop bits on the wire."""
        return 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits

    @property
    def char_time_s(self) -> float:
        return self.bits_per_char / self.baudrate

    @property
    def gap_s(self) -> float:
        """The inter-frame silence the arbiter keeps between transactions."""
        if self.frame_gap_s is not None:
            return self.frame_gap_s
        if self.type is not LinkType.SERIAL:
            return 0.0
        if self.protocol is not LinkProtocol.MODBUS:
            # DL/T 645 and CJ/T 188 frames are delimited by their length byte, not by
            # silence (the FE preamble wakes the receivers): two characters let the last
            # meter's transmitter release the RS-485 bus.
            return 2 * self.char_time_s
        # Modbus over serial line, §2.5.1.1: t3.5 = 3.5 characters, fixed 1.75 ms above 19200.
        return 0.00175 if self.baudrate > 19200 else 3.5 * 11 / self.baudrate

    @property
    def address(self) -> str:
        if self.type is LinkType.SERIAL:
            return str(self.device)
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Building:
    id: str
    name: str
    floors: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Room:
    id: str
    building: str
    floor: str
    name: str
    area_m2: float | None = None


@dataclass(frozen=True, slots=True)
class DeviceConfig:
    id: str
    model: str
    link: str
    #: Modbus unit id (1..247); None on DL/T 645 and CJ/T 188 links, where `address` is used.
    unit_id: int | None
    #: Where the meter is: a room, or only a building for common-area meters.
    room: str | None = None
    building: str | None = None
    control_mode: ControlMode = ControlMode.REMOTE
    poll_interval_s: float | None = None
    #: Model-specific settings (e.g. ct_ratio), checked by the plugin.
    options: Mapping[str, Any] = field(default_factory=dict)
    #: Plausibility limits that replace the model's for this device (a meter with a bigger
    #: rating), checked against the model by core.field.plausibility.check_device_limits.
    limits: Mapping[str, Any] = field(default_factory=dict)
    #: Meter address on DL/T 645 (12 digits) and CJ/T 188 (14 digits) links, as printed on
    #: the nameplate (most significant digit first); None on Modbus links.
    address: str | None = None

    @property
    def bus_id(self) -> str:
        """How the device is addressed on its link, for messages and logs."""
        return self.address if self.address is not None else str(self.unit_id)


@dataclass(frozen=True, slots=True)
class Site:
    info: SiteInfo
    poll: PollPolicy
    links: Mapping[str, LinkConfig]
    buildings: Mapping[str, Building]
    rooms: Mapping[str, Room]
    devices: Mapping[str, DeviceConfig]
    #: Sections owned by later layers (database, historian, opcua...), as parsed TOML.
    sections: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    path: Path | None = None

    @property
    def id(self) -> str:
        return self.info.id

    def devices_on(self, link_id: str) -> list[DeviceConfig]:
        return [d for d in self.devices.values() if d.link == link_id]

    def building_of(self, device: DeviceConfig) -> str | None:
        if device.room is not None:
            return self.rooms[device.room].building
        return device.building

    def poll_interval(self, device: DeviceConfig) -> float:
        return (
            device.poll_interval_s if device.poll_interval_s is not None else self.poll.interval_s
        )


#: The refusal of a relative path in a site section when there is no site file.
RELATIVE_WITHOUT_SITE = "a relative path needs a site file to be relative to; give an absolute path"


def site_relative_path(value: str, base: Path | None) -> Path | None:
    """A path a site section names (`~` expanded): an absolute one as it is, a relative one
    inside `base` (the site file's folder); None for a relative one without a site file."""
    path = Path(value).expanduser()
    if path.is_absolute():
        return path
    if base is None:
        return None
    return base / path


#: The longest poll interval, back-off or probe period a site file may set (a day).
DAY_S = 86_400.0
#: The largest room area (m²) a site file may declare.
MAX_AREA_M2 = 1_000_000.0

#: Sections that the later layers read from the site file; validated by their owners.
OWNED_SECTIONS = (
    "database",
    "historian",
    "opcua",
    "prepay",
    "tariffs",
    "notify",
    "billing",
    "payments",
    "web",
    "cluster",
)


def load_site(path: str | Path) -> Site:
    """Every command that takes a SITE reads it here: a file that is not UTF-8, not TOML or
    absurdly nested is a one-line `TomlFileError` with the position."""
    path = Path(path)
    return parse_site(read_toml(path), source=str(path), path=path)


def parse_site(data: Mapping[str, Any], source: str = "site", path: Path | None = None) -> Site:
    errors: list[FieldError] = []
    root = TableReader(dict(data), "", errors)
    info = _read_info(root.table("site", required=True))
    poll = _read_poll(root.table("poll"))
    links = root.each("links", _read_link)
    buildings = root.each("buildings", _read_building)
    rooms = root.each("rooms", _read_room)
    devices = root.each("devices", _read_device)
    sections = {name: root.raw(name) for name in OWNED_SECTIONS if root.has(name)}
    root.finish()
    # Ids declared in the file, valid or not: a reference to an entry that has its own
    # error is not reported a second time as unknown.
    declared = {
        key: set(data.get(key) or ()) if isinstance(data.get(key), dict) else set()
        for key in ("links", "buildings", "rooms")
    }
    if not declared["links"]:
        root.error("at least one link is required", "links")

    _check_references(buildings, rooms, devices, links, declared, errors)
    if errors:
        raise ConfigError(source, errors)
    assert info is not None and poll is not None
    return Site(info, poll, links, buildings, rooms, devices, sections, path)


def check_devices_against_models(site: Site, models: Mapping[str, DeviceModel]) -> None:
    """Fail when a device names a model that no installed plugin provides, or a model
    whose protocol is not its link's."""
    errors = []
    known = ", ".join(sorted(models)) or "none (no device plugin loaded)"
    for device in site.devices.values():
        model = models.get(device.model)
        if model is None:
            errors.append(
                FieldError(
                    f"devices.{device.id}.model",
                    f"unknown model {device.model!r}; installed models: {known}",
                )
            )
            continue
        link = site.links.get(device.link)
        if link is not None and link.protocol != model.protocol:
            errors.append(
                FieldError(
                    f"devices.{device.id}.model",
                    f"{model.name} speaks {model.protocol} but link {link.id!r} carries "
                    f'{link.protocol}; put it on a link with protocol = "{model.protocol}"',
                )
            )
    if errors:
        raise ConfigError(str(site.path or "site"), errors)


def _read_info(r: TableReader) -> SiteInfo | None:
    site_id = r.id("id")
    name = r.str("name", site_id or "")
    timezone = r.str("timezone", "Asia/Shanghai")
    currency = r.str("currency", "CNY")
    r.finish()
    if timezone is not None:
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            r.error(f"unknown IANA time zone {timezone!r} (e.g. Asia/Shanghai)", "timezone")
            return None
    if site_id is None:
        return None
    return SiteInfo(site_id, name, timezone, currency)


def _read_poll(r: TableReader) -> PollPolicy:
    d = PollPolicy()
    policy = PollPolicy(
        interval_s=r.number("interval_s", d.interval_s, low=0.0, high=DAY_S),
        offline_after=r.int("offline_after", d.offline_after, low=1, high=100),
        backoff_initial_s=r.number("backoff_initial_s", d.backoff_initial_s, low=0.0, high=DAY_S),
        backoff_max_s=r.number("backoff_max_s", d.backoff_max_s, low=0.0, high=DAY_S),
        quarantine_after=r.int("quarantine_after", d.quarantine_after, low=1, high=1000),
        quarantine_probe_s=r.number(
            "quarantine_probe_s", d.quarantine_probe_s, low=0.0, high=DAY_S
        ),
        stats_interval_s=r.number(
            "stats_interval_s", d.stats_interval_s, low=0.0, low_exclusive=True, high=DAY_S
        ),
        full_collection_s=r.number(
            "full_collection_s", d.full_collection_s, low=60.0, high=7 * DAY_S
        ),
        time_scale=r.number("time_scale", d.time_scale, low=0.0, low_exclusive=True),
    )
    r.finish()
    if (
        policy.backoff_initial_s is not None
        and policy.backoff_max_s is not None
        and policy.backoff_max_s < policy.backoff_initial_s
    ):
        r.error(
            f"must be at least backoff_initial_s ({policy.backoff_initial_s}), "
            f"got {policy.backoff_max_s}",
            "backoff_max_s",
        )
    return policy


_PARITIES = ("N", "E", "O")


def _read_link(link_id: str, r: TableReader) -> LinkConfig | None:
    kind = r.str("type", choices=[t.value for t in LinkType])
    if kind is None:
        return None
    link_type = LinkType(kind)
    host = port = device = None
    if link_type is LinkType.SERIAL:
        device = r.str("device")
    else:
        host = r.str("host")
        port = r.int("port", 502, low=1, high=65535)
    protocol = r.str("protocol", "modbus", choices=[p.value for p in LinkProtocol])
    framed = protocol is not None and LinkProtocol(protocol) in FRAMED_PROTOCOLS
    if framed and link_type is LinkType.MODBUS_TCP:
        r.error(
            f"{protocol} frames travel on a serial link or through a transparent TCP gateway; "
            'set type = "serial" or type = "rtu_over_tcp" (a modbus_tcp link carries Modbus only)',
            "protocol",
        )
        protocol = None
    baudrate = r.int("baudrate", FRAMED_DEFAULT_BAUDRATE if framed else 9600, low=300, high=921600)
    parity = r.str("parity", FRAMED_DEFAULT_PARITY if framed else "N", choices=_PARITIES)
    stopbits = r.int("stopbits", 1, low=1, high=2)
    bytesize = r.int("bytesize", 8, low=7, high=8)
    timeout_ms = r.number("timeout_ms", 500, low=1, high=60000)
    gap_ms = r.number("frame_gap_ms", None, low=0, high=10000)
    in_flight = r.int("in_flight", 1, low=1, high=64)
    if in_flight is not None and in_flight > 1 and link_type is not LinkType.MODBUS_TCP:
        r.error(
            f"expected 1 on a {kind} link (one transaction at a time on a shared bus), "
            f"got {in_flight}",
            "in_flight",
        )
    reconnect_min = r.number("reconnect_min_s", 0.5, low=0.0, low_exclusive=True, high=DAY_S)
    reconnect_max = r.number("reconnect_max_s", 30.0, low=0.0, low_exclusive=True, high=DAY_S)
    if None in (protocol, baudrate, parity, stopbits, bytesize, timeout_ms, in_flight) or (
        link_type is LinkType.SERIAL and device is None
    ):
        return None
    if link_type is not LinkType.SERIAL and (host is None or port is None):
        return None
    return LinkConfig(
        id=link_id,
        type=link_type,
        host=host,
        port=port,
        device=device,
        baudrate=baudrate,
        parity=parity,
        stopbits=stopbits,
        bytesize=bytesize,
        timeout_s=timeout_ms / 1000,
        frame_gap_s=None if gap_ms is None else gap_ms / 1000,
        in_flight=in_flight,
        reconnect_min_s=reconnect_min or 0.5,
        reconnect_max_s=reconnect_max or 30.0,
        protocol=LinkProtocol(protocol),
    )


def _read_building(building_id: str, r: TableReader) -> Building | None:
    name = r.str("name", building_id)
    floors = r.str_list("floors", [])
    if floors is not None:
        seen: set[str] = set()
        for floor in floors:
            if floor in seen:
                r.error(f"floor {floor!r} is listed twice", "floors")
            seen.add(floor)
    return Building(building_id, name, tuple(floors)) if floors is not None else None


def _read_room(room_id: str, r: TableReader) -> Room | None:
    building = r.id("building")
    floor = r.str("floor")
    name = r.str("name", room_id)
    area = r.number("area_m2", None, low=0.0, low_exclusive=True, high=MAX_AREA_M2)
    if building is None or floor is None:
        return None
    return Room(room_id, building, floor, name, area)


def _read_device(device_id: str, r: TableReader) -> DeviceConfig | None:
    model = r.str("model")
    link = r.id("link")
    # Which of unit_id / address a device needs depends on its link's protocol: checked
    # with the references, once the links are known.
    unit_id = r.int("unit_id", None, low=1, high=247)
    address = r.raw("address", None)
    if address is not None and not isinstance(address, str):
        r.error(
            'expected the meter address as a string of digits in quotes, e.g. "000012345678"',
            "address",
        )
        return None
    room = r.id("room", None)
    building = r.id("building", None)
    mode = r.str("control_mode", "REMOTE", choices=[m.value for m in ControlMode])
    interval = r.number("poll_interval_s", None, low=0.0, high=DAY_S)
    options = r.raw("options", {})
    if not isinstance(options, dict):
        r.error("expected a table of model-specific settings", "options")
        options = {}
    limits = r.raw("limits", {})
    if not isinstance(limits, dict):
        r.error("expected a table of plausibility limits, e.g. { max_current = 100 }", "limits")
        limits = {}
    if room is not None and building is not None:
        r.error("give either room or building (a common-area meter), not both", "building")
    if None in (model, link, mode):
        return None
    return DeviceConfig(
        id=device_id,
        model=model,
        link=link,
        unit_id=unit_id,
        room=room,
        building=building,
        control_mode=ControlMode(mode),
        poll_interval_s=interval,
        options=options,
        limits=limits,
        address=address,
    )


def _check_bus_id(
    device: DeviceConfig, link: LinkConfig | None, err: Callable[[str, str], None]
) -> None:
    """unit_id on Modbus links, a well-formed address on DL/T 645 and CJ/T 188 links."""
    at = f"devices.{device.id}"
    if link is None:
        # The link has errors of its own; a device with neither id still lacks one.
        if device.unit_id is None and device.address is None:
            err(f"{at}.unit_id", "missing (required)")
        return
    if link.protocol is LinkProtocol.MODBUS:
        if device.unit_id is None:
            err(f"{at}.unit_id", "missing (required)")
        if device.address is not None:
            err(
                f"{at}.address",
                f"link {link.id!r} carries Modbus, which addresses devices by unit_id; "
                "remove address (or set the link's protocol)",
            )
        return
    digits = ADDRESS_DIGITS[link.protocol]
    example = "0" * (digits - 6) + "123456"
    if device.address is None:
        err(
            f"{at}.address",
            f"missing (required): the meter's {digits}-digit {link.protocol} address from its "
            f'nameplate, e.g. "{example}"',
        )
    elif (
        len(device.address) != digits
        or not device.address.isascii()
        or not (device.address.isdigit())
    ):
        err(
            f"{at}.address",
            f"expected exactly {digits} digits 0-9 for a {link.protocol} meter "
            f'(e.g. "{example}"), got {device.address!r}',
        )
    elif set(device.address) == {"9"}:
        err(
            f"{at}.address",
            f"{device.address} is the broadcast address, not a meter's; use the nameplate address",
        )


def _check_references(
    buildings: Mapping[str, Building],
    rooms: Mapping[str, Room],
    devices: Mapping[str, DeviceConfig],
    links: Mapping[str, LinkConfig],
    declared: Mapping[str, set[str]],
    errors: list[FieldError],
) -> None:
    def err(path: str, message: str) -> None:
        errors.append(FieldError(path, message))

    def choices(ids: Iterable[str]) -> str:
        ids = sorted(ids)
        shown = ", ".join(ids[:8]) + (", ..." if len(ids) > 8 else "")
        return shown or "none defined"

    for room in rooms.values():
        building = buildings.get(room.building)
        if building is None and room.building not in declared["buildings"]:
            err(
                f"rooms.{room.id}.building",
                f"unknown building {room.building!r} (defined: {choices(buildings)})",
            )
        elif building is not None and room.floor not in building.floors:
            err(
                f"rooms.{room.id}.floor",
                f"building {building.id!r} has no floor {room.floor!r} "
                f"(its floors: {', '.join(building.floors) or 'none'})",
            )

    used_units: dict[tuple[str, str], str] = {}
    for device in devices.values():
        at = f"devices.{device.id}"
        if device.link not in declared["links"]:
            err(f"{at}.link", f"unknown link {device.link!r} (defined: {choices(links)})")
        if device.room is not None and device.room not in declared["rooms"]:
            err(f"{at}.room", f"unknown room {device.room!r} (defined: {choices(rooms)})")
        if device.building is not None and device.building not in declared["buildings"]:
            err(
                f"{at}.building",
                f"unknown building {device.building!r} (defined: {choices(buildings)})",
            )
        link = links.get(device.link)
        _check_bus_id(device, link, err)
        if link is None or (device.unit_id is None and device.address is None):
            continue
        key = (device.link, device.bus_id)
        if key in used_units:
            what = "unit id" if link.protocol is LinkProtocol.MODBUS else "address"
            field_name = "unit_id" if link.protocol is LinkProtocol.MODBUS else "address"
            err(
                f"{at}.{field_name}",
                f"{what} {device.bus_id} is already used on link {device.link!r} "
                f"by devices.{used_units[key]}",
            )
        else:
            used_units[key] = device.id
