"""Link and device health, and how they are published as points.

The link arbiter keeps a `DeviceHealth` per device and a `LinkHealth` per link. Every
`stats_interval_s` it publishes them as ordinary samples of two built-in pseudo-models,
`openprepay.link` and `openprepay.device_health`, so the OPC UA server, the historian and
any subscriber treat them like any other point. A device's health is published only when
it changed since its last sample: a meter polled every 10 s changes at most once per
poll, and at a 5 s interval the unchanged half were as many samples again as the meters'
own.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ..model import DeviceModel, MeterKind, PointRole, PointSpec, Value, ValueType


class DeviceState(enum.IntEnum):
    #: Not polled yet.
    UNKNOWN = 0
    #: The last poll succeeded.
    ONLINE = 1
    #: Failing; retried after an exponentially growing delay.
    BACKOFF = 2
    #: Failed too often; probed rarely so it cannot starve the bus.
    QUARANTINED = 3


def diagnostic(name: str, unit: str, description: str, vt: ValueType = ValueType.INT) -> PointSpec:
    """A point of a statistics pseudo-model (links, devices, the historian): a counter by
    default."""
    return PointSpec(name, unit, description, PointRole.DIAGNOSTIC, vt)


LINK_MODEL = DeviceModel(
    name="openprepay.link",
    vendor="OpenPrepay",
    product="Link statistics",
    kind=MeterKind.LINK,
    description="Statistics of one link (serial bus, gateway or Modbus TCP device)",
    points=(
        diagnostic("connected", "", "1 while the link is open", ValueType.BOOL),
        diagnostic(
            "utilisation", "%", "Share of the last window the link was busy", ValueType.FLOAT
        ),
        diagnostic(
            "transactions_per_s",
            "1/s",
            "Device transactions per second, last window",
            ValueType.FLOAT,
        ),
        diagnostic(
            "latency_ms", "ms", "Mean duration of a successful poll, last window", ValueType.FLOAT
        ),
        diagnostic("queue_depth", "", "Commands and read-backs waiting"),
        diagnostic("errors", "", "Failed transactions since start"),
        diagnostic("timeouts", "", "Unanswered requests since start"),
        diagnostic("garbled_frames", "", "Answers rejected as corrupt (CRC, length) since start"),
        diagnostic("rejected", "", "Exception responses since start"),
        diagnostic("reconnects", "", "Times the link was reopened since start"),
        diagnostic("devices_online", "", "Devices whose last poll succeeded"),
        diagnostic("devices_backoff", "", "Devices in back-off"),
        diagnostic("devices_quarantined", "", "Devices in quarantine"),
        diagnostic(
            "lease_epoch",
            "",
            "[cluster] epoch of this instance's lease on the link (0: not owned here)",
            ValueType.INT,
        ),
        diagnostic(
            "lease_left_s",
            "s",
            "[cluster] seconds until this instance must stop using the link (0: not owned)",
            ValueType.FLOAT,
        ),
    ),
    plugin="core",
)

HEALTH_MODEL = DeviceModel(
    name="openprepay.device_health",
    vendor="OpenPrepay",
    product="Device health",
    kind=MeterKind.HEALTH,
    description="Communication health of one device",
    points=(
        diagnostic("online", "", "1 while the device answers", ValueType.BOOL),
        diagnostic("state", "", "0 unknown, 1 online, 2 back-off, 3 quarantined"),
        diagnostic("consecutive_failures", "", "Failed polls in a row"),
        diagnostic(
            "backoff_s", "s", "Delay before the next attempt while failing", ValueType.FLOAT
        ),
        diagnostic("latency_ms", "ms", "Duration of the last successful poll", ValueType.FLOAT),
        diagnostic("polls_ok", "", "Successful polls since start"),
        diagnostic("polls_failed", "", "Failed polls since start"),
        diagnostic("timeouts", "", "Unanswered polls since start"),
        diagnostic("garbled_frames", "", "Corrupt answers since start"),
        diagnostic(
            "implausible_readings", "", "Readings with a physically impossible value since start"
        ),
    ),
    plugin="core",
)


@dataclass(slots=True)
class DeviceHealth:
    meter_id: str
    link_id: str
    interval_s: float
    state: DeviceState = DeviceState.UNKNOWN
    online: bool = False
    consecutive_failures: int = 0
    backoff_s: float = 0.0
    latency_s: float = 0.0
    polls_ok: int = 0
    polls_failed: int = 0
    timeouts: int = 0
    garbled_frames: int = 0
    rejected: int = 0
    implausible_readings: int = 0
    last_error: str | None = None
    #: monotonic time the device went offline, None while online.
    offline_since: float | None = None
    #: Model points the device does not deliver, and whether the next Good sample must
    #: say so (after start and after every Bad sample).
    unsupported: tuple[str, ...] = ()
    unsupported_unsaid: bool = True
    #: The values of the last health sample published (None: none yet).
    published: dict[str, Value] | None = None

    def values(self) -> dict[str, Value]:
        return {
            "online": self.online,
            "state": int(self.state),
            "consecutive_failures": self.consecutive_failures,
            "backoff_s": self.backoff_s,
            "latency_ms": round(self.latency_s * 1000, 3),
            "polls_ok": self.polls_ok,
            "polls_failed": self.polls_failed,
            "timeouts": self.timeouts,
            "garbled_frames": self.garbled_frames,
            "implausible_readings": self.implausible_readings,
        }


@dataclass(slots=True)
class LinkHealth:
    link_id: str
    connected: bool = False
    errors: int = 0
    timeouts: int = 0
    garbled_frames: int = 0
    rejected: int = 0
    reconnects: int = 0
    jobs_total: int = 0
    # Accumulators of the current statistics window.
    window_start: float = 0.0
    window_busy_s: float = 0.0
    window_jobs: int = 0
    window_poll_s: float = 0.0
    window_polls: int = 0
    last_error: str | None = None
    published: dict[str, Value] = field(default_factory=dict)
