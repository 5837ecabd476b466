"""Finding, loading and calling plugins.

`Plugins.load()` registers every entry point of the group `openprepay.plugins` (the
built-in plugins included). A plugin that fails to import, or whose model catalogue fails,
is reported by name in `failures` and skipped; the service keeps running without it.
Set `OPENPREPAY_DISABLE_PLUGINS=name,name` to block plugins by entry-point name.

The `Plugins` facade gives typed calls for the hooks, since pluggy's hook calls are untyped.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import logging
import os
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pluggy

from .. import hookspecs
from ..errors import ConfigError, FieldError
from ..model import DeviceModel

if TYPE_CHECKING:
    import click

    from ..config.site import DeviceConfig, LinkConfig, Site
    from ..contracts import (
        Driver,
        LinkSimulator,
        LinkTransport,
        Notifier,
        PaymentProvider,
        Service,
        SimulatedDevice,
        SimulatorOptions,
    )
    from ..host import ServiceHost

ENTRY_POINT_GROUP = "openprepay.plugins"
DISABLE_ENV = "OPENPREPAY_DISABLE_PLUGINS"

log = logging.getLogger("openprepay.plugins")


@dataclass(frozen=True, slots=True)
class PluginInfo:
    name: str
    module: str
    distribution: str
    version: str
    models: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PluginFailure:
    name: str
    distribution: str
    error: str


@dataclass
class Plugins:
    manager: pluggy.PluginManager
    infos: dict[str, PluginInfo] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)
    models: dict[str, DeviceModel] = field(default_factory=dict)

    # -- loading --------------------------------------------------------------------------
    @classmethod
    def load(
        cls, *, entry_points: bool = True, extra: Iterable[tuple[str, object]] = ()
    ) -> Plugins:
        """Load plugins from entry points plus `extra` (name, plugin) pairs (for tests)."""
        pm = pluggy.PluginManager(hookspecs.PROJECT)
        pm.add_hookspecs(hookspecs)
        plugins = cls(pm)
        blocked = {n.strip() for n in os.environ.get(DISABLE_ENV, "").split(",") if n.strip()}
        if entry_points:
            for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
                if ep.name in blocked:
                    log.info("plugin %s disabled by %s", ep.name, DISABLE_ENV)
                    continue
                plugins._load_entry_point(ep)
        for name, plugin in extra:
            plugins._register(name, plugin, getattr(plugin, "__name__", repr(plugin)), "", "")
        plugins._collect_models()
        return plugins

    def _load_entry_point(self, ep: importlib.metadata.EntryPoint) -> None:
        dist = ep.dist.name if ep.dist else "?"
        version = ep.dist.version if ep.dist else "?"
        if self.manager.has_plugin(ep.name):
            return
        try:
            plugin = ep.load()
        except Exception as exc:  # a broken plugin must not take the service down
            self._fail(ep.name, dist, f"import of {ep.value} failed: {type(exc).__name__}: {exc}")
            return
        self._register(ep.name, plugin, ep.value, dist, version)

    def _register(self, name: str, plugin: object, module: str, dist: str, version: str) -> None:
        try:
            self.manager.register(plugin, name=name)
        except Exception as exc:  # invalid hook implementations
            self._fail(name, dist, f"registration failed: {exc}")
            return
        self.infos[name] = PluginInfo(name, module, dist, version)

    def _fail(self, name: str, dist: str, error: str) -> None:
        log.error("plugin %s skipped: %s", name, error, extra={"plugin": name})
        self.failures.append(PluginFailure(name, dist, error))

    def _collect_models(self) -> None:
        for impl in reversed(self.manager.hook.openprepay_device_models.get_hookimpls()):
            name = impl.plugin_name
            try:
                provided = list(impl.function())
            except Exception as exc:
                self._fail(name, self.infos[name].distribution, f"device models failed: {exc}")
                self.manager.unregister(name=name)
                del self.infos[name]
                continue
            accepted = []
            for model in provided:
                owner = self.models.get(model.name)
                if owner is not None:
                    self._fail(
                        name,
                        self.infos[name].distribution,
                        f"model {model.name} is already provided by plugin {owner.plugin}; "
                        "this one is ignored",
                    )
                    continue
                self.models[model.name] = dataclasses.replace(model, plugin=name)
                accepted.append(model.name)
            self.infos[name] = dataclasses.replace(self.infos[name], models=tuple(accepted))

    # -- typed hook calls -----------------------------------------------------------------
    def model(self, name: str, at: str = "model") -> DeviceModel:
        try:
            return self.models[name]
        except KeyError:
            known = ", ".join(sorted(self.models)) or "none"
            raise ConfigError(
                "plugins", [FieldError(at, f"unknown model {name!r}; installed: {known}")]
            ) from None

    def make_transport(self, link: LinkConfig) -> LinkTransport:
        transport = self.manager.hook.openprepay_make_transport(link=link)
        if transport is None:
            raise ConfigError(
                "plugins",
                [
                    FieldError(
                        f"links.{link.id}.type",
                        f"no plugin handles {link.type} links carrying {link.protocol}",
                    )
                ],
            )
        return transport

    def make_driver(
        self, model: DeviceModel, device: DeviceConfig, transport: LinkTransport
    ) -> Driver:
        driver = self.manager.hook.openprepay_make_driver(
            model=model, device=device, transport=transport
        )
        if driver is None:
            raise ConfigError(
                "plugins",
                [
                    FieldError(
                        f"devices.{device.id}.model",
                        f"plugin {model.plugin} gave no driver for {model.name} on a "
                        f"{transport.link.type} link",
                    )
                ],
            )
        return driver

    def make_simulator(
        self, model: DeviceModel, device: DeviceConfig, options: SimulatorOptions
    ) -> SimulatedDevice:
        sim = self.manager.hook.openprepay_make_simulator(
            model=model, device=device, options=options
        )
        if sim is None:
            raise ConfigError(
                "plugins",
                [FieldError(f"devices.{device.id}.model", f"no simulator for {model.name}")],
            )
        return sim

    def make_link_simulator(
        self, link: LinkConfig, devices: Sequence[SimulatedDevice], options: SimulatorOptions
    ) -> LinkSimulator:
        sim = self.manager.hook.openprepay_make_link_simulator(
            link=link, devices=devices, options=options
        )
        if sim is None:
            raise ConfigError(
                "plugins",
                [FieldError(f"links.{link.id}.type", f"no plugin simulates {link.type} links")],
            )
        return sim

    def validate_site(self, site: Site) -> None:
        """Raise `ConfigError` with every problem plugins find in their site sections."""
        errors = [e for group in self._call("openprepay_validate_site", site=site) for e in group]
        if errors:
            raise ConfigError(str(site.path or "site"), errors)

    def services(self, runtime: ServiceHost) -> list[Service]:
        return [
            s
            for group in reversed(self._call("openprepay_services", runtime=runtime))
            for s in group
        ]

    def notifiers(self, site: Site) -> list[Notifier]:
        return [n for group in self._call("openprepay_notifiers", site=site) for n in group]

    def payment_providers(self, site: Site) -> list[PaymentProvider]:
        return [p for group in self._call("openprepay_payment_providers", site=site) for p in group]

    def room_payment_qr(self, site: Site, room: str) -> str | None:
        """The room's payment QR image from the plugin that offers one (None: nobody)."""
        answer = self.manager.hook.openprepay_room_payment_qr(site=site, room=room)
        return answer if isinstance(answer, str) and answer else None

    def add_cli_commands(self, cli: click.Group, only: Collection[str] | None = None) -> None:
        """Let the plugins (those named in `only`, or all) add their commands to `cli`."""
        if only is None:
            self._call("openprepay_cli_commands", cli=cli)
            return
        others = [self.manager.get_plugin(n) for n in self.infos if n not in only]
        caller = self.manager.subset_hook_caller(
            "openprepay_cli_commands", remove_plugins=[p for p in others if p is not None]
        )
        caller(cli=cli)

    def _call(self, hook: str, **kwargs: Any) -> list[Any]:
        return [r for r in getattr(self.manager.hook, hook)(**kwargs) if r is not None]
