"""Hooks of the Alipay plugin: validate `[payments.alipay]`, and offer the provider when a
site configures it."""

from __future__ import annotations

from typing import Any

from openprepay.core.contracts import PaymentProvider
from openprepay.core.errors import FieldError
from openprepay.core.hookspecs import hookimpl

from .provider import AlipayProvider
from .settings import alipay_table, parse_alipay


def _folder(site: Any) -> Any:
    path = getattr(site, "path", None)
    return path.parent if path is not None else None


@hookimpl
def openprepay_validate_site(site: Any) -> list[FieldError]:
    data = alipay_table(site)
    errors: list[FieldError] = []
    if data is not None:
        parse_alipay(data, errors, _folder(site))
    return errors


@hookimpl
def openprepay_payment_providers(site: Any) -> list[PaymentProvider]:
    data = alipay_table(site)
    if data is None:
        return []
    settings = parse_alipay(data, [], _folder(site))
    # A section with errors offers nothing (the runtime validated it before starting).
    return [] if settings is None else [AlipayProvider(settings)]
