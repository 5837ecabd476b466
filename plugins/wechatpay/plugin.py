"""Hooks of the WeChat Pay plugin: the `[payments.wechat]` section, checked, and the
provider it configures. A site without that section gets no provider and no error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from openprepay.core.contracts import PaymentProvider
from openprepay.core.errors import FieldError
from openprepay.core.hookspecs import hookimpl

from .provider import WechatPayProvider
from .settings import WechatSettings, parse_wechat, site_table


def _base(site: Any) -> Path:
    """Key files named relative to the site file's folder, as the database path is."""
    path = getattr(site, "path", None)
    return Path(path).resolve().parent if path is not None else Path.cwd()


def read_settings(site: Any, errors: list[FieldError]) -> WechatSettings | None:
    table = site_table(site)
    if table is None:
        return None
    return parse_wechat(table, _base(site), errors)


@hookimpl
def openprepay_validate_site(site: Any) -> list[FieldError]:
    errors: list[FieldError] = []
    read_settings(site, errors)
    return errors


@hookimpl
def openprepay_payment_providers(site: Any) -> list[PaymentProvider]:
    errors: list[FieldError] = []
    settings = read_settings(site, errors)
    # A section with errors was reported by openprepay_validate_site, which runs first.
    return [] if settings is None else [WechatPayProvider(settings)]
