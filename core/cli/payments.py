"""`openprepay payments list|show`: the online payment orders as an operator reads them
(times in site time, amounts in yuan)."""

from __future__ import annotations

import json
from datetime import datetime

import click

from ..ledger import format_fen
from ..payments.orders import PaymentOrder
from ..payments.states import OrderState
from . import CliContext
from .common import site_argument
from .prepay import site_operations


@click.group("payments")
def payments_group() -> None:
    """Online payment orders (WeChat Pay, Alipay...): list, show, refund, reconcile."""


def _at(value: datetime | None, tz: object) -> str:
    return value.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S") if value else "-"  # type: ignore[arg-type]


@payments_group.command("list")
@site_argument
@click.option(
    "--state",
    type=click.Choice([s.value for s in OrderState], case_sensitive=False),
    help="Only orders in this state (CONFLICT: the ones a person must look at).",
)
@click.option("--account", "account_id", metavar="ACCOUNT", help="Only this account's orders.")
@click.option("--limit", type=click.IntRange(1, 10000), default=200, show_default=True)
@click.pass_obj
def payments_list(
    obj: CliContext, site_file: str, state: str | None, account_id: str | None, limit: int
) -> None:
    """List orders, newest first: created (site time), order number, state, amount,
    channel, account and room."""
    with site_operations(site_file, obj) as ops:
        tz = ops.site.info.tz
        orders = ops.payment_orders(
            state=state.upper() if state else None, account_id=account_id, limit=limit
        )
    click.echo(
        f"{'CREATED':<19}  {'OUT_TRADE_NO':<32}  {'STATE':<9} {'AMOUNT':>10}  "
        f"{'CHANNEL':<14} {'ACCOUNT':<12} ROOM"
    )
    for o in orders:
        click.echo(
            f"{_at(o.created_at, tz):<19}  {o.out_trade_no:<32}  {o.state.value:<9} "
            f"{format_fen(o.amount_fen):>10}  {o.channel + '/' + o.method:<14} "
            f"{o.account_id:<12} {o.room or '-'}"
        )
    click.echo(f"{len(orders)} order(s)")


@payments_group.command("show")
@site_argument
@click.argument("out_trade_no", metavar="OUT_TRADE_NO")
@click.pass_obj
def payments_show(obj: CliContext, site_file: str, out_trade_no: str) -> None:
    """One order: its state and times (site time), the provider's transaction id, a
    conflict's reason, the last notice the provider sent and the order's refunds."""
    from .payment_refunds import refund_line

    with site_operations(site_file, obj) as ops:
        tz = ops.site.info.tz
        o = ops.payment_order(out_trade_no)
        refunds = ops.payment_refunds(out_trade_no=out_trade_no, limit=10000)
    for line in _show(o, tz):
        click.echo(line)
    if refunds:
        click.echo(f"refunds      {len(refunds)} (newest first)")
        for r in refunds:
            click.echo("  " + refund_line(r, tz))


def _show(o: PaymentOrder, tz: object) -> list[str]:
    lines = [
        f"order        {o.out_trade_no}",
        f"state        {o.state.value}",
        f"amount       {format_fen(o.amount_fen)} {o.currency}",
        f"channel      {o.channel} ({o.method}), merchant {o.merchant_id}, app {o.app_id}",
        f"account      {o.account_id} (room {o.room or '-'})",
        f"transaction  {o.transaction_id or '-'}",
        f"created      {_at(o.created_at, tz)} by {o.requested_by}",
        f"expires      {_at(o.expires_at, tz)}",
        f"paid         {_at(o.paid_at, tz)}",
        f"credited     {_at(o.credited_at, tz)}",
        f"closed       {_at(o.closed_at, tz)}",
        f"last query   {_at(o.last_query_at, tz)}",
        f"notices      {o.notices}",
        "times in site time",
    ]
    if o.refunded_fen:
        lines.insert(3, f"refunded     {format_fen(o.refunded_fen)}")
    if o.conflict:
        lines.insert(2, f"CONFLICT     {o.conflict} — a person must decide (credit or refund)")
    if o.last_notice:
        lines.append(
            "last notice  " + json.dumps(o.last_notice, ensure_ascii=False, sort_keys=True)
        )
    return lines


def register(cli: click.Group) -> None:
    from . import payment_refunds

    payment_refunds.register(payments_group)  # refund, refunds, reconcile, reconciliations
    cli.add_command(payments_group)
