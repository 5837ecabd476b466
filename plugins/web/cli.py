"""The web plugin's command: `openprepay qr SITE [--rooms …] --out sheet.html`."""

from __future__ import annotations

from pathlib import Path

import click

from openprepay.core.cli.common import load_checked_site, site_argument
from openprepay.core.errors import ConfigError, FieldError
from openprepay.core.events import utcnow

from .qr_sheet import pick_rooms, sheet_html
from .settings import parse_web, section, site_folder


@click.command("qr")
@site_argument
@click.option(
    "--rooms",
    metavar="ROOM,…",
    help="Only these rooms (comma-separated; default: every room of the site).",
)
@click.option("--out", "out_file", required=True, type=click.Path(dir_okay=False))
def qr_command(site_file: str, rooms: str | None, out_file: str) -> None:
    """Printable sheets of the rooms' signed tenant-page links: one A4 sheet per floor, a
    QR code per room. Needs [web] public_base_url and tenant_secret(_file)."""
    site = load_checked_site(site_file)
    errors: list[FieldError] = []
    raw = section(site)
    if raw is None:
        raise ConfigError(
            site_file, [FieldError("web", "no [web] section: the tenant page is off")]
        )
    settings = parse_web(raw, errors, site_folder(site))
    if settings is None:
        raise ConfigError(site_file, errors)
    if settings.tenant is None:
        raise ConfigError(
            site_file,
            [FieldError("web.tenant_secret_file", "no tenant secret: the tenant page is off")],
        )
    wanted = [r.strip() for r in rooms.split(",") if r.strip()] if rooms else None
    chosen = pick_rooms(site, wanted)
    html = sheet_html(site, settings.tenant, settings.public_base_url, chosen, utcnow())
    Path(out_file).write_text(html, encoding="utf-8")
    floors = len({(r.building, r.floor) for r in chosen})
    days = settings.tenant.link_days
    click.echo(
        f"wrote {out_file}: {len(chosen)} room(s) on {floors} sheet(s); links valid {days} days "
        f"(key version {settings.tenant.key_version})"
    )
