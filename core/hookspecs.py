"""The plugin contract of OpenPrepay: every extension point, in the order they are used.

A plugin is a module (or object) with functions decorated `@hookimpl` and named like the
specs below; it registers under the entry-point group `openprepay.plugins`::

    [options.entry_points]
    openprepay.plugins =
        my_meter = my_package.plugin

The built-in plugins (Modbus links, Acrel meters, valve water meters) use exactly these
hooks and nothing else. Hooks are called with keyword arguments and are synchronous; a hook
may return an awaitable where its docstring says so, and the core awaits it. Hooks marked
*first result* answer "who owns this?": return None when the thing is not yours.

The objects hooks return are described in `core/contracts.py`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    import click

    from .config.site import DeviceConfig, LinkConfig, Site
    from .contracts import (
        Driver,
        LinkSimulator,
        LinkTransport,
        Notifier,
        PaymentProvider,
        Service,
        SimulatedDevice,
        SimulatorOptions,
    )
    from .errors import FieldError
    from .host import ServiceHost
    from .model import DeviceModel

PROJECT = "openprepay"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# -- Discovery ------------------------------------------------------------------------------


@hookspec
def openprepay_device_models() -> Sequence[DeviceModel]:
    """The device models this plugin provides (name, kind, points, commands, profile).

    Called once by the plugin manager when plugins are loaded; the answers make up the
    catalogue that `openprepay check` validates site files against and that
    `openprepay plugins` lists. Model names are global: prefix them with the vendor
    (`acrel.DDSY1352`).
    """


# -- Links and device I/O -------------------------------------------------------------------


@hookspec(firstresult=True)
def openprepay_make_transport(link: LinkConfig) -> LinkTransport | None:
    """Open-able transport for `link` (serial port, RTU-over-TCP gateway, Modbus TCP).

    Called by the link arbiter once per link when the service starts. First result: return
    None for link types or protocols (`link.protocol`: modbus, dlt645, cjt188) you do not
    handle. The transport is not connected yet; the arbiter
    connects and reconnects it.
    """


@hookspec(firstresult=True)
def openprepay_make_driver(
    model: DeviceModel, device: DeviceConfig, transport: LinkTransport
) -> Driver | None:
    """Driver for one device of one of your models, talking through `transport`.

    Called by the link arbiter once per configured device when the service starts. First
    result: return None when `model` is not yours. Raise `ConfigError` when the device's
    `options` are wrong for the model.
    """


# -- Simulation -----------------------------------------------------------------------------


@hookspec(firstresult=True)
def openprepay_make_simulator(
    model: DeviceModel, device: DeviceConfig, options: SimulatorOptions
) -> SimulatedDevice | None:
    """An emulated device of one of your models, for the demo, tests and `openprepay simulate`.

    Called by the simulation host once per device. First result: None when not yours.
    """


@hookspec(firstresult=True)
def openprepay_make_link_simulator(
    link: LinkConfig, devices: Sequence[SimulatedDevice], options: SimulatorOptions
) -> LinkSimulator | None:
    """A server that hosts `devices` behind a simulated `link`, speaking the link's wire
    protocol on 127.0.0.1.

    Called by the simulation host once per link. First result: None for link types you do
    not serve.
    """


# -- Running --------------------------------------------------------------------------------


@hookspec
def openprepay_validate_site(site: Site) -> Sequence[FieldError]:
    """Problems in the site-file sections this plugin owns (e.g. `[opcua]`, `[historian]`).

    Called by `openprepay check` and by the runtime before anything starts. Return one
    `FieldError` per problem, with the exact field (`opcua.port`) and what was expected;
    an empty list when all is well.
    """


@hookspec
def openprepay_services(runtime: ServiceHost) -> Sequence[Service]:
    """Long-running services to start with the runtime (OPC UA server, historian...).

    Called by the runtime after the site is loaded and the links are built, before polling
    starts. `runtime` (`core.app.host.ServiceHost`) gives access to the site, the models,
    the event bus, the database and the door every change goes through
    (`runtime.operations`); services must act through those, never by reaching into a
    plugin. Services
    are started in the order returned and stopped in reverse.
    """


# -- Billing and notification ---------------------------------------------------------------


@hookspec
def openprepay_notifiers(site: Site) -> Sequence[Notifier]:
    """Channels that deliver alarm and supply notices (email, webhook, SMS, app push).

    Called once by the notification service at start with the running site (read your
    settings from `site.sections["notify"]["<channel>"]`; validate them in
    `openprepay_validate_site`). A notice queued for `channel:recipient` (the account's
    notify settings) is sent by the notifier whose `channel` matches; return none for a
    channel that is not configured.
    """


@hookspec
def openprepay_payment_providers(site: Site) -> Sequence[PaymentProvider]:
    """Online payment channels (WeChat Pay, Alipay...) the site configures.

    Called once by the payment service at start and by the `openprepay payments` commands,
    with the site (read your settings from `site.sections["payments"]["<channel>"]`,
    validate them in `openprepay_validate_site`); return none for a channel the site does
    not configure. Callbacks to /pay/notify/<channel> are routed to the provider whose
    `channel` matches; its payments are credited through the door's top-up with the
    provider's transaction id as the idempotency key (core/payments).
    """


@hookspec(firstresult=True)
def openprepay_room_payment_qr(site: Site, room: str) -> str | None:
    """The QR code a tenant scans to pay for `room`, as an image (`data:image/svg+xml;...`
    or an https address) — *first result*.

    Called by the bill and arrears-notice export (`openprepay bill export`, `bill arrears
    --export`) once per printed page, to fill the page's payment QR code; return None when
    you offer no payment page for the site (the page then shows none). The built-in web
    plugin answers with the room's signed tenant-page link when `[web]` has a tenant secret.
    """


# -- Command line ---------------------------------------------------------------------------


@hookspec
def openprepay_cli_commands(cli: click.Group) -> None:
    """Add commands to the `openprepay` command line (`cli.add_command(...)`).

    Called once when the CLI starts, after the built-in commands are registered.
    """
