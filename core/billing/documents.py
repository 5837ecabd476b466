"""Bills and arrears notices as documents: CSV and XLSX tables for the clerk, one printable
HTML page per bill or notice for the tenant (print it, or save it as PDF from a browser).

`export_bills(period)` writes `bills-<period>.csv` (one row per bill), `bill-lines-<period>
.csv` (every line), `bills-<period>.xlsx` (both sheets) and `bills-<period>/<number>.html`;
`export_arrears(as_of)` writes `arrears-<date>.csv`, `.xlsx` and one notice page per
account. Amounts are the bills' own fen shown as yuan; nothing is computed here. A void
bill is listed, marked, and never counted or summed. Pages are in the site's bill language
(`[billing.bills] language`) with the issuer's contact and payment instructions
(`printed`, `bill_rows`, `bill_text`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..config.site import Site
from ..db import schema as t
from ..ledger import format_fen
from .bill_rows import printed_lines
from .bill_text import Words
from .bills import Bills
from .bills.model import Arrear, BillState, BillView
from .export import Table, write_csv, write_xlsx, yuan
from .printed import BillFacts, Issuer, PaymentShown, bill_html, notice_html
from .settings import BillSettings


def _accounts(conn: Connection, ids: Sequence[str]) -> dict[str, Any]:
    rows = {}
    ids = sorted(set(ids))
    for i in range(0, len(ids), 5000):
        for r in conn.execute(
            sa.select(t.account.c.id, t.account.c.name, t.account.c.room).where(
                t.account.c.id.in_(ids[i : i + 5000])
            )
        ).all():
            rows[r.id] = r
    return rows


def bill_tables(bills: Sequence[BillView], accounts: Mapping[str, Any]) -> tuple[Table, Table]:
    """The bills and their lines. A void bill stays listed, marked VOID with its reason,
    but is not counted or summed; outstanding is what confirmed and issued bills still owe
    (the ledger's receivable and the arrears list), so a draft or a void bill owes 0."""
    summary = Table(
        "Bills",
        [
            "bill",
            "account",
            "tenant",
            "room",
            "period",
            "from",
            "to",
            "state",
            "total",
            "paid",
            "outstanding",
            "due",
            "void reason",
        ],
        sheet="Bills",
        notes=[
            "Void bills are listed but not counted or summed. Outstanding: what confirmed and "
            "issued bills still owe (drafts are not owed yet)."
        ],
    )
    lines = Table(
        "Bill lines",
        ["bill", "state", "account", "kind", "description", "quantity", "unit price", "amount"],
        sheet="Lines",
    )
    for b in bills:
        summary.rows.append(_summary_row(b, accounts.get(b.account_id)))
        lines.rows.extend(_line_rows(b))
    live = [b for b in bills if b.state != BillState.VOID]
    total = sum(b.total_fen for b in live)
    paid = sum(b.paid_fen for b in live)
    void = len(bills) - len(live)
    summary.total = [
        "total",
        f"{len(live)} bills" + (f" ({void} void, not counted)" if void else ""),
        *([""] * 6),
        yuan(total),
        yuan(paid),
        yuan(sum(b.outstanding_fen for b in live)),
        "",
        "",
    ]
    return summary, lines


def _summary_row(b: BillView, account: Any) -> list[Any]:
    return [
        b.number,
        b.account_id,
        account.name if account else "",
        (account.room or "") if account else "",
        b.period,
        b.start_date,
        _last_day(b.end_date),
        b.state,
        yuan(b.total_fen),
        yuan(b.paid_fen),
        yuan(b.outstanding_fen),
        b.due_date or "",
        b.void_reason or "",
    ]


def _line_rows(b: BillView) -> list[list[Any]]:
    """A bill's lines for the clerk: descriptions as stored, quantities at the precision
    of the reading."""
    out: list[list[Any]] = []
    for ln in b.lines:
        if ln.get("kind") == "meter_reading":
            out.append([b.number, b.state, b.account_id, "reading", ln["description"], "", "", ""])
            continue
        quantity = (
            f"{ln['quantity_value']} {ln['unit']}"
            if "quantity_value" in ln
            else ln.get("quantity", "")
        )
        out.append(
            [
                b.number,
                b.state,
                b.account_id,
                ln["kind"],
                ln["description"],
                quantity,
                ln.get("unit_price", ""),
                yuan(int(ln["amount_fen"])),
            ]
        )
    return out


def _last_day(end: str) -> str:
    return (dt.date.fromisoformat(end) - dt.timedelta(days=1)).isoformat()


def issuer(site: Site, settings: BillSettings) -> Issuer:
    """Who issues the site's bills (`[billing.bills]`; the site's name by default)."""
    return Issuer(
        settings.issuer_name or site.info.name,
        settings.issuer_address,
        settings.issuer_phone,
        settings.payment_instructions,
    )


def bill_page(
    site: Site,
    settings: BillSettings,
    bill: BillView,
    account: Any,
    *,
    payments: Sequence[PaymentShown] = (),
    earlier_unpaid_fen: int = 0,
    payment_qr: str | None = None,
) -> str:
    """One printable page (see `printed.bill_html`) in the site's bill language.
    `payment_qr`: the room's payment QR code image, once online payment provides it."""
    words = Words(settings.language, site.info.currency)
    rows, readings = printed_lines(bill.lines, words)
    tz = site.info.tz
    facts = BillFacts(
        bill.number,
        bill.state,
        bill.account_id,
        account.name if account else "",
        (account.room or "") if account else "",
        bill.start_date,
        _last_day(bill.end_date),
        bill.issued_at.astimezone(tz).date().isoformat() if bill.issued_at else "",
        bill.due_date or "",
        bill.total_fen,
        bill.paid_fen,
        bill.void_reason or "",
    )
    return bill_html(
        words,
        issuer(site, settings),
        facts,
        rows,
        readings,
        payments,
        earlier_unpaid_fen=earlier_unpaid_fen,
        payment_qr=payment_qr,
    )


def shown_payments(bill: BillView, tz: dt.tzinfo) -> list[PaymentShown]:
    """The payments applied to `bill` (oldest first), whatever their kind — cash, WeChat, a
    credit applied... — each with the part this bill received (`BillView.payments`, read
    with the bill)."""
    return [
        PaymentShown(p.at.astimezone(tz).date().isoformat(), p.channel, p.reference, p.amount_fen)
        for p in bill.payments
    ]


#: The room's payment QR code for an account (an image: `data:image/...` or an https
#: address), or None; the online-payment work provides it.
PaymentQr = Callable[[str], str | None]


def export_bills(
    conn: Connection,
    bills: Bills,
    period: str,
    out: Path,
    *,
    formats: Sequence[str] = ("csv", "xlsx", "html"),
    payment_qr: PaymentQr | None = None,
) -> list[Path]:
    """`bills-<period>.csv`, `bill-lines-<period>.csv`, `bills-<period>.xlsx` and one
    printable page per bill in `bills-<period>/` (see the module docstring)."""
    out.mkdir(parents=True, exist_ok=True)
    views = bills.list(conn, period=period)
    accounts = _accounts(conn, [b.account_id for b in views])
    summary, lines = bill_tables(views, accounts)
    summary.title = f"Bills {period}"
    written = []
    if "csv" in formats:
        written.append(write_csv(summary, out / f"bills-{period}.csv"))
        written.append(write_csv(lines, out / f"bill-lines-{period}.csv"))
    if "xlsx" in formats:
        written.append(write_xlsx([summary, lines], out / f"bills-{period}.xlsx"))
    if "html" in formats:
        folder = out / f"bills-{period}"
        folder.mkdir(exist_ok=True)
        earlier = _unpaid_before(conn, period)
        for b in views:
            path = folder / f"{b.number}.html"
            page = bill_page(
                bills.site,
                bills.settings.bills,
                b,
                accounts.get(b.account_id),
                payments=shown_payments(b, bills.site.info.tz),
                earlier_unpaid_fen=earlier.get(b.account_id, 0),
                payment_qr=payment_qr(b.account_id) if payment_qr else None,
            )
            path.write_text(page, encoding="utf-8")
            written.append(path)
    return written


def _unpaid_before(conn: Connection, period: str) -> dict[str, int]:
    b = t.bill
    return {
        a: int(v)
        for a, v in conn.execute(
            sa.select(b.c.account_id, sa.func.sum(b.c.total_fen - b.c.paid_fen))
            .where(b.c.period < period, b.c.state.in_(["CONFIRMED", "ISSUED"]))
            .group_by(b.c.account_id)
        ).all()
    }


def arrears_table(arrears: Sequence[Arrear], as_of: dt.date) -> Table:
    table = Table(
        f"Arrears on {as_of}",
        [
            "bill",
            "account",
            "tenant",
            "room",
            "period",
            "due",
            "days overdue",
            "total",
            "paid",
            "outstanding",
            "late fee so far",
        ],
        sheet="Arrears",
        notes=["Late fees accrued so far are shown, not posted: the next bill carries them."],
    )
    for a in arrears:
        table.rows.append(
            [
                a.number,
                a.account_id,
                a.name,
                a.room or "",
                a.period,
                a.due_date,
                a.days_overdue,
                yuan(a.total_fen),
                yuan(a.paid_fen),
                yuan(a.outstanding_fen),
                yuan(a.late_fee_fen),
            ]
        )
    table.total = [
        "total",
        f"{len({a.account_id for a in arrears})} accounts",
        "",
        "",
        "",
        "",
        "",
        yuan(sum(a.total_fen for a in arrears)),
        yuan(sum(a.paid_fen for a in arrears)),
        yuan(sum(a.outstanding_fen for a in arrears)),
        yuan(sum(a.late_fee_fen for a in arrears)),
    ]
    return table


def notice_page(
    site: Site,
    settings: BillSettings,
    account_id: str,
    arrears: Sequence[Arrear],
    as_of: dt.date,
    *,
    payment_qr: str | None = None,
) -> str:
    """An account's arrears notice, in the site's bill language (`printed.notice_html`)."""
    first = arrears[0]
    rows = [
        [
            a.number,
            a.period,
            a.due_date,
            str(a.days_overdue),
            format_fen(a.outstanding_fen),
            format_fen(a.late_fee_fen),
        ]
        for a in arrears
    ]
    owed = sum(a.outstanding_fen for a in arrears)
    fees = sum(a.late_fee_fen for a in arrears)
    return notice_html(
        Words(settings.language, site.info.currency),
        issuer(site, settings),
        {"account": account_id, "tenant": first.name, "room": first.room or ""},
        as_of.isoformat(),
        rows,
        (owed, fees),
        payment_qr=payment_qr,
    )


def export_arrears(
    conn: Connection,
    bills: Bills,
    as_of: dt.date,
    out: Path,
    *,
    formats: Sequence[str] = ("csv", "xlsx", "html"),
    payment_qr: PaymentQr | None = None,
) -> list[Path]:
    """`arrears-<date>.csv`, `.xlsx` and one notice page per account in `arrears-<date>/`."""
    out.mkdir(parents=True, exist_ok=True)
    arrears = bills.arrears(conn, as_of)
    table = arrears_table(arrears, as_of)
    written = []
    if "csv" in formats:
        written.append(write_csv(table, out / f"arrears-{as_of}.csv"))
    if "xlsx" in formats:
        written.append(write_xlsx([table], out / f"arrears-{as_of}.xlsx"))
    if "html" in formats:
        folder = out / f"arrears-{as_of}"
        folder.mkdir(exist_ok=True)
        per: dict[str, list[Arrear]] = {}
        for a in arrears:
            per.setdefault(a.account_id, []).append(a)
        for account_id, items in sorted(per.items()):
            path = folder / f"notice-{account_id}.html"
            page = notice_page(
                bills.site,
                bills.settings.bills,
                account_id,
                items,
                as_of,
                payment_qr=payment_qr(account_id) if payment_qr else None,
            )
            path.write_text(page, encoding="utf-8")
            written.append(path)
    return written
