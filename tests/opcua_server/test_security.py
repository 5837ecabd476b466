"""Security on by default: endpoints, users, roles, client certificates, the None policy."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyAes256Sha256RsaPss

from openprepay.core.app.runtime import Runtime
from openprepay.core.config.site import parse_site
from openprepay.opcua_server.assembly import make_service
from openprepay.opcua_server.config import read_config
from openprepay.opcua_server.service import OpcUaPortInUse, OpcUaService

from .conftest import SITE, ClientCert, OpcUaSite, load_plugins, make_client_cert, run_cli

pytestmark = pytest.mark.asyncio(loop_scope="session")

SIGN_AND_ENCRYPT = ua.MessageSecurityMode.SignAndEncrypt
POLICY_URI = "http://opcfoundation.org/UA/SecurityPolicy#"


async def test_endpoints_are_encrypted_and_need_a_user(opcua_site: OpcUaSite) -> None:
    client = Client(opcua_site.url)
    endpoints = await client.connect_and_get_server_endpoints()
    offered = {(e.SecurityPolicyUri, e.SecurityMode) for e in endpoints}
    assert offered == {
        (POLICY_URI + "Basic256Sha256", SIGN_AND_ENCRYPT),
        (POLICY_URI + "Aes256_Sha256_RsaPss", SIGN_AND_ENCRYPT),
    }
    for endpoint in endpoints:
        tokens = {t.TokenType for t in endpoint.UserIdentityTokens}
        assert tokens == {ua.UserTokenType.UserName}
        assert endpoint.ServerCertificate  # the certificate generated on first start
    assert opcua_site.pki.cert_file.exists() and opcua_site.pki.key_file.exists()
    assert opcua_site.pki.key_file.stat().st_mode & 0o077 == 0


async def test_aes256_sha256_rsapss_works_too(opcua_site: OpcUaSite) -> None:
    async with opcua_site.connect("viewer1", policy=SecurityPolicyAes256Sha256RsaPss) as client:
        _, s = await opcua_site.ns(client)
        state = await client.get_node(ua.NodeId("Account:A-101/State", s)).read_value()
        assert state == "OPEN"


async def test_anonymous_is_refused(opcua_site: OpcUaSite) -> None:
    with pytest.raises(ua.UaError):
        async with opcua_site.connect(None):
            pass


@pytest.mark.parametrize(("user", "password"), [("admin1", "wrong-password"), ("nobody", "x")])
async def test_wrong_password_or_unknown_user_is_refused(
    opcua_site: OpcUaSite, user: str, password: str
) -> None:
    with pytest.raises(ua.uaerrors.BadUserAccessDenied):
        async with opcua_site.connect(user, password):
            pass


async def test_untrusted_client_certificate_is_refused_kept_and_can_be_trusted(
    opcua_site: OpcUaSite, tmp_path: Path
) -> None:
    stranger = make_client_cert(tmp_path, "newcomer", "urn:openprepay:tests:newcomer")
    with pytest.raises(ua.uaerrors.BadCertificateUntrusted):
        async with opcua_site.connect("viewer1", cert=stranger):
            pass
    kept = opcua_site.pki.rejected_dir / f"{stranger.thumbprint}.der"
    assert kept.exists()

    shown = run_cli("opcua", "cert", "show", str(opcua_site.site_file))
    assert shown.exit_code == 0, shown.output
    assert stranger.thumbprint in shown.output
    assert "urn:openprepay:tests:newcomer" in shown.output

    trusted = run_cli("opcua", "cert", "trust", str(opcua_site.site_file), stranger.thumbprint[:10])
    assert trusted.exit_code == 0, trusted.output
    assert not kept.exists()
    # The running server reads its trust store again: no restart.
    async with opcua_site.connect("viewer1", cert=stranger) as client:
        assert await client.nodes.server.read_browse_name()

    revoked = run_cli(
        "opcua", "cert", "trust", "--revoke", str(opcua_site.site_file), stranger.thumbprint
    )
    assert revoked.exit_code == 0, revoked.output
    with pytest.raises(ua.uaerrors.BadCertificateUntrusted):
        async with opcua_site.connect("viewer1", cert=stranger):
            pass


async def test_users_added_while_running_can_log_in_and_removed_cannot(
    opcua_site: OpcUaSite,
) -> None:
    site = str(opcua_site.site_file)
    secret = opcua_site.site_file.parent / "late1.secret"  # never a password argument
    secret.write_text("late-secret\n")
    added = run_cli(
        "opcua", "users", "add", site, "late1", "--role", "cashier", "--password-file", str(secret)
    )
    assert added.exit_code == 0, added.output
    listed = run_cli("opcua", "users", "list", site)
    assert "late1" in listed.output and "cashier" in listed.output
    async with opcua_site.connect("late1", "late-secret") as client:
        assert await client.nodes.server.read_browse_name()
    removed = run_cli("opcua", "users", "remove", site, "late1")
    assert removed.exit_code == 0, removed.output
    with pytest.raises(ua.uaerrors.BadUserAccessDenied):
        async with opcua_site.connect("late1", "late-secret"):
            pass


# -- a second server: None policy and anonymous only because the site says so ----------------


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def open_server(
    tmp_path_factory: pytest.TempPathFactory, opcua_site: OpcUaSite
) -> AsyncIterator[OpcUaService]:
    data = copy.deepcopy(SITE)
    data["opcua"] = {
        "port": 0,
        "hostname": "localhost",
        "allow_none": True,
        "allow_anonymous": True,
        "pki_dir": str(tmp_path_factory.mktemp("open-pki")),
    }
    site = parse_site(data)
    plugins = load_plugins()
    runtime = Runtime(site, plugins)  # not started: only its OPC UA server runs here
    config = read_config(site)
    assert config is not None
    service = make_service(config, runtime)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


async def test_none_policy_and_anonymous_viewer_only_when_configured(
    open_server: OpcUaService, client_certs: dict[str, ClientCert]
) -> None:
    url = f"opc.tcp://localhost:{open_server.port}/openprepay"
    probe = Client(url)
    endpoints = await probe.connect_and_get_server_endpoints()
    modes = {(e.SecurityPolicyUri.rsplit("#", 1)[-1], e.SecurityMode) for e in endpoints}
    assert ("None", ua.MessageSecurityMode.None_) in modes
    assert ("Basic256Sha256", SIGN_AND_ENCRYPT) in modes

    client = Client(url)  # no certificate, no user, no encryption
    async with client:
        s = await client.get_namespace_index("urn:openprepay:site:t")
        t = await client.get_namespace_index("urn:openprepay:types")
        meter = client.get_node(ua.NodeId("Meter:E-A-101", s))
        assert (await meter.read_browse_name()).Name == "E-A-101"
        # Anonymous sessions read, but never call or write.
        with pytest.raises(ua.uaerrors.BadUserAccessDenied):
            await meter.call_method(
                f"{t}:Disconnect", ua.Variant("anonymous", ua.VariantType.String)
            )
        voltage = client.get_node(ua.NodeId("Meter:E-A-101/voltage", s))
        with pytest.raises(ua.uaerrors.BadUserAccessDenied):
            await voltage.write_value(ua.DataValue(ua.Variant(1.0, ua.VariantType.Double)))


async def test_a_taken_default_port_falls_back_an_explicit_one_is_an_error(
    tmp_path: Path, opcua_site: OpcUaSite
) -> None:
    import socket

    from openprepay.opcua_server.config import OpcUaConfig

    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen()
        port = busy.getsockname()[1]
        data = copy.deepcopy(SITE)
        del data["opcua"]  # only the runtime's site and bus are used here
        runtime = Runtime(parse_site(data), load_plugins())
        explicit = make_service(
            OpcUaConfig(port=port, port_fallback=False, pki_dir=tmp_path, hostname="localhost"),
            runtime,
        )
        with pytest.raises(OpcUaPortInUse, match=rf"OPC UA port {port} .*\[opcua\] port"):
            await explicit.start()
        await explicit.stop()
        default = make_service(
            OpcUaConfig(port=port, port_fallback=True, pki_dir=tmp_path, hostname="localhost"),
            runtime,
        )
        await default.start()
        try:
            assert default.port not in (None, port)
            assert f":{default.port}/openprepay" in default.endpoint
            # The same certificate as the first attempt: generated once, then kept.
            assert len(list((tmp_path / "own").iterdir())) == 2
        finally:
            await default.stop()
