"""`openprepay bill ...`: post-paid bills — draft, list, show, confirm, issue, pay,
apply-credit, void, arrears, export (CSV, XLSX, one printable HTML page per bill)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from ...billing.documents import PaymentQr, arrears_table, export_arrears, export_bills
from ...billing.export import Table
from ...billing.periods import parse_period
from ...events import utcnow
from ...ledger import format_fen, parse_yuan
from ...prepay.accounts import find_account
from .. import CliContext
from ..common import site_argument
from ..database import operator
from .common import echo_table, formats, override_option, parse_day
from .services import billing_services


@click.group("bill")
def bill_group() -> None:
    """Post-paid bills: draft → review → confirm → issue; payments, arrears, export."""


def _bill_table(bills: Sequence[Any], title: str) -> Table:
    table = Table(title, ["bill", "account", "period", "state", "total", "paid", "due", "problems"])
    for b in bills:
        table.rows.append(
            [
                b.number,
                b.account_id,
                b.period,
                b.state,
                format_fen(b.total_fen),
                format_fen(b.paid_fen),
                b.due_date or "",
                "; ".join(b.problems),
            ]
        )
    return table


@bill_group.command("draft")
@site_argument
@click.option("--period", required=True)
@click.option("--account", "accounts", multiple=True)
@override_option
@click.pass_obj
def bill_draft(
    obj: CliContext, site_file: str, period: str, accounts: tuple[str, ...], override: str | None
) -> None:
    """Compute the drafts of PERIOD (again and again until they are confirmed). Refused
    before PERIOD's freeze instant and while a post-paid meter has no recent reading at it,
    unless --override says why."""
    with billing_services(site_file, obj) as c:
        drafts = c.operations.draft_bills(
            period, accounts=list(accounts) or None, actor=operator(), override=override
        )
    echo_table(_bill_table(drafts, f"Drafts {period}"))


@bill_group.command("list")
@site_argument
@click.option("--period")
@click.option("--state", type=click.Choice(["DRAFT", "CONFIRMED", "ISSUED", "PAID", "VOID"]))
@click.option("--account")
@click.pass_obj
def bill_list(
    obj: CliContext, site_file: str, period: str | None, state: str | None, account: str | None
) -> None:
    with billing_services(site_file, obj) as c, c.db.read() as conn:
        bills = c.billing.bills.list(conn, period=period, state=state, account_id=account)
    echo_table(_bill_table(bills, "Bills"))


@bill_group.command("show")
@site_argument
@click.argument("number")
@click.pass_obj
def bill_show(obj: CliContext, site_file: str, number: str) -> None:
    with billing_services(site_file, obj) as c, c.db.read() as conn:
        b = c.billing.bills.get(conn, number)
    click.echo(
        f"{b.number}: {b.account_id}, {b.start_date} – {b.end_date} (exclusive), {b.state}, "
        f"due {b.due_date or '-'}"
    )
    for ln in b.lines:
        if ln.get("kind") == "meter_reading":
            click.echo(f"  reading  {ln['description']}")
        else:
            click.echo(
                f"  {ln['description'][:60]:<60} {ln.get('quantity', ''):>14} "
                f"{format_fen(int(ln['amount_fen'])):>10}"
            )
    click.echo(
        f"  {'total':<60} {'':>14} {format_fen(b.total_fen):>10}   paid {format_fen(b.paid_fen)}"
        + (f", outstanding {format_fen(b.outstanding_fen)}" if b.outstanding_fen else "")
    )
    tz = c.site.info.tz
    for p in b.payments:
        how = "credit applied (general wallet)" if p.credit else f"payment via {p.channel}"
        click.echo(
            f"  {how} {p.at.astimezone(tz):%Y-%m-%d %H:%M}, {p.reference}: "
            f"{format_fen(p.amount_fen)}"
        )
    for p in b.problems:
        click.echo(f"  problem: {p}")
    if b.state == "VOID":
        when = f"{b.voided_at.astimezone(tz):%Y-%m-%d %H:%M}" if b.voided_at else "-"
        click.echo(f"  void: {b.void_reason} (by {b.voided_by} at {when})")


@bill_group.command("confirm")
@site_argument
@click.argument("numbers", nargs=-1)
@click.option("--period")
@click.pass_obj
def bill_confirm(
    obj: CliContext, site_file: str, numbers: tuple[str, ...], period: str | None
) -> None:
    """Confirm reviewed drafts (NUMBERS, or all of --period): their usage and late fees
    are posted; a draft that changed since it was made is refreshed, not confirmed."""
    with billing_services(site_file, obj) as c:
        confirmed, refused = c.operations.confirm_bills(
            period=period, numbers=list(numbers) or None, actor=operator()
        )
    for b in confirmed:
        click.echo(f"{b.number}: {b.state} {format_fen(b.total_fen)}")
    for number, why in refused:
        click.echo(f"{number}: not confirmed: {why}", err=True)
    if refused and not confirmed:
        raise SystemExit(1)


@bill_group.command("issue")
@site_argument
@click.argument("numbers", nargs=-1)
@click.option("--period")
@click.option("--on", "on_text", help="Issue date (default today); due = issue date + due_days.")
@click.pass_obj
def bill_issue(
    obj: CliContext,
    site_file: str,
    numbers: tuple[str, ...],
    period: str | None,
    on_text: str | None,
) -> None:
    with billing_services(site_file, obj) as c:
        on = parse_day(on_text, "on") if on_text else None
        issued = c.operations.issue_bills(
            period=period, numbers=list(numbers) or None, on=on, actor=operator()
        )
    for b in issued:
        click.echo(f"{b.number}: {b.state}, {format_fen(b.total_fen)} due {b.due_date}")


@bill_group.command("pay")
@site_argument
@click.argument("account")
@click.argument("amount")
@click.option(
    "--ref",
    "reference",
    required=True,
    help="Payment id or receipt: the same again changes nothing.",
)
@click.option("--channel", default="cash", show_default=True)
@click.pass_obj
def bill_pay(
    obj: CliContext, site_file: str, account: str, amount: str, reference: str, channel: str
) -> None:
    """Record a payment of ACCOUNT: its bills first (oldest first), the rest to the general
    wallet."""
    with billing_services(site_file, obj) as c:
        r = c.operations.pay_bills(
            account,
            parse_yuan(amount, "amount", low_fen=1),
            reference,
            channel=channel,
            actor=operator(),
        )
    parts = ", ".join(f"{n} {format_fen(f)}" for n, f in r.allocations.items()) or "no open bill"
    click.echo(
        f"payment {r.reference} {format_fen(r.amount_fen)}: {parts}; "
        f"general wallet +{format_fen(r.to_wallet_fen)}"
        + (" (already recorded)" if r.replayed else "")
    )


@bill_group.command("apply-credit")
@site_argument
@click.argument("account")
@click.option("--bill", "number", help="Only this bill (default: the unpaid bills, oldest first).")
@click.option("--amount", help="Yuan to apply (default: all the wallet holds, up to what is owed).")
@click.option("--ref", "reference", help="Reference: the same again changes nothing.")
@click.pass_obj
def bill_apply_credit(
    obj: CliContext,
    site_file: str,
    account: str,
    number: str | None,
    amount: str | None,
    reference: str | None,
) -> None:
    """Pay ACCOUNT's unpaid bills from its general wallet (a credit it holds: an
    overpayment, a deposit), oldest bill first; refused beyond what the wallet holds or
    the bills owe."""
    with billing_services(site_file, obj) as c:
        r = c.operations.apply_credit(
            account,
            bill=number,
            amount_fen=parse_yuan(amount, "amount", low_fen=1) if amount is not None else None,
            reference=reference,
            actor=operator(),
        )
    parts = ", ".join(f"{n} {format_fen(f)}" for n, f in r.allocations.items())
    click.echo(
        f"credit {r.reference}: {format_fen(r.amount_fen)} from the general wallet of "
        f"{r.account_id} to {parts}" + (" (already applied)" if r.replayed else "")
    )


@bill_group.command("void")
@site_argument
@click.argument("number")
@click.option("--reason", required=True, help="Why (wrong reading, wrong charge...): kept.")
@click.pass_obj
def bill_void(obj: CliContext, site_file: str, number: str, reason: str) -> None:
    """Void a confirmed or issued bill nothing was paid on: what confirming it posted is
    reversed, its billed items go on the account's next draft (numbered -R2...)."""
    with billing_services(site_file, obj) as c:
        r = c.operations.void_bill(number, reason, actor=operator())
    click.echo(
        f"{r.number}: VOID, {format_fen(r.reversed_fen)} reversed, "
        f"{r.released_items} item(s) back on the next draft of {r.account_id} {r.period}"
        + (" (already void)" if r.replayed else "")
    )


@bill_group.command("arrears")
@site_argument
@click.option("--as-of", "as_of", help="Date (default today).")
@click.option(
    "--export",
    "export_dir",
    type=click.Path(file_okay=False),
    help="Write CSV, XLSX and one notice page per account here.",
)
@click.option("--format", "fmt", default="csv,xlsx,html", show_default=True)
@click.pass_obj
def bill_arrears(
    obj: CliContext, site_file: str, as_of: str | None, export_dir: str | None, fmt: str
) -> None:
    """Issued bills unpaid after their due date (with the late fee accrued so far)."""
    with billing_services(site_file, obj) as c:
        day = parse_day(as_of, "as_of") if as_of else utcnow().astimezone(c.site.info.tz).date()
        with c.db.read() as conn:
            if export_dir:
                written = export_arrears(
                    conn,
                    c.billing.bills,
                    day,
                    Path(export_dir),
                    formats=formats(fmt),
                    payment_qr=room_payment_qr(obj, c.billing.bills.site, conn),
                )
            else:
                table = arrears_table(c.billing.bills.arrears(conn, day), day)
    if export_dir:
        click.echo(f"wrote {len(written)} file(s) to {export_dir}")
    else:
        echo_table(table)


@bill_group.command("export")
@site_argument
@click.option("--period", required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option("--format", "fmt", default="csv,xlsx,html", show_default=True)
@click.pass_obj
def bill_export(obj: CliContext, site_file: str, period: str, out_dir: str, fmt: str) -> None:
    """Bills of PERIOD as CSV, XLSX and one printable HTML page per bill."""
    parse_period(period)
    with billing_services(site_file, obj) as c, c.db.read() as conn:
        written = export_bills(
            conn,
            c.billing.bills,
            period,
            Path(out_dir),
            formats=formats(fmt),
            payment_qr=room_payment_qr(obj, c.billing.bills.site, conn),
        )
    click.echo(f"wrote {len(written)} file(s) to {out_dir}")


def room_payment_qr(obj: CliContext, site: Any, conn: Any) -> PaymentQr:
    """account → the payment QR of its room from the plugin that offers one
    (`openprepay_room_payment_qr`; the web plugin's signed tenant-page link)."""
    made: dict[str, str | None] = {}

    def qr(account_id: str) -> str | None:
        if account_id not in made:
            account = find_account(conn, account_id)
            room = account.room if account is not None else None
            if room is None and account is not None:
                rooms = [
                    site.devices[m.meter_id].room
                    for m in account.meters
                    if m.meter_id in site.devices
                ]
                room = next((r for r in rooms if r), None)
            made[account_id] = obj.plugins.room_payment_qr(site, room) if room else None
        return made[account_id]

    return qr
