"""One real OpenPrepay site with its OPC UA server, shared by the OPC UA tests.

`opcua_site` (session scope, session event loop) writes a site file, adds users of every
role, trusts a client certificate, opens two accounts in the database, starts simulated
meters behind real gateway sockets and the whole runtime (arbiter, prepayment engine,
historian, OPC UA server on an ephemeral port). Tests connect real asyncua clients over TCP
with Basic256Sha256 SignAndEncrypt through `opcua_site.connect(user)`.

Tests that change shared state (a silent meter, a supply cut) put it back.

`SourceClient` connects from another loopback address (127.0.0.2...), so a test can be
two clients on two machines; `RawClient` is an attacker's client: it opens the channel and
sends the user token it is told to, whatever the server announces. `second_server` runs
another OPC UA server over the shared runtime with other settings; `footprint` is what an
OPC UA caller could have changed.
"""

from __future__ import annotations

import asyncio
import copy
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import sqlalchemy as sa
import tomli_w
from asyncua import Client, ua
from asyncua.client.ua_client import UaClientState
from asyncua.crypto import cert_gen
from asyncua.crypto.security_policies import (
    SecurityPolicyAes256Sha256RsaPss,
    SecurityPolicyBasic256Sha256,
    SecurityPolicyNone,
)
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID

from openprepay.core.app.demo import anytime_policy
from openprepay.core.app.plugins import DISABLE_ENV, Plugins
from openprepay.core.app.runtime import Runtime
from openprepay.core.app.simulation import SimulatedSite
from openprepay.core.cli import CliContext, build_cli
from openprepay.core.config.site import load_site
from openprepay.core.db import open_database, schema
from openprepay.core.prepay import accounts as acc
from openprepay.opcua_server.assembly import make_service
from openprepay.opcua_server.config import OpcUaConfig
from openprepay.opcua_server.pki import Pki, trust
from openprepay.opcua_server.service import OpcUaService
from openprepay.opcua_server.users import add_user
from tests.conftest import simulate

CLIENT_URI = "urn:openprepay:tests:client"
PASSWORDS = {
    "admin1": "admin-secret",
    "cashier1": "cashier-secret",
    "operator1": "operator-secret",
    "viewer1": "viewer-secret",
}
ROLES = {"admin1": "admin", "cashier1": "cashier", "operator1": "operator", "viewer1": "viewer"}

SITE: dict[str, Any] = {
    "site": {"id": "t", "name": "Test apartments", "timezone": "Asia/Shanghai"},
    "poll": {
        "interval_s": 0.3,
        "stats_interval_s": 1,
        "backoff_initial_s": 0.3,
        "backoff_max_s": 1.0,
        "quarantine_after": 1000,
    },
    "links": {
        "gw1": {"type": "rtu_over_tcp", "host": "127.0.0.1", "port": 1, "timeout_ms": 800},
        "gw2": {"type": "rtu_over_tcp", "host": "127.0.0.1", "port": 1, "timeout_ms": 800},
    },
    "buildings": {"A": {"name": "Building A", "floors": ["1"]}},
    "rooms": {
        "A-101": {"building": "A", "floor": "1", "name": "101", "area_m2": 52.5},
        "A-102": {"building": "A", "floor": "1", "name": "102"},
    },
    "devices": {
        "E-A-101": {
            "model": "acrel.DDSY1352",
            "link": "gw1",
            "unit_id": 1,
            "room": "A-101",
            "options": {"sim_load_kw": 1.0},
        },
        "E-A-102": {
            "model": "acrel.DDSY1352",
            "link": "gw1",
            "unit_id": 2,
            "room": "A-102",
            "options": {"sim_load_kw": 0.5},
        },
        "W-A-101": {
            "model": "xintai.valve_meter",
            "link": "gw2",
            "unit_id": 1,
            "room": "A-101",
            "options": {"sim_flow_m3h": 0.05, "sim_valve_travel_s": 0.1},
        },
    },
    "tariffs": {
        "flat": {"price": "0.5000"},
        "peak": {"price": "0.8000"},
        "water": {"commodity": "water", "price": "3.00"},
    },
    "prepay": {
        "policy": anytime_policy(),
        "engine": {
            "default_tariffs": {"electric": "flat", "water": "water"},
            "post_interval_s": 0.2,
            "queue_poll_s": 0.1,
            "retry_initial_s": 0.2,
            "retry_max_s": 1.0,
            "command_lease_s": 5,
            "deferral_poll_s": 0.2,
            "instance": "opcua-tests",
        },
    },
    "opcua": {"port": 0, "hostname": "localhost", "account_refresh_s": 1.0},
}


@dataclass
class ClientCert:
    cert: Path
    key: Path
    uri: str

    @property
    def thumbprint(self) -> str:
        import hashlib

        return hashlib.sha1(self.cert.read_bytes()).hexdigest()


def make_client_cert(folder: Path, name: str, uri: str = CLIENT_URI) -> ClientCert:
    folder.mkdir(parents=True, exist_ok=True)
    key = cert_gen.generate_private_key()
    cert = cert_gen.generate_self_signed_app_certificate(
        key,
        uri,
        {"commonName": name},
        [x509.UniformResourceIdentifier(uri), x509.DNSName("localhost")],
        extended=[ExtendedKeyUsageOID.CLIENT_AUTH],
        days=30,
    )
    cert_path = folder / f"{name}.der"
    key_path = folder / f"{name}.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
    return ClientCert(cert_path, key_path, uri)


@dataclass
class OpcUaSite:
    runtime: Runtime
    sims: SimulatedSite
    site_file: Path
    trusted: ClientCert

    @property
    def service(self) -> OpcUaService:
        for service in self.runtime.services:
            if isinstance(service, OpcUaService):
                return service
        raise AssertionError("no OPC UA service running")

    @property
    def url(self) -> str:
        return f"opc.tcp://localhost:{self.service.port}/openprepay"

    @property
    def pki(self) -> Pki:
        return self.service.pki

    @property
    def ops(self) -> Any:
        assert self.runtime.operations is not None
        return self.runtime.operations

    def connect(
        self,
        user: str | None = "admin1",
        password: str | None = None,
        *,
        cert: ClientCert | None = None,
        policy: Any = SecurityPolicyBasic256Sha256,
        source: str | None = None,
    ) -> Any:
        return connect(
            self.url, user, password, cert=cert or self.trusted, policy=policy, source=source
        )

    async def ns(self, client: Client) -> tuple[int, int]:
        """(types namespace index, site namespace index) as the client sees them."""
        types = await client.get_namespace_index("urn:openprepay:types")
        site = await client.get_namespace_index("urn:openprepay:site:t")
        return types, site


class SourceClient(Client):
    """An asyncua client whose socket is bound to `source` (another loopback address:
    Linux answers on all of 127.0.0.0/8), so one test can be clients on two machines."""

    def __init__(self, url: str, *, source: str | None = None, timeout: float = 10) -> None:
        super().__init__(url, timeout=timeout)
        self.source = source

    async def connect_socket(self) -> None:
        if self.source is None:
            return await super().connect_socket()
        # UaClient.connect_socket, with a local address.
        uaclient = self.uaclient
        uaclient._set_state(UaClientState.CONNECTING)
        try:
            await asyncio.get_running_loop().create_connection(
                uaclient._make_protocol,
                self.server_url.hostname,
                self.server_url.port,
                local_addr=(self.source, 0),
            )
        except BaseException:
            uaclient._set_state(UaClientState.DISCONNECTED)
            raise
        uaclient._set_state(UaClientState.SOCKET_OPEN)


class RawClient(SourceClient):
    """What an attacker's client does: it opens the channel it is told to (set_security,
    or none at all: SecurityPolicy None) and sends the user token it is told to — in clear
    (`token_policy` None) or encrypted for `token_policy` — whatever endpoints the server
    announces (asyncua's own Client refuses a channel no endpoint offers)."""

    def __init__(self, url: str, *, token_policy: Any = None, **kwargs: Any) -> None:
        super().__init__(url, timeout=5, **kwargs)
        self.token_policy = token_policy

    async def create_session(self) -> ua.CreateSessionResult:
        params = ua.CreateSessionParameters()
        params.ClientDescription = ua.ApplicationDescription(
            ApplicationUri=self.application_uri,
            ApplicationName=ua.LocalizedText("raw"),
            ApplicationType=ua.ApplicationType.Client,
        )
        params.ClientNonce = os.urandom(32)
        params.ClientCertificate = self.security_policy.host_certificate
        params.EndpointUrl = self.server_url.geturl()
        params.SessionName = "raw"
        params.RequestedSessionTimeout = 60_000
        response = await self.uaclient.create_session(params)
        self._server_nonce = response.ServerNonce
        if not self.security_policy.peer_certificate:
            self.security_policy.peer_certificate = response.ServerCertificate
        uri = (self.token_policy or SecurityPolicyNone).URI
        self._policy_ids = [
            ua.UserTokenPolicy(
                PolicyId="username", TokenType=ua.UserTokenType.UserName, SecurityPolicyUri=uri
            )
        ]
        return response


@asynccontextmanager
async def connect(
    url: str,
    user: str | None,
    password: str | None = None,
    *,
    cert: ClientCert,
    policy: Any = SecurityPolicyBasic256Sha256,
    source: str | None = None,
) -> AsyncIterator[Client]:
    """A client with a SignAndEncrypt channel and a session of `user` (password from
    PASSWORDS unless given), from `source` when given."""
    client = SourceClient(url, source=source)
    client.application_uri = cert.uri
    if user is not None:
        client.set_user(user)
        client.set_password(password if password is not None else PASSWORDS[user])
    await client.set_security(
        policy, str(cert.cert), str(cert.key), mode=ua.MessageSecurityMode.SignAndEncrypt
    )
    await client.connect()
    try:
        yield client
    finally:
        await client.disconnect()


@asynccontextmanager
async def second_server(
    opcua_site: OpcUaSite, folder: Path, **options: Any
) -> AsyncIterator[OpcUaService]:
    """Another OPC UA server over the shared runtime (same database and meters) with
    `options` for its OpcUaConfig, its own PKI folder, the users of every role and the
    trusted client certificate."""
    config = OpcUaConfig(port=0, hostname="localhost", pki_dir=folder, **options)
    for name, password in PASSWORDS.items():
        add_user(config.users_path, name, password, ROLES[name])
    trust(Pki(folder), str(opcua_site.trusted.cert))
    service = make_service(config, opcua_site.runtime)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


def url_of(service: OpcUaService) -> str:
    return f"opc.tcp://localhost:{service.port}/openprepay"


def footprint(opcua_site: OpcUaSite) -> dict[str, Any]:
    """What an OPC UA caller could have changed: journal entries, meter commands and
    successful audit records requested over OPC UA, and every account's settings."""
    journal, command, audit = schema.journal, schema.meter_command, schema.audit_log
    db = opcua_site.runtime.db
    assert db is not None
    with db.read() as conn:

        def count(table: sa.Table, *where: Any) -> int:
            return int(
                conn.execute(
                    sa.select(sa.func.count()).select_from(table).where(*where)
                ).scalar_one()
            )

        out: dict[str, Any] = {
            "journal": count(journal, journal.c.requested_by.like("opcua:%")),
            "commands": count(command, command.c.requested_by.like("opcua:%")),
            "audit": count(audit, audit.c.actor.like("opcua:%"), audit.c.ok.is_(True)),
        }
    for account in ("A-101", "A-102"):
        snap = opcua_site.ops.account_snapshot(account)
        out[account] = (snap.tariff_id, snap.thresholds, snap.protected)
    return out


POLICIES = {
    "Basic256Sha256": SecurityPolicyBasic256Sha256,
    "Aes256Sha256RsaPss": SecurityPolicyAes256Sha256RsaPss,
}


@pytest.fixture(scope="session")
def client_certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ClientCert]:
    folder = tmp_path_factory.mktemp("opcua-client-certs")
    return {
        "trusted": make_client_cert(folder, "trusted"),
        "stranger": make_client_cert(folder, "stranger", "urn:openprepay:tests:stranger"),
    }


async def start_site(
    folder: Path, plugins: Plugins, data: dict[str, Any], trusted: ClientCert
) -> OpcUaSite:
    sims = await simulate(data, plugins, speedup=60.0)
    site_file = folder / "site.toml"
    site_file.write_text(tomli_w.dumps(data))
    site = load_site(site_file)
    pki = Pki(folder / "opcua")
    for name, password in PASSWORDS.items():
        add_user(folder / "opcua" / "users.json", name, password, ROLES[name])
    trust(pki, str(trusted.cert))
    runtime = Runtime(site, plugins)
    await runtime.start()
    return OpcUaSite(runtime, sims, site_file, trusted)


def open_accounts(site_file: Path, plugins: Plugins) -> None:
    """Accounts created in the database before the service starts (as the CLI would)."""
    site = load_site(site_file)
    db = open_database(site)
    try:
        with db.begin() as conn:
            for account_id, meters, room in (
                ("A-101", ("E-A-101", "W-A-101"), "A-101"),
                ("A-102", ("E-A-102",), "A-102"),
            ):
                assigned = tuple(acc.resolve_meter(site, plugins.models, m) for m in meters)
                acc.create_account(
                    conn, acc.AccountSpec(account_id, f"Tenant {account_id}", assigned, room=room)
                )
    finally:
        db.dispose()


def load_plugins() -> Plugins:
    """Every installed plugin, the OPC UA server and the historian included even when
    another test directory disabled them for its session (OPENPREPAY_DISABLE_PLUGINS)."""
    before = os.environ.get(DISABLE_ENV)
    if before is not None:
        kept = [n for n in before.split(",") if n.strip() and n.strip() not in NEEDED]
        os.environ[DISABLE_ENV] = ",".join(kept)
    try:
        plugins = Plugins.load()
    finally:
        if before is not None:
            os.environ[DISABLE_ENV] = before
    assert not plugins.failures, plugins.failures
    assert "opcua" in plugins.infos and "historian" in plugins.infos
    return plugins


NEEDED = {"opcua", "historian"}


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def opcua_site(
    tmp_path_factory: pytest.TempPathFactory, client_certs: dict[str, ClientCert]
) -> AsyncIterator[OpcUaSite]:
    plugins = load_plugins()
    folder = tmp_path_factory.mktemp("opcua-site")
    data = copy.deepcopy(SITE)
    # The database must exist with the accounts before the runtime starts: write the
    # file once without links pointing anywhere, open the accounts, then start for real.
    (folder / "site.toml").write_text(tomli_w.dumps(data))
    open_accounts(folder / "site.toml", plugins)
    site = await start_site(folder, plugins, data, client_certs["trusted"])
    ops = site.ops
    await asyncio.to_thread(ops.topup, "A-101", 100_00, "seed-A-101", actor="test")
    await asyncio.to_thread(ops.topup, "A-102", 30_00, "seed-A-102", actor="test")
    try:
        yield site
    finally:
        await site.runtime.stop()
        await site.sims.stop()


def run_cli(*args: str) -> Result:
    """`openprepay ARGS` in-process, with the plugin commands registered (the `opcua`
    group also when the CLI was built earlier in the session with the plugin disabled)."""
    from openprepay.opcua_server.cli import opcua_group

    plugins = load_plugins()
    cli = build_cli(plugins)
    if "opcua" not in cli.commands:
        cli.add_command(opcua_group)
    return CliRunner().invoke(cli, list(args), obj=CliContext(plugins))
