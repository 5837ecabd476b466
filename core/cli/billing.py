"""Commands for billing operations: `billing`, `bill`, `batch` and `report`.

- `openprepay billing ...` — meter readings at the freeze instants, common-area
  apportionment, custom charges, the month-end, the itemised statement of an account;
- `openprepay bill ...` — post-paid bills: draft, list, show, confirm, issue, pay, arrears,
  export (CSV, XLSX, one printable HTML page per bill);
- `openprepay batch ...` — batch and scheduled operations (dry run, progress bar);
- `openprepay report ...` — finance and energy reports, on screen, as CSV or as XLSX.

Amounts are yuan with two decimals; dates are site-local (`2025-03-01`, `2025-03-01 08:00`).
Every command is one or a few database transactions against the site's database; a bad
request names the field, changes nothing and exits with status 1.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table as RichTable

from ..billing import runs
from ..billing.batch import Batches
from ..billing.batch.model import Action, JobView
from ..billing.batch.selection import read_csv_rows
from ..billing.charges import charge_once, items_of
from ..billing.documents import export_arrears, export_bills
from ..billing.export import Table, csv_text, write_csv, write_xlsx
from ..billing.loss import LossAnalysis
from ..billing.periods import parse_period
from ..billing.readings import meter_model, readings_at, record_reading
from ..billing.reports import Reports
from ..billing.reports.common import parse_day
from ..billing.runs import Computed, RunResult
from ..billing.service import Billing
from ..billing.settings import Mode
from ..config.site import Site
from ..db import Database
from ..events import utcnow
from ..ledger import RequestError, format_fen, parse_yuan
from ..operations import Operations
from . import EXIT_FAILED, CliContext
from .common import load_checked_site, progress_bar, site_argument
from .database import operator, site_database
from .params import ROW_ID, Count

console = Console()


@dataclass
class Ctx:
    site: Site
    db: Database
    billing: Billing
    obj: CliContext


@contextmanager
def billing_context(site_file: str, obj: CliContext) -> Iterator[Ctx]:
    site = load_checked_site(site_file)
    db = site_database(site_file)
    try:
        yield Ctx(site, db, Billing(site, obj.plugins.models), obj)
    finally:
        db.dispose()


def parse_time(site: Site, text: str, field: str = "at") -> dt.datetime:
    """`2025-03-01 08:00` (site-local), `2025-03-01` (midnight) or ISO with an offset."""
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("T", " "))
    except ValueError:
        raise RequestError(
            field, f"expected a time such as 2025-03-01 08:00, got {text!r}"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=site.info.tz)
    return value.astimezone(dt.UTC)


def echo_table(table: Table, limit: int | None = None) -> None:
    t = RichTable(title=table.title, title_justify="left", show_lines=False)
    numeric = (
        {i for i, v in enumerate(table.rows[0]) if not isinstance(v, str)} if table.rows else set()
    )
    for i, c in enumerate(table.columns):
        t.add_column(c, justify="right" if i in numeric else "left")
    rows = table.rows if limit is None else table.rows[:limit]
    for row in rows:
        t.add_row(*["" if v is None else f"{v}" for v in row])
    if limit is not None and len(table.rows) > limit:
        t.add_row(f"... {len(table.rows) - limit} more", *["" for _ in table.columns[1:]])
    if table.total is not None:
        t.add_row(*["" if v is None else f"{v}" for v in table.total], style="bold")
    # Never cut a value to fit the terminal: a wide table is printed wide.
    widths = [len(c) for c in table.columns]
    for row in [*rows, *([table.total] if table.total else [])]:
        for i, v in enumerate(row[: len(widths)]):
            widths[i] = max(widths[i], len("" if v is None else f"{v}"))
    needed = sum(widths) + 3 * len(widths) + 1
    out = Console(width=max(console.width, needed)) if needed > console.width else console
    out.print(t)
    for note in table.notes:
        out.print(note, style="dim")


def output(tables: Sequence[Table], out: str | None) -> None:
    """Print the tables, or write them: .csv (the first table), .xlsx (one sheet each)."""
    if out is None:
        for table in tables:
            echo_table(table)
        return
    path = Path(out)
    if path.suffix.lower() == ".xlsx":
        write_xlsx(tables, path)
    elif path.suffix.lower() == ".csv":
        write_csv(tables[0], path)
    elif out == "-":
        click.echo(csv_text(tables[0]), nl=False)
        return
    else:
        raise RequestError("out", f"expected a .csv or .xlsx file name (or - for CSV), got {out!r}")
    click.echo(f"wrote {path}")


# -- billing ----------------------------------------------------------------------------------


@click.group("billing")
def billing_group() -> None:
    """Meter readings, common-area apportionment, custom charges, month-end."""


@billing_group.command("reading")
@site_argument
@click.argument("meter")
@click.option("--at", "at_text", required=True, help="Capture instant, e.g. '2025-03-01 00:00'.")
@click.option("--value", required=True, help="Total register, kWh or m³ (e.g. 1234.56).")
@click.option(
    "--register",
    "registers",
    multiple=True,
    metavar="POINT=VALUE",
    help="Rate register (energy_sharp=12.3).",
)
@click.pass_obj
def billing_reading(
    obj: CliContext,
    site_file: str,
    meter: str,
    at_text: str,
    value: str,
    registers: tuple[str, ...],
) -> None:
    """Record METER's reading for a capture instant by hand (replaces what was captured)."""
    with billing_context(site_file, obj) as c:
        at = parse_time(c.site, at_text)
        regs = dict(_pair(r, "register") for r in registers)
        with c.db.begin() as conn:
            r = record_reading(
                conn,
                meter,
                at,
                value,
                registers=regs,
                recorded_by=operator(),
                known_meters=c.site.devices,
                model=meter_model(c.site, obj.plugins.models, meter),
            )
    click.echo(
        f"{r.meter_id} at {at.astimezone(c.site.info.tz):%Y-%m-%d %H:%M}: "
        f"{r.energy / 1000:.3f} (manual)"
    )


def _pair(text: str, field: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise RequestError(field, f"expected NAME=VALUE, got {text!r}")
    return key.strip(), value.strip()


@billing_group.command("readings")
@site_argument
@click.option("--at", "at_text", help="Capture instant (default: the start of --period).")
@click.option("--period", help="Show the readings at the period's start and end.")
@click.option("--meter", "meters", multiple=True)
@click.pass_obj
def billing_readings(
    obj: CliContext,
    site_file: str,
    at_text: str | None,
    period: str | None,
    meters: tuple[str, ...],
) -> None:
    """Meter registers at capture instants (what apportionment and bills difference)."""
    with billing_context(site_file, obj) as c:
        if period:
            instants = list(c.billing.calendar.bounds(period))
        elif at_text:
            instants = [parse_time(c.site, at_text)]
        else:
            raise RequestError("at", "give --at or --period")
        chosen = list(meters) or sorted(c.site.devices)
        table = Table("Meter readings", ["meter", "instant", "read at", "value", "source"])
        with c.db.read() as conn:
            for at in instants:
                found = readings_at(conn, chosen, at)
                for m in chosen:
                    r = found.get(m)
                    local = at.astimezone(c.site.info.tz)
                    if r is None:
                        if meters:
                            table.rows.append([m, f"{local:%Y-%m-%d %H:%M}", "-", "missing", ""])
                        continue
                    table.rows.append(
                        [
                            m,
                            f"{local:%Y-%m-%d %H:%M}",
                            f"{r.read_at.astimezone(c.site.info.tz):%Y-%m-%d %H:%M:%S}",
                            f"{r.energy / 1000:.3f}",
                            r.source,
                        ]
                    )
    echo_table(table)


def _show_run(r: RunResult | Computed, tz: Any) -> None:
    source, period, state = (
        r.source,
        r.period,
        str(r.state.value if hasattr(r.state, "value") else r.state),
    )
    detail = r.detail
    amount = r.amount_fen
    extra = ""
    if "main_energy" in detail:
        extra = (
            f" main {detail['main_energy'] / 1000:.2f}, subs {detail['sub_energy'] / 1000:.2f}, "
            f"public {detail['public_energy'] / 1000:.2f}, loss {detail['loss_energy'] / 1000:.2f} "
            f"({detail['loss_rate']})"
        )
    how = ""
    if isinstance(r, RunResult):
        how = " (unchanged)" if r.unchanged else f" revision {r.revision}"
        if r.reversed_revision:
            how += f", revision {r.reversed_revision} reversed"
    else:
        how = " (dry run)"
        if state == "POSTED":
            state = "would post"
    click.echo(f"{source} {period}: {state}{how}, {format_fen(amount)}.{extra}")
    if r.reason:
        click.echo(f"  {r.reason}")
    for ln in r.lines:
        click.echo(
            f"  {ln.room or '-':<10} {ln.account_id or '(vacant: owner)':<14} "
            f"{format_fen(ln.amount_fen):>10}  {ln.description}"
        )


@billing_group.command("apportion")
@site_argument
@click.option("--period", required=True, help="Billing period, e.g. 2025-03.")
@click.option("--pool", "pools", multiple=True, help="Only these pools.")
@click.option("--dry-run", is_flag=True, help="Compute and show; post nothing.")
@click.pass_obj
def billing_apportion(
    obj: CliContext, site_file: str, period: str, pools: tuple[str, ...], dry_run: bool
) -> None:
    """Share the common-area energy of PERIOD (again: the same result changes nothing; a
    different one reverses and re-posts)."""
    with billing_context(site_file, obj) as c:
        if not c.billing.settings.apportionment:
            click.echo(
                "common-area apportionment is switched off for this site "
                "([billing] apportionment = false)"
            )
            return
        with c.db.begin() as conn:
            results = c.billing.apportionment.run(
                conn, period, pools=pools or None, actor=operator(), now=utcnow(), dry_run=dry_run
            )
    for r in results:
        _show_run(r, c.site.info.tz)
    _exit_on_fault(results)


def _exit_on_fault(results: Sequence[RunResult | Computed]) -> None:
    """A pool in FAULT (main < Σ sub + public: a meter fault, nothing allocated) is a
    failure of the command: say so on stderr and exit non-zero."""
    faults = [r for r in results if str(r.state) == runs.RunState.FAULT]
    for r in faults:
        click.echo(
            f"error: {r.source} {r.period} is in FAULT, nothing was allocated: {r.reason}",
            err=True,
        )
    if faults:
        raise SystemExit(EXIT_FAILED)


@billing_group.command("approve")
@site_argument
@click.argument("pool")
@click.option("--period", required=True)
@click.pass_obj
def billing_approve(obj: CliContext, site_file: str, pool: str, period: str) -> None:
    """Post POOL's HELD allocation of PERIOD as computed (loss above the cap accepted)."""
    with billing_context(site_file, obj) as c:
        c.billing.apportionment.pool(pool)
        with c.db.begin() as conn:
            r = runs.approve(conn, f"pool:{pool}", period, actor=operator(), now=utcnow())
    _show_run(r, c.site.info.tz)


@billing_group.command("charge")
@site_argument
@click.option("--period", required=True)
@click.option("--charge", "charges", multiple=True, help="Only these charges.")
@click.option("--dry-run", is_flag=True)
@click.pass_obj
def billing_charge(
    obj: CliContext, site_file: str, period: str, charges: tuple[str, ...], dry_run: bool
) -> None:
    """Charge the custom charges of [billing.charges] due in PERIOD (idempotent)."""
    with billing_context(site_file, obj) as c, c.db.begin() as conn:
        results = c.billing.charges.run(
            conn,
            period,
            charges=charges or None,
            actor=operator(),
            now=utcnow(),
            dry_run=dry_run,
        )
    for r in results:
        _show_run(r, c.site.info.tz)
    if not results:
        click.echo(f"no charge is due in {period}")


@billing_group.command("charge-once")
@site_argument
@click.argument("account")
@click.argument("amount")
@click.option(
    "--type",
    "kind",
    default="service",
    show_default=True,
    type=click.Choice(["property", "rent", "service", "custom"]),
)
@click.option("--description", required=True, help="What is charged (printed on the bill).")
@click.option(
    "--ref", "reference", required=True, help="Unique reference: the same again changes nothing."
)
@click.option(
    "--bill",
    "billed",
    is_flag=True,
    help="Owe it on the next bill instead of taking it from the general wallet.",
)
@click.pass_obj
def billing_charge_once(
    obj: CliContext,
    site_file: str,
    account: str,
    amount: str,
    kind: str,
    description: str,
    reference: str,
    billed: bool,
) -> None:
    """Charge ACCOUNT a one-off AMOUNT (a repair, a key, a cleaning fee)."""
    with billing_context(site_file, obj) as c:
        now = utcnow()
        with c.db.begin() as conn:
            posted = charge_once(
                conn,
                account,
                kind,
                parse_yuan(amount, "amount", low_fen=1),
                reference,
                description=description,
                mode=Mode.BILL if billed else Mode.WALLET,
                period=c.billing.calendar.period_of(now),
                actor=operator(),
                now=now,
            )
    how = (
        "general wallet"
        if any(p.ledger_account.startswith("liab:wallet:") for p in posted.journal.postings)
        else "owed (next bill)"
    )
    click.echo(
        f"journal {posted.journal.id}: {format_fen(parse_yuan(amount))} {kind} charged to "
        f"{account}, {how}" + (" (already done)" if posted.replayed else "")
    )


@billing_group.command("month-end")
@site_argument
@click.option("--period", required=True)
@click.pass_obj
def billing_month_end(obj: CliContext, site_file: str, period: str) -> None:
    """Apportionment, charges and post-paid drafts of PERIOD (what the service runs the day
    after the freeze instant); each step is idempotent."""
    steps = Billing.MONTH_END_STEPS
    with billing_context(site_file, obj) as c, progress_bar(f"{period}", len(steps)) as update:
        report = c.billing.month_end(
            c.db,
            period,
            actor=operator(),
            progress=lambda step, done: update(done, description=f"{period}: {step}"),
        )
    for r in [*report.pools, *report.charges]:
        _show_run(r, c.site.info.tz)
    click.echo(
        f"{report.drafts} post-paid draft(s) for {period}: review them with "
        f"`openprepay bill list {site_file} --period {period}`"
    )
    _exit_on_fault(report.pools)


@billing_group.command("runs")
@site_argument
@click.option("--period")
@click.pass_obj
def billing_runs(obj: CliContext, site_file: str, period: str | None) -> None:
    """Every computation of pools and charges with its revisions."""
    with billing_context(site_file, obj) as c, c.db.read() as conn:
        rows = runs.list_runs(conn, period=period)
    table = Table("Runs", ["source", "period", "revision", "state", "amount", "journal", "reason"])
    for r in rows:
        table.rows.append(
            [
                r.source,
                r.period,
                str(r.revision),
                r.state,
                format_fen(r.amount_fen),
                str(r.journal_id or ""),
                r.reason,
            ]
        )
    echo_table(table)


@billing_group.command("statement")
@site_argument
@click.argument("account")
@click.option("--period")
@click.pass_obj
def billing_statement(obj: CliContext, site_file: str, account: str, period: str | None) -> None:
    """ACCOUNT's itemised charges (common area, property fee, rent, services, bills)."""
    with billing_context(site_file, obj) as c, c.db.read() as conn:
        items = items_of(conn, account, period=period)
    table = Table(
        f"Charges of {account}", ["period", "kind", "description", "amount", "how", "bill"]
    )
    for i in items:
        how = "void" if i["void"] else ("general wallet" if i["mode"] == "wallet" else "owed")
        table.rows.append(
            [
                i["period"],
                i["kind"],
                i["description"],
                format_fen(i["amount_fen"]),
                how,
                str(i["bill_id"] or ""),
            ]
        )
    echo_table(table)


# -- bills --------------------------------------------------------------------------------------


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
@click.pass_obj
def bill_draft(obj: CliContext, site_file: str, period: str, accounts: tuple[str, ...]) -> None:
    """Compute the drafts of PERIOD (again and again until they are confirmed)."""
    with billing_context(site_file, obj) as c, c.db.begin() as conn:
        drafts = c.billing.bills.draft(conn, period, accounts=list(accounts) or None, now=utcnow())
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
    with billing_context(site_file, obj) as c, c.db.read() as conn:
        bills = c.billing.bills.list(conn, period=period, state=state, account_id=account)
    echo_table(_bill_table(bills, "Bills"))


@bill_group.command("show")
@site_argument
@click.argument("number")
@click.pass_obj
def bill_show(obj: CliContext, site_file: str, number: str) -> None:
    with billing_context(site_file, obj) as c, c.db.read() as conn:
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
    )
    for p in b.problems:
        click.echo(f"  problem: {p}")
    if b.state == "VOID":
        click.echo(f"  void: {b.void_reason} (by {b.voided_by} at {b.voided_at:%Y-%m-%d %H:%M})")


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
    with billing_context(site_file, obj) as c, c.db.begin() as conn:
        confirmed, refused = c.billing.bills.confirm(
            conn, period=period, numbers=list(numbers) or None, actor=operator(), now=utcnow()
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
    with billing_context(site_file, obj) as c:
        on = parse_day(on_text, "on") if on_text else None
        with c.db.begin() as conn:
            issued = c.billing.bills.issue(
                conn,
                period=period,
                numbers=list(numbers) or None,
                on=on,
                actor=operator(),
                now=utcnow(),
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
    with billing_context(site_file, obj) as c, c.db.begin() as conn:
        r = c.billing.bills.pay(
            conn,
            account,
            parse_yuan(amount, "amount", low_fen=1),
            reference,
            channel=channel,
            actor=operator(),
            now=utcnow(),
        )
    parts = ", ".join(f"{n} {format_fen(f)}" for n, f in r.allocations.items()) or "no open bill"
    click.echo(
        f"payment {r.reference} {format_fen(r.amount_fen)}: {parts}; "
        f"general wallet +{format_fen(r.to_wallet_fen)}"
        + (" (already recorded)" if r.replayed else "")
    )


@bill_group.command("void")
@site_argument
@click.argument("number")
@click.option("--reason", required=True, help="Why (wrong reading, wrong charge...): kept.")
@click.pass_obj
def bill_void(obj: CliContext, site_file: str, number: str, reason: str) -> None:
    """Void a confirmed or issued bill nothing was paid on: what confirming it posted is
    reversed, its billed items go on the account's next draft (numbered -R2...)."""
    with billing_context(site_file, obj) as c, c.db.begin() as conn:
        r = c.billing.bills.void(conn, number, reason=reason, actor=operator(), now=utcnow())
    click.echo(
        f"{r.number}: VOID, {format_fen(r.reversed_fen)} reversed, "
        f"{r.released_items} item(s) back on the next draft of {r.account_id} {r.period}"
        + (" (already void)" if r.replayed else "")
    )


def _formats(text: str) -> list[str]:
    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in ("csv", "xlsx", "html")]
    if bad or not formats:
        raise RequestError("format", f"expected csv, xlsx and/or html, got {text!r}")
    return formats


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
    from ..billing.documents import arrears_table

    with billing_context(site_file, obj) as c:
        day = parse_day(as_of, "as_of") if as_of else utcnow().astimezone(c.site.info.tz).date()
        with c.db.read() as conn:
            if export_dir:
                written = export_arrears(
                    conn, c.billing.bills, day, Path(export_dir), formats=_formats(fmt)
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
    with billing_context(site_file, obj) as c, c.db.read() as conn:
        written = export_bills(conn, c.billing.bills, period, Path(out_dir), formats=_formats(fmt))
    click.echo(f"wrote {len(written)} file(s) to {out_dir}")


# -- batch --------------------------------------------------------------------------------------


@click.group("batch")
def batch_group() -> None:
    """Batch and scheduled operations over many accounts or meters."""


@contextmanager
def batch_context(site_file: str, obj: CliContext) -> Iterator[tuple[Ctx, Batches]]:
    with billing_context(site_file, obj) as c:
        ops = Operations(c.site, c.db, models=obj.plugins.models)
        yield (
            c,
            Batches(
                c.site,
                obj.plugins.models,
                c.db,
                ops,
                owner=f"{operator()}:cli",
                lease_s=c.billing.settings.batch_lease_s,
            ),
        )


def _selection(
    all_site: bool,
    buildings: Sequence[str],
    floors: Sequence[str],
    rooms: Sequence[str],
    accounts: Sequence[str],
    meters: Sequence[str],
    csv_file: str | None,
) -> dict[str, Any]:
    sel: dict[str, Any] = {}
    if all_site:
        sel["site"] = True
    for key, values in (
        ("buildings", buildings),
        ("floors", floors),
        ("rooms", rooms),
        ("accounts", accounts),
        ("meters", meters),
    ):
        if values:
            sel[key] = list(values)
    if csv_file:
        path = Path(csv_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise RequestError("csv", f"cannot read {csv_file}: {exc.strerror}") from None
        sel["rows"] = read_csv_rows(text, path.name)
        sel["source"] = path.name
    return sel


def _params(
    action: str,
    tariff: str | None,
    amount: str | None,
    channel: str | None,
    alarm1: str | None,
    alarm2: str | None,
    override: bool,
    kind: str | None,
    prices: Sequence[str],
    command: str | None,
    params: Sequence[str],
) -> dict[str, Any]:
    p: dict[str, Any] = {}
    if action == Action.SET_TARIFF and tariff:
        p["tariff"] = tariff
    if action == Action.TOPUP:
        if amount:
            p["amount"] = amount
        if channel:
            p["channel"] = channel
    if action == Action.SET_THRESHOLDS:
        p.update(alarm1=alarm1, alarm2=alarm2)
    if action in (Action.DISCONNECT, Action.RECONNECT):
        p["override"] = override
        if kind:
            p["kind"] = kind
    if action == Action.SET_PRICE:
        p.update(dict(_pair(x, "price") for x in prices))
    if action == Action.SET_PARAMS:
        p["command"] = command
        p["values"] = dict(_pair(x, "param") for x in params)
    return p


def _progress(batches: Batches, job_id: int, run_here: bool) -> JobView:
    """Run the job here (claimed as the service would) or follow it, with a progress bar."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from ..model import Sample

    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]} failed"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    )
    with progress:
        task = progress.add_task(f"batch {job_id}", total=None, failed=0)

        def show(total: int, done: int, failed: int) -> None:
            progress.update(task, total=max(total, 1), completed=done + failed, failed=failed)

        def on_item(item: object) -> None:
            if isinstance(item, Sample) and item.source == f"batch-{job_id}":
                v = item.values
                show(int(v["total"]), int(v["done"]), int(v["failed"]))

        if run_here and batches.claim(job_id=job_id):
            batches.publish = on_item
            view = batches.run(job_id)
            show(view.total, view.done, view.failed)
            return view
        while True:  # the service (or another instance) runs it: follow it
            view = batches.get(job_id)
            show(view.total, view.done, view.failed)
            if view.state not in ("RUNNING", "SCHEDULED") or (
                view.state == "SCHEDULED" and view.run_no > 0
            ):
                return view
            time.sleep(0.2)


def _selection_options(f: Any) -> Any:
    for option in reversed(
        [
            click.option("--all", "all_site", is_flag=True, help="Every room of the site."),
            click.option("--building", "buildings", multiple=True),
            click.option("--floor", "floors", multiple=True, metavar="BUILDING:FLOOR"),
            click.option("--room", "rooms", multiple=True),
            click.option("--account", "accounts", multiple=True),
            click.option("--meter", "meters", multiple=True),
            click.option(
                "--csv",
                "csv_file",
                type=click.Path(dir_okay=False),
                help="Rows with an account, meter or room column (and amount, tariff...).",
            ),
            click.option("--tariff"),
            click.option("--amount", help="Top-up amount in yuan."),
            click.option("--channel"),
            click.option("--alarm1"),
            click.option("--alarm2"),
            click.option(
                "--override",
                is_flag=True,
                help="Disconnect as an operator's override (the rate limit and 保电 still apply).",
            ),
            click.option("--kind", type=click.Choice(["electric", "water"])),
            click.option(
                "--price",
                "prices",
                multiple=True,
                metavar="RATE=CNY",
                help="set_price: sharp=0.72 ...",
            ),
            click.option("--command"),
            click.option("--param", "params", multiple=True, metavar="NAME=VALUE"),
        ]
    ):
        f = option(f)
    return f


@batch_group.command("create")
@site_argument
@click.argument("action", type=click.Choice([a.value for a in Action]))
@_selection_options
@click.option("--reason", required=True, help="Why (audited with every item).")
@click.option("--at", "at_text", help="Run at this site-local time (default now).")
@click.option(
    "--every", type=click.Choice(["day", "week", "month"]), help="Repeat at the same time."
)
@click.option("--dry-run", is_flag=True, help="Show what each item would do; write nothing.")
@click.option("--no-wait", is_flag=True, help="Leave a job that is due now to the running service.")
@click.pass_obj
def batch_create(
    obj: CliContext,
    site_file: str,
    action: str,
    all_site: bool,
    buildings: tuple[str, ...],
    floors: tuple[str, ...],
    rooms: tuple[str, ...],
    accounts: tuple[str, ...],
    meters: tuple[str, ...],
    csv_file: str | None,
    tariff: str | None,
    amount: str | None,
    channel: str | None,
    alarm1: str | None,
    alarm2: str | None,
    override: bool,
    kind: str | None,
    prices: tuple[str, ...],
    command: str | None,
    params: tuple[str, ...],
    reason: str,
    at_text: str | None,
    every: str | None,
    dry_run: bool,
    no_wait: bool,
) -> None:
    """Create a batch job: ACTION over a selection, now, at a time or every day/week/month."""
    with batch_context(site_file, obj) as (c, batches):
        selection = _selection(all_site, buildings, floors, rooms, accounts, meters, csv_file)
        p = _params(
            action, tariff, amount, channel, alarm1, alarm2, override, kind, prices, command, params
        )
        if dry_run:
            plan = batches.plan(action, p, selection)
            for line in plan:
                click.echo(f"{'ok  ' if line.ok else 'FAIL'} {line.target:<14} {line.text}")
            click.echo(
                f"dry run: {sum(1 for x in plan if x.ok)} of {len(plan)} item(s) would succeed; "
                "nothing written"
            )
            return
        at = parse_time(c.site, at_text) if at_text else None
        job = batches.create(
            action, p, selection, reason=reason, actor=operator(), at=at, every=every
        )
        when = "now" if at is None else f"at {at.astimezone(c.site.info.tz):%Y-%m-%d %H:%M}"
        click.echo(f"batch job {job.id}: {action} {when}" + (f", every {every}" if every else ""))
        if at is None and not no_wait:
            view = _progress(batches, job.id, run_here=True)
            click.echo(
                f"batch job {job.id}: {view.done} done, {view.failed} failed of {view.total}"
            )
            if view.failed:
                raise SystemExit(1)


@batch_group.command("list")
@site_argument
@click.option("--state", type=click.Choice(["SCHEDULED", "RUNNING", "DONE", "CANCELLED"]))
@click.pass_obj
def batch_list(obj: CliContext, site_file: str, state: str | None) -> None:
    with batch_context(site_file, obj) as (c, batches):
        jobs = batches.list(state=state)
    table = Table(
        "Batch jobs",
        ["job", "action", "state", "run", "done", "failed", "total", "next run", "every", "reason"],
    )
    for j in jobs:
        nxt = (
            j.next_run_at.astimezone(c.site.info.tz).strftime("%Y-%m-%d %H:%M")
            if j.next_run_at
            else ""
        )
        table.rows.append(
            [
                str(j.id),
                j.action,
                j.state,
                str(j.run_no),
                str(j.done),
                str(j.failed),
                str(j.total),
                nxt,
                j.every or "",
                j.reason,
            ]
        )
    echo_table(table)


@batch_group.command("show")
@site_argument
@click.argument("job_id", type=ROW_ID)
@click.option("--run", "run_no", type=ROW_ID, help="Occurrence (default the last).")
@click.pass_obj
def batch_show(obj: CliContext, site_file: str, job_id: int, run_no: int | None) -> None:
    """A job and the result of each of its items."""
    with batch_context(site_file, obj) as (_c, batches):
        job = batches.get(job_id)
        items = batches.items(job_id, run_no)
    chosen = job.selection.get("source", "CSV") if "rows" in job.selection else job.selection
    click.echo(
        f"batch job {job.id}: {job.action} {job.params} on {chosen}; {job.state}, "
        f"occurrence {job.run_no}: {job.done} done, {job.failed} failed of {job.total}"
    )
    for i in items:
        click.echo(f"  {i.seq:>4} {i.target:<14} {i.state:<7} {i.result}")


@batch_group.command("run")
@site_argument
@click.argument("job_id", type=ROW_ID)
@click.pass_obj
def batch_run(obj: CliContext, site_file: str, job_id: int) -> None:
    """Run a due job here with a progress bar (or follow it if the service runs it)."""
    with batch_context(site_file, obj) as (c, batches):
        view = batches.get(job_id)
        if view.state == "SCHEDULED" and view.next_run_at and view.next_run_at > utcnow():
            raise RequestError(
                "job",
                f"batch job {job_id} is scheduled for "
                f"{view.next_run_at.astimezone(c.site.info.tz):%Y-%m-%d %H:%M}",
            )
        view = _progress(batches, job_id, run_here=True)
    click.echo(
        f"batch job {job_id}: {view.state}, {view.done} done, {view.failed} failed of {view.total}"
    )


@batch_group.command("cancel")
@site_argument
@click.argument("job_id", type=ROW_ID)
@click.pass_obj
def batch_cancel(obj: CliContext, site_file: str, job_id: int) -> None:
    with batch_context(site_file, obj) as (_c, batches):
        view = batches.cancel(job_id, actor=operator())
    click.echo(f"batch job {job_id}: {view.state}")


# -- reports ------------------------------------------------------------------------------------


@click.group("report")
def report_group() -> None:
    """Finance and energy reports (screen, CSV or XLSX with charts)."""


@contextmanager
def report_context(site_file: str, obj: CliContext) -> Iterator[tuple[Ctx, Reports]]:
    with billing_context(site_file, obj) as c:
        b = c.billing
        yield (
            c,
            Reports(
                c.site,
                obj.plugins.models,
                b.catalogue,
                calendar=b.calendar,
                register_rates=b.prepay.register_rates,
                default_tariffs=b.bills.default_tariffs,
            ),
        )


def _span(from_text: str, to_text: str) -> tuple[dt.date, dt.date]:
    start = parse_day(from_text, "from")
    last = parse_day(to_text, "to")
    if last < start:
        raise RequestError("to", f"{last} is before {start}")
    return start, last + dt.timedelta(days=1)


_out = click.option(
    "--out",
    help="Write FILE.csv or FILE.xlsx (with charts) instead of printing; - for CSV on stdout.",
)
_from = click.option("--from", "from_text", required=True, help="First day, e.g. 2025-01-01.")
_to = click.option("--to", "to_text", required=True, help="Last day (included).")


@report_group.command("revenue")
@site_argument
@_from
@_to
@click.option(
    "--by", default="month", show_default=True, type=click.Choice(["day", "month", "year", "range"])
)
@_out
@click.pass_obj
def report_revenue(
    obj: CliContext, site_file: str, from_text: str, to_text: str, by: str, out: str | None
) -> None:
    """Revenue and its composition (electricity, water, common area, property, rent...)."""
    with report_context(site_file, obj) as (c, reports), c.db.read() as conn:
        table = reports.revenue(conn, *_span(from_text, to_text), by)
    output([table], out)


@report_group.command("orders")
@site_argument
@_from
@_to
@click.option("--account")
@_out
@click.pass_obj
def report_orders(
    obj: CliContext,
    site_file: str,
    from_text: str,
    to_text: str,
    account: str | None,
    out: str | None,
) -> None:
    """Every order: top-ups, refunds, deductions, charges, payments."""
    with report_context(site_file, obj) as (c, reports), c.db.read() as conn:
        table = reports.orders(conn, *_span(from_text, to_text), account=account)
    output([table], out)


@report_group.command("energy")
@site_argument
@click.option("--month", required=True, help="e.g. 2025-03")
@click.option("--water", is_flag=True)
@_out
@click.pass_obj
def report_energy(
    obj: CliContext, site_file: str, month: str, water: bool, out: str | None
) -> None:
    """The monthly comprehensive report per room: total and 尖/峰/平/谷 energy and cost,
    against the same month last year."""
    with report_context(site_file, obj) as (c, reports), c.db.read() as conn:
        table = reports.monthly(conn, month, "water" if water else "electricity")
    output([table], out)


@report_group.command("meters")
@site_argument
@_from
@_to
@click.option("--by", default="day", show_default=True, type=click.Choice(["day", "month", "year"]))
@click.option("--water", is_flag=True)
@click.option("--meter", "meters", multiple=True)
@_out
@click.pass_obj
def report_meters(
    obj: CliContext,
    site_file: str,
    from_text: str,
    to_text: str,
    by: str,
    water: bool,
    meters: tuple[str, ...],
    out: str | None,
) -> None:
    """Energy (or water) per meter by day, month or year."""
    with report_context(site_file, obj) as (c, reports), c.db.read() as conn:
        table = reports.meter_energy(
            conn,
            *_span(from_text, to_text),
            by,
            "water" if water else "electricity",
            list(meters) or None,
        )
    output(
        [reports.energy_by_bucket(table), table] if out and out.endswith(".xlsx") else [table], out
    )


@report_group.command("loss")
@site_argument
@_from
@_to
@click.option("--building")
@_out
@click.pass_obj
def report_loss(
    obj: CliContext,
    site_file: str,
    from_text: str,
    to_text: str,
    building: str | None,
    out: str | None,
) -> None:
    """Main meter against the sum of its sub-meters, day by day, per building."""
    with billing_context(site_file, obj) as c:
        analysis = LossAnalysis(c.site, obj.plugins.models, c.billing.settings)
        with c.db.read() as conn:
            table = analysis.series_table(conn, *_span(from_text, to_text), building)
    output([table], out)


@report_group.command("suspects")
@site_argument
@click.option("--to", "to_text", help="Last day of the window (default yesterday).")
@click.option("--days", default=14, show_default=True, type=Count(2, 366))
@click.option("--building")
@_out
@click.pass_obj
def report_suspects(
    obj: CliContext,
    site_file: str,
    to_text: str | None,
    days: int,
    building: str | None,
    out: str | None,
) -> None:
    """Rooms whose pattern suggests a bypass: no consumption while the supply is on and
    the building's loss grows."""
    with billing_context(site_file, obj) as c:
        analysis = LossAnalysis(c.site, obj.plugins.models, c.billing.settings)
        today = utcnow().astimezone(c.site.info.tz).date()
        end = parse_day(to_text, "to") + dt.timedelta(days=1) if to_text else today
        with c.db.read() as conn:
            table = analysis.suspects_table(conn, end, days, building)
    if not table.rows and out is None:
        click.echo("no room looks bypassed")
        return
    output([table], out)


def register(cli: click.Group) -> None:
    cli.add_command(billing_group)
    cli.add_command(bill_group)
    cli.add_command(batch_group)
    cli.add_command(report_group)
