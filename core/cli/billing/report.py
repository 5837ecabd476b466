"""`openprepay report ...`: finance and energy reports, on screen, as CSV or as XLSX (with
charts)."""

from __future__ import annotations

import datetime as dt

import click

from ...events import utcnow
from .. import CliContext
from ..common import site_argument
from ..params import Count
from .common import FROM, OUT, TO, output, parse_day, span
from .services import billing_services


@click.group("report")
def report_group() -> None:
    """Finance and energy reports (screen, CSV or XLSX with charts)."""


BASIS = click.option(
    "--basis",
    default="posting",
    show_default=True,
    type=click.Choice(["posting", "service"]),
    help="posting: by journal time (the ledger's months); service: by the period each "
    "posting pays for (readings, runs, bills).",
)
BY = click.option(
    "--by", default="month", show_default=True, type=click.Choice(["day", "month", "year", "range"])
)


@report_group.command("revenue")
@site_argument
@FROM
@TO
@BY
@BASIS
@OUT
@click.pass_obj
def report_revenue(
    obj: CliContext,
    site_file: str,
    from_text: str,
    to_text: str,
    by: str,
    basis: str,
    out: str | None,
) -> None:
    """Revenue and its composition (electricity, water, common area, property, rent...),
    by posting date or by service period."""
    with billing_services(site_file, obj) as c, c.db.read() as conn:
        table = c.reports.revenue(conn, *span(from_text, to_text), by, basis)
    output([table], out)


@report_group.command("revenue-bases")
@site_argument
@FROM
@TO
@BY
@OUT
@click.pass_obj
def report_revenue_bases(
    obj: CliContext, site_file: str, from_text: str, to_text: str, by: str, out: str | None
) -> None:
    """Revenue by posting date against by service period, bucket by bucket, with what
    moved between them."""
    with billing_services(site_file, obj) as c, c.db.read() as conn:
        table = c.reports.revenue_bases(conn, *span(from_text, to_text), by)
    output([table], out)


@report_group.command("channels")
@site_argument
@FROM
@TO
@BY
@OUT
@click.pass_obj
def report_channels(
    obj: CliContext, site_file: str, from_text: str, to_text: str, by: str, out: str | None
) -> None:
    """Money received and refunded per payment channel (cash, WeChat, Alipay, bank...)."""
    with billing_services(site_file, obj) as c, c.db.read() as conn:
        table = c.reports.channels(conn, *span(from_text, to_text), by)
    output([table], out)


@report_group.command("payments")
@site_argument
@FROM
@TO
@BY
@OUT
@click.pass_obj
def report_payments(
    obj: CliContext, site_file: str, from_text: str, to_text: str, by: str, out: str | None
) -> None:
    """Online payment orders per channel: credited, refunded, closed, open, conflicts."""
    with billing_services(site_file, obj) as c, c.db.read() as conn:
        table = c.reports.payment_orders(conn, *span(from_text, to_text), by)
    output([table], out)


@report_group.command("orders")
@site_argument
@FROM
@TO
@click.option("--account")
@OUT
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
    with billing_services(site_file, obj) as c, c.db.read() as conn:
        table = c.reports.orders(conn, *span(from_text, to_text), account=account)
    output([table], out)


@report_group.command("energy")
@site_argument
@click.option("--month", required=True, help="e.g. 2025-03")
@click.option("--water", is_flag=True)
@OUT
@click.pass_obj
def report_energy(
    obj: CliContext, site_file: str, month: str, water: bool, out: str | None
) -> None:
    """The monthly comprehensive report per room: total and 尖/峰/平/谷 energy and cost,
    against the same month last year."""
    with billing_services(site_file, obj) as c, c.db.read() as conn:
        table = c.reports.monthly(conn, month, "water" if water else "electricity")
    output([table], out)


@report_group.command("meters")
@site_argument
@FROM
@TO
@click.option("--by", default="day", show_default=True, type=click.Choice(["day", "month", "year"]))
@click.option("--water", is_flag=True)
@click.option("--meter", "meters", multiple=True)
@OUT
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
    with billing_services(site_file, obj) as c, c.db.read() as conn:
        table = c.reports.meter_energy(
            conn,
            *span(from_text, to_text),
            by,
            "water" if water else "electricity",
            list(meters) or None,
        )
    output(
        [c.reports.energy_by_bucket(table), table] if out and out.endswith(".xlsx") else [table],
        out,
    )


@report_group.command("loss")
@site_argument
@FROM
@TO
@click.option("--building")
@OUT
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
    with billing_services(site_file, obj) as c, c.db.read() as conn:
        table = c.loss.series_table(conn, *span(from_text, to_text), building)
    output([table], out)


@report_group.command("suspects")
@site_argument
@click.option("--to", "to_text", help="Last day of the window (default yesterday).")
@click.option("--days", default=14, show_default=True, type=Count(2, 366))
@click.option("--building")
@OUT
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
    with billing_services(site_file, obj) as c:
        today = utcnow().astimezone(c.site.info.tz).date()
        end = parse_day(to_text, "to") + dt.timedelta(days=1) if to_text else today
        with c.db.read() as conn:
            table = c.loss.suspects_table(conn, end, days, building)
    if not table.rows and out is None:
        click.echo("no room looks bypassed")
        return
    output([table], out)
