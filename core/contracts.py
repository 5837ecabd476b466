"""What a plugin implements: the objects its hooks return.

These are structural types (`typing.Protocol`): a plugin does not inherit from anything,
it returns objects with these methods. `core/hookspecs.py` says which hook returns which.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Protocol, TypeVar, runtime_checkable

from .config.site import DeviceConfig, LinkConfig
from .errors import CommandRefused, OpenPrepayError
from .model import CommandOutcome, DeviceCommand, DeviceModel, Sample, Value

#: What a driver keeps per command (a register map, a data identifier, a valve byte).
C = TypeVar("C")


@runtime_checkable
class LinkTransport(Protocol):
    """An open path to the devices of one link (a serial port, a gateway socket).

    The link arbiter owns it: it connects, reconnects with back-off and closes it, and it
    guarantees that drivers use it for one transaction at a time (or `in_flight` on
    native Modbus TCP).
    """

    link: LinkConfig

    @property
    def connected(self) -> bool: ...

    async def connect(self) -> None:
        """Open the link; raise `LinkDown` if it cannot be opened."""

    async def close(self) -> None: ...


@runtime_checkable
class Driver(Protocol):
    """Reads and commands one device through its link's transport.

    A driver whose values are scaled (a CT/PT-connected meter) may also have `limits`, the
    `core.field.plausibility.DeviceLimits` of its device in the units it publishes; otherwise
    the link arbiter takes them from the model and the site file.
    """

    device: DeviceConfig
    model: DeviceModel

    def confirm_delay_s(self, command: DeviceCommand) -> float:
        """Seconds to wait after `execute` before reading back (relay travel, valve motor)."""

    async def read(self) -> Sample:
        """Read every point once. Raise a `DeviceIOError` on failure, never return stale
        values."""

    async def execute(self, command: DeviceCommand) -> None:
        """Send the command. Raise `CommandRefused` for an unsupported command or bad
        parameters (nothing sent), `DeviceIOError` when the transaction failed."""

    async def confirm(self, command: DeviceCommand) -> CommandOutcome:
        """Read the device back and tell whether the command took effect."""


def command_entry(model: DeviceModel, entries: Mapping[str, C], command: DeviceCommand) -> C:
    """A driver's entry for `command` (how its protocol sends it), or `CommandRefused`
    naming the commands the model supports: nothing is sent."""
    try:
        return entries[command.name]
    except KeyError:
        known = ", ".join(entries) or "none"
        raise CommandRefused(
            f"{model.name} has no command {command.name!r} (it supports: {known})"
        ) from None


@dataclass(frozen=True, slots=True)
class SimulatorOptions:
    """How simulated devices behave (the same for every plugin)."""

    #: Simulated seconds per real second (the demo runs days in minutes).
    speedup: float = 1.0
    #: Delay answers by the time the frames would take on the wire at the link's baud rate.
    serial_timing: bool = False
    #: Device turnaround before answering, in seconds (with serial_timing).
    turnaround_s: float = 0.005
    #: Seed for load profiles, so tests are repeatable.
    seed: int = 1
    #: Start of simulated time; None = now.
    start: datetime | None = None
    #: The site's IANA time zone: simulated meter clocks and TOU periods follow it.
    timezone: str = "Asia/Shanghai"
    #: Listen on ports the OS picks (demo, tests) instead of the ports in the site file.
    ephemeral_ports: bool = False
    #: Serve with the link plugin's lean server (cheap per request) instead of its protocol
    #: library's server. The tests keep the library's server, their independent instrument;
    #: `openprepay simulate`, the demo and the benchmarks choose the lean one.
    lean_server: bool = False
    #: Simulated seconds a device's physics may lag a read, so that the reads of one poll
    #: share one step; 0 (the tests) steps on every request. Writes always step first.
    advance_every_s: float = 0.0


@runtime_checkable
class SimulatedDevice(Protocol):
    """An emulated device: register image plus behaviour (load, relay, balance)."""

    device: DeviceConfig
    model: DeviceModel
    #: A silent device never answers; a garbling device answers with corrupt frames.
    silent: bool
    garbage: bool

    def snapshot(self) -> Mapping[str, Value]:
        """What the device holds now, in engineering units (for tests and the demo)."""


@runtime_checkable
class LinkSimulator(Protocol):
    """Hosts simulated devices behind one simulated link (gateway or bus), speaking the
    real wire protocol on a loopback socket."""

    link: LinkConfig
    devices: Mapping[int, SimulatedDevice]

    async def start(self) -> tuple[str, int]:
        """Start serving; return the (host, port) it listens on."""

    async def stop(self) -> None: ...


@runtime_checkable
class Service(Protocol):
    """A long-running part of the product (OPC UA server, historian, prepay engine).

    The runtime starts services in the order the hooks returned them and stops them in
    reverse order. A service may declare `stop_weight` (default 1): its share of the stop
    deadline relative to the others, larger for one that still has data to put away.
    """

    name: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@runtime_checkable
class Notifier(Protocol):
    """Delivers alarm and supply notices on one channel (email, webhook, SMS...)."""

    channel: str

    async def send(
        self, recipient: str, subject: str, body: str, data: Mapping[str, object]
    ) -> None:
        """Deliver one notice; raise on failure so the sender can retry."""


# -- online payment --------------------------------------------------------------------------
# The core keeps the payment orders (core/payments) and credits them through the door; a
# provider plugin speaks one provider's API: it creates the provider's order, verifies and
# decodes what the provider sends, and asks the provider what it knows. Amounts are integer
# fen everywhere in these types; a provider converts to and from its own form (yuan strings).


class NotificationRefused(Exception):
    """A notification that must not be believed (bad or probe signature, stale timestamp,
    undecryptable resource, unknown key serial): nothing is stored or credited, the provider
    is answered with an error. `reason` is for the log, never for the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PaymentProviderError(OpenPrepayError):
    """A call to a provider's API gave no usable answer: the provider answered an error,
    its answer's signature did not verify, or it could not be reached. Nothing was believed
    from the answer. Each provider plugin raises its own subclass (with the provider's
    codes); the core catches this type. Bad input is `RequestError`, before any call.

    `final`: the provider refused for good (e.g. a refund of an order it does not know, or
    more than is left): the same call again will fail again. False: worth retrying (network,
    the provider busy, a system error)."""

    final: bool = False


@dataclass(frozen=True, slots=True)
class PaymentRequest:
    """What the core asks a provider to open for one of its orders."""

    out_trade_no: str
    amount_fen: int
    currency: str
    #: What the payer sees (e.g. "Electricity A-101").
    description: str
    expires_at: datetime
    #: "native" (a QR code for a browser), "jsapi" (inside WeChat, needs `payer_id`),
    #: "qr" (Alipay precreate).
    method: str
    #: The URL the provider calls back (the site's public base URL + the notify route).
    notify_url: str
    #: The payer at the provider, where the method needs it (WeChat's openid for JSAPI).
    payer_id: str | None = None


@dataclass(frozen=True, slots=True)
class PaymentPrepared:
    """What the payer needs to pay an order: a QR code's content, or the parameters the
    WeChat JSAPI wants (already signed by the provider plugin)."""

    code_url: str | None = None
    jsapi: Mapping[str, str] | None = None


@dataclass(frozen=True, slots=True)
class PaymentNotice:
    """A provider's word on one order — from a verified notification, a query or a bill.

    `state` is the provider's state mapped to ours: "PAID", "NOTPAY", "CLOSED", "REFUNDED";
    for a refund (`out_refund_no` set): "REFUND_PROCESSING" (accepted, not done),
    "REFUNDED" (paid back), "REFUND_ABNORMAL" (could not be paid back: for a person),
    "REFUND_FAILED" (closed or refused: nothing paid back)."""

    channel: str
    out_trade_no: str
    state: str
    amount_fen: int
    currency: str
    #: The provider's own id of the payment (WeChat transaction_id, Alipay trade_no);
    #: None while unpaid.
    transaction_id: str | None
    merchant_id: str
    app_id: str
    paid_at: datetime | None = None
    #: For refund notifications: our refund number and the refunded fen.
    out_refund_no: str | None = None
    refund_fen: int = 0
    #: The decoded resource as the provider sent it (kept with the order, for people).
    raw: Mapping[str, object] | None = None


@dataclass(frozen=True, slots=True)
class NotifyAnswer:
    """What the web service answers the provider's callback (status, body, content type)."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain"


@dataclass(frozen=True, slots=True)
class TradeRecord:
    """One row of a provider's daily trade bill, in fen."""

    out_trade_no: str
    transaction_id: str
    state: str
    amount_fen: int
    refund_fen: int = 0
    at: datetime | None = None


@runtime_checkable
class PaymentProvider(Protocol):
    """An online payment channel (WeChat Pay, Alipay...). Returned by
    `openprepay_payment_providers(site)` for the channels the site configures.

    `verify` is CPU-only and never touches the network (it runs inside the provider's
    callback, which must be answered within seconds; an unknown key serial is refused, not
    fetched). The other calls go to the provider's API (its base URL configurable, so a test
    emulator can stand in)."""

    #: "wechat", "alipay": the route of its callbacks (/pay/notify/<channel>) and the top-up
    #: channel its payments are credited under.
    channel: str
    merchant_id: str
    app_id: str

    def verify(self, headers: Mapping[str, str], body: bytes, now: datetime) -> PaymentNotice:
        """The notice in a callback, verified and decoded; `NotificationRefused` if not."""

    def answer(self, accepted: bool) -> NotifyAnswer:
        """What to answer a callback: accepted (stored) or not (the provider retries)."""

    async def create(self, request: PaymentRequest) -> PaymentPrepared:
        """Open the provider's order for one of ours."""

    async def query(self, out_trade_no: str) -> PaymentNotice:
        """The provider's current word on an order (no notification came)."""

    async def close(self, out_trade_no: str) -> None:
        """Close an unpaid order at the provider (it expired or was cancelled)."""

    async def refund(
        self, out_trade_no: str, out_refund_no: str, refund_fen: int, total_fen: int, reason: str
    ) -> PaymentNotice:
        """Ask for a refund (the same `out_refund_no` again refunds once); the answer says
        whether it was accepted — the refund notification or a query says when it is done."""

    async def query_refund(self, out_trade_no: str, out_refund_no: str) -> PaymentNotice:
        """The provider's current word on one of our refunds (no notification came):
        a refund notice ("REFUND_PROCESSING", "REFUNDED", "REFUND_ABNORMAL",
        "REFUND_FAILED")."""

    async def trade_bill(self, day: date) -> list[TradeRecord]:
        """The provider's trade bill of `day` (site-local), checked (hash) and parsed."""
