"""Commands for supply: `meter trip|close|protect|unprotect`, and the `Operations` every
money and supply command of the CLI goes through (the same path as OPC UA's methods).

Each command is one transaction against the site's database; a running service executes
the command it queued within its queue poll (≤ 0.5 s). The command id is printed so it can
be followed with `openprepay account show`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click

from ..operations import Operations
from . import CliContext
from .common import load_checked_site, site_argument
from .database import operator, site_database


@contextmanager
def site_operations(site_file: str, obj: CliContext) -> Iterator[Operations]:
    """The site's `Operations` on its database (closed when the block ends)."""
    site = load_checked_site(site_file)
    db = site_database(site_file)
    try:
        yield Operations(site, db, models=obj.plugins.models)
    finally:
        db.dispose()


@click.group("meter")
def meter_group() -> None:
    """Switch supply: trip or close a relay or valve, protect (保电) a meter's account."""


def _reason_option(f: click.decorators.FC) -> click.decorators.FC:
    return click.option("--reason", required=True, help="Why (recorded with the command: audit).")(
        f
    )


@meter_group.command("trip")
@site_argument
@click.argument("meter", metavar="METER")
@_reason_option
@click.option(
    "--through-policy",
    is_flag=True,
    help="Apply the whole disconnect policy (quiet hours, notice...) instead of an "
    "operator's override; protected supply is never tripped either way.",
)
@click.pass_obj
def meter_trip(
    obj: CliContext, site_file: str, meter: str, reason: str, through_policy: bool
) -> None:
    """Cut METER's supply (relay trip or valve close); METER may also be an account id."""
    with site_operations(site_file, obj) as ops:
        queued = ops.disconnect(meter, reason, actor=operator(), override=not through_policy)
    for c in queued:
        when = (
            ""
            if c.next_attempt_at <= c.created_at
            else f" (not before {c.next_attempt_at:%Y-%m-%d %H:%M} UTC)"
        )
        click.echo(f"command {c.id}: {c.kind} {c.meter_id} queued{when}: {c.reason}")


@meter_group.command("close")
@site_argument
@click.argument("meter", metavar="METER")
@_reason_option
@click.pass_obj
def meter_close(obj: CliContext, site_file: str, meter: str, reason: str) -> None:
    """Restore METER's supply (relay close or valve open); METER may also be an account id."""
    with site_operations(site_file, obj) as ops:
        queued = ops.reconnect(meter, reason, actor=operator())
    for c in queued:
        click.echo(f"command {c.id}: {c.kind} {c.meter_id} queued: {c.reason}")


def _protect(obj: CliContext, site_file: str, meter: str, reason: str, on: bool) -> None:
    with site_operations(site_file, obj) as ops:
        with ops.db.read() as conn:
            from ..accounts import account_for_meter, find_account

            account_id = account_for_meter(conn, meter)
            if account_id is None and find_account(conn, meter) is not None:
                account_id = meter
        if account_id is None:
            from ..ledger import RequestError

            raise RequestError("meter", f"{meter!r} is neither an account's meter nor an account")
        account = ops.protect(account_id, on, actor=f"{operator()} ({reason})"[:100])
        with ops.db.read() as conn:
            from .. import commands as cmds

            restored = [
                c
                for c in cmds.list_commands(conn, account_id=account_id, limit=10)
                if c.state == "PENDING" and "保电" in c.reason
            ]
    click.echo(
        f"account {account.id}: protected supply (保电) {'on' if account.protected else 'off'}"
    )
    for c in restored:
        click.echo(f"command {c.id}: {c.kind} {c.meter_id} queued: {c.reason}")


@meter_group.command("protect")
@site_argument
@click.argument("meter", metavar="METER")
@_reason_option
@click.pass_obj
def meter_protect(obj: CliContext, site_file: str, meter: str, reason: str) -> None:
    """保电: never cut the supply of METER's account (meters it cut are closed again)."""
    _protect(obj, site_file, meter, reason, True)


@meter_group.command("unprotect")
@site_argument
@click.argument("meter", metavar="METER")
@_reason_option
@click.pass_obj
def meter_unprotect(obj: CliContext, site_file: str, meter: str, reason: str) -> None:
    """Cancel 保电 of METER's account (nothing switches now; arrears may trip it later)."""
    _protect(obj, site_file, meter, reason, False)


def register(cli: click.Group) -> None:
    cli.add_command(meter_group)
