"""Signed room links and tenant sessions.

A room link is what the QR code on a meter (or on a printed sheet, `openprepay qr`) holds:
`<public_base_url>/r/<token>`, the token an HMAC-SHA256 over (site, room, key version,
expiry) with a key derived from `[web] tenant_secret`. Nothing else in a URL — a room or
meter number, an openid — is ever authorisation: whoever holds a valid token for a room
may see that room, nothing more.

Opening a link sets a session cookie (HttpOnly, SameSite=Lax, Secure when the public base
URL is https) sealed with another derived key, naming the site, the room, the key version,
its expiry (`tenant_session_hours`) and, inside WeChat after OAuth, the payer's openid
(then the payer binding is also checked on every request). Raising `tenant_key_version`
(or changing the secret) refuses every link and session of the old version.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime

from .tenant_settings import TenantSettings

SESSION_COOKIE = "op_tenant"
#: Purposes keys are derived for: a link's key never verifies a session and back.
LINK, SESSION, FORM, STATE = "link", "session", "form", "oauth-state"


class LinkRefused(Exception):
    """A link or session that is not (or no longer) valid; `reason` for the log."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TenantSession:
    site: str
    room: str
    version: int
    #: Unix seconds.
    expires: int
    #: The payer at WeChat (from OAuth snsapi_base), once known.
    openid: str | None = None


def _key(settings: TenantSettings, purpose: str, version: int | None = None) -> bytes:
    v = settings.key_version if version is None else version
    return hmac.new(settings.secret, f"openprepay:{purpose}:v{v}".encode(), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _seal(settings: TenantSettings, purpose: str, fields: list[object]) -> str:
    payload = _b64(json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode())
    mac = hmac.new(_key(settings, purpose), payload.encode("ascii"), hashlib.sha256).digest()
    return f"{payload}.{_b64(mac)}"


def _unseal(settings: TenantSettings, purpose: str, sealed: str) -> list[object]:
    if not isinstance(sealed, str) or len(sealed) > 2048 or sealed.count(".") != 1:
        raise LinkRefused("malformed")
    payload, mac = sealed.split(".")
    try:
        given = _unb64(mac)
        fields = json.loads(_unb64(payload))
    except (ValueError, UnicodeDecodeError):
        raise LinkRefused("malformed") from None
    if not isinstance(fields, list) or len(fields) < 4 or not isinstance(fields[2], int):
        raise LinkRefused("malformed")
    version = fields[2]
    if version != settings.key_version:
        # Checked first with its own words: an old sheet after a rotation is a common case.
        raise LinkRefused(f"key version {version} retired (now {settings.key_version})")
    want = hmac.new(_key(settings, purpose), payload.encode("ascii"), hashlib.sha256).digest()
    if not hmac.compare_digest(want, given):
        raise LinkRefused("bad signature")
    return fields


def sign_room_link(settings: TenantSettings, site: str, room: str, now: datetime) -> str:
    """The token of a room's link, valid `tenant_link_days` from `now`."""
    expires = int(now.timestamp()) + settings.link_days * 86400
    return _seal(settings, LINK, [site, room, settings.key_version, expires])


def read_room_link(settings: TenantSettings, site: str, token: str, now: datetime) -> str:
    """The room a link's token names; `LinkRefused` when tampered, expired, of a retired
    key version or of another site."""
    fields = _unseal(settings, LINK, token)
    link_site, room, _, expires = fields[:4]
    if not isinstance(expires, int) or expires <= now.timestamp():
        raise LinkRefused("expired")
    if link_site != site or not isinstance(room, str):
        raise LinkRefused("another site's link")
    return room


def new_session(
    settings: TenantSettings, site: str, room: str, now: datetime, openid: str | None = None
) -> TenantSession:
    expires = int(now.timestamp()) + settings.session_hours * 3600
    return TenantSession(site, room, settings.key_version, expires, openid)


def seal_session(settings: TenantSettings, session: TenantSession) -> str:
    return _seal(
        settings,
        SESSION,
        [session.site, session.room, session.version, session.expires, session.openid],
    )


def open_session(
    settings: TenantSettings, site: str, sealed: str | None, now: datetime
) -> TenantSession:
    """The session a cookie holds; `LinkRefused` when there is none or it is not valid."""
    if not sealed:
        raise LinkRefused("no session")
    fields = _unseal(settings, SESSION, sealed)
    if len(fields) != 5:
        raise LinkRefused("malformed")
    s_site, room, version, expires, openid = fields
    if not isinstance(expires, int) or expires <= now.timestamp():
        raise LinkRefused("session expired")
    if s_site != site or not isinstance(room, str):
        raise LinkRefused("another site's session")
    if openid is not None and not isinstance(openid, str):
        raise LinkRefused("malformed")
    assert isinstance(version, int)
    return TenantSession(site, room, version, expires, openid)


def form_token(settings: TenantSettings, sealed_session: str) -> str:
    """What a form of the page carries so that another site cannot post it for the payer."""
    return _b64(hmac.new(_key(settings, FORM), sealed_session.encode(), hashlib.sha256).digest())


def oauth_state(settings: TenantSettings, sealed_session: str) -> str:
    """OAuth's `state` (≤ 128 bytes): ties WeChat's answer to this browser's session."""
    mac = hmac.new(_key(settings, STATE), sealed_session.encode(), hashlib.sha256).digest()
    return _b64(mac[:24])


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())
