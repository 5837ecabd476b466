"""The security the server announces is the security it enforces (issue 9 §1).

Raw asyncua clients try every way around it: a None channel with a user token where no
endpoint offers None, a mode or policy not offered, a clear or wrongly encrypted password,
a viewer calling every method on a channel with asyncua's permission ruleset and on one
without it, a brute force from one address while the real user logs in from another, a
flood of self-signed certificates. Each is refused and changes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from asyncua import Client, ua
from asyncua.crypto.security_policies import (
    SecurityPolicyAes128Sha256RsaOaep,
    SecurityPolicyAes256Sha256RsaPss,
    SecurityPolicyBasic256Sha256,
)

from openprepay.opcua_server.accounts.methods import ACKNOWLEDGE_SPEC, AccountMethods
from openprepay.opcua_server.methods import MethodSpec
from openprepay.opcua_server.service import OpcUaService

from .conftest import (
    PASSWORDS,
    OpcUaSite,
    RawClient,
    connect,
    footprint,
    make_client_cert,
    second_server,
    url_of,
)

pytestmark = pytest.mark.asyncio(loop_scope="session")

S = ua.StatusCodes
V = ua.VariantType
SIGN = ua.MessageSecurityMode.Sign
SIGN_AND_ENCRYPT = ua.MessageSecurityMode.SignAndEncrypt
#: Another machine, as far as the server can tell.
OTHER_ADDRESS = "127.0.0.2"


def counters(service: OpcUaService) -> dict[str, int]:
    return service.counters.values()


async def call_status(client: Client, obj: str, spec: MethodSpec) -> int:
    """Call `spec` on `obj` with well-typed arguments; the status of the call, whether the
    whole request or only the method was refused."""
    t = await client.get_namespace_index("urn:openprepay:types")
    s = await client.get_namespace_index("urn:openprepay:site:t")
    samples = {
        V.Double: 1.0,
        V.String: "viewer-was-here",
        V.Boolean: True,
        V.ByteString: b"\x00",
        V.LocalizedText: ua.LocalizedText("viewer"),
    }
    method = (
        ua.NodeId(ua.ObjectIds.AcknowledgeableConditionType_Acknowledge)
        if spec is ACKNOWLEDGE_SPEC
        else ua.NodeId(f"{spec.owner}/{spec.name}", t)
    )
    request = ua.CallMethodRequest(
        ObjectId=ua.NodeId(obj, s),
        MethodId=method,
        # (integer types, for methods added later, take 1)
        InputArguments=[ua.Variant(samples.get(a.vtype, 1), a.vtype) for a in spec.inputs],
    )
    try:
        (result,) = await client.uaclient.call([request])
    except ua.uaerrors.UaStatusCodeError as exc:
        return exc.code
    return result.StatusCode.value


def every_method() -> list[tuple[str, MethodSpec]]:
    """(object, method) for every method the server declares: accounts, meters, alarms.
    A method added to the table later is in this list without touching the test."""
    objects = {"AccountType": "Account:A-102", "MeterType": "Meter:E-A-102"}
    calls = [(objects[spec.owner], spec) for spec in AccountMethods().method_specs()]
    return [*calls, ("Account:A-102/LowBalance", ACKNOWLEDGE_SPEC)]


# -- the channel --------------------------------------------------------------------------


async def test_a_none_channel_cannot_carry_a_session_when_none_is_not_offered(
    opcua_site: OpcUaSite,
) -> None:
    before = footprint(opcua_site)
    client = RawClient(opcua_site.url)  # SecurityPolicy None, a clear password
    client.set_user("viewer1")
    client.set_password(PASSWORDS["viewer1"])
    with pytest.raises(ua.uaerrors.BadSecurityPolicyRejected):
        await client.connect()
        try:  # what the attacker of the issue did next
            for obj, spec in every_method():
                await call_status(client, obj, spec)
        finally:
            await client.disconnect()
    assert footprint(opcua_site) == before
    # Discovery over a None channel still works (every client asks for endpoints first).
    endpoints = await Client(opcua_site.url).connect_and_get_server_endpoints()
    assert {e.SecurityMode for e in endpoints} == {SIGN_AND_ENCRYPT}


@pytest.mark.parametrize(
    ("policy", "mode"),
    [(SecurityPolicyBasic256Sha256, SIGN), (SecurityPolicyAes128Sha256RsaOaep, SIGN_AND_ENCRYPT)],
)
async def test_a_policy_or_mode_not_offered_is_refused_at_open_secure_channel(
    opcua_site: OpcUaSite, policy: Any, mode: ua.MessageSecurityMode
) -> None:
    client = RawClient(opcua_site.url)
    client.application_uri = opcua_site.trusted.uri
    client.set_user("admin1")
    client.set_password(PASSWORDS["admin1"])
    cert = opcua_site.trusted
    server_cert = str(opcua_site.pki.cert_file)  # (asyncua's Client looks for an endpoint)
    await client.set_security(
        policy, str(cert.cert), str(cert.key), server_certificate=server_cert, mode=mode
    )
    with pytest.raises(ua.uaerrors.BadSecurityPolicyRejected):
        await client.connect()
        await client.disconnect()


# -- user tokens (a server that offers None, as allow_none = true does) ----------------------


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def none_server(
    opcua_site: OpcUaSite, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[OpcUaService]:
    folder = tmp_path_factory.mktemp("none-server")
    async with second_server(opcua_site, folder, allow_none=True) as service:
        yield service


@pytest.mark.parametrize(
    ("token_policy", "why"),
    [(None, "a clear password"), (SecurityPolicyAes256Sha256RsaPss, "another algorithm")],
)
async def test_a_password_not_encrypted_as_the_endpoint_says_is_refused(
    opcua_site: OpcUaSite, none_server: OpcUaService, token_policy: Any, why: str
) -> None:
    # The None endpoint asks for the password encrypted for Basic256Sha256 (rsa-oaep).
    before = footprint(opcua_site)
    client = RawClient(url_of(none_server), token_policy=token_policy)
    client.set_user("cashier1")
    client.set_password(PASSWORDS["cashier1"])
    with pytest.raises(ua.uaerrors.BadIdentityTokenInvalid):
        await client.connect()
        try:
            await call_status(client, "Account:A-102", AccountMethods().method_specs()[0])
        finally:
            await client.disconnect()
    assert footprint(opcua_site) == before, why


async def test_a_password_encrypted_for_the_endpoint_logs_in_on_the_none_channel(
    opcua_site: OpcUaSite, none_server: OpcUaService
) -> None:
    client = RawClient(url_of(none_server), token_policy=SecurityPolicyBasic256Sha256)
    client.set_user("viewer1")
    client.set_password(PASSWORDS["viewer1"])
    await client.connect()
    try:
        s = await client.get_namespace_index("urn:openprepay:site:t")
        state = await client.get_node(ua.NodeId("Account:A-101/State", s)).read_value()
        assert state == "OPEN"
    finally:
        await client.disconnect()


# -- roles: every method, with asyncua's ruleset on the channel and without it -------------


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def server_without_ruleset(
    opcua_site: OpcUaSite, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[OpcUaService]:
    """A server whose channels carry no permission ruleset: what asyncua does on a channel
    whose policy has none. Only the method callbacks' own checks stand."""
    folder = tmp_path_factory.mktemp("no-ruleset")
    async with second_server(opcua_site, folder) as service:
        assert service.server is not None
        for factory in service.server._policies:
            factory.permission_ruleset = None
        yield service


@pytest.mark.parametrize("ruleset", [True, False], ids=["with-ruleset", "without-ruleset"])
@pytest.mark.parametrize("user", ["viewer1", "cashier1"])
async def test_a_role_calls_no_method_it_may_not_on_any_channel(
    opcua_site: OpcUaSite, server_without_ruleset: OpcUaService, ruleset: bool, user: str
) -> None:
    service = opcua_site.service if ruleset else server_without_ruleset
    role = "viewer" if user == "viewer1" else "cashier"
    forbidden = [(obj, spec) for obj, spec in every_method() if role not in spec.roles]
    assert forbidden
    before = footprint(opcua_site)
    async with connect(url_of(service), user, cert=opcua_site.trusted) as client:
        for obj, spec in forbidden:
            status = await call_status(client, obj, spec)
            assert status == S.BadUserAccessDenied, (user, spec.name, ua.StatusCode(status))
    assert footprint(opcua_site) == before  # no journal, no relay command, no change


async def test_requested_by_names_the_user_on_a_channel_without_ruleset(
    opcua_site: OpcUaSite, server_without_ruleset: OpcUaService
) -> None:
    from openprepay.core.db import schema

    url = url_of(server_without_ruleset)
    async with connect(url, "cashier1", cert=opcua_site.trusted) as client:
        t, s = await opcua_site.ns(client)
        account = client.get_node(ua.NodeId("Account:A-102", s))
        await account.call_method(
            f"{t}:TopUp", ua.Variant(0.01, V.Double), ua.Variant("who-1", V.String)
        )
    async with connect(url, "operator1", cert=opcua_site.trusted) as client:
        account = client.get_node(ua.NodeId("Account:A-102", s))
        await account.call_method(f"{t}:Protect", ua.Variant(True, V.Boolean))
        await account.call_method(f"{t}:Protect", ua.Variant(False, V.Boolean))
    db = opcua_site.runtime.db
    assert db is not None
    with db.read() as conn:
        journal = schema.journal
        (who,) = conn.execute(
            journal.select()
            .with_only_columns(journal.c.requested_by)
            .where(journal.c.idempotency_key.like("%who-1%"))
        ).one()
        audit = schema.audit_log
        actors = {
            row.actor
            for row in conn.execute(
                audit.select().where(audit.c.action == "protect", audit.c.target == "A-102")
            )
        }
    assert who == "opcua:cashier1"
    assert "opcua:operator1" in actors and "opcua:unknown" not in actors


# -- failed logins -----------------------------------------------------------------------


async def test_guessing_from_one_address_never_locks_out_the_real_user(
    opcua_site: OpcUaSite,
) -> None:
    """The issue's case: before, 5 wrong passwords for a name locked that name for all."""
    for attempt in range(8):
        with pytest.raises(ua.uaerrors.BadUserAccessDenied):
            async with opcua_site.connect("admin1", f"guess-{attempt}", source=OTHER_ADDRESS):
                pass
    async with opcua_site.connect("admin1") as client:  # the real admin, another machine
        assert await client.nodes.server.read_browse_name()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def slow_server(
    opcua_site: OpcUaSite, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[OpcUaService]:
    """Three free failures, then ten minutes (longer than any test): the waits are sure."""
    folder = tmp_path_factory.mktemp("slow-logins")
    options = {"login_free_failures": 3, "login_delay_s": 600.0, "login_delay_max_s": 600.0}
    async with second_server(opcua_site, folder, allow_none=True, **options) as service:
        yield service


async def test_a_guessing_source_waits_unchecked_and_only_that_source(
    opcua_site: OpcUaSite, slow_server: OpcUaService, tmp_path: Path
) -> None:
    url = url_of(slow_server)
    trusted = opcua_site.trusted
    for attempt in range(4):
        with pytest.raises(ua.uaerrors.BadUserAccessDenied):
            async with connect(
                url, "admin1", f"guess-{attempt}", cert=trusted, source=OTHER_ADDRESS
            ):
                pass
    throttled = counters(slow_server)["logins_throttled"]
    # The guesser's source now waits: even the right password is refused, unchecked.
    with pytest.raises(ua.uaerrors.BadUserAccessDenied):
        async with connect(url, "admin1", cert=trusted, source=OTHER_ADDRESS):
            pass
    assert counters(slow_server)["logins_throttled"] == throttled + 1
    assert counters(slow_server)["logins_failed"] >= 4

    # The real admin: another address, the same trusted certificate.
    async with connect(url, "admin1", cert=trusted) as client:
        assert await client.nodes.server.read_browse_name()

    # Guessing over a None channel (no certificate) from the admin's own address...
    for attempt in range(4):
        guesser = RawClient(url, token_policy=SecurityPolicyBasic256Sha256)
        guesser.set_user("admin1")
        guesser.set_password(f"none-guess-{attempt}")
        with pytest.raises(ua.uaerrors.BadUserAccessDenied):
            await guesser.connect()
            await guesser.disconnect()
    # ... never refuses a login from that address with a trusted certificate,
    async with connect(url, "admin1", cert=trusted) as client:
        assert await client.nodes.server.read_browse_name()
    # ... nor with another trusted certificate.
    other = make_client_cert(tmp_path, "other-trusted", "urn:openprepay:tests:other")
    from openprepay.opcua_server.pki import trust

    trust(slow_server.pki, str(other.cert))
    async with connect(url, "viewer1", cert=other) as client:
        assert await client.nodes.server.read_browse_name()


# -- the rejected-certificate folder ----------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def small_rejected_server(
    opcua_site: OpcUaSite, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[OpcUaService]:
    folder = tmp_path_factory.mktemp("small-rejected")
    async with second_server(opcua_site, folder, rejected_max_certificates=10) as service:
        yield service


async def knock(url: str, cert: Any) -> None:
    """One connection with an untrusted certificate: refused at CreateSession."""
    with pytest.raises(ua.uaerrors.BadCertificateUntrusted):
        async with connect(url, "viewer1", cert=cert):
            pass


async def test_self_signed_connections_leave_one_file_each_and_one_log_line(
    opcua_site: OpcUaSite, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rejected = opcua_site.pki.rejected_dir
    strangers = [
        make_client_cert(tmp_path, f"flood-{i}", f"urn:openprepay:tests:flood-{i}")
        for i in range(12)
    ]
    with caplog.at_level(logging.WARNING, logger="openprepay.opcua"):
        for stranger in strangers:
            await knock(opcua_site.url, stranger)
        await knock(opcua_site.url, strangers[0])  # the same one again
    for stranger in strangers:
        assert (rejected / f"{stranger.thumbprint}.der").exists()
    assert not list(rejected.glob("*.json"))  # one file per thumbprint, nothing beside it
    lines = [r for r in caplog.records if "untrusted client certificate" in r.getMessage()]
    assert len(lines) <= 1  # at most one line a minute, not one per connection


async def test_the_rejected_folder_keeps_the_newest_within_its_bounds(
    opcua_site: OpcUaSite, small_rejected_server: OpcUaService, tmp_path: Path
) -> None:
    url = url_of(small_rejected_server)
    folder = small_rejected_server.pki.rejected_dir
    strangers = [
        make_client_cert(tmp_path, f"scan-{i}", f"urn:openprepay:tests:scan-{i}") for i in range(25)
    ]
    for stranger in strangers:
        await knock(url, stranger)
    kept = {p.stem for p in folder.iterdir()}
    assert kept == {s.thumbprint for s in strangers[-10:]}  # the 10 newest, nothing else
    assert counters(small_rejected_server)["certificates_rejected"] == 25
    assert counters(small_rejected_server)["rejected_pruned"] == 15
    assert counters(small_rejected_server)["rejected_files"] == 10
    # The counters are diagnostic points of the server itself.
    await small_rejected_server.publisher.drained()  # type: ignore[union-attr]
    async with connect(url, "viewer1", cert=opcua_site.trusted) as client:
        s = await client.get_namespace_index("urn:openprepay:site:t")
        node = client.get_node(
            ua.NodeId("Diagnostics:opcua/openprepay.opcua.security/certificates_rejected", s)
        )
        assert await node.read_value() == 25


# -- what was refused is counted ------------------------------------------------------------


async def test_every_refusal_is_counted_in_the_security_diagnostics(
    opcua_site: OpcUaSite, none_server: OpcUaService, tmp_path: Path
) -> None:
    url = url_of(none_server)
    before = counters(none_server)
    # A mode not offered.
    channel = RawClient(url)
    await channel.set_security(
        SecurityPolicyBasic256Sha256,
        str(opcua_site.trusted.cert),
        str(opcua_site.trusted.key),
        server_certificate=str(none_server.pki.cert_file),
        mode=SIGN,
    )
    with pytest.raises(ua.uaerrors.BadSecurityPolicyRejected):
        await channel.connect()
    # A clear password on the None channel.
    clear = RawClient(url)
    clear.set_user("viewer1")
    clear.set_password(PASSWORDS["viewer1"])
    with pytest.raises(ua.uaerrors.BadIdentityTokenInvalid):
        await clear.connect()
    # A wrong password.
    with pytest.raises(ua.uaerrors.BadUserAccessDenied):
        async with connect(url, "viewer1", "wrong-password", cert=opcua_site.trusted):
            pass
    # An untrusted certificate.
    await knock(url, make_client_cert(tmp_path, "counted", "urn:openprepay:tests:counted"))
    # A call the role may not make.
    async with connect(url, "viewer1", cert=opcua_site.trusted) as client:
        status = await call_status(client, "Account:A-102", AccountMethods().method_specs()[0])
        assert status == S.BadUserAccessDenied
        await none_server.publisher.drained()  # type: ignore[union-attr]
        s = await client.get_namespace_index("urn:openprepay:site:t")
        shown = {}
        for name in before:
            node = ua.NodeId(f"Diagnostics:opcua/openprepay.opcua.security/{name}", s)
            shown[name] = await client.get_node(node).read_value()
    after = counters(none_server)
    grew = {name for name in before if after[name] > before[name]}
    assert grew >= {
        "channels_refused",
        "user_tokens_refused",
        "logins_failed",
        "certificates_rejected",
        "calls_refused",
        "rejected_files",
    }
    assert shown == after  # the diagnostic points show the counters
