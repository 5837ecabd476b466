"""The site's `[payments]` section: what the core needs to open and follow orders.

    [payments]
    minimum = "1.00"        # yuan: the smallest payment a tenant may make
    order_minutes = 15      # an unpaid order is closed after this
    query_after_s = 60      # no notice this long after creation: ask the provider
    poll_s = 5              # how often the service looks for such orders
    prefix = "OP"           # out_trade_no prefix (letters and digits, at most 8)
    currency = "CNY"
    reconcile_at = "10:30"  # site time: yesterday's trade bills are reconciled after this
                            # ("off": only `openprepay payments reconcile`)

Sub-tables (`[payments.wechat]`, `[payments.alipay]`) belong to the provider plugins.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import time
from typing import Any

from ..config.site import Site
from ..errors import ConfigError, FieldError, RequestError
from ..money import parse_yuan

_PREFIX = re.compile(r"^[0-9A-Za-z]{0,8}$")
_KEYS = (
    "minimum",
    "order_minutes",
    "query_after_s",
    "poll_s",
    "prefix",
    "currency",
    "reconcile_at",
)
_HHMM = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")


@dataclass(frozen=True, slots=True)
class PaymentSettings:
    minimum_fen: int = 100
    order_minutes: int = 15
    query_after_s: float = 60.0
    poll_s: float = 5.0
    prefix: str = "OP"
    currency: str = "CNY"
    #: The site-time of day after which yesterday's trade bills are reconciled; None: off.
    #: The providers publish them after 09:00 (WeChat advises fetching after 10:00).
    reconcile_at: time | None = time(10, 30)


def _section(site: Site) -> dict[str, Any]:
    raw = site.sections.get("payments") or {}
    return raw if isinstance(raw, dict) else {}


def check_payments(site: Site) -> list[FieldError]:
    """Every problem of `[payments]` (its own keys; sub-tables are the providers')."""
    errors: list[FieldError] = []
    _read(site, errors)
    return errors


def load_payments(site: Site) -> PaymentSettings:
    errors: list[FieldError] = []
    settings = _read(site, errors)
    if errors:
        raise ConfigError(str(site.path or "site"), errors)
    return settings


def _read(site: Site, errors: list[FieldError]) -> PaymentSettings:
    raw = site.sections.get("payments")
    if raw is not None and not isinstance(raw, dict):
        errors.append(FieldError("payments", "expected a table ([payments])"))
    data = _section(site)
    defaults = PaymentSettings()
    for key, value in data.items():
        if key not in _KEYS and not isinstance(value, dict):
            errors.append(
                FieldError(f"payments.{key}", f"unknown key (expected one of {', '.join(_KEYS)})")
            )
    minimum = defaults.minimum_fen
    if "minimum" in data:
        try:
            minimum = parse_yuan(str(data["minimum"]), "payments.minimum", low_fen=1)
        except RequestError as exc:
            errors.append(FieldError("payments.minimum", f'{exc.message} (e.g. "1.00")'))
    order_minutes = _number(data, "order_minutes", defaults.order_minutes, 1, 24 * 60, errors)
    query_after = _number(data, "query_after_s", defaults.query_after_s, 1, 3600, errors)
    poll = _number(data, "poll_s", defaults.poll_s, 0.05, 600, errors)
    prefix = data.get("prefix", defaults.prefix)
    if not isinstance(prefix, str) or not _PREFIX.match(prefix):
        errors.append(
            FieldError("payments.prefix", f"expected up to 8 letters or digits, got {prefix!r}")
        )
        prefix = defaults.prefix
    currency = data.get("currency", defaults.currency)
    if currency != "CNY":
        errors.append(FieldError("payments.currency", f'only "CNY" is supported, got {currency!r}'))
        currency = defaults.currency
    reconcile_at = defaults.reconcile_at
    if "reconcile_at" in data:
        raw_at = data["reconcile_at"]
        match = _HHMM.match(raw_at) if isinstance(raw_at, str) else None
        if raw_at == "off":
            reconcile_at = None
        elif match is None:
            errors.append(
                FieldError(
                    "payments.reconcile_at",
                    f'expected a time of day "HH:MM" (e.g. "10:30") or "off", got {raw_at!r}',
                )
            )
        else:
            reconcile_at = time(int(match.group(1)), int(match.group(2)))
    return PaymentSettings(
        minimum, int(order_minutes), query_after, poll, prefix, currency, reconcile_at
    )


def _number(
    data: dict[str, Any],
    key: str,
    default: float,
    low: float,
    high: float,
    errors: list[FieldError],
) -> float:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
        errors.append(
            FieldError(f"payments.{key}", f"expected a number {low}..{high}, got {value!r}")
        )
        return default
    if key == "order_minutes" and not isinstance(value, int):
        errors.append(FieldError(f"payments.{key}", f"expected whole minutes, got {value!r}"))
        return default
    return value
