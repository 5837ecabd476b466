"""`openprepay payments refund|refunds|reconcile|reconciliations`: refunds of online
payments and the daily trade-bill reconciliation, as an operator asks for and reads them.

`refund` only records the refund (the wallet debited, in one transaction with the refund
row); the running service's payment service sends it to the provider within its poll and
follows it to SUCCESS. `reconcile` downloads the provider's trade bill itself (the site's
provider settings) and reconciles it on the site's database.
"""

from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta
from typing import Any

import click

from ..errors import OpenPrepayError
from ..ledger import format_fen
from ..money import parse_yuan
from ..payments.refunds import PaymentRefund, RefundState
from ..payments.service import PaymentService
from . import CliContext
from .common import site_argument
from .database import operator
from .prepay import site_operations


@click.command("refund")
@site_argument
@click.argument("out_trade_no", metavar="OUT_TRADE_NO")
@click.argument("amount", metavar="AMOUNT")
@click.option("--reason", required=True, help="Why (audited; sent to the provider).")
@click.option(
    "--force",
    is_flag=True,
    help="Refund even when the energy wallet lacks the money (the tenant used it): the "
    "account goes into arrears.",
)
@click.option(
    "--refund-no",
    metavar="NUMBER",
    help="The refund's number (1-64 of 0-9 A-Z a-z _ - | * @): the same number again "
    "refunds once. Default: a new one.",
)
@click.pass_obj
def payments_refund(
    obj: CliContext,
    site_file: str,
    out_trade_no: str,
    amount: str,
    reason: str,
    force: bool,
    refund_no: str | None,
) -> None:
    """Refund AMOUNT (yuan, e.g. 20.00) of a CREDITED order to its payer: the wallet is
    debited now; the running service asks the provider and follows the refund."""
    amount_fen = parse_yuan(amount, "amount", low_fen=1)
    with site_operations(site_file, obj) as ops:
        outcome = ops.request_refund(
            out_trade_no,
            amount_fen,
            reason,
            actor=operator(),
            force=force,
            out_refund_no=refund_no,
        )
    r = outcome.refund
    if outcome.replayed:
        click.echo(f"refund {r.out_refund_no} exists already ({r.state}): nothing changed")
        return
    click.echo(
        f"refund {r.out_refund_no}: {format_fen(r.amount_fen)} of order {r.out_trade_no} "
        f"REQUESTED; energy balance {format_fen(outcome.balance_fen or 0)}"
        + (
            " (forced: the account is in arrears)"
            if force and (outcome.balance_fen or 0) < 0
            else ""
        )
    )
    click.echo(f"the running service sends it to {r.channel} within its payments poll")


@click.command("refunds")
@site_argument
@click.option("--state", type=click.Choice([s.value for s in RefundState], case_sensitive=False))
@click.option("--order", "out_trade_no", metavar="OUT_TRADE_NO", help="Only this order's.")
@click.option("--limit", type=click.IntRange(1, 10000), default=200, show_default=True)
@click.pass_obj
def payments_refunds(
    obj: CliContext, site_file: str, state: str | None, out_trade_no: str | None, limit: int
) -> None:
    """List refunds, newest first (site time)."""
    with site_operations(site_file, obj) as ops:
        tz = ops.site.info.tz
        refunds = ops.payment_refunds(
            state=state.upper() if state else None, out_trade_no=out_trade_no, limit=limit
        )
    click.echo(
        f"{'CREATED':<19}  {'OUT_REFUND_NO':<42} {'STATE':<10} {'AMOUNT':>10}  {'ORDER':<32} WHY"
    )
    for r in refunds:
        click.echo(refund_line(r, tz))
    click.echo(f"{len(refunds)} refund(s)")


def refund_line(r: PaymentRefund, tz: Any) -> str:
    why = r.failure or r.reason
    return (
        f"{_at(r.created_at, tz):<19}  {r.out_refund_no:<42} {r.state.value:<10} "
        f"{format_fen(r.amount_fen):>10}  {r.out_trade_no:<32} {why}"
    )


@click.command("reconcile")
@site_argument
@click.option(
    "--day",
    metavar="YYYY-MM-DD",
    help="The bill's day (default: yesterday, site time).",
)
@click.option("--channel", metavar="CHANNEL", help="Only this provider (default: every one).")
@click.pass_obj
def payments_reconcile(
    obj: CliContext, site_file: str, day: str | None, channel: str | None
) -> None:
    """Download each provider's trade bill of the day and reconcile it with our orders:
    paid there and not credited here → credited now; credited here and not paid there,
    other amounts, trades unknown here → reported (exit status 1 when any)."""
    with site_operations(site_file, obj) as ops:
        providers = obj.plugins.payment_providers(ops.site)
        if not providers:
            raise OpenPrepayError("no payment provider configured ([payments.wechat], …)")
        ops.use_providers(providers)
        chosen = [channel] if channel else sorted(ops.payment_providers)
        for name in chosen:
            if name not in ops.payment_providers:
                raise click.BadParameter(
                    f"{name!r} is not configured (configured: "
                    f"{', '.join(sorted(ops.payment_providers))})",
                    param_hint="--channel",
                )
        when = _day(day, ops.site.info.tz)
        service = PaymentService(ops, ops.payment_providers)
        results = [asyncio.run(service.reconcile(n, when, actor=operator())) for n in chosen]
    differences = 0
    for x in results:
        click.echo(
            f"{x.channel} {x.day}: {x.state} — {x.bill_rows} bill rows, {x.matched} matched, "
            f"{x.credited} credited, {x.differences} difference(s); paid "
            f"{format_fen(x.paid_fen)}, refunded {format_fen(x.refunded_fen)}"
            + (f"; {x.error}" if x.error else "")
        )
        for f in x.report:
            amount = format_fen(f["amount_fen"])
            click.echo(
                f"  {f['kind']:<20} {f['out_trade_no']:<32} {amount:>10}  "
                f"{f['detail']}; {f['outcome']}"
            )
        differences += x.differences + (x.state == "FAILED")
    if differences:
        raise SystemExit(1)


@click.command("reconciliations")
@site_argument
@click.option("--channel", metavar="CHANNEL", help="Only this provider.")
@click.option("--limit", type=click.IntRange(1, 10000), default=30, show_default=True)
@click.pass_obj
def payments_reconciliations(
    obj: CliContext, site_file: str, channel: str | None, limit: int
) -> None:
    """The reconciled days, newest first: state, counts, paid and refunded totals."""
    with site_operations(site_file, obj) as ops:
        rows = ops.reconciliations(channel=channel, limit=limit)
    click.echo(
        f"{'DAY':<10}  {'CHANNEL':<8} {'STATE':<11} {'ROWS':>5} {'MATCHED':>7} "
        f"{'CREDITED':>8} {'DIFF':>5} {'PAID':>12} {'REFUNDED':>10}"
    )
    for x in rows:
        click.echo(
            f"{x.day.isoformat():<10}  {x.channel:<8} {x.state:<11} {x.bill_rows:>5} "
            f"{x.matched:>7} {x.credited:>8} {x.differences:>5} {format_fen(x.paid_fen):>12} "
            f"{format_fen(x.refunded_fen):>10}"
        )
    click.echo(f"{len(rows)} day(s)")


def register(group: click.Group) -> None:
    """Add the commands to `openprepay payments`."""
    for command in (
        payments_refund,
        payments_refunds,
        payments_reconcile,
        payments_reconciliations,
    ):
        group.add_command(command)


def _at(value: datetime | None, tz: Any) -> str:
    return value.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _day(value: str | None, tz: Any) -> date:
    if value is None:
        return datetime.now(tz).date() - timedelta(days=1)
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(
            f"expected YYYY-MM-DD, got {value!r}", param_hint="--day"
        ) from None
