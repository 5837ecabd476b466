"""asyncua's connection layer, with the checks asyncua leaves out (guard.py has the rules).

asyncua 2.1 opens a secure channel with SecurityPolicy None even when no endpoint offers
it (a connection starts on a None policy and keeps it when the client asks for None),
applies the permission ruleset only when the channel's policy carries one, accepts a
user-name token however it is encrypted, and gives no hook where a session is created
with its peer address, nor tells a method callback which session calls it. Every
connection goes through these subclasses instead:

    OpenPrepayServer.start → GuardedBinaryServer → GuardedProtocol (one per TCP
    connection) → GuardedProcessor (one per connection: channel, session, requests)

`GuardedProcessor`:

- OpenSecureChannel: refused unless its policy and mode are those of an announced
  endpoint; the client gets an Error message (BadSecurityPolicyRejected) and the
  connection is closed. A None channel no endpoint offers is opened for discovery only:
  its first other request (CreateSession...) is answered the same way;
- ActivateSession: a source that must wait after failed logins is refused unchecked; the
  user token is checked against the endpoint's token policy; a refused login is counted
  against its source (address + client certificate thumbprint);
- every request runs with its session in a context variable, so a method callback knows
  the session's user (`request_session()`) whatever the channel;
- a refused request gets its ServiceFault without asyncua's error line per request (the
  guard logs refusals, at most once a minute per kind).
"""

from __future__ import annotations

import contextvars
import socket
from typing import Any

from asyncua import Server, ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import uacrypto
from asyncua.server.binary_server_asyncio import BinaryServer, OPCUAProtocol
from asyncua.server.internal_session import InternalSession
from asyncua.server.uaprocessor import UaProcessor
from asyncua.ua.ua_binary import nodeid_from_binary, struct_from_binary, uatcp_to_binary

from .guard import DISCOVERY, ChannelGuard, ChannelRefused

_ACTIVATE = ua.NodeId(ua.ObjectIds.ActivateSessionRequest_Encoding_DefaultBinary)

_SESSION: contextvars.ContextVar[InternalSession | None] = contextvars.ContextVar(
    "openprepay_opcua_session", default=None
)


def request_session() -> InternalSession | None:
    """The session of the request being processed (None outside a client request)."""
    return _SESSION.get()


class GuardedProcessor(UaProcessor):
    def __init__(self, iserver: Any, transport: Any, limits: Any, guard: ChannelGuard) -> None:
        super().__init__(iserver, transport, limits)
        self.guard = guard
        #: A None channel no endpoint offers: GetEndpoints and FindServers only.
        self.discovery_only = False

    async def process(self, header: Any, body: Any) -> bool:
        opening = header.MessageType == ua.MessageType.SecureOpen and not self._connection.is_open()
        try:
            if opening:  # a policy never offered: refused before asyncua looks for it
                algorithm = struct_from_binary(ua.AsymmetricAlgorithmHeader, body.copy())
                self.guard.check_policy(algorithm.SecurityPolicyURI, self.name)
            return await super().process(header, body)
        except ChannelRefused as refused:
            return self._refuse_channel(refused.status, refused.reason)
        except Exception as exc:
            if not opening:
                raise
            # Any other failure to open a channel (a bad signature...) ends the connection
            # with an Error message, not a traceback and a client left waiting.
            refused = self.guard.opening_failed(exc, self.name)
            return self._refuse_channel(refused.status, refused.reason)

    def open_secure_channel(self, algohdr: Any, seqhdr: Any, body: Any) -> None:
        if not self._connection.is_open():
            request = struct_from_binary(ua.OpenSecureChannelRequest, body.copy())
            self.discovery_only = not self.guard.check_channel(
                algohdr.SecurityPolicyURI, request.Parameters.SecurityMode, self.name
            )
        super().open_secure_channel(algohdr, seqhdr, body)

    def _refuse_channel(self, status: int, reason: str) -> bool:
        error = ua.ErrorMessage(ua.StatusCode(status), reason)
        self._transport.write(uatcp_to_binary(ua.MessageType.Error, error))
        return False  # the protocol closes the connection

    async def process_message(self, seqhdr: Any, body: Any) -> Any:
        if self.discovery_only:
            typeid = nodeid_from_binary(body.copy())
            if typeid not in DISCOVERY:
                raise self.guard.refuse_beyond_discovery(typeid, self.name)
        return await super().process_message(seqhdr, body)

    async def _process_message(self, typeid: Any, requesthdr: Any, seqhdr: Any, body: Any) -> Any:
        token = _SESSION.set(self.session)
        try:
            if typeid == _ACTIVATE:
                return await self._activate(typeid, requesthdr, seqhdr, body)
            return await super()._process_message(typeid, requesthdr, seqhdr, body)
        except (ServiceError, ua.uaerrors.UaStatusCodeError) as exc:
            response = ua.ServiceFault()
            response.ResponseHeader.ServiceResult = ua.StatusCode(exc.code)
            self.send_response(requesthdr.RequestHandle, seqhdr, response)
            return True
        finally:
            _SESSION.reset(token)

    async def _activate(self, typeid: Any, requesthdr: Any, seqhdr: Any, body: Any) -> Any:
        params = struct_from_binary(ua.ActivateSessionParameters, body.copy())
        policy = self._connection.security_policy
        source = self.guard.source_of(self.name, policy.peer_certificate)
        user_token = params.UserIdentityToken
        self.guard.admit(source)
        try:
            self.guard.check_user_token(policy.URI, policy.Mode, user_token, source)
            return await super()._process_message(typeid, requesthdr, seqhdr, body)
        except (ServiceError, ua.uaerrors.UaStatusCodeError) as exc:
            self.guard.login_failed(source, user_token, exc.code)
            raise


class GuardedProtocol(OPCUAProtocol):
    def __init__(self, *args: Any, guard: ChannelGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        if self.processor is not None:  # None: refused at max_connections
            # asyncua builds a plain UaProcessor here; no message has reached it yet.
            processor = GuardedProcessor(self.iserver, self.transport, self.limits, self.guard)
            processor.set_policies(self.policies)
            self.processor = processor


class GuardedBinaryServer(BinaryServer):
    def __init__(self, *args: Any, guard: ChannelGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard

    def _make_protocol(self) -> OPCUAProtocol:
        return GuardedProtocol(
            iserver=self.iserver,
            policies=self._policies,
            clients=self.clients,
            closing_tasks=self.closing_tasks,
            limits=self.limits,
            guard=self.guard,
        )


class OpenPrepayServer(Server):
    """asyncua's Server listening through `GuardedBinaryServer`."""

    def __init__(self, *args: Any, guard: ChannelGuard, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.guard = guard

    async def start(self) -> None:
        # Server.start of asyncua 2.1, with the guarded binary server, and without its
        # traceback in the log when the port is taken (the service reports that).
        if self.iserver.certificate is not None:
            uacrypto.check_certificate(
                self.iserver.certificate, self._application_uri, socket.gethostname()
            )
        await self._setup_server_nodes()
        self.guard.announce(self.iserver.endpoints)
        await self.iserver.start()
        try:
            host, port = self._get_bind_socket_info()
            self.bserver = GuardedBinaryServer(
                self.iserver, host, port, self.limits, guard=self.guard
            )
            self.bserver.set_policies(self._policies)
            await self.bserver.start()
        except Exception:
            self.bserver = None
            await self.iserver.stop()
            raise
