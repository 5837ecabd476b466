"""Hooks of the web plugin: `[web]` validated, the web service started when configured."""

from __future__ import annotations

from typing import Any

from openprepay.core.contracts import Service
from openprepay.core.errors import FieldError
from openprepay.core.hookspecs import hookimpl

from .server import WebService
from .settings import parse_web, section, site_folder


@hookimpl
def openprepay_validate_site(site: Any) -> list[FieldError]:
    errors: list[FieldError] = []
    raw = section(site)
    if raw is not None or "web" in site.sections:
        parse_web(site.sections.get("web"), errors, site_folder(site))
    return errors


@hookimpl
def openprepay_services(runtime: Any) -> list[Service]:
    raw = section(runtime.site)
    if raw is None:
        return []
    settings = parse_web(raw, [], site_folder(runtime.site))
    if settings is None:
        return []  # refused by openprepay_validate_site before the runtime starts
    return [WebService(runtime, settings, stats_interval_s=runtime.site.poll.stats_interval_s)]
