"""Bills and arrears notices as documents: CSV and XLSX tables, one printable HTML page per
bill or notice (print it, or save it as PDF from a browser).

`export_bills(period)` writes `bills-<period>.csv` (one row per bill), `bill-lines-<period>
.csv` (every line), `bills-<period>.xlsx` (both sheets) and `bills-<period>/<number>.html`;
`export_arrears(as_of)` writes `arrears-<date>.csv`, `.xlsx` and one notice page per
account. Amounts are the bills' own fen shown as yuan; nothing is computed here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..config.site import Site
from ..db import schema as t
from ..ledger import format_fen
from .bills import Bills
from .bills.model import Arrear, BillView
from .export import Table, page, write_csv, write_xlsx, yuan


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
        ],
        sheet="Bills",
    )
    lines = Table(
        "Bill lines",
        ["bill", "account", "kind", "description", "quantity", "unit price", "amount"],
        sheet="Lines",
    )
    for b in bills:
        a = accounts.get(b.account_id)
        summary.rows.append(
            [
                b.number,
                b.account_id,
                a.name if a else "",
                (a.room or "") if a else "",
                b.period,
                b.start_date,
                _last_day(b.end_date),
                b.state,
                yuan(b.total_fen),
                yuan(b.paid_fen),
                yuan(b.total_fen - b.paid_fen),
                b.due_date or "",
            ]
        )
        for ln in b.lines:
            if ln.get("kind") == "meter_reading":
                lines.rows.append(
                    [b.number, b.account_id, "reading", ln["description"], "", "", ""]
                )
                continue
            lines.rows.append(
                [
                    b.number,
                    b.account_id,
                    ln["kind"],
                    ln["description"],
                    ln.get("quantity", ""),
                    ln.get("unit_price", ""),
                    yuan(int(ln["amount_fen"])),
                ]
            )
    total = sum(b.total_fen for b in bills)
    paid = sum(b.paid_fen for b in bills)
    summary.total = [
        "total",
        f"{len(bills)} bills",
        "",
        "",
        "",
        "",
        "",
        "",
        yuan(total),
        yuan(paid),
        yuan(total - paid),
        "",
    ]
    return summary, lines


def _last_day(end: str) -> str:
    return (dt.date.fromisoformat(end) - dt.timedelta(days=1)).isoformat()


def bill_page(site: Site, bill: BillView, account: Any, arrears_fen: int = 0) -> str:
    """One printable page: the bill's facts, its lines, the total and the due date."""
    rows = []
    readings = []
    for ln in bill.lines:
        if ln.get("kind") == "meter_reading":
            readings.append(ln["description"])
            continue
        rows.append(
            [
                ln["description"],
                ln.get("quantity", ""),
                ln.get("unit_price", ""),
                format_fen(int(ln["amount_fen"])),
            ]
        )
    meta = {
        "Bill": bill.number,
        "Account": f"{bill.account_id} — {account.name if account else ''}",
        "Room": (account.room or "") if account else "",
        "Period": f"{bill.start_date} – {_last_day(bill.end_date)}",
        "State": bill.state,
        "Due": bill.due_date or "on issue",
    }
    notes = [f"Meter reading: {r}" for r in readings]
    if arrears_fen:
        notes.append(f"Earlier bills still unpaid: {format_fen(arrears_fen)} {site.info.currency}.")
    notes.append(
        "Common-area energy is its own line (its method and inputs are shown); it is not "
        "part of the energy price. Unpaid property fees never cut power or water."
    )
    return page(
        f"{site.info.name} — bill {bill.number}",
        meta,
        ["item", "quantity", "unit price", f"amount ({site.info.currency})"],
        rows,
        ["total", "", "", format_fen(bill.total_fen)],
        notes,
        numeric=(3,),
    )


def export_bills(
    conn: Connection,
    bills: Bills,
    period: str,
    out: Path,
    *,
    formats: Sequence[str] = ("csv", "xlsx", "html"),
) -> list[Path]:
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
            path.write_text(
                bill_page(bills.site, b, accounts.get(b.account_id), earlier.get(b.account_id, 0)),
                encoding="utf-8",
            )
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


def notice_page(site: Site, account_id: str, arrears: Sequence[Arrear], as_of: dt.date) -> str:
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
    return page(
        f"{site.info.name} — arrears notice",
        {
            "Account": f"{account_id} — {first.name}",
            "Room": first.room or "",
            "Date": as_of.isoformat(),
            "Outstanding": f"{format_fen(owed)} {site.info.currency}",
        },
        ["bill", "period", "due", "days overdue", "outstanding", "late fee so far"],
        rows,
        ["total", "", "", "", format_fen(owed), format_fen(fees)],
        [
            "Please pay the outstanding amount. Late fees accrue per overdue day until it is "
            "paid and are charged on the next bill.",
            "Unpaid property fees, rent and service charges never cut your power or water.",
        ],
        numeric=(3, 4, 5),
    )


def export_arrears(
    conn: Connection,
    bills: Bills,
    as_of: dt.date,
    out: Path,
    *,
    formats: Sequence[str] = ("csv", "xlsx", "html"),
) -> list[Path]:
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
            path.write_text(notice_page(bills.site, account_id, items, as_of), encoding="utf-8")
            written.append(path)
    return written
