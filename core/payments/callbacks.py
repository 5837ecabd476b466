"""Start-up checks of how the providers will reach us: warnings, not errors (a site may run
on loopback for a demo, or behind a proxy being set up), logged when the payment service
starts and kept on it (`PaymentService.warnings`).

- no `[web] public_base_url`: no provider can call back, every payment waits for the
  active query (`[payments] query_after_s`);
- a public base URL that is not https: WeChat Pay and Alipay call only https URLs;
- a notify URL a provider cannot reach or will refuse: a loopback, private or link-local
  address, a name without a dot (`localhost`, an intranet name), a query or fragment
  (WeChat Pay's notify_url takes none), longer than WeChat Pay's 255 characters;
- a provider without a merchant id or app id (what every notification is checked against);
- providers but no web service, or a web service without providers.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

#: WeChat Pay's limit for notify_url.
NOTIFY_URL_MAX = 255


def notify_url(public_base_url: str, channel: str) -> str:
    """What the payment service gives a provider (core/payments/service.py)."""
    return f"{public_base_url.rstrip('/')}/pay/notify/{channel}"


def callback_warnings(web: Mapping[str, Any] | None, providers: Iterable[Any]) -> list[str]:
    """Every warning for the site's `[web]` table (None: none) and its payment providers."""
    providers = list(providers)
    warnings: list[str] = []
    if not providers:
        if web is not None:
            warnings.append(
                "[web] is configured but no payment provider is: add [payments.wechat] or "
                "[payments.alipay] to take payments"
            )
        return warnings
    channels = ", ".join(sorted(p.channel for p in providers))
    if web is None:
        warnings.append(
            f"payment providers ({channels}) but no [web] section: nothing receives their "
            "notifications, payments are found only by the active query; add [web] with "
            'bind, port and public_base_url (e.g. "https://pay.example.com")'
        )
    base = str((web or {}).get("public_base_url") or "").strip()
    if web is not None and not base:
        warnings.append(
            "[web] public_base_url is not set: providers cannot call back, payments are found "
            "only by the active query; set it to the reverse proxy's https address (e.g. "
            '"https://pay.example.com")'
        )
    if base:
        warnings.extend(_url_warnings(base, providers))
    for p in providers:
        for attr, name in (("merchant_id", "merchant id"), ("app_id", "app id")):
            if not str(getattr(p, attr, "") or "").strip():
                warnings.append(
                    f"payment provider {p.channel!r} has no {name}: every notification would "
                    f"be a conflict; set it in [payments.{p.channel}]"
                )
    return warnings


def _url_warnings(base: str, providers: list[Any]) -> list[str]:
    warnings: list[str] = []
    parts = urlsplit(base)
    host = (parts.hostname or "").lower()
    if parts.scheme != "https":
        warnings.append(
            f"[web] public_base_url {base!r} is not https: WeChat Pay and Alipay call only "
            "https URLs; put a TLS reverse proxy in front and give its https address"
        )
    why = _unreachable(host)
    if why is not None:
        warnings.append(
            f"[web] public_base_url {base!r}: {why}, which the providers cannot reach; give "
            "the public address of the reverse proxy"
        )
    if parts.query or parts.fragment:
        warnings.append(
            f"[web] public_base_url {base!r} has a query or fragment: notify URLs take none "
            "(WeChat Pay refuses them); remove it"
        )
    longest = max((notify_url(base, p.channel) for p in providers), key=len)
    if len(longest) > NOTIFY_URL_MAX:
        warnings.append(
            f"notify URL {longest[:60]}… is {len(longest)} characters, more than WeChat Pay's "
            f"{NOTIFY_URL_MAX}: shorten [web] public_base_url"
        )
    return warnings


def _unreachable(host: str) -> str | None:
    if not host:
        return "it names no host"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if host == "localhost" or host.endswith((".localhost", ".local", ".lan", ".internal")):
            return f"{host} is a local name"
        if "." not in host:
            return f"{host} is not a public DNS name"
        return None
    if address.is_loopback:
        return f"{host} is a loopback address"
    if address.is_link_local:
        return f"{host} is a link-local address"
    if address.is_private or address.is_reserved or address.is_unspecified:
        return f"{host} is a private address"
    return None
