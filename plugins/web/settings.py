"""The `[web]` section: where the web service listens, the URL providers call back, limits."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from openprepay.core.errors import FieldError

from .tenant_settings import TENANT_KEYS, TenantSettings, parse_tenant, web_int

KEYS = (
    "bind",
    "port",
    "public_base_url",
    "max_body_bytes",
    "rate_per_min",
    "trust_forwarded",
    *TENANT_KEYS,
)


@dataclass(frozen=True, slots=True)
class WebSettings:
    bind: str = "127.0.0.1"
    port: int = 8080
    #: What providers call back (https://pay.example.com): the reverse proxy's address.
    public_base_url: str = ""
    #: A callback is a few kB; a bigger body is refused before it is read (413).
    max_body_bytes: int = 64 * 1024
    #: Requests per minute one client may make (429 beyond).
    rate_per_min: int = 600
    #: Behind a reverse proxy on this machine: the client is X-Forwarded-For's last entry.
    trust_forwarded: bool = False
    #: The tenant page (None: not served): see tenant_settings.py.
    tenant: TenantSettings | None = None


def section(site: Any) -> dict[str, Any] | None:
    raw = site.sections.get("web")
    return raw if isinstance(raw, dict) else None


def site_folder(site: Any) -> Path:
    """Where relative file names in the site file are found: the site file's folder."""
    path = getattr(site, "path", None)
    return Path(path).parent if path else Path.cwd()


def parse_web(raw: Any, errors: list[FieldError], base: Path | None = None) -> WebSettings | None:
    """`base`: the site file's folder (relative secret files are found there)."""
    if not isinstance(raw, dict):
        errors.append(FieldError("web", "expected a table ([web])"))
        return None
    before = len(errors)
    d = WebSettings()
    for key in raw:
        if key not in KEYS:
            errors.append(
                FieldError(f"web.{key}", f"unknown key (expected one of {', '.join(KEYS)})")
            )
    bind = raw.get("bind", d.bind)
    try:
        ipaddress.ip_address(bind)
    except (ValueError, TypeError):
        errors.append(
            FieldError("web.bind", f"expected an IP address (127.0.0.1, 0.0.0.0), got {bind!r}")
        )
    port = web_int(raw, "port", d.port, 0, 65535, errors)
    url = raw.get("public_base_url", d.public_base_url)
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
        errors.append(
            FieldError(
                "web.public_base_url",
                f'expected the URL providers call back, e.g. "https://pay.example.com" '
                f"(no query string), got {url!r}",
            )
        )
    body = web_int(raw, "max_body_bytes", d.max_body_bytes, 1024, 10 * 1024 * 1024, errors)
    rate = web_int(raw, "rate_per_min", d.rate_per_min, 1, 1_000_000, errors)
    trust = raw.get("trust_forwarded", d.trust_forwarded)
    if not isinstance(trust, bool):
        errors.append(FieldError("web.trust_forwarded", f"expected true or false, got {trust!r}"))
    tenant = parse_tenant(raw, base or Path.cwd(), errors)
    if len(errors) > before:
        return None
    return WebSettings(bind, port, str(url).rstrip("/"), body, rate, trust, tenant)
