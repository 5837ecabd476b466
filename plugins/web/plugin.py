"""Hooks of the web plugin: `[web]` validated, the web service started when configured."""

from __future__ import annotations

from typing import Any

import click

from openprepay.core.contracts import Service
from openprepay.core.errors import FieldError
from openprepay.core.events import utcnow
from openprepay.core.hookspecs import hookimpl

from .qr_sheet import qr_data_uri, room_url
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


@hookimpl
def openprepay_room_payment_qr(site: Any, room: str) -> str | None:
    """The room's signed tenant-page link as a QR image, when the page is configured."""
    raw = section(site)
    if raw is None or room not in site.rooms:
        return None
    settings = parse_web(raw, [], site_folder(site))
    if settings is None or settings.tenant is None or not settings.public_base_url:
        return None
    return qr_data_uri(room_url(settings.tenant, settings.public_base_url, site.id, room, utcnow()))


@hookimpl
def openprepay_cli_commands(cli: click.Group) -> None:
    from .cli import qr_command

    cli.add_command(qr_command)
