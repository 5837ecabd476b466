"""Printable HTML for a tenant: a bill, or an arrears notice, on one A4 page.

`bill_html` and `notice_html` only lay out what they are given (words of one language,
the issuer, the bill's printed lines and payments); `documents` gathers it. Print CSS:
`@page { size: A4 }` with margins, so "print" or "save as PDF" in any browser gives one
page for a bill with a normal number of lines (the tests print through Chromium).

The payment QR code has its place: an element marked `data-hook="payment-qr"` in the
header, empty (and not shown) until a `payment_qr` image is given — the online-payment
work fills it with the room's code.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .bill_rows import PrintedLine, PrintedReading, money
from .bill_text import Words


@dataclass(frozen=True, slots=True)
class Issuer:
    """Who issues bills and notices, how to reach them and how to pay (`[billing.bills]`)."""

    name: str
    address: str = ""
    phone: str = ""
    instructions: str = ""


@dataclass(frozen=True, slots=True)
class PaymentShown:
    """A payment applied to the bill: its day (site-local), kind, reference and the part
    of it this bill received."""

    day: str
    channel: str
    reference: str
    amount_fen: int


@dataclass(frozen=True, slots=True)
class BillFacts:
    """The figures of one bill as printed (amounts in fen, dates site-local)."""

    number: str
    state: str
    account_id: str
    tenant: str
    room: str
    start: str
    last_day: str
    issued: str
    due: str
    total_fen: int
    paid_fen: int
    void_reason: str = ""


_CSS = """
@page { size: A4; margin: 12mm 14mm; }
* { box-sizing: border-box; }
html { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
body { font-family: "Noto Sans CJK SC", "WenQuanYi Micro Hei", "Microsoft YaHei",
       "PingFang SC", Arial, sans-serif; font-size: 9.5pt; color: #111; margin: 0; }
.sheet { max-width: 182mm; margin: 0 auto; position: relative; }
header { display: flex; justify-content: space-between; align-items: flex-start;
         border-bottom: 2px solid #111; padding-bottom: 2mm; }
.issuer .name { font-size: 13pt; font-weight: bold; }
.issuer div { margin-top: 0.8mm; }
.qr { text-align: center; font-size: 8pt; }
.qr:empty { display: none; }
.qr img { width: 28mm; height: 28mm; display: block; }
h1 { font-size: 16pt; margin: 3mm 0 2mm; }
table { border-collapse: collapse; width: 100%; }
.facts td { padding: 0.6mm 3mm 0.6mm 0; vertical-align: top; }
.facts td.k { color: #555; white-space: nowrap; }
.lines { margin-top: 2mm; }
.lines th { text-align: left; border-bottom: 1.5px solid #111; padding: 1.2mm 1.5mm; }
.lines td { border-bottom: 1px solid #ccc; padding: 1.2mm 1.5mm; vertical-align: top; }
.lines .n { text-align: right; white-space: nowrap; }
.detail { display: block; font-size: 8pt; color: #555; margin-top: 0.5mm; }
.sum { width: 88mm; margin: 2mm 0 0 auto; }
.sum td { padding: 0.8mm 1.5mm; }
.sum td.n { text-align: right; white-space: nowrap; }
.sum tr.total td { border-top: 1.5px solid #111; font-weight: bold; }
.sum tr.due td { font-weight: bold; font-size: 12pt; }
h2 { font-size: 10.5pt; margin: 3mm 0 1mm; }
.small td, .small th { font-size: 8.5pt; padding: 0.6mm 1.5mm; }
.box { border: 1px solid #999; padding: 1.5mm 3mm; margin-top: 3mm; }
.box p { margin: 0.8mm 0; }
.notes { font-size: 8pt; color: #444; margin-top: 3mm; }
.notes p { margin: 0.5mm 0; }
.flag { border: 2px solid #b00; color: #b00; font-weight: bold; padding: 1.5mm 3mm;
        margin: 2mm 0; }
.void-mark { position: absolute; top: 70mm; left: 0; right: 0; text-align: center;
             font-size: 80pt; font-weight: bold; color: rgba(190, 0, 0, 0.28);
             transform: rotate(-24deg); pointer-events: none; }
"""


def _e(text: object) -> str:
    return html.escape(str(text))


def _document(words: Words, title: str, body: Sequence[str]) -> str:
    lang = "zh-CN" if words.language == "zh" else words.language
    return (
        f'<!DOCTYPE html>\n<html lang="{lang}"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n"
        f'<div class="sheet">\n' + "\n".join(body) + "\n</div>\n</body></html>\n"
    )


def _header(words: Words, issuer: Issuer, payment_qr: str | None) -> str:
    contact = []
    if issuer.address:
        contact.append(f"<div>{_e(words('address') + words('sep') + issuer.address)}</div>")
    if issuer.phone:
        contact.append(f"<div>{_e(words('phone') + words('sep') + issuer.phone)}</div>")
    qr = ""
    if payment_qr:
        qr = f'<img src="{_e(_qr_source(payment_qr))}" alt="">{_e(words("scan_to_pay"))}'
    return (
        f'<header><div class="issuer"><div class="name">{_e(issuer.name)}</div>'
        + "".join(contact)
        + f'</div><div class="qr" data-hook="payment-qr">{qr}</div></header>'
    )


def _qr_source(src: str) -> str:
    """The QR code image: a `data:image/...` URI, or an https or relative address."""
    if src.startswith(("data:image/", "https://")) or ":" not in src.split("/", 1)[0]:
        return src
    raise ValueError(f"payment_qr: expected a data:image/ URI or an https address, got {src!r}")


def _facts(pairs: Sequence[tuple[str, str]]) -> str:
    """Two pairs a row: label, value, label, value."""
    cells = [f'<td class="k">{_e(k)}</td><td>{_e(v)}</td>' for k, v in pairs]
    rows = ["<tr>" + "".join(cells[i : i + 2]) + "</tr>" for i in range(0, len(cells), 2)]
    return '<table class="facts">' + "".join(rows) + "</table>"


def _lines_table(words: Words, rows: Sequence[PrintedLine]) -> str:
    head = (
        f"<tr><th>{_e(words('col_item'))}</th><th class='n'>{_e(words('col_quantity'))}</th>"
        f"<th class='n'>{_e(words('col_price'))}</th>"
        f"<th class='n'>{_e(words('col_amount'))}</th></tr>"
    )
    body = []
    for r in rows:
        detail = f'<span class="detail">{_e(r.detail)}</span>' if r.detail else ""
        body.append(
            f"<tr><td>{_e(r.item)}{detail}</td><td class='n'>{_e(r.quantity)}</td>"
            f"<td class='n'>{_e(r.unit_price)}</td><td class='n'>{money(r.amount_fen)}</td></tr>"
        )
    return f'<table class="lines"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


def _sum(words: Words, facts: BillFacts) -> str:
    void = facts.state == "VOID"
    owed = 0 if void else facts.total_fen - facts.paid_fen
    rows = [
        ("total", words("total"), money(facts.total_fen)),
        ("", words("paid"), money(facts.paid_fen)),
        ("due", words("outstanding"), money(owed)),
    ]
    body = "".join(
        f'<tr class="{c}"><td>{_e(k)}</td><td class="n">{_e(v)} {_e(words.currency)}</td></tr>'
        for c, k, v in rows
    )
    return f'<table class="sum">{body}</table>'


def _payments(words: Words, payments: Sequence[PaymentShown]) -> str:
    if not payments:
        return ""
    rows = "".join(
        f"<tr><td>{_e(p.day)}</td>"
        f"<td>{_e(words.optional('channel.' + p.channel, p.channel))}</td>"
        f"<td>{_e(p.reference)}</td><td class='n'>{money(p.amount_fen)}</td></tr>"
        for p in payments
    )
    head = "".join(
        f"<th{' class=n' if k == 'col_paid' else ''}>{_e(words(k))}</th>"
        for k in ("col_paid_on", "col_channel", "col_reference", "col_paid")
    )
    return (
        f"<h2>{_e(words('payments'))}</h2>"
        f'<table class="lines small"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'
    )


def _readings(words: Words, readings: Sequence[PrintedReading]) -> str:
    if not readings:
        return ""
    head = "".join(
        f"<th{' class=n' if i else ''}>{_e(words(k))}</th>"
        for i, k in enumerate(("col_meter", "col_previous", "col_current", "col_usage"))
    )
    rows = []
    for r in readings:
        if r.note:
            rows.append(f"<tr><td>{_e(r.meter)}</td><td colspan='3'>{_e(r.note)}</td></tr>")
            continue
        rows.append(
            f"<tr><td>{_e(r.meter)}</td><td class='n'>{_e(r.previous)}</td>"
            f"<td class='n'>{_e(r.current)}</td><td class='n'>{_e(r.usage)}</td></tr>"
        )
    return (
        f"<h2>{_e(words('readings'))}</h2>"
        f'<table class="lines small"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _how_to_pay(words: Words, issuer: Issuer) -> str:
    parts = []
    if issuer.instructions:
        lines = "".join(f"<p>{_e(x)}</p>" for x in issuer.instructions.splitlines() if x.strip())
        parts.append(f"<p><b>{_e(words('how_to_pay'))}</b></p>{lines}")
    contact = words("list_sep").join(x for x in (issuer.name, issuer.phone, issuer.address) if x)
    if contact:
        parts.append(f"<p>{_e(words('contact') + words('sep') + contact)}</p>")
    return f'<div class="box">{"".join(parts)}</div>' if parts else ""


def _notes(texts: Sequence[str]) -> str:
    return '<div class="notes">' + "".join(f"<p>{_e(t)}</p>" for t in texts) + "</div>"


def bill_html(
    words: Words,
    issuer: Issuer,
    facts: BillFacts,
    rows: Sequence[PrintedLine],
    readings: Sequence[PrintedReading],
    payments: Sequence[PaymentShown] = (),
    *,
    earlier_unpaid_fen: int = 0,
    payment_qr: str | None = None,
) -> str:
    """One bill on one A4 page (see the module docstring)."""
    void = facts.state == "VOID"
    body = [_header(words, issuer, None if void else payment_qr)]
    if void:
        body.append(f'<div class="void-mark">{_e(words("void_mark"))}</div>')
    body.append(f"<h1>{_e(words('bill_title'))}</h1>")
    body.append(_flag(words, facts))
    body.append(
        _facts(
            [
                (words("bill_number"), facts.number),
                (words("state"), words.optional(f"state.{facts.state}", facts.state)),
                (words("account"), facts.account_id),
                (words("tenant"), facts.tenant),
                (words("room"), facts.room),
                (words("period"), words("period_span", start=facts.start, end=facts.last_day)),
                (words("issued"), facts.issued),
                (words("due"), facts.due or words("due_on_issue")),
            ]
        )
    )
    body += [_lines_table(words, rows), _sum(words, facts), _payments(words, payments)]
    notes = []
    if earlier_unpaid_fen > 0 and not void:
        notes.append(words("earlier_unpaid", amount=money(earlier_unpaid_fen)))
    body += [_readings(words, readings), _how_to_pay(words, issuer)]
    notes += [words("common_area_note"), words("supply_note")]
    body.append(_notes(notes))
    return _document(words, f"{issuer.name} {words('bill_title')} {facts.number}", body)


def _flag(words: Words, facts: BillFacts) -> str:
    """The banner of a bill not to be paid as it stands (void, draft) or already paid."""
    if facts.state == "VOID":
        text = words("void_note", reason=facts.void_reason or "-")
    elif facts.state == "DRAFT":
        text = words("draft_note")
    elif facts.state == "PAID":
        text = words("paid_note")
    else:
        return ""
    return f'<div class="flag">{_e(text)}</div>'


def notice_html(
    words: Words,
    issuer: Issuer,
    account: Mapping[str, str],
    as_of: str,
    rows: Sequence[Sequence[str]],
    totals: tuple[int, int],
    *,
    payment_qr: str | None = None,
) -> str:
    """An arrears notice: the overdue bills of one account, what is owed, how to pay.
    `account`: account, tenant, room; `rows`: bill, period, due, days overdue,
    outstanding, late fee so far (text); `totals`: (outstanding, late fees) in fen."""
    owed, fees = totals
    head = "".join(f"<th>{_e(words(k))}</th>" for k in ("col_bill", "col_period", "col_due"))
    head += "".join(
        f"<th class='n'>{_e(words(k))}</th>"
        for k in ("col_days_overdue", "col_outstanding", "col_late_fee")
    )
    body_rows = "".join(
        "<tr>"
        + "".join(f"<td>{_e(v)}</td>" for v in r[:3])
        + "".join(f"<td class='n'>{_e(v)}</td>" for v in r[3:])
        + "</tr>"
        for r in rows
    )
    total = (
        f"<tr><td colspan='4'><b>{_e(words('notice_total'))}</b></td>"
        f"<td class='n'><b>{money(owed)}</b></td><td class='n'>{money(fees)}</td></tr>"
    )
    body = [
        _header(words, issuer, payment_qr),
        f"<h1>{_e(words('notice_title'))}</h1>",
        _facts(
            [
                (words("account"), account["account"]),
                (words("tenant"), account["tenant"]),
                (words("room"), account["room"]),
                (words("date"), as_of),
            ]
        ),
        "<p>" + _e(words("notice_intro", date=as_of, amount=money(owed))) + "</p>",
        f'<table class="lines"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body_rows}{total}</tbody></table>",
        f"<p>{_e(words('notice_ask'))}</p>",
        _how_to_pay(words, issuer),
        _notes([words("supply_note")]),
    ]
    return _document(words, f"{issuer.name} {words('notice_title')}", body)
