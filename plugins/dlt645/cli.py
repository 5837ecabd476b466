"""`openprepay dlt645 address|sync-time`: the two DL/T 645 operations that address a whole
bus rather than one configured meter.

Both open the link themselves: run them while `openprepay run` is not polling that link
(commissioning, or a maintenance window), since a bus carries one transaction at a time.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from zoneinfo import ZoneInfo

import click

from openprepay.core.cli.common import load_checked_site, run_async, site_argument
from openprepay.core.config.site import LinkConfig, LinkProtocol, Site
from openprepay.core.errors import ConfigError, DeviceIOError, FieldError, GarbledResponse
from openprepay.core.events import utcnow
from openprepay.plugins.framed import FramedTransport

from .codec import (
    FRAMING,
    Frame,
    FrameError,
    check_answer,
    decode,
    read_address_request,
    time_sync_request,
)


def _link(site: Site, link_id: str) -> LinkConfig:
    link = site.links.get(link_id)
    if link is None or link.protocol is not LinkProtocol.DLT645:
        ours = ", ".join(i for i, k in site.links.items() if k.protocol is LinkProtocol.DLT645)
        raise ConfigError(
            str(site.path or "site"),
            [
                FieldError(
                    "--link", f"{link_id!r} is not a dlt645 link (dlt645 links: {ours or 'none'})"
                )
            ],
        )
    return link


async def read_address(link: LinkConfig) -> str:
    """The address of the one meter on `link` (wildcard read, C = 13)."""
    transport = FramedTransport(link, FRAMING)
    await transport.connect()
    try:
        request = read_address_request()
        raw = await transport.transact(request.encode(), "the meter on the bus")
        assert raw is not None
        try:
            answer: Frame = check_answer(decode(raw), request)
        except FrameError as exc:
            raise GarbledResponse(
                f"answer to read address: {exc} (several meters on the bus?)"
            ) from exc
        return answer.address
    finally:
        await transport.close()


async def sync_time(link: LinkConfig, local: datetime) -> None:
    """Broadcast `local` (the meters' local time) on `link` (C = 08, no answer)."""
    transport = FramedTransport(link, FRAMING)
    await transport.connect()
    try:
        await transport.transact(time_sync_request(local).encode(), "broadcast", reply=False)
    finally:
        await transport.close()


@click.group("dlt645")
def dlt645_group() -> None:
    """DL/T 645-2007 bus operations (read address, broadcast time sync)."""


@dlt645_group.command("address")
@site_argument
@click.option("--link", "link_id", required=True, help="The dlt645 link (one meter on it).")
def address_command(site_file: str, link_id: str) -> None:
    """Read the address of the only meter on a link (commissioning: one meter at a time)."""
    link = _link(load_checked_site(site_file), link_id)

    async def main(stop: asyncio.Event) -> str:
        return await read_address(link)

    try:
        click.echo(run_async(main))
    except DeviceIOError as exc:
        raise click.ClickException(str(exc)) from exc


@dlt645_group.command("sync-time")
@site_argument
@click.option("--link", "link_id", required=True, help="The dlt645 link to broadcast on.")
def sync_time_command(site_file: str, link_id: str) -> None:
    """Broadcast the site's local time to every meter on a link (DL/T 645 limits a meter to
    one broadcast correction a day of at most 5 minutes)."""
    site = load_checked_site(site_file)
    link = _link(site, link_id)
    local = utcnow().astimezone(ZoneInfo(site.info.timezone)).replace(tzinfo=None)

    async def main(stop: asyncio.Event) -> None:
        await sync_time(link, local)

    try:
        run_async(main)
    except DeviceIOError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"broadcast time {local:%Y-%m-%d %H:%M:%S} on link {link.id}")
