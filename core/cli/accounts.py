"""Commands for accounts and money: `account open|list|show|close|import`, `topup`, `refund`.

Amounts are yuan with at most two decimals (`12.50`); the ledger keeps integer fen. Every
command is one database transaction: it either happens completely or not at all, and a
running service sees it on its next poll of the database.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from .. import ledger
from ..errors import OpenPrepayError
from ..ledger import format_fen, parse_yuan
from ..operations import AccountSnapshot, MeterSnapshot, NewAccount, Operations
from ..prepay import accounts as acc
from ..prepay import commands as cmds
from ..prepay.account_import import ImportReport
from . import EXIT_FAILED, CliContext
from .common import progress_bar, site_argument
from .database import operator
from .params import Count
from .prepay import site_operations

#: Files with more data rows than this get a progress bar on import.
PROGRESS_FROM_ROWS = 200


def _amount(text: str, name: str = "amount") -> int:
    """A top-up or refund amount: more than 0.00, at most the meter capacity."""
    return parse_yuan(text, name, low_fen=1)


def _optional_fen(text: str | None, name: str) -> int | None:
    """A threshold: 0.00 up to the meter capacity (None: the site's default)."""
    return None if text is None else parse_yuan(text, name, low_fen=0)


#: How `account open` names the fields the door may refuse.
OPEN_LABELS = {
    "name": "--name",
    "room": "--room",
    "meters": "--meter",
    "tariff": "--tariff",
    "preregister": "--preregister",
}


@click.group("account")
def account_group() -> None:
    """Prepaid accounts: open, list, show, close, import from CSV."""


@account_group.command("open")
@site_argument
@click.argument("account_id", metavar="ACCOUNT")
@click.option("--name", help="Tenant or account name (required for a new account).")
@click.option("--room", help="Room id from the site file.")
@click.option(
    "--meter",
    "meters",
    multiple=True,
    metavar="METER[:MODE]",
    help="Site device id, optionally with a control mode override "
    "(E-A-101, W-A-101:LOCAL). Repeat for several meters.",
)
@click.option("--tariff", help="Tariff id from the site file's [tariffs].")
@click.option(
    "--alarm1",
    metavar="YUAN",
    help="Alarm level 1 (default 20.00; defaults come from [prepay.thresholds]).",
)
@click.option("--alarm2", metavar="YUAN", help="Alarm level 2 / pre-trip (default 5.00).")
@click.option("--overdraft-limit", metavar="YUAN", help="Overdraft allowed (default 0.00).")
@click.option("--close-limit", metavar="YUAN", help="Balance above which closing is allowed.")
@click.option("--hoard-limit", metavar="YUAN", help="Top-up ceiling; 0 = none (default 5000.00).")
@click.option("--protected", is_flag=True, help="保电: never cut this account's supply.")
@click.option("--notify", multiple=True, metavar="CHANNEL:TO", help="e.g. email:a@example.com")
@click.option("--preregister", is_flag=True, help="Create it pre-registered; open it later.")
@click.pass_obj
def account_open(
    obj: CliContext,
    site_file: str,
    account_id: str,
    name: str | None,
    room: str | None,
    meters: tuple[str, ...],
    tariff: str | None,
    alarm1: str | None,
    alarm2: str | None,
    overdraft_limit: str | None,
    close_limit: str | None,
    hoard_limit: str | None,
    protected: bool,
    notify: tuple[str, ...],
    preregister: bool,
) -> None:
    """Open ACCOUNT: create it with its wallets and meters, or open a pre-registered one.

    For a pre-registered ACCOUNT no other option is needed: `account open SITE A-101`.
    """
    request = NewAccount(
        account_id,
        name,
        room,
        meters,
        tariff,
        _optional_fen(alarm1, "--alarm1"),
        _optional_fen(alarm2, "--alarm2"),
        _optional_fen(overdraft_limit, "--overdraft-limit"),
        _optional_fen(close_limit, "--close-limit"),
        _optional_fen(hoard_limit, "--hoard-limit"),
        protected,
        tuple(notify),
        preregister,
    )
    with site_operations(site_file, obj) as ops:
        opened = ops.open_account(request, actor=operator(), labels=OPEN_LABELS)
    click.echo(f"account {opened.account.id} {opened.verb}: {_summary(opened.account)}")


def _summary(a: acc.Account) -> str:
    meters = ", ".join(f"{m.meter_id} ({m.kind}, {m.control_mode})" for m in a.meters) or "none"
    return (
        f"{a.name}, room {a.room or '-'}, state {a.state}, meters {meters}, "
        f"energy {format_fen(a.energy_fen)}, general {format_fen(a.general_fen)}"
    )


@account_group.command("list")
@site_argument
@click.option(
    "--state",
    type=click.Choice([s.value for s in acc.AccountState], case_sensitive=False),
    help="Only accounts in this state.",
)
@click.option("--room", help="Only accounts of this room.")
@click.pass_obj
def account_list(obj: CliContext, site_file: str, state: str | None, room: str | None) -> None:
    """List accounts: state, fee state, supply (decided/read), balances and what is owed.

    SUPPLY shows what the platform decided and what the meters read: on/on, cut/off;
    "!" marks a meter that disobeys (re-asserted), "?" a meter not read yet. ALARM
    counts unbilled meters and FAILED deliveries nobody dealt with."""
    with site_operations(site_file, obj) as ops:
        rows = [
            a
            for a in ops.list_accounts()
            if (state is None or a.state == state.upper()) and (room is None or a.room == room)
        ]
    click.echo(
        f"{'ACCOUNT':<16} {'STATE':<13} {'ROOM':<10} {'FEE':<9} {'SUPPLY':<9} {'ENERGY':>12} "
        f"{'GENERAL':>12} {'OWED':>12}  {'P':<1}  ALARM  METERS  NAME"
    )
    for a in rows:
        meters = ",".join(m.meter_id for m in a.meters) or "-"
        alarms = len(a.billing_problems) + len(a.failed_commands)
        click.echo(
            f"{a.account_id:<16} {a.state:<13} {a.room or '-':<10} {a.fee_state.value:<9} "
            f"{_supply(a):<9} {format_fen(a.balance_fen):>12} {format_fen(a.general_fen):>12} "
            f"{format_fen(a.owed_fen):>12}  {'P' if a.protected else '-'}  "
            f"{alarms or '-':<5}  {meters}  {a.name}"
        )
    click.echo(f"{len(rows)} account(s)")


def _supply(a: AccountSnapshot) -> str:
    """decided/read for the account: cut/off, on/on, cut/on! (disobeying), on/? (unread)."""
    if not a.meters:
        return "-"
    decided = "on" if a.desired_supply_on else "cut"
    if any(m.supply_on is False for m in a.meters):
        read = "off"
    elif any(m.supply_on is None for m in a.meters):
        read = "?"
    else:
        read = "on"
    return f"{decided}/{read}" + ("!" if any(m.mismatch_active for m in a.meters) else "")


def _meter_supply(m: MeterSnapshot) -> str:
    decided = {True: "on", False: "cut", None: "never switched"}[m.desired_on]
    read = {True: "on", False: "off", None: "not read yet"}[m.supply_on]
    text = f"supply decided {decided}, reads {read}"
    if m.mismatch_count:
        text += f" (re-asserted {m.mismatch_count}x" + (
            ", disobeying now)" if m.mismatch_active else ")"
        )
    return text


@account_group.command("show")
@site_argument
@click.argument("account_id", metavar="ACCOUNT")
@click.option(
    "--entries", default=10, show_default=True, type=Count(0, 1000), help="Latest entries shown."
)
@click.pass_obj
def account_show(obj: CliContext, site_file: str, account_id: str, entries: int) -> None:
    """Show one account: settings, fee state, meters with their supply (decided and read)
    and billing, balances and what is owed, open alarms, latest entries and commands."""
    with site_operations(site_file, obj) as ops:
        with ops.db.read() as conn:
            a = acc.get_account(conn, account_id)
            b = ledger.balances(conn, account_id)
            history = ledger.wallet_history(conn, account_id, entries)
            commands = cmds.list_commands(conn, account_id=account_id, limit=entries)
            refundable = ledger.refundable(conn, account_id) if a.state == "OPEN" else 0
        snap = ops.account_snapshot(account_id)
    th = a.thresholds
    tz = ops.site.info.tz
    click.echo(f"account   {a.id} — {a.name}")
    click.echo(f"state     {a.state} (created {a.created_at.astimezone(tz):%Y-%m-%d %H:%M})")
    click.echo(
        f"room      {a.room or '-'}    tariff {a.tariff_id or '-'}    "
        f"protected {'yes (保电)' if a.protected else 'no'}"
    )
    click.echo(
        f"balances  energy {format_fen(b.energy_fen)}  general {format_fen(b.general_fen)}"
        + (
            f"  (emergency credit {format_fen(b.emergency_outstanding_fen)} outstanding)"
            if b.emergency_outstanding_fen
            else ""
        )
        + f"  refundable {format_fen(refundable)}"
    )
    click.echo(
        f"limits    alarm1 {format_fen(th.alarm1_fen)}  alarm2 {format_fen(th.alarm2_fen)}  "
        f"overdraft {format_fen(th.overdraft_limit_fen)}  close {format_fen(th.close_limit_fen)}  "
        f"hoard {format_fen(th.hoard_limit_fen) if th.hoard_limit_fen else 'none'}"
    )
    click.echo(
        f"owed      {format_fen(snap.owed_fen)}  (energy arrears "
        f"{format_fen(max(0, snap.emergency_outstanding_fen - snap.balance_fen))}, general "
        f"{format_fen(max(0, -snap.general_fen))}, bills and charges "
        f"{format_fen(max(0, snap.receivable_fen))})"
    )
    click.echo(
        f"fee state {snap.fee_state.value} (alarm level {snap.alarm_level})    supply "
        f"{_supply(snap)} (decided/read)"
    )
    click.echo(f"notify    {', '.join(a.notify) or '-'}")
    for m in snap.meters:
        line = f"meter     {m.meter_id}  {m.kind}  {m.control_mode}  {_meter_supply(m)}"
        line += f"; purchases {m.buy_count} (confirmed {m.confirmed_buy_count})"
        if m.control_mode == "LOCAL":
            line += (
                "; the meter's count to be read and aligned"
                if m.align_pending
                else f"; meter count {m.meter_buy_count}"
            )
        click.echo(line)
        if m.billing_problem:
            click.echo(f"  ALARM   {m.meter_id} is not billed: {m.billing_problem}")
    for command_id in snap.failed_commands:
        click.echo(
            f"  ALARM   command {command_id} FAILED, money not delivered: "
            f"`openprepay command retry {site_file} {command_id} --reason ...` or "
            f"`openprepay command refund {site_file} {command_id} --reason ...`"
        )
    click.echo(f"times     site time ({tz.key})")
    if history:
        click.echo("entries:")
        for h in history:
            click.echo(
                f"  {h['at'].astimezone(tz):%Y-%m-%d %H:%M:%S}  #{h['journal']:<7} {h['kind']:<17} "
                f"{h['wallet']:<8} {format_fen(h['amount_fen']):>12}  {h['key']}"
            )
    if commands:
        click.echo("meter commands:")
        for c in commands:
            click.echo(
                f"  #{c.id:<6} {c.meter_id:<12} {c.kind:<12} {c.state:<10} "
                f"attempts {c.attempts}  {c.reason} (by {c.requested_by})"
            )


@account_group.command("close")
@site_argument
@click.argument("account_id", metavar="ACCOUNT")
@click.pass_obj
def account_close(obj: CliContext, site_file: str, account_id: str) -> None:
    """Close ACCOUNT (its wallets must be at 0.00: refund first); frees its meters."""
    with site_operations(site_file, obj) as ops:
        a = ops.close_account(account_id, actor=operator())
    click.echo(
        f"account {a.id} closed; meters freed: {', '.join(m.meter_id for m in a.meters) or 'none'}"
    )


@account_group.command("import")
@site_argument
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--all-or-nothing",
    is_flag=True,
    hidden=True,
    help="Accepted for older scripts: a file with a bad row never writes anything now.",
)
@click.option("--dry-run", is_flag=True, help="Check every row and report; write nothing.")
@click.pass_obj
def account_import(
    obj: CliContext, site_file: str, csv_file: Path, all_or_nothing: bool, dry_run: bool
) -> None:
    """Open accounts in bulk from CSV_FILE, all of them or none.

    Columns: id, name, room, meters, tariff, alarm1, alarm2, overdraft_limit, close_limit,
    hoard_limit, protected, notify, state, opening_balance (only id and name required).
    Every bad cell of every row is listed (line: column: why, and what the cell holds) and
    then nothing is written: correct the file and import it again (accounts that exist
    with the same settings count as unchanged). Exit status 1 if any row is bad.
    """
    try:
        text = csv_file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise OpenPrepayError(f"{csv_file}: cannot read as UTF-8 text: {exc}") from None
    rows = max(0, text.count("\n") - 1 + (0 if text.endswith("\n") else 1))
    with site_operations(site_file, obj) as ops:
        report = _run_import(ops, text, rows, dry_run)
    for p in report.problems:
        click.echo(f"{csv_file}:{p}", err=True)
    if report.rolled_back or dry_run:
        written = "nothing written" + (" (dry run)" if dry_run else "")
    else:
        written = f"{len(report.created)} created"
    bad_rows = len({p.line for p in report.problems})
    click.echo(
        f"{report.rows} row(s): {written}, {len(report.unchanged)} unchanged, "
        f"{bad_rows} bad"
        + (f" would create {len(report.created)}" if dry_run else "")
        + ("; correct the rows listed and import the file again" if report.problems else "")
    )
    if report.problems:
        raise SystemExit(EXIT_FAILED)


def _run_import(ops: Operations, text: str, rows: int, dry_run: bool) -> ImportReport:
    """The import through the door, all rows or none; a big file gets a progress bar
    (checking, creating)."""

    def run(progress: Callable[[str, int], None] | None) -> ImportReport:
        return ops.import_accounts(
            text,
            actor=operator(),
            all_or_nothing=True,
            dry_run=dry_run,
            progress=progress,
        )

    if rows < PROGRESS_FROM_ROWS:
        return run(None)
    with progress_bar("checking", rows) as update:
        return run(
            lambda phase, done: update(
                done, description="checking" if phase == "checked" else "creating"
            )
        )


@click.command("topup", context_settings={"ignore_unknown_options": True})
@site_argument
@click.argument("account_id", metavar="ACCOUNT")
@click.argument("amount", metavar="AMOUNT")
@click.option(
    "--ref",
    "reference",
    required=True,
    help="Unique payment reference (receipt or payment id); replays are no-ops.",
)
@click.option(
    "--channel",
    default="cash",
    show_default=True,
    help="Where the money came in: cash, wechat, alipay, bank...",
)
@click.option("--meter", help="LOCAL meter to recharge when the account has several.")
@click.pass_obj
def topup_command(
    obj: CliContext,
    site_file: str,
    account_id: str,
    amount: str,
    reference: str,
    channel: str,
    meter: str | None,
) -> None:
    """Credit AMOUNT yuan (e.g. 100.00) to ACCOUNT's energy wallet."""
    fen = _amount(amount)
    with site_operations(site_file, obj) as ops:
        r = ops.topup(account_id, fen, reference, channel=channel, meter_id=meter, actor=operator())
        replayed_state = (
            ops.command(r.command_id).state if r.replayed and r.command_id is not None else None
        )
    line = (
        f"top-up {r.reference}: {format_fen(r.amount_fen)} to {r.account_id} via {r.channel}"
        + (" (already recorded; nothing changed)" if r.replayed else "")
        + f"; energy balance {format_fen(r.balance_fen)}"
    )
    if r.emergency_repaid_fen:
        line += f" (emergency credit repaid {format_fen(r.emergency_repaid_fen)})"
    if r.command_id is not None:
        # A replay reports the delivery as it stands, not as queued again.
        state = _replayed_delivery(replayed_state) or "queued"
        line += f"; RECHARGE #{r.command_id} {state} for {r.meter_id} (purchase {r.buy_count})"
    click.echo(line)


@click.command("refund", context_settings={"ignore_unknown_options": True})
@site_argument
@click.argument("account_id", metavar="ACCOUNT")
@click.argument("amount", metavar="AMOUNT")
@click.option(
    "--ref", "reference", required=True, help="Unique refund number; the same number refunds once."
)
@click.option(
    "--pending",
    is_flag=True,
    help="Leave it REQUESTED for the payment channel to pay out (default: paid now).",
)
@click.option("--meter", help="LOCAL meter to debit when the account has several.")
@click.pass_obj
def refund_command(
    obj: CliContext,
    site_file: str,
    account_id: str,
    amount: str,
    reference: str,
    pending: bool,
    meter: str | None,
) -> None:
    """Refund AMOUNT yuan from ACCOUNT's energy wallet (at most what is refundable).

    For a LOCAL meter the meter is debited first: the refund waits for the meter to
    confirm its REFUND command, then posts (and pays out, unless --pending)."""
    fen = _amount(amount)
    with site_operations(site_file, obj) as ops:
        r = ops.refund(
            account_id, fen, reference, settle=not pending, meter_id=meter, actor=operator()
        )
    via = ", ".join(
        f"{a.channel} {format_fen(a.amount_fen)} (top-up {a.topup_reference})"
        for a in r.allocations
    )
    click.echo(
        f"refund {r.reference}: {format_fen(r.amount_fen)} from {r.account_id}, {r.state}"
        + (" (already recorded; nothing changed)" if r.replayed else "")
        + f"; energy balance {format_fen(r.balance_fen)}; paid back via {via}"
        + (
            f"; waiting for meter {r.meter_id} to be debited (REFUND #{r.command_id}), "
            "posted when it confirms"
            if r.state == "AWAITING_METER"
            else ""
        )
    )


def _replayed_delivery(state: str | None) -> str | None:
    """How a replayed top-up's RECHARGE stands: "confirmed", "FAILED", "still on its way"."""
    if state is None:
        return None
    if state == cmds.CommandState.CONFIRMED:
        return "already confirmed"
    if state in (cmds.CommandState.FAILED, cmds.CommandState.SUPERSEDED):
        return f"{state} (see `openprepay account show`)"
    return "still on its way"


def register(cli: click.Group) -> None:
    cli.add_command(account_group)
    cli.add_command(topup_command)
    cli.add_command(refund_command)
