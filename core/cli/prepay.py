"""Commands for supply and meters: `meter trip|close|protect|unprotect|align|replace`,
`command show|retry|refund`, and the `Operations` every money and supply command of the
CLI goes through (the same path as OPC UA's methods).

Each command is one transaction against the site's database; a running service executes
the command it queued within its queue poll (≤ 0.5 s). The command id is printed so it can
be followed with `openprepay account show`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import click

from ..app.services import command_services
from ..ledger import RequestError, format_fen
from ..operations import Operations
from ..prepay import commands as cmds
from ..prepay.accounts import account_for_meter, find_account
from . import CliContext
from .common import load_checked_site, site_argument
from .database import operator, site_database


@contextmanager
def site_operations(site_file: str, obj: CliContext) -> Iterator[Operations]:
    """The site's `Operations` on its database (closed when the block ends)."""
    site = load_checked_site(site_file)
    db = site_database(site_file)
    try:
        yield command_services(site, obj.plugins.models, db).operations
    finally:
        db.dispose()


@click.group("meter")
def meter_group() -> None:
    """Switch supply (trip, close, protect 保电), align a LOCAL meter's purchase count,
    record a meter replacement."""


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
            account_id = account_for_meter(conn, meter)
            if account_id is None and find_account(conn, meter) is not None:
                account_id = meter
        if account_id is None:
            raise RequestError("meter", f"{meter!r} is neither an account's meter nor an account")
        account = ops.protect(account_id, on, actor=f"{operator()} ({reason})"[:100])
        with ops.db.read() as conn:
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


@meter_group.command("align")
@site_argument
@click.argument("meter", metavar="METER")
@_reason_option
@click.pass_obj
def meter_align(obj: CliContext, site_file: str, meter: str, reason: str) -> None:
    """Read METER's own purchase count and align the platform with it (LOCAL meters).

    The running service reads the meter ahead of its polls; RECHARGE and REFUND commands
    not yet sent wait for it and then carry the meter's count + 1. Audited."""
    with site_operations(site_file, obj) as ops:
        ops.align_meter(meter, reason, actor=operator())
    click.echo(
        f"meter {meter}: its purchase count will be read and aligned with by the running "
        "service (`openprepay account show` shows it once done)"
    )


@meter_group.command("replace")
@site_argument
@click.argument("meter", metavar="METER")
@click.option(
    "--final-reading",
    required=True,
    metavar="REGISTERS",
    help="The old device's last registers: total=…,T1=…,T2=…,T3=…,T4=… (kWh or m³); a "
    "bare number for a meter rated on its total alone.",
)
@click.option("--new-serial", required=True, help="Serial number of the new device.")
@click.option(
    "--initial-reading",
    required=True,
    metavar="REGISTERS",
    help="The new device's registers, as --final-reading; 0 for a brand-new device.",
)
@_reason_option
@click.pass_obj
def meter_replace(
    obj: CliContext,
    site_file: str,
    meter: str,
    final_reading: str,
    new_serial: str,
    initial_reading: str,
    reason: str,
) -> None:
    """Record that METER's device was swapped, now: the old one is billed up to its final
    reading, the new one from its initial reading (audited). A LOCAL meter's new purchase
    count is read and aligned with before the next delivery."""
    with site_operations(site_file, obj) as ops:
        r = ops.replace_meter(
            meter,
            final_reading=final_reading,
            new_serial=new_serial,
            initial_reading=initial_reading,
            reason=reason,
            actor=operator(),
        )
    click.echo(f"replacement {r.id}: {r.describe()}")


@click.group("command")
def command_group() -> None:
    """Meter commands: show one, retry or refund a FAILED one."""


@command_group.command("show")
@site_argument
@click.argument("command_id", metavar="COMMAND", type=int)
@click.pass_obj
def command_show(obj: CliContext, site_file: str, command_id: int) -> None:
    """Show COMMAND: kind, state, attempts, last error, read-back, resolution."""
    with site_operations(site_file, obj) as ops:
        c = ops.command(command_id)
    click.echo(f"command {c.id}: {c.kind} {c.meter_id} {c.state}, attempts {c.attempts}")
    click.echo(f"  reason        {c.reason} (by {c.requested_by})")
    if c.params:
        click.echo(f"  parameters    {dict(c.params)}")
    if c.last_error:
        click.echo(f"  last error    {c.last_error}")
    if c.readback:
        click.echo(f"  read back     {dict(c.readback)}")
    if c.retry_of:
        click.echo(f"  retries       #{c.retry_of}")
    if c.resolution:
        click.echo(f"  resolution    {c.resolution} (by {c.resolved_by})")


@command_group.command("retry")
@site_argument
@click.argument("command_ids", metavar="COMMAND...", type=int, nargs=-1, required=True)
@_reason_option
@click.pass_obj
def command_retry(
    obj: CliContext, site_file: str, command_ids: tuple[int, ...], reason: str
) -> None:
    """Send FAILED commands again, oldest first, each with its own parameters: a RECHARGE
    keeps its purchase count, so if the meter took it and only the reply was lost it is
    confirmed, never credited twice."""
    with site_operations(site_file, obj) as ops:
        for command_id in sorted(set(command_ids)):
            c = ops.retry_command(command_id, reason, actor=operator())
            click.echo(f"command {c.id}: {c.kind} {c.meter_id} queued (retry of #{c.retry_of})")


@command_group.command("refund")
@site_argument
@click.argument("command_id", metavar="COMMAND", type=int)
@_reason_option
@click.pass_obj
def command_refund(obj: CliContext, site_file: str, command_id: int, reason: str) -> None:
    """Give back the money of a FAILED RECHARGE that never reached its meter: its top-up is
    reversed (refunded through the top-up's channel) and the meter's purchase count is
    read and aligned again."""
    with site_operations(site_file, obj) as ops:
        posted = ops.refund_failed_command(command_id, reason, actor=operator())
    amount = sum(p.amount_fen for p in posted.journal.postings if p.amount_fen > 0)
    click.echo(
        f"RECHARGE #{command_id} refunded: {format_fen(amount)} back to the payer, top-up "
        f"journal {posted.journal.reverses_id} reversed by journal {posted.journal.id}"
    )


def register(cli: click.Group) -> None:
    cli.add_command(meter_group)
    cli.add_command(command_group)
