"""The tenant page's keys in `[web]`: the secret its room links and sessions are signed
with, their lifetimes, the amount presets, and WeChat OAuth (snsapi_base) for the openid.

The page is served only when a secret is configured (`tenant_secret` or
`tenant_secret_file`). Rotating the secret or raising `tenant_key_version` makes every
printed link and every session of the old version invalid (print new sheets with
`openprepay qr`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from openprepay.core.errors import FieldError

TENANT_KEYS = (
    "tenant_secret",
    "tenant_secret_file",
    "tenant_key_version",
    "tenant_session_hours",
    "tenant_link_days",
    "tenant_presets",
    "wechat_app_secret_file",
    "wechat_oauth_url",
    "wechat_api_url",
)
#: The secret is at least this many characters (32 bytes of entropy as hex or base64).
MIN_SECRET = 32


@dataclass(frozen=True, slots=True)
class TenantSettings:
    secret: bytes
    key_version: int = 1
    session_hours: int = 12
    link_days: int = 5 * 365
    #: Amount buttons, whole yuan.
    presets: tuple[int, ...] = (10, 20, 50, 100)
    #: The official account's AppSecret (OAuth code → openid); None: no OAuth.
    wechat_app_secret: str | None = None
    wechat_oauth_url: str = "https://open.weixin.qq.com"
    wechat_api_url: str = "https://api.weixin.qq.com"


def parse_tenant(
    raw: dict[str, Any], base: Path, errors: list[FieldError]
) -> TenantSettings | None:
    """The tenant keys of `[web]` (None without a secret: no tenant page)."""
    before = len(errors)
    inline, named = raw.get("tenant_secret"), raw.get("tenant_secret_file")
    if inline is not None and named is not None:
        errors.append(
            FieldError("web.tenant_secret", "give tenant_secret or tenant_secret_file, not both")
        )
        return None
    secret: str | None = None
    if inline is not None:
        if not isinstance(inline, str):
            errors.append(FieldError("web.tenant_secret", "expected a string"))
        secret = inline if isinstance(inline, str) else None
        where = "web.tenant_secret"
    elif named is not None:
        where = "web.tenant_secret_file"
        secret = _read_file(named, base, where, errors)
    else:
        others = [k for k in TENANT_KEYS if k in raw]
        if others:
            errors.append(
                FieldError(
                    "web.tenant_secret",
                    f"{others[0]} needs the tenant page's secret: give tenant_secret_file "
                    "(a file with at least 32 random characters, e.g. `openssl rand -hex 32`)",
                )
            )
        return None
    if secret is not None and len(secret.strip()) < MIN_SECRET:
        errors.append(
            FieldError(
                where,
                f"the secret must be at least {MIN_SECRET} characters "
                f"(got {len(secret.strip())}; e.g. `openssl rand -hex 32`)",
            )
        )
    d = TenantSettings(b"")
    version = web_int(raw, "tenant_key_version", d.key_version, 1, 1_000_000, errors)
    hours = web_int(raw, "tenant_session_hours", d.session_hours, 1, 24 * 90, errors)
    days = web_int(raw, "tenant_link_days", d.link_days, 1, 20 * 365, errors)
    presets = raw.get("tenant_presets", list(d.presets))
    ok = (
        isinstance(presets, list)
        and 1 <= len(presets) <= 8
        and all(
            isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 10_000 for p in presets
        )
    )
    if not ok:
        errors.append(
            FieldError(
                "web.tenant_presets",
                "expected 1..8 whole yuan amounts 1..10000, e.g. [10, 20, 50, 100]; "
                f"got {presets!r}",
            )
        )
    app_secret = None
    if "wechat_app_secret_file" in raw:
        app_secret = _read_file(
            raw["wechat_app_secret_file"], base, "web.wechat_app_secret_file", errors
        )
    oauth = _url(raw, "wechat_oauth_url", d.wechat_oauth_url, errors)
    api = _url(raw, "wechat_api_url", d.wechat_api_url, errors)
    if len(errors) > before or secret is None:
        return None
    return TenantSettings(
        secret.strip().encode(),
        version,
        hours,
        days,
        tuple(presets),
        app_secret.strip() if app_secret else None,
        oauth,
        api,
    )


def _read_file(name: Any, base: Path, where: str, errors: list[FieldError]) -> str | None:
    if not isinstance(name, str) or not name:
        errors.append(FieldError(where, f"expected a file name, got {name!r}"))
        return None
    path = Path(name).expanduser()
    path = path if path.is_absolute() else base / path
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        why = "no such file" if isinstance(exc, FileNotFoundError) else type(exc).__name__
        errors.append(FieldError(where, f"cannot read {path}: {why}"))
        return None


def _url(raw: dict[str, Any], key: str, default: str, errors: list[FieldError]) -> str:
    value = raw.get(key, default)
    parts = urlsplit(value) if isinstance(value, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
        errors.append(
            FieldError(f"web.{key}", f'expected a base URL such as "{default}", got {value!r}')
        )
        return default
    return value.rstrip("/")


def web_int(
    raw: dict[str, Any], key: str, default: int, low: int, high: int, errors: list[FieldError]
) -> int:
    """`[web] key`: a whole number from `low` to `high` (else an error, and the default)."""
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        errors.append(
            FieldError(f"web.{key}", f"expected a whole number {low}..{high}, got {value!r}")
        )
        return default
    return value
