"""`openprepay payer list|revoke`: the payers (WeChat openids) the tenant page bound to
rooms, and revoking one (its sessions end at their next request)."""

from __future__ import annotations

import click

from . import CliContext
from .common import site_argument
from .database import operator
from .prepay import site_operations


@click.group("payer")
def payer_group() -> None:
    """Payer bindings of the tenant page (WeChat openid → room): list, revoke."""


@payer_group.command("list")
@site_argument
@click.option("--room", metavar="ROOM", help="Only this room's bindings.")
@click.option("--all", "include_revoked", is_flag=True, help="Also the revoked ones.")
@click.pass_obj
def payer_list(obj: CliContext, site_file: str, room: str | None, include_revoked: bool) -> None:
    """Bindings by room: number, room, channel, payer, bound and last seen (site time),
    revoked."""
    with site_operations(site_file, obj) as ops:
        tz = ops.site.info.tz
        found = ops.payer_bindings(room=room, include_revoked=include_revoked)
    click.echo(
        f"{'#':>5}  {'ROOM':<12} {'CHANNEL':<8} {'PAYER':<30} {'BOUND':<16} {'SEEN':<16} REVOKED"
    )
    for b in found:
        revoked = "-"
        if b.revoked_at is not None:
            revoked = f"{b.revoked_at.astimezone(tz):%Y-%m-%d %H:%M} by {b.revoked_by}"
        click.echo(
            f"{b.id:>5}  {b.room:<12} {b.channel:<8} {b.payer_id:<30} "
            f"{b.created_at.astimezone(tz):%Y-%m-%d %H:%M} "
            f"{b.last_seen_at.astimezone(tz):%Y-%m-%d %H:%M} {revoked}"
        )
    click.echo(f"{len(found)} binding(s)")


@payer_group.command("revoke")
@site_argument
@click.argument("binding_id", metavar="NUMBER", type=int)
@click.pass_obj
def payer_revoke(obj: CliContext, site_file: str, binding_id: int) -> None:
    """Revoke binding NUMBER (see `payer list`): that payer no longer sees the room
    without its signed link."""
    with site_operations(site_file, obj) as ops:
        b = ops.revoke_payer(binding_id, actor=operator())
    click.echo(f"revoked binding #{b.id}: {b.channel} payer {b.payer_id} of room {b.room}")


def register(cli: click.Group) -> None:
    cli.add_command(payer_group)
