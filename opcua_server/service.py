"""The OPC UA server as an OpenPrepay service: built at start, fed by the event bus.

Start: certificate and users from the PKI folder, asyncua server with the configured
security (every connection through transport.py's guarded layer), the address space
(types, site tree, links, accounts), methods, event types and the history backend; then
the bus listeners (samples → publisher, core events → events) and the latest readings so
a client never sees stale initial values. Stop: the reverse.

A port already in use ends the start with one `OpcUaPortInUse` line naming the port and
the `[opcua] port` setting (the CLI prints it and exits non-zero), never a traceback.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from asyncua import ua

from openprepay.core.errors import OpenPrepayError
from openprepay.core.events import (
    CommunicationLost,
    CommunicationRestored,
    Event,
    HistorianDataDropped,
    ImplausibleReading,
    LinkOwnerChanged,
    PaymentDiscrepancy,
)
from openprepay.core.model import Sample
from openprepay.core.tasks import stop_task

from .access import RoleRuleset, SessionUser, SessionUserManager
from .config import OpcUaConfig, Policy
from .events import (
    SEVERITY_COMM,
    SEVERITY_IMPLAUSIBLE,
    SEVERITY_PAYMENT,
    ConditionMethodService,
    Emission,
    EventEmitter,
)
from .extension import ServerExtension
from .guard import SECURITY_MODEL, SECURITY_SOURCE, ChannelGuard, SecurityCounters
from .history import HistorianBackend
from .logins import LoginThrottle
from .loglimit import LogLimiter
from .pki import (
    ClientCertificateValidator,
    Pki,
    RejectedFolder,
    ensure_server_certificate,
    thumbprint,
)
from .publisher import Publisher
from .redundancy import Redundancy, application_uri
from .site_tree import build_site_tree
from .space import Space
from .standard_space import FastInternalServer
from .transport import OpenPrepayServer
from .users import Role, UserDirectory, add_user

if TYPE_CHECKING:
    from openprepay.core.app.runtime import Runtime

log = logging.getLogger("openprepay.opcua")

DEMO_USER = "demo"
DEMO_PASSWORD = "openprepay"

_POLICY = {
    Policy.BASIC256SHA256: (
        ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt,
        ua.SecurityPolicyType.Basic256Sha256_Sign,
    ),
    Policy.AES256SHA256RSAPSS: (
        ua.SecurityPolicyType.Aes256Sha256RsaPss_SignAndEncrypt,
        ua.SecurityPolicyType.Aes256Sha256RsaPss_Sign,
    ),
    Policy.AES128SHA256RSAOAEP: (
        ua.SecurityPolicyType.Aes128Sha256RsaOaep_SignAndEncrypt,
        ua.SecurityPolicyType.Aes128Sha256RsaOaep_Sign,
    ),
}


class OpcUaPortInUse(OpenPrepayError):
    """The configured OPC UA port is taken by another program."""


class OpcUaService:
    name = "opcua"

    def __init__(
        self,
        config: OpcUaConfig,
        runtime: Runtime,
        extensions: Sequence[ServerExtension] = (),
    ) -> None:
        assert config.pki_dir is not None
        self.config = config
        self.runtime = runtime
        self.pki = Pki(config.pki_dir)
        self.server: OpenPrepayServer | None = None
        self.space: Space | None = None
        self.publisher: Publisher | None = None
        self.events: EventEmitter | None = None
        #: [cluster]: ServiceLevel, RedundancySupport, ServerUriArray (redundancy.py).
        self.redundancy: Redundancy | None = None
        self.ruleset: RoleRuleset | None = None
        self.users: UserDirectory | None = None
        self.port: int | None = None
        self.endpoint: str = ""
        self.method_roles: dict[ua.NodeId, frozenset[Role]] = {}
        self.condition_methods: ConditionMethodService | None = None
        #: What the server refused (channels, tokens, logins, calls, certificates).
        self.counters = SecurityCounters(on_change=self._publish_counters)
        self.limiter = LogLimiter(log)
        self._unsubscribe: list[Callable[[], None]] = []
        #: What else the address space has (accounts): built, started and fed in this order.
        self.extensions: list[ServerExtension] = list(extensions)

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> None:
        config = self.config
        # asyncua logs every request at INFO; keep it to warnings unless configured.
        library_log = logging.getLogger("asyncua")
        if library_log.level == logging.NOTSET:
            library_log.setLevel(logging.WARNING)
        cluster = getattr(self.runtime, "cluster", None)
        app_uri = application_uri(
            self.runtime.site.id, None if cluster is None else cluster.instance
        )
        cert = await asyncio.to_thread(
            ensure_server_certificate, self.pki, app_uri, config.hostname
        )
        demo_created = await self._load_users()
        server = self._make_server()
        space = await self._build_space(server, app_uri)
        self._secure(server)
        await self._listen(server)
        await self._go_live(space)
        if cluster is not None:
            self.redundancy = Redundancy(server, cluster, self.runtime.site.id, space.i)
            await self.redundancy.start()
        log.info(
            "OPC UA server on %s (%s; certificate SHA-1 %s; %d nodes)",
            self.endpoint,
            self._policies_text(),
            thumbprint(cert),
            space.writer.created,
        )
        self._announce(demo_created)

    async def _load_users(self) -> bool:
        """The user directory; True when the demo user was created just now."""
        config = self.config
        self.users = UserDirectory(config.users_path)
        if config.demo and not self.users.users:
            await asyncio.to_thread(
                add_user, config.users_path, DEMO_USER, DEMO_PASSWORD, Role.ADMIN
            )
            self.users.reload()
            return True
        return False

    def _make_server(self) -> OpenPrepayServer:
        """The asyncua server behind the guarded transport, not yet initialised."""
        config = self.config
        assert self.users is not None
        throttle = LoginThrottle(
            free_failures=config.login_free_failures,
            delay_s=config.login_delay_s,
            max_delay_s=config.login_delay_max_s,
        )
        server = OpenPrepayServer(
            iserver=FastInternalServer(
                user_manager=SessionUserManager(self.users, allow_anonymous=config.allow_anonymous)
            ),
            guard=ChannelGuard(throttle, self.counters, self.limiter),
        )
        self.server = server
        server.iserver.bind_condition_methods = True
        # Acknowledge is called on ConditionIds, which are not nodes (events.py).
        server.iserver.method_service.stop()
        self.condition_methods = ConditionMethodService(server.iserver.aspace)
        server.iserver.method_service = self.condition_methods
        return server

    async def _build_space(self, server: OpenPrepayServer, app_uri: str) -> Space:
        """Server identity, then the address space: types, event types, the extensions'
        types and methods, the site tree, the extensions' instances."""
        config = self.config
        self.space = space = Space(
            server,
            self.runtime.site,
            self.runtime.plugins.models,
            history=config.history,
            timestamp_refresh_s=config.timestamp_refresh_s,
        )
        server.iserver.history_manager.set_storage(
            HistorianBackend(
                space.history_targets, lambda: self.runtime.history, config.history_max_values
            )
        )
        await server.init()
        server.set_server_name(f"OpenPrepay {self.runtime.site.info.name or self.runtime.site.id}")
        server.product_uri = "urn:openprepay"
        server.manufacturer_name = "OpenPrepay"
        server.application_type = ua.ApplicationType.Server
        await server.set_application_uri(app_uri)
        await server.load_certificate(self.pki.cert_file.read_bytes())
        await server.load_private_key(self.pki.key_file.read_bytes(), format="PEM")

        await space.register_namespaces()
        await space.build_types()
        self.events = EventEmitter(server, space.writer, space.t)
        await self.events.create_types()
        for ext in self.extensions:
            await ext.declare(self)
        build_site_tree(space)
        for ext in self.extensions:
            await ext.build(self)
        return space

    def _secure(self, server: OpenPrepayServer) -> None:
        """Role ruleset, security policies, identity tokens, client certificate check."""
        config = self.config
        self.ruleset = RoleRuleset(self.method_roles, self._refused_call)
        policies: list[ua.SecurityPolicyType] = []
        if config.allow_none:
            policies.append(ua.SecurityPolicyType.NoSecurity)
        for policy in config.policies:
            encrypt, sign = _POLICY[policy]
            policies.append(encrypt)
            if config.sign_only:
                policies.append(sign)
        server.set_security_policy(policies, permission_ruleset=self.ruleset)
        tokens: list[type] = [ua.UserNameIdentityToken]
        if config.allow_anonymous:
            tokens.append(ua.AnonymousIdentityToken)
        server.set_identity_tokens(tokens)
        rejected = RejectedFolder(
            self.pki.rejected_dir,
            max_count=config.rejected_max_certificates,
            max_bytes=config.rejected_max_bytes,
        )
        server.set_certificate_validator(
            ClientCertificateValidator(self.pki, rejected, self.counters, self.limiter)
        )

    async def _listen(self, server: OpenPrepayServer) -> None:
        """Start listening; a port in use is one `OpcUaPortInUse` line."""
        config = self.config
        port = self._choose_port()
        self.endpoint = f"opc.tcp://{config.hostname}:{port}{config.path}"
        server.set_endpoint(self.endpoint)
        server.socket_address = (config.host, port)
        try:
            await server.start()
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            site = self.runtime.site.path
            raise OpcUaPortInUse(
                f"OPC UA port {port} is already in use (another program listens on "
                f"{config.host}:{port}): set [opcua] port to a free port"
                + (f" in {site}" if site is not None else "")
            ) from None
        assert server.bserver is not None
        self.port = server.bserver.port
        if port == 0:
            self.endpoint = f"opc.tcp://{config.hostname}:{self.port}{config.path}"

    async def _go_live(self, space: Space) -> None:
        """Publisher and events running, the bus listened to, the latest readings shown."""
        assert self.events is not None
        self.publisher = Publisher(space)
        self.publisher.start()
        self._publish_counters()
        self.events.start()
        bus = self.runtime.bus
        self._unsubscribe = [
            bus.subscribe(Sample, self.publisher.on_sample),
            bus.subscribe(Event, self._on_event),
        ]
        for sample in list(self.runtime.readings.latest.values()):
            self.publisher.on_sample(sample)
        for ext in self.extensions:
            await ext.start(self)

    def _policies_text(self) -> str:
        config = self.config
        return ", ".join(p.value for p in config.policies) + (", None" if config.allow_none else "")

    def _announce(self, demo_created: bool) -> None:
        """What the operator needs to connect, for the CLI to print after start."""
        config = self.config
        assert self.users is not None
        lines = [f"OPC UA: {self.endpoint}  ({self._policies_text()}, SignAndEncrypt)"]
        users = self.users.users
        if demo_created or (config.demo and DEMO_USER in users):
            lines.append(
                f"OPC UA demo login: user {DEMO_USER!r}, password {DEMO_PASSWORD!r} (admin)"
            )
        elif not users:
            lines.append(
                f"OPC UA has no users yet: openprepay opcua users add {self._site_hint()} "
                f"NAME --role admin"
            )
        lines.append(
            f"OPC UA client certificates are refused until trusted: "
            f"openprepay opcua cert trust {self._site_hint()} <thumbprint>"
        )
        announcements = getattr(self.runtime, "announcements", None)
        if announcements is None:
            announcements = []
            self.runtime.announcements = announcements  # type: ignore[attr-defined]
        announcements.extend(lines)

    async def stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []
        if self.redundancy is not None:
            await self.redundancy.stop()
            self.redundancy = None
        for ext in reversed(self.extensions):
            try:
                await ext.stop(self)
            except Exception:
                log.exception("stopping an OPC UA extension failed")
        if self.publisher is not None:
            await self.publisher.stop()
        if self.events is not None:
            await self.events.stop()
        if self.server is not None:
            server, self.server = self.server, None
            if server.bserver is not None:  # it was started
                try:
                    await _stop_clock(server)
                    await server.stop()
                except Exception:
                    log.exception("stopping the OPC UA server failed")

    # -- helpers ----------------------------------------------------------------------------
    def _choose_port(self) -> int:
        config = self.config
        if config.port == 0 or not config.port_fallback:
            return config.port
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((config.host, config.port))
                return config.port
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE:
                    raise
        log.warning("port %d is in use; the OPC UA server takes a free port", config.port)
        return 0

    def _site_hint(self) -> str:
        path = self.runtime.site.path
        return str(path) if path is not None else "SITE"

    def _publish_counters(self) -> None:
        """The security counters as a sample of the `opcua` diagnostics (never on the bus:
        they describe this server, not the site)."""
        if self.publisher is not None:
            sample = Sample(
                SECURITY_SOURCE, SECURITY_MODEL, datetime.now(UTC), self.counters.values()
            )
            self.publisher.on_sample(sample)

    def _refused_call(self, user: SessionUser | None, calls: list[ua.CallMethodRequest]) -> None:
        self.counters.add("calls_refused")
        for ext in self.extensions:
            ext.refused(self, user, calls)

    # -- core events → OPC UA events ------------------------------------------------------------
    def _on_event(self, event: Event) -> None:
        emitter, space = self.events, self.space
        if emitter is None or space is None:
            return
        if isinstance(event, CommunicationLost | CommunicationRestored):
            node = space.meter_nodes.get(event.meter_id)
            if node is None:
                return
            lost = isinstance(event, CommunicationLost)
            emitter.condition(
                "CommunicationAlarmType",
                ua.NodeId(f"Meter:{event.meter_id}/CommunicationAlarm", space.i),
                "CommunicationLoss",
                lost,
                node,
                event.meter_id,
                f"{event.meter_id}: communication lost ({event.error})"
                if lost
                else f"{event.meter_id}: communication restored after {event.offline_s:.0f} s",
                SEVERITY_COMM,
                {
                    "MeterId": event.meter_id,
                    "LinkId": event.link_id,
                    "Error": event.error if lost else "",
                    "OfflineSeconds": 0.0 if lost else float(event.offline_s),
                },
                event.at,
            )
        elif isinstance(event, ImplausibleReading):
            emitter.post(
                Emission(
                    "ImplausibleReadingEventType",
                    space.meter_nodes.get(event.meter_id) or ua.NodeId(ua.ObjectIds.Server),
                    event.meter_id,
                    f"{event.meter_id}: implausible {event.point} {event.value!r}, expected "
                    f"{event.limit}",
                    SEVERITY_IMPLAUSIBLE,
                    {
                        "MeterId": event.meter_id,
                        "LinkId": event.link_id,
                        "Point": event.point,
                        "Value": float(event.value),
                        "Limit": event.limit,
                        "Source": event.source,
                    },
                    event.at,
                )
            )
        elif isinstance(event, HistorianDataDropped):
            emitter.post(
                Emission(
                    "HistorianDataDroppedEventType",
                    ua.NodeId(ua.ObjectIds.Server),
                    "historian",
                    f"historian dropped {event.lines} lines ({event.points} values): "
                    f"{event.reason}",
                    800,
                    {
                        "Lines": event.lines,
                        "Points": event.points,
                        "Policy": event.policy,
                        "Reason": event.reason,
                        "FirstTime": event.first,
                        "LastTime": event.last,
                    },
                    event.at,
                )
            )
        elif isinstance(event, PaymentDiscrepancy):
            emitter.post(
                Emission(
                    "PaymentDiscrepancyEventType",
                    ua.NodeId(ua.ObjectIds.Server),
                    f"payments:{event.channel}",
                    f"{event.channel} {event.kind} {event.out_trade_no}: {event.detail}"[:500],
                    SEVERITY_PAYMENT,
                    {
                        "Channel": event.channel,
                        "Kind": event.kind,
                        "OutTradeNo": event.out_trade_no,
                        "AmountFen": int(event.amount_fen),
                        "Day": event.day,
                        "Detail": event.detail,
                    },
                    event.at,
                )
            )
        elif isinstance(event, LinkOwnerChanged):
            if self.redundancy is not None:
                self.redundancy.changed()
            owner = event.owner or ""
            emitter.post(
                Emission(
                    "LinkOwnerChangedEventType",
                    ua.NodeId(ua.ObjectIds.Server),
                    event.link_id,
                    f"link {event.link_id}: owned by {owner} (epoch {event.epoch})"
                    if owner
                    else f"link {event.link_id}: given up by {event.instance} "
                    f"(epoch {event.epoch}): {event.detail}",
                    500,
                    {
                        "LinkId": event.link_id,
                        "Owner": owner,
                        "Epoch": event.epoch,
                        "Instance": event.instance,
                        "Detail": event.detail,
                    },
                    event.at,
                )
            )
        for ext in self.extensions:
            ext.on_event(self, event)


async def _stop_clock(server: OpenPrepayServer) -> None:
    """End asyncua's clock task (it writes ServerStatus.CurrentTime once a second) now:
    its own `stop()` sets a flag and waits for the task's next wake, up to a second of
    every stop for nothing."""
    iserver = server.iserver
    task, iserver.time_task = iserver.time_task, None
    await stop_task(task)
