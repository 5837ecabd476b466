"""`openprepay billing ...`: meter readings at the freeze instants, common-area
apportionment, custom charges, the month-end, the itemised statement of an account."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from ...billing import runs
from ...billing.charges import charge_once
from ...billing.closing import PeriodCheck
from ...billing.export import Table
from ...billing.reading_file import instant_of
from ...billing.readings import readings_at
from ...billing.runs import Computed, RunResult
from ...billing.service import Billing
from ...billing.settings import Mode
from ...billing.statement import statement
from ...events import utcnow
from ...ledger import RequestError, format_fen, parse_yuan
from ...prepay.csv_problems import RowsRefused
from .. import EXIT_FAILED, CliContext
from ..common import progress_bar, site_argument
from ..database import operator
from .common import echo_table, override_option, pair
from .services import billing_services


def _say_provisional(check: PeriodCheck) -> None:
    """A dry run of a period that cannot be closed yet shows figures that are not final."""
    if not check.closable:
        click.echo(f"PROVISIONAL: {check.describe()}")


@click.group("billing")
def billing_group() -> None:
    """Meter readings, common-area apportionment, custom charges, month-end."""


@billing_group.command("reading")
@site_argument
@click.argument("meter")
@click.option(
    "--at",
    "at_text",
    required=True,
    help="Capture instant, e.g. '2025-03-01 00:00' (site time), or a period (2025-03: its start).",
)
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
    with billing_services(site_file, obj) as c:
        at = instant_of(c.billing.calendar, at_text)
        regs = dict(pair(r, "register") for r in registers)
        r = c.operations.record_reading(meter, at, value, registers=regs, actor=operator())
    click.echo(
        f"{r.meter_id} at {at.astimezone(c.site.info.tz):%Y-%m-%d %H:%M}: "
        f"{r.energy / 1000:.3f} (manual)"
    )


@billing_group.command("readings-import")
@site_argument
@click.argument("csv_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Check every line and report; record nothing.")
@click.pass_obj
def billing_readings_import(obj: CliContext, site_file: str, csv_file: Path, dry_run: bool) -> None:
    """Record the meter readings of CSV_FILE by hand, all of them or none.

    Columns: meter, at, energy, and optionally read_at, note and one column per rate
    register (energy_sharp, energy_peak, energy_flat, energy_valley). `at` is a capture
    instant in site time (2025-03-01 00:00) or a period (2025-03: its start). Any bad line:
    every problem is listed (line: column = value: what to write), nothing is recorded, exit
    status 1."""
    try:
        text = csv_file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise RequestError("file", f"{csv_file}: cannot read as UTF-8 text: {exc}") from None
    with billing_services(site_file, obj) as c:
        try:
            done = c.operations.record_readings(
                text, file_name=csv_file.name, actor=operator(), dry_run=dry_run
            )
        except RowsRefused as refused:
            for p in refused.problems:
                click.echo(f"{csv_file.name}:{p}", err=True)
            lines = len({p.line for p in refused.problems})
            click.echo(f"{lines} bad line(s): nothing recorded; correct them and import again")
            raise SystemExit(EXIT_FAILED) from None
    meters = len({r.meter_id for r in done.readings})
    verb = "would record" if dry_run else "recorded"
    click.echo(
        f"{csv_file.name}: {verb} {len(done.readings)} reading(s) of {meters} meter(s)"
        + (" (dry run: nothing written)" if dry_run else " (manual)")
    )


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
    with billing_services(site_file, obj) as c:
        if period:
            instants = list(c.billing.calendar.bounds(period))
        elif at_text:
            instants = [instant_of(c.billing.calendar, at_text)]
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
@override_option
@click.pass_obj
def billing_apportion(
    obj: CliContext,
    site_file: str,
    period: str,
    pools: tuple[str, ...],
    dry_run: bool,
    override: str | None,
) -> None:
    """Share the common-area energy of PERIOD (again: the same result changes nothing; a
    different one reverses and re-posts). Refused before PERIOD's freeze instant and while
    a pool meter has no recent reading at it, unless --override says why."""
    with billing_services(site_file, obj) as c:
        if not c.billing.settings.apportionment:
            click.echo(
                "common-area apportionment is switched off for this site "
                "([billing] apportionment = false)"
            )
            return
        now, chosen = utcnow(), pools or None
        with c.db.begin() as conn:
            if dry_run:
                check = c.billing.period_check(conn, period, now=now, pools=chosen, drafts=False)
                _say_provisional(check)
            else:
                c.billing.require_closable(
                    conn,
                    period,
                    "apportionment",
                    now=now,
                    actor=operator(),
                    override=override,
                    pools=chosen,
                    drafts=False,
                )
            results = c.billing.apportionment.run(
                conn, period, pools=chosen, actor=operator(), now=now, dry_run=dry_run
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
    with billing_services(site_file, obj) as c:
        c.billing.apportionment.pool(pool)
        with c.db.begin() as conn:
            r = runs.approve(conn, f"pool:{pool}", period, actor=operator(), now=utcnow())
    _show_run(replace(r, reason=runs.approved_reason(r.reason)), c.site.info.tz)


@billing_group.command("charge")
@site_argument
@click.option("--period", required=True)
@click.option("--charge", "charges", multiple=True, help="Only these charges.")
@click.option("--dry-run", is_flag=True)
@override_option
@click.pass_obj
def billing_charge(
    obj: CliContext,
    site_file: str,
    period: str,
    charges: tuple[str, ...],
    dry_run: bool,
    override: str | None,
) -> None:
    """Charge the custom charges of [billing.charges] due in PERIOD (idempotent); refused
    before PERIOD has ended unless --override says why."""
    now = utcnow()
    with billing_services(site_file, obj) as c, c.db.begin() as conn:
        if dry_run:
            _say_provisional(c.billing.period_check(conn, period, now=now, pools=(), drafts=False))
        else:
            c.billing.require_closable(
                conn,
                period,
                "charges",
                now=now,
                actor=operator(),
                override=override,
                pools=(),
                drafts=False,
            )
        results = c.billing.charges.run(
            conn,
            period,
            charges=charges or None,
            actor=operator(),
            now=now,
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
    with billing_services(site_file, obj) as c:
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
@override_option
@click.pass_obj
def billing_month_end(obj: CliContext, site_file: str, period: str, override: str | None) -> None:
    """Apportionment, charges and post-paid drafts of PERIOD (what the service runs the day
    after the freeze instant); each step is idempotent. Refused before PERIOD's freeze
    instant and while a billed meter has no recent reading at it, unless --override says
    why."""
    steps = Billing.MONTH_END_STEPS
    with billing_services(site_file, obj) as c, progress_bar(f"{period}", len(steps)) as update:
        report = c.billing.month_end(
            c.db,
            period,
            actor=operator(),
            progress=lambda step, done: update(done, description=f"{period}: {step}"),
            override=override,
        )
    for event in report.overridden:
        click.echo(f"override recorded in the audit log: {event.detail}")
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
    with billing_services(site_file, obj) as c, c.db.read() as conn:
        rows = runs.list_run_listings(conn, period=period)
    tz = c.site.info.tz
    table = Table(
        "Runs",
        ["source", "period", "revision", "state", "amount", "posted", "approved", "reason"],
    )
    for r in rows:
        table.rows.append(
            [
                r.source,
                r.period,
                str(r.revision),
                r.state,
                format_fen(r.amount_fen),
                f"{r.posted_at.astimezone(tz):%Y-%m-%d %H:%M}" if r.posted_at else "",
                f"{r.approved_by}, {r.approved_at.astimezone(tz):%Y-%m-%d %H:%M}"
                if r.approved_by and r.approved_at
                else "",
                r.reason,
            ]
        )
    table.notes.append(f"Times in site time ({tz.key}).")
    echo_table(table)


@billing_group.command("statement")
@site_argument
@click.argument("account")
@click.option("--period")
@click.pass_obj
def billing_statement(obj: CliContext, site_file: str, account: str, period: str | None) -> None:
    """ACCOUNT's itemised charges (common area, property fee, rent, services, bills): the
    day (site time), what, the amount in yuan and how it is paid."""
    with billing_services(site_file, obj) as c, c.db.read() as conn:
        lines = statement(conn, account, c.site.info.tz, period=period)
    table = Table(
        f"Charges of {account}", ["date", "period", "what", "description", "amount", "paid how"]
    )
    for ln in lines:
        table.rows.append(
            [
                ln.day.isoformat(),
                ln.period,
                ln.what,
                ln.description,
                format_fen(ln.amount_fen),
                ln.how,
            ]
        )
    table.notes.append(f"Amounts in yuan (CNY); dates in site time ({c.site.info.tz.key}).")
    echo_table(table)
