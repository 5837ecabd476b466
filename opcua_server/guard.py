"""What the server accepts before a session may do anything: channels, user tokens, logins.

The rules are read from the endpoints the server announces, so the security it announces
is the security it enforces (transport.py applies them to every connection):

- **Secure channel**: opened only with the SecurityPolicy and mode of an announced
  endpoint, except the None policy for discovery: every OPC UA client asks for the
  endpoints over a None channel first (Part 4 §5.4), so a None channel is opened even with
  `allow_none = false`, but it carries GetEndpoints and FindServers only — CreateSession
  or anything else on it is refused (BadSecurityPolicyRejected) and the connection
  closed. asyncua alone would give it a full session, without its permission ruleset.
  Any other policy or mode not announced is refused at OpenSecureChannel.
- **User-name token**: must be encrypted as the endpoint's user token policy says, before
  the password is even looked at: with the algorithm of the policy it names (on a None
  channel, the first SignAndEncrypt policy; on a Sign channel, the channel's), or in clear
  only over a SignAndEncrypt channel (the channel encrypts it). A clear password over a
  None or Sign channel, or another algorithm, is refused (BadIdentityTokenInvalid).
- **Failed logins**: throttled by source, the client address and the thumbprint of the
  channel's client certificate (logins.py); never by user name.

Every refusal is counted in the server's security diagnostics (`SECURITY_MODEL`, shown
under OpenPrepay/Diagnostics/opcua) and logged at most once a minute per kind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import security_policies

from openprepay.core.field.diagnostics import diagnostic
from openprepay.core.model import DeviceModel, MeterKind

from .logins import LoginSource, LoginThrottle
from .loglimit import LogLimiter

log = logging.getLogger("openprepay.opcua")

NONE_URI = security_policies.SecurityPolicyNone.URI
SIGN_AND_ENCRYPT = ua.MessageSecurityMode.SignAndEncrypt
#: What a None channel may carry when no endpoint offers None: discovery only.
DISCOVERY = frozenset(
    ua.NodeId(t)
    for t in (
        ua.ObjectIds.GetEndpointsRequest_Encoding_DefaultBinary,
        ua.ObjectIds.FindServersRequest_Encoding_DefaultBinary,
        ua.ObjectIds.CloseSecureChannelRequest_Encoding_DefaultBinary,
    )
)
#: The asymmetric encryption algorithm of each policy (how a password is encrypted for it).
_ALGORITHM = {
    cls.URI: cls.AsymmetricEncryptionURI
    for cls, _mode, _level in security_policies.SECURITY_POLICY_TYPE_MAP.values()
}
#: Refusals of ActivateSession that count as a failed login of the source: a wrong
#: password or unknown user, a password not encrypted as it must be (a token type that is
#: not offered, e.g. anonymous, is not a guess and is not counted).
LOGIN_FAILURES = frozenset(
    {ua.StatusCodes.BadUserAccessDenied, ua.StatusCodes.BadIdentityTokenInvalid}
)

#: Source id of the security diagnostics (OpenPrepay/Diagnostics/opcua).
SECURITY_SOURCE = "opcua"
SECURITY_MODEL = DeviceModel(
    name="openprepay.opcua.security",
    vendor="OpenPrepay",
    product="OPC UA security",
    kind=MeterKind.HEALTH,
    description="What the OPC UA server refused since it started",
    points=(
        diagnostic("channels_refused", "", "Secure channels refused: policy or mode not offered"),
        diagnostic(
            "user_tokens_refused", "", "User-name tokens not encrypted as the endpoint requires"
        ),
        diagnostic("logins_failed", "", "Logins refused: unknown user or wrong password"),
        diagnostic(
            "logins_throttled", "", "Logins refused unchecked: the source waits after failures"
        ),
        diagnostic("calls_refused", "", "Method calls refused for the caller's role"),
        diagnostic(
            "certificates_rejected", "", "Sessions refused for an untrusted client certificate"
        ),
        diagnostic("rejected_files", "", "Certificates kept in rejected/ (bounded)"),
        diagnostic("rejected_pruned", "", "Oldest certificates removed from rejected/"),
    ),
    plugin="opcua",
)


@dataclass(slots=True)
class SecurityCounters:
    """The values of `SECURITY_MODEL`; `on_change` publishes them (set by the service)."""

    channels_refused: int = 0
    user_tokens_refused: int = 0
    logins_failed: int = 0
    logins_throttled: int = 0
    calls_refused: int = 0
    certificates_rejected: int = 0
    rejected_files: int = 0
    rejected_pruned: int = 0
    on_change: Callable[[], None] | None = dataclasses.field(default=None, repr=False)

    def add(self, name: str, n: int = 1) -> None:
        setattr(self, name, getattr(self, name) + n)
        self.changed()

    def set(self, name: str, value: int) -> None:
        if getattr(self, name) != value:
            setattr(self, name, value)
            self.changed()

    def changed(self) -> None:
        if self.on_change is not None:
            self.on_change()

    def values(self) -> dict[str, int]:
        return {p.name: getattr(self, p.name) for p in SECURITY_MODEL.points}


class ChannelRefused(Exception):
    """A secure channel the server does not offer; the connection gets an Error message."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def peer_address(peer: Any) -> str:
    """The IP address of asyncua's peer name (a (host, port, ...) tuple)."""
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return str(peer)


class ChannelGuard:
    def __init__(
        self,
        throttle: LoginThrottle,
        counters: SecurityCounters | None = None,
        limiter: LogLimiter | None = None,
    ) -> None:
        self.throttle = throttle
        self.counters = counters or SecurityCounters()
        self.limiter = limiter or LogLimiter(log)
        #: (policy URI, mode) of each announced endpoint -> the SecurityPolicyUri of its
        #: user-name token policy (None when the endpoint takes no user names).
        self._endpoints: dict[tuple[str, ua.MessageSecurityMode], str | None] = {}

    # -- what the server announces --------------------------------------------------------
    def announce(self, endpoints: Iterable[ua.EndpointDescription]) -> None:
        """Take the rules from the endpoint descriptions (after asyncua built them)."""
        self._endpoints = {}
        for endpoint in endpoints:
            user_name = next(
                (
                    t.SecurityPolicyUri or endpoint.SecurityPolicyUri
                    for t in endpoint.UserIdentityTokens
                    if t.TokenType == ua.UserTokenType.UserName
                ),
                None,
            )
            self._endpoints[(endpoint.SecurityPolicyUri, endpoint.SecurityMode)] = user_name

    @property
    def offered(self) -> list[tuple[str, ua.MessageSecurityMode]]:
        return list(self._endpoints)

    # -- OpenSecureChannel ------------------------------------------------------------------
    def check_channel(self, policy_uri: str, mode: ua.MessageSecurityMode, peer: Any) -> bool:
        """True: an announced channel; False: a None channel for discovery only. Raises
        `ChannelRefused` for anything else."""
        if (policy_uri, mode) in self._endpoints:
            return True
        if policy_uri == NONE_URI and mode == ua.MessageSecurityMode.None_:
            return False
        raise self._refused(policy_uri, mode, peer)

    def check_policy(self, policy_uri: str, peer: Any) -> None:
        """Refuse at once a SecurityPolicy no endpoint has (the mode is checked later)."""
        if policy_uri != NONE_URI and all(uri != policy_uri for uri, _mode in self._endpoints):
            raise self._refused(policy_uri, None, peer)

    def opening_failed(self, exc: Exception, peer: Any) -> ChannelRefused:
        """Any other failure to open a channel (a bad signature, a broken message)."""
        self.counters.add("channels_refused")
        self.limiter.warning(
            "channel-failed", "OPC UA secure channel failed: %s peer=%s", exc, peer_address(peer)
        )
        return ChannelRefused(ua.StatusCodes.BadSecurityChecksFailed, f"cannot open: {exc}")

    def refuse_beyond_discovery(self, request: ua.NodeId, peer: Any) -> ChannelRefused:
        """A request other than discovery on a None channel no endpoint offers."""
        return self._refused(NONE_URI, ua.MessageSecurityMode.None_, peer, request)

    def _refused(
        self,
        policy_uri: str,
        mode: ua.MessageSecurityMode | None,
        peer: Any,
        request: ua.NodeId | None = None,
    ) -> ChannelRefused:
        self.counters.add("channels_refused")
        asked = policy_uri.rsplit("#", 1)[-1]
        if mode is not None:
            asked += f"/{ua.MessageSecurityMode(mode).name}"
        offered = ", ".join(f"{u.rsplit('#', 1)[-1]}/{m.name}" for u, m in self._endpoints)
        beyond = f" for {request.to_string()}" if request is not None else ""
        self.limiter.warning(
            "channel",
            "OPC UA secure channel refused: %s is not offered%s (offered: %s) peer=%s",
            asked,
            beyond,
            offered,
            peer_address(peer),
        )
        return ChannelRefused(
            ua.StatusCodes.BadSecurityPolicyRejected,
            f"security {asked} is not offered by this server"
            + (" (it carries GetEndpoints and FindServers only)" if request is not None else "")
            + f"; offered: {offered}",
        )

    # -- ActivateSession ------------------------------------------------------------------------
    def source_of(self, peer: Any, certificate: bytes | None) -> LoginSource:
        thumb = hashlib.sha1(certificate).hexdigest() if certificate else None
        return LoginSource(peer_address(peer), thumb)

    def check_user_token(
        self, policy_uri: str, mode: ua.MessageSecurityMode, token: Any, source: LoginSource
    ) -> None:
        """Refuse a user-name token not encrypted as the channel's endpoint says."""
        if not isinstance(token, ua.UserNameIdentityToken):
            return  # anonymous and certificate tokens: asyncua checks they are offered
        algorithm = token.EncryptionAlgorithm or ""
        wanted = self._endpoints.get((policy_uri, mode))
        if wanted is None:
            allowed: set[str] = set()  # no endpoint of this channel takes user names
        elif wanted == NONE_URI:
            # Announced in clear: only where the channel itself encrypts; a client that
            # encrypts anyway must use the channel's own algorithm.
            allowed = {"", _ALGORITHM.get(policy_uri, "")} if mode == SIGN_AND_ENCRYPT else set()
        else:
            allowed = {_ALGORITHM.get(wanted, "?")}
        if algorithm in allowed:
            return
        self.counters.add("user_tokens_refused")
        self.limiter.warning(
            "token",
            "OPC UA login refused: the password of user %r is %s, the endpoint wants %s peer=%s",
            token.UserName,
            f"encrypted with {algorithm}" if algorithm else "not encrypted",
            " or ".join(sorted(a or "it in clear" for a in allowed)) or "no user names",
            source,
        )
        raise ServiceError(ua.StatusCodes.BadIdentityTokenInvalid)

    def admit(self, source: LoginSource) -> None:
        """Refuse, unchecked, a login from a source that must still wait."""
        wait = self.throttle.wait_s(source)
        if wait <= 0:
            return
        self.counters.add("logins_throttled")
        self.limiter.warning(
            "throttled",
            "OPC UA login refused unchecked: %s must wait %.0f s more after %d failed logins",
            source,
            wait,
            self.throttle.failures(source),
        )
        raise ServiceError(ua.StatusCodes.BadUserAccessDenied)

    def login_failed(self, source: LoginSource, token: Any, status: int) -> None:
        if status not in LOGIN_FAILURES:
            return
        if status == ua.StatusCodes.BadUserAccessDenied:
            self.counters.add("logins_failed")
        wait = self.throttle.failed(source)
        user = getattr(token, "UserName", None)
        if wait > 0:
            self.limiter.warning(
                "login",
                "OPC UA login refused for user %r: %s waits %.0f s after %d failed logins",
                user,
                source,
                wait,
                self.throttle.failures(source),
            )
        else:
            self.limiter.warning("login", "OPC UA login refused for user %r from %s", user, source)
