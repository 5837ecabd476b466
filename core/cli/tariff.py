"""`openprepay tariff ...`: list, show, check and try out the site's tariffs."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from fractions import Fraction

import click

from ..errors import ConfigError, FieldError
from ..numbers import NumberRefused, read_decimal
from ..prepay.binding import TariffBinding
from ..prepay.settings import check_prepay, load_prepay
from ..rating.bills import bill_usage
from ..rating.engine import RatingError
from ..rating.rounding import fen_text
from ..rating.tariff_reading import check_tariffs, load_tariffs
from ..rating.tariffs import (
    DEFAULT_DAY_TABLE,
    ENERGY_PLACES,
    MAX_THRESHOLD,
    DayTable,
    Tariff,
    TariffVersion,
    TierMethod,
    hhmm,
)
from . import EXIT_CONFIG, CliContext
from .common import load_checked_site, site_argument
from .params import Count, PlainNumber


@click.group("tariff")
def tariff_group() -> None:
    """Tariffs of the site file: list, show, check, and rate a usage by hand."""


@tariff_group.command("list")
@site_argument
def list_command(site_file: str) -> None:
    """List the tariffs of SITE with their structure and versions."""
    site = load_checked_site(site_file)
    catalogue = load_tariffs(site)
    if not len(catalogue):
        click.echo(f"{site_file}: no [tariffs] defined")
        return
    today = dt.datetime.now(catalogue.tz).date()
    for tariff in catalogue:
        current = tariff.version_on(today)
        versions = len(tariff.versions)
        click.echo(
            f"{tariff.id:<20} {tariff.commodity:<11} {current.structure}"
            + (f"  [{versions} versions]" if versions > 1 else "")
        )
        if tariff.name != tariff.id:
            click.echo(f"{'':<20} {tariff.name}")


@tariff_group.command("show")
@site_argument
@click.argument("tariff_id", metavar="TARIFF")
def show_command(site_file: str, tariff_id: str) -> None:
    """Show TARIFF: rates, periods as a 24 h table, seasons, versions and tiers."""
    site = load_checked_site(site_file)
    catalogue = load_tariffs(site)
    if tariff_id not in catalogue:
        known = ", ".join(sorted(catalogue.tariffs)) or "none defined"
        raise click.BadParameter(f"unknown tariff {tariff_id!r} (defined: {known})")
    tariff = catalogue.get(tariff_id)
    click.echo(f"{tariff.id}: {tariff.name}  ({tariff.commodity}, per {tariff.unit})")
    click.echo(f"time zone {catalogue.timezone}; versions start at local midnight")
    for v in tariff.versions:
        _show_version(tariff, v)


def _show_version(tariff: Tariff, v: TariffVersion) -> None:
    since = "the beginning" if v.effective_from == dt.date.min else str(v.effective_from)
    click.echo("")
    click.echo(f"== from {since}: {v.structure}")
    if v.rates:
        click.echo("   rates (CNY per " + tariff.unit + "):")
        for name, price in v.rates.items():
            click.echo(f"     {name:<10} {price}")
    if v.registers:
        click.echo(f"   registers T1..T{len(v.registers)} → {', '.join(v.registers)}")
    for name, table in v.day_tables.items():
        title = "periods" if name == DEFAULT_DAY_TABLE else f"day table {name!r}"
        click.echo(f"   {title}:")
        for line in _day_table_lines(table):
            click.echo("     " + line)
    for season in v.seasons:
        table = "periods" if season.day_table == DEFAULT_DAY_TABLE else season.day_table
        click.echo(f"   season {season}: {table}")
    if v.seasons and DEFAULT_DAY_TABLE in v.day_tables:
        click.echo("   other days: periods")
    t = v.tiers
    if t is not None:
        when = (
            f"{t.settlement_month:02d}-{t.settlement_day:02d} {t.settlement_hour:02d}:00"
            if t.cycle == "annual"
            else f"day {t.settlement_day} {t.settlement_hour:02d}:00 each month"
        )
        click.echo(
            f"   tiers: {t.cycle}, settles {when}, thresholds prorated: {t.proration}; "
            "≤ threshold stays in the lower tier"
        )
        bounds = [Decimal(0), *t.thresholds]
        for j in range(t.count):
            lo = bounds[j]
            span = f"> {lo}" if j == t.count - 1 else f"{lo}–{t.thresholds[j]}"
            span = f"{span} {tariff.unit}"
            if t.method is TierMethod.PRICES:
                what = f"price {t.amounts[j]}"
            elif t.method is TierMethod.M1:
                what = f"+{t.amounts[j]} on every rate"
            else:
                adders = t.period_adders[j]
                what = ", ".join(f"{r} +{a}" for r, a in adders.items()) or "+0"
            click.echo(f"     tier {j + 1}: {span:<22} {what}")


def _day_table_lines(table: DayTable) -> list[str]:
    """A 24 h strip (one character per half hour) and the periods."""
    names: list[str] = []
    for p in table.given or table.periods:
        if p.rate not in names:
            names.append(p.rate)
    letters = _letters(names)
    strip = "".join(letters[table.rate_at(m)] for m in range(0, 24 * 60, 30))
    marks = "".join(f"{h:<4}" for h in range(0, 24, 2)) + "24"
    lines = [marks, "|" + strip + "|"]
    lines.append("  ".join(f"{letters[n]} = {n}" for n in names))
    for p in table.periods:
        lines.append(f"{hhmm(p.start)}–{hhmm(p.end)}  {p.rate}")
    return lines


def _letters(names: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in names:
        for ch in name.upper() + name.lower() + "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
            if ch.isalnum() and ch not in out.values():
                out[name] = ch
                break
    return out


@tariff_group.command("check")
@site_argument
@click.pass_obj
def check_command(obj: CliContext, site_file: str) -> None:
    """Validate [tariffs] and [prepay] of SITE; each error names its entry. Exit 2 on errors.
    The default tariffs are also checked against the registers of the site's room meters."""
    site = load_checked_site(site_file)
    errors: list[FieldError] = check_tariffs(site) + check_prepay(site)
    if not errors:
        errors = TariffBinding.for_site(site, obj.plugins.models).site_problems()
    if errors:
        click.echo(f"{site_file}: {len(errors)} error(s)", err=True)
        for e in errors:
            click.echo(f"  {e}", err=True)
        raise SystemExit(EXIT_CONFIG)
    n = len(site.sections.get("tariffs", {}) or {})
    click.echo(f"{site_file}: OK — {n} tariff(s); [prepay] valid")


@tariff_group.command("rate")
@site_argument
@click.argument("tariff_id", metavar="TARIFF")
@click.option(
    "--kwh",
    "--m3",
    "usage",
    required=True,
    help="Usage: RATE=QTY,... for a time-of-use tariff (sharp=10,peak=50) or one quantity.",
)
@click.option(
    "--before",
    default="0",
    show_default=True,
    type=PlainNumber(0, MAX_THRESHOLD, places=ENERGY_PLACES, example="2880"),
    help="Energy already used this tier cycle (year- or month-to-date).",
)
@click.option("--on", "on", default=None, help="Price date YYYY-MM-DD (default: today).")
@click.option("--from", "start", default=None, help="Period start YYYY-MM-DD (with --to).")
@click.option("--to", "end", default=None, help="Period end YYYY-MM-DD, exclusive.")
@click.option(
    "--days", type=Count(1, 366), default=None, help="Prorate thresholds: days in the period."
)
def rate_command(
    site_file: str,
    tariff_id: str,
    usage: str,
    before: Decimal,
    on: str | None,
    start: str | None,
    end: str | None,
    days: int | None,
) -> None:
    """Bill a usage with TARIFF line by line, like the worked examples of the domain spec."""
    site = load_checked_site(site_file)
    catalogue = load_tariffs(site)
    settings = load_prepay(site)
    if tariff_id not in catalogue:
        known = ", ".join(sorted(catalogue.tariffs)) or "none defined"
        raise click.BadParameter(f"unknown tariff {tariff_id!r} (defined: {known})")
    tariff = catalogue.get(tariff_id)
    quantities = _parse_usage(usage)
    period = None
    if start or end:
        if not (start and end):
            raise click.BadParameter("give both --from and --to")
        period = (_date(start, "--from"), _date(end, "--to"))
    day = _date(on, "--on") if on else dt.datetime.now(catalogue.tz).date()
    factor = Fraction(1)
    if days is not None:
        version = tariff.version_on(period[0] if period else day)
        if version.tiers is not None:
            base = 30 if version.tiers.cycle == "monthly" else 365
            factor = Fraction(days, base)
    try:
        bill = bill_usage(
            tariff,
            quantities,
            on=day,
            period=period,
            cycle_energy_before=before,
            threshold_factor=factor,
            rounding=settings.rounding,
        )
    except RatingError as exc:
        raise ConfigError("tariff rate", [FieldError(tariff_id, str(exc))]) from None
    click.echo(f"{tariff.id}: {tariff.name}")
    for line in bill.lines:
        click.echo(
            f"  {line.label:<28} {line.quantity_text:>10} {line.unit:<3} × "
            f"{line.unit_price:<8} = {fen_text(line.amount_fen):>10}"
        )
    for note in bill.notes:
        click.echo(f"  ({note})")
    exact = Decimal(bill.total_exact_fen.numerator) / Decimal(bill.total_exact_fen.denominator)
    click.echo(
        f"  {'total':<28} {_q(bill.energy):>10} {bill.unit:<3}   {'':<8}   "
        f"{fen_text(bill.total_fen):>10} CNY"
    )
    if exact != bill.total_fen:
        click.echo(f"  (exact {exact / 100:f} CNY, rounded {settings.rounding})")
    click.echo(f"  cycle energy after: {_q(bill.cycle_energy_after)} {bill.unit}")


def _q(x: object) -> str:
    from fractions import Fraction

    f = Fraction(x)  # type: ignore[arg-type]
    q = Decimal(f.numerator) / Decimal(f.denominator)
    return f"{q.quantize(Decimal('0.01')):f}"


def _parse_usage(text: str) -> dict[str, Decimal] | Decimal:
    text = text.strip()
    if "=" not in text:
        return _quantity(text)
    out: dict[str, Decimal] = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        if not name.strip():
            raise click.BadParameter(f"expected RATE=QTY, got {part!r}", param_hint="--kwh")
        out[name.strip()] = out.get(name.strip(), Decimal(0)) + _quantity(value)
    return out


def _quantity(text: str) -> Decimal:
    try:
        return read_decimal(
            text,
            places=ENERGY_PLACES,
            low=Decimal(0),
            high=MAX_THRESHOLD,
            what="a quantity",
            example="50",
        )
    except NumberRefused as refused:
        raise click.BadParameter(refused.message, param_hint="--kwh") from None


def _date(text: str, hint: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(f"expected YYYY-MM-DD, got {text!r}", param_hint=hint) from None


def register(cli: click.Group) -> None:
    cli.add_command(tariff_group)
