"""`openprepay cjt188 address`: read the address of the only meter on a CJ/T 188 link.

It opens the link itself: run it while `openprepay run` is not polling that link
(commissioning, or a maintenance window), since a bus carries one transaction at a time.
"""

from __future__ import annotations

import asyncio

import click

from openprepay.core.cli.common import load_checked_site, run_async, site_argument
from openprepay.core.config.site import LinkConfig, LinkProtocol, Site
from openprepay.core.errors import ConfigError, DeviceIOError, FieldError
from openprepay.plugins.framed import FramedTransport

from . import codec
from .driver import read_address
from .framing import FRAMING


def _link(site: Site, link_id: str) -> LinkConfig:
    link = site.links.get(link_id)
    if link is None or link.protocol is not LinkProtocol.CJT188:
        ours = ", ".join(i for i, k in site.links.items() if k.protocol is LinkProtocol.CJT188)
        raise ConfigError(
            str(site.path or "site"),
            [
                FieldError(
                    "--link", f"{link_id!r} is not a cjt188 link (cjt188 links: {ours or 'none'})"
                )
            ],
        )
    return link


async def bus_address(link: LinkConfig, meter_type: int, di_high_first: bool) -> str:
    transport = FramedTransport(link, FRAMING)
    await transport.connect()
    try:
        return await read_address(transport, meter_type, di_high_first)
    finally:
        await transport.close()


@click.group("cjt188")
def cjt188_group() -> None:
    """CJ/T 188-2004 bus operations (read address)."""


@cjt188_group.command("address")
@site_argument
@click.option("--link", "link_id", required=True, help="The cjt188 link (one meter on it).")
@click.option(
    "--meter-type",
    type=click.Choice([t.name.lower() for t in codec.MeterType]),
    default="cold_water",
    show_default=True,
    help="T of the request.",
)
@click.option("--di-high-first", is_flag=True, help="Send DI 810A as 81 0A (many meters).")
def address_command(site_file: str, link_id: str, meter_type: str, di_high_first: bool) -> None:
    """Read the address of the only meter on a link (commissioning: one meter at a time)."""
    link = _link(load_checked_site(site_file), link_id)
    t = codec.MeterType[meter_type.upper()]

    async def main(stop: asyncio.Event) -> str:
        return await bus_address(link, t, di_high_first)

    try:
        click.echo(run_async(main))
    except DeviceIOError as exc:
        raise click.ClickException(f"{exc} (several meters on the bus?)") from exc
