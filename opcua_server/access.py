"""Who may do what: sessions get a role, and every request is checked against it.

- `SessionUserManager` (asyncua's user manager) turns a user name and password into a
  `SessionUser` with one of the roles of users.py, or refuses the session
  (BadUserAccessDenied). Anonymous sessions get the viewer role, and only when
  `[opcua] allow_anonymous = true` (otherwise the endpoint does not even offer them).
- `RoleRuleset` (asyncua's permission ruleset) is asked before every request: nobody
  changes the address space (AddNodes, DeleteNodes, references); writes need the admin
  role; a Call is allowed only when the session's role may call every method in it
  (BadUserAccessDenied otherwise, nothing runs). Anonymous sessions never call or write.

asyncua does not pass the session to method callbacks. The ruleset runs in the same task
as the request it checks, just before it, so it records the session user in a context
variable that the callbacks read (`current_user()`): that is the actor of every
operation and audit event.
"""

from __future__ import annotations

import contextvars
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

from .users import Role, UserDirectory

log = logging.getLogger("openprepay.opcua")

_SESSION_USER: contextvars.ContextVar[User | None] = contextvars.ContextVar(
    "openprepay_opcua_user", default=None
)

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
    """The user of the request being processed (inside a method callback)."""
    user = _SESSION_USER.get()
    return user if isinstance(user, SessionUser) else None


def actor_name(user: SessionUser | None) -> str:
    if user is None:
        return "opcua:unknown"
    return "opcua:anonymous" if user.anonymous else f"opcua:{user.name}"


class SessionUserManager:
    def __init__(self, directory: UserDirectory, *, allow_anonymous: bool) -> None:
        self.directory = directory
        self.allow_anonymous = allow_anonymous
        self.refused = 0

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
            self.refused += 1
            return None
        role = self.directory.verify(username, password or "")
        if role is None:
            self.refused += 1
            log.warning("OPC UA login refused for user %r", username)
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
        self.denied = 0

    def check_validity(self, user: User, action_type_id: ua.NodeId, body: Any) -> bool:
        _SESSION_USER.set(user)
        allowed = self._check(user, action_type_id, body)
        if not allowed:
            self.denied += 1
        return allowed

    def _check(self, user: User, action: ua.NodeId, body: Any) -> bool:
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
            ok = not session.anonymous and all(
                session.access in self.method_roles.get(m.MethodId, _ANY_SIGNED_IN)
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
