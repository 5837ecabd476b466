"""Who may do what: sessions get a role, and every request is checked against it.

- `SessionUserManager` (asyncua's user manager) turns a user name and password into a
  `SessionUser` with one of the roles of users.py, or refuses the session
  (BadUserAccessDenied). Anonymous sessions get the viewer role, and only when
  `[opcua] allow_anonymous = true` (otherwise the endpoint does not even offer them).
- `RoleRuleset` (asyncua's permission ruleset) is asked before every request: nobody
  changes the address space (AddNodes, DeleteNodes, references); writes need the admin
  role; a Call is allowed only when the session's role may call every method in it
  (BadUserAccessDenied otherwise, nothing runs). Anonymous sessions never call or write.
  Every channel the server opens carries it (transport.py refuses the others).
- Method callbacks check the role again themselves (`may_call`, methods.py), so a method
  is never run for a role it does not allow even where asyncua would skip the ruleset.

asyncua does not pass the session to method callbacks. The connection layer
(transport.py) runs every request with its session in a context variable; `current_user()`
is that session's user — the actor of every operation and audit event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from asyncua import ua
from asyncua.crypto.permission_rules import (
    ADMIN_TYPES,
    USER_TYPES,
    PermissionRuleset,
    User,
    UserRole,
)
from asyncua.ua.ua_binary import struct_from_binary

from .transport import request_session
from .users import Role, UserDirectory

log = logging.getLogger("openprepay.opcua")

_WRITE = ua.NodeId(ua.ObjectIds.WriteRequest_Encoding_DefaultBinary)
_CALL = ua.NodeId(ua.ObjectIds.CallRequest_Encoding_DefaultBinary)
_HISTORY_UPDATE = ua.NodeId(ua.ObjectIds.HistoryUpdateRequest_Encoding_DefaultBinary)
_ALLOWED = frozenset(ua.NodeId(t) for t in USER_TYPES)
_ADDRESS_SPACE = frozenset(ua.NodeId(t) for t in ADMIN_TYPES)


@dataclass
class SessionUser(User):
    """An asyncua user with an OpenPrepay role (asyncua's own role is always User)."""

    access: Role = Role.VIEWER
    anonymous: bool = False


def current_user() -> SessionUser | None:
    """The user of the session whose request is being processed (in a method callback);
    None outside a client's request."""
    session = request_session()
    user = session.user if session is not None else None
    return user if isinstance(user, SessionUser) else None


def may_call(user: SessionUser | None, roles: frozenset[Role]) -> bool:
    """Whether `user` may call a method open to `roles` (anonymous sessions never call)."""
    return user is not None and not user.anonymous and user.access in roles


def actor_name(user: SessionUser | None) -> str:
    """`opcua:<user>`: who asked, in the journal, the commands and the audit."""
    if user is None:
        return "opcua:(no session)"  # only ever in the audit of a refused call
    return "opcua:anonymous" if user.anonymous else f"opcua:{user.name}"


class SessionUserManager:
    """Who a session is (asyncua asks at ActivateSession; None refuses it). Refusals are
    counted and logged by the connection layer (guard.py), which knows their source."""

    def __init__(self, directory: UserDirectory, *, allow_anonymous: bool) -> None:
        self.directory = directory
        self.allow_anonymous = allow_anonymous

    def get_user(
        self,
        iserver: Any,
        username: str | None = None,
        password: str | None = None,
        certificate: Any = None,
    ) -> User | None:
        if username is None:
            if self.allow_anonymous:
                return SessionUser(UserRole.User, "anonymous", Role.VIEWER, anonymous=True)
            return None
        role = self.directory.verify(username, password or "")
        if role is None:
            return None
        return SessionUser(UserRole.User, username, role)


class RoleRuleset(PermissionRuleset):
    def __init__(
        self,
        method_roles: Mapping[ua.NodeId, frozenset[Role]],
        on_denied: Callable[[SessionUser | None, list[ua.CallMethodRequest]], None] | None = None,
    ) -> None:
        self.method_roles = method_roles
        self.on_denied = on_denied

    def check_validity(self, user: User, action: ua.NodeId, body: Any) -> bool:
        if action in _ADDRESS_SPACE or action == _HISTORY_UPDATE:
            return False
        if action not in _ALLOWED:
            return False
        session = user if isinstance(user, SessionUser) else None
        if session is None:
            return False
        if action == _WRITE:
            return session.access is Role.ADMIN and not session.anonymous
        if action == _CALL:
            try:
                params = struct_from_binary(ua.CallParameters, body.copy())
            except Exception:
                return False
            ok = all(
                may_call(session, self.method_roles.get(m.MethodId, _ANY_SIGNED_IN))
                for m in params.MethodsToCall
            )
            if not ok and self.on_denied is not None:
                try:
                    self.on_denied(session, list(params.MethodsToCall))
                except Exception:
                    log.exception("reporting a refused call failed")
            return ok
        return True


#: Methods the product does not declare (ConditionRefresh...): any signed-in user.
_ANY_SIGNED_IN = frozenset(Role)
