"""What `[prepay.engine]` in the site file sets: the pace and limits of the prepayment
engine's loops (`core.prepay.engine`).

`[prepay.engine]` in the site file::

    [prepay.engine]
    default_tariffs = { electric = "residential", water = "water" }  # accounts without one
    post_interval_s = 1.0        # how often collected samples are billed
    persist_s = 60               # a meter's baseline and consumption are saved at least
                                 # this often (at once whenever there are fen to post)
    queue_poll_s = 0.25          # how often the command queue is read (≤ 0.5)
    command_attempts = 8         # then FAILED, with a CommandFailed event
    retry_initial_s = 5          # back-off after a failed attempt, doubled ...
    retry_max_s = 600            # ... up to this
    command_lease_s = 30         # a claim of a dead instance is taken over after this
    instance = ""                # this instance's name (default host:site); keep it stable
    deferral_poll_s = 5          # how often deferred trips are looked at
    reconcile_tolerance = "1.00" # LOCAL meters: CNY the meter may differ from the platform
    reconcile_every_s = 60       # LOCAL meters: how often they are compared
    supply_grace_s = 30          # a meter may read another supply state than decided this
                                 # long (its own readings) before the decision is re-asserted
    supply_backoff_max_s = 3600  # the n-th re-assertion in a row waits grace × 2^n, at most this
    outbox_poll_s = 0.2          # how often changes other processes made (the CLI, another
                                 # instance) are read from the event outbox (≤ 1)
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..config.reader import TableReader
from ..config.site import Site
from ..errors import ConfigError, FieldError
from ..rating.tariffs import Commodity, TariffCatalogue
from .feecontrol import read_cny


@dataclass(frozen=True, slots=True)
class EngineSettings:
    default_tariffs: Mapping[str, str] = field(default_factory=dict)
    post_interval_s: float = 1.0
    persist_s: float = 60.0
    queue_poll_s: float = 0.25
    command_attempts: int = 8
    retry_initial_s: float = 5.0
    retry_max_s: float = 600.0
    command_lease_s: float = 30.0
    instance: str = ""
    deferral_poll_s: float = 5.0
    reconcile_tolerance_fen: int = 100
    reconcile_every_s: float = 60.0
    supply_grace_s: float = 30.0
    supply_backoff_max_s: float = 3600.0
    outbox_poll_s: float = 0.2

    def instance_name(self, site: Site) -> str:
        return self.instance or f"{socket.gethostname()}:{site.id}"


def parse_engine(
    site: Site, errors: list[FieldError], catalogue: TariffCatalogue | None
) -> EngineSettings:
    prepay = site.sections.get("prepay", {}) or {}
    data = prepay.get("engine", {}) if isinstance(prepay, dict) else {}
    r = TableReader(data if isinstance(data, dict) else {}, "prepay.engine", errors)
    if not isinstance(data, dict):
        r.error("expected a table")
    d = EngineSettings()
    defaults: dict[str, str] = {}
    tr = r.table("default_tariffs")
    for kind in ("electric", "water"):
        tariff_id = tr.str(kind, None)
        if tariff_id is None:
            continue
        if catalogue is not None:
            if tariff_id not in catalogue:
                known = ", ".join(sorted(x.id for x in catalogue)) or "none defined"
                tr.error(f"unknown tariff {tariff_id!r} (tariffs: {known})", kind)
                continue
            want = Commodity.WATER if kind == "water" else Commodity.ELECTRICITY
            if catalogue.get(tariff_id).commodity is not want:
                tr.error(f"tariff {tariff_id!r} does not price {want.value}", kind)
                continue
        defaults[kind] = tariff_id
    tr.finish()
    post = r.number("post_interval_s", d.post_interval_s, low=0.05, high=60)
    persist = r.number("persist_s", d.persist_s, low=0, high=3600)
    poll = r.number("queue_poll_s", d.queue_poll_s, low=0.01, high=0.5)
    attempts = r.int("command_attempts", d.command_attempts, low=1, high=1000)
    initial = r.number("retry_initial_s", d.retry_initial_s, low=0.01, high=3600)
    maximum = r.number("retry_max_s", d.retry_max_s, low=0.01, high=86400)
    lease = r.number("command_lease_s", d.command_lease_s, low=1, high=3600)
    instance = r.str("instance", d.instance)
    deferral = r.number("deferral_poll_s", d.deferral_poll_s, low=0.05, high=3600)
    tolerance = read_cny(r, "reconcile_tolerance", d.reconcile_tolerance_fen)
    every = r.number("reconcile_every_s", d.reconcile_every_s, low=0, high=86400)
    grace = r.number("supply_grace_s", d.supply_grace_s, low=0.05, high=86400)
    backoff = r.number("supply_backoff_max_s", d.supply_backoff_max_s, low=0.05, high=7 * 86400)
    outbox = r.number("outbox_poll_s", d.outbox_poll_s, low=0.01, high=1)
    r.finish()
    if instance is not None and len(instance) > 80:
        r.error("at most 80 characters", "instance")
    if initial is not None and maximum is not None and maximum < initial:
        r.error(f"must be at least retry_initial_s ({initial})", "retry_max_s")
    if grace is not None and backoff is not None and backoff < grace:
        r.error(f"must be at least supply_grace_s ({grace})", "supply_backoff_max_s")
    return EngineSettings(
        defaults,
        post if post is not None else d.post_interval_s,
        persist if persist is not None else d.persist_s,
        poll if poll is not None else d.queue_poll_s,
        attempts if attempts is not None else d.command_attempts,
        initial if initial is not None else d.retry_initial_s,
        maximum if maximum is not None else d.retry_max_s,
        lease if lease is not None else d.command_lease_s,
        instance or "",
        deferral if deferral is not None else d.deferral_poll_s,
        tolerance if tolerance is not None else d.reconcile_tolerance_fen,
        every if every is not None else d.reconcile_every_s,
        grace if grace is not None else d.supply_grace_s,
        backoff if backoff is not None else d.supply_backoff_max_s,
        outbox if outbox is not None else d.outbox_poll_s,
    )


def load_engine(site: Site, catalogue: TariffCatalogue) -> EngineSettings:
    errors: list[FieldError] = []
    settings = parse_engine(site, errors, catalogue)
    if errors:
        raise ConfigError(str(site.path or "site"), errors)
    return settings
