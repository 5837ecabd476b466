"""Bills a tenant and a clerk accept (issue 14 §4 first item, §5).

Two months of a building run as a property office would: three post-paid rooms on the TOU
tariff (one with a water meter), the common-area pool and the property fee billed, bills
issued, one paid in part, one void, February with a late fee. Then:

- the bill export lists the void bill, marked, but does not count or sum it: its totals
  reconcile to the arrears list and to the ledger's receivables (SQLite and PostgreSQL);
- the printed bill is Chinese by default (English by a site setting), in plain tenant
  words, with quantities at the precision of the reading (0.428 m³), the common-area
  line's kWh, paid and outstanding amounts and each payment, the issuer's contact and
  payment instructions from the site file, a VOID mark, and a place for the payment QR
  code; arrears notices likewise;
- `[billing.bills]` refuses a bad language or contact, naming the field.

Printing through Chromium (one A4 page) is `test_bill_page_browser.py`.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from openprepay.core.billing import documents
from openprepay.core.billing.bill_rows import printed_lines
from openprepay.core.billing.bill_text import EN, ZH, Words
from openprepay.core.billing.bills.paying import receivable
from openprepay.core.billing.service import Billing
from openprepay.core.billing.settings import check_billing
from openprepay.core.config.site import parse_site
from openprepay.core.db import Database

from .conftest import FEB, JAN, MAR, TZ, make_billing, open_accounts, read, site_data

REGS = ("energy_sharp", "energy_peak", "energy_flat", "energy_valley")
#: Each electricity meter's T1..T4 registers (kWh) at the freeze instants of Jan, Feb, Mar.
TOU = {
    "E-A-101": [(100, 400, 300, 200), (110.2, 455.1, 330, 235.2), (121.3, 512.4, 362.1, 275.934)],
    "E-A-102": [(200, 800, 600, 400), (211, 844, 633, 422), (221, 884, 663, 442)],
    "E-A-201": [(300, 1200, 900, 600), (312, 1248, 936, 624), (322, 1288, 966, 724)],
}
#: The public-area meter, the water meter (m³) and the main meter at the same instants:
#: the main meter reads the subs, the public meter and a 4-5 % line loss.
OTHER = {
    "P-A": (500, 530, 555),
    "W-A-101": ("50.000", "50.428", "55.100"),
    "M-A": (6500, 6910, "7376.234"),
}
CONTACT = {
    "issuer_name": "青园物业服务中心",
    "issuer_address": "青园路 8 号 A 座 1 层",
    "issuer_phone": "0571-8888 6666",
    "payment_instructions": (
        "物业服务中心前台：现金、微信、支付宝\n银行转账：青园物业 6222 0000 1111 2222"
    ),
}
CONTACT_EN = {
    "issuer_name": "Qingyuan Property Services",
    "issuer_address": "Building A, 8 Qingyuan Road",
    "issuer_phone": "0571-8888 6666",
    "payment_instructions": (
        "At the service desk: cash, WeChat Pay, Alipay\n"
        "Bank transfer to Qingyuan Property, account 6222 0000 1111 2222"
    ),
}
INTERNAL = ("general wallet", "short", "owed", "asset:", "liab:", "rev:", "journal", "pool:")


def bill_two_months(db: Database, language: str = "zh") -> Billing:
    """The two months of the module docstring; returns the site's `Billing`."""
    open_accounts(
        db,
        parse_site(site_data()),
        {"A-101": ("E-A-101", "W-A-101"), "A-102": ("E-A-102",), "A-201": ("E-A-201",)},
        modes={m: "POSTPAID" for m in ("E-A-101", "W-A-101", "E-A-102", "E-A-201")},
        tariff="residential",
    )
    for i, at in enumerate((JAN, FEB, MAR)):
        regs = {m: dict(zip(REGS, v[i], strict=True)) for m, v in TOU.items()}
        totals = {m: sum(Decimal(str(x)) for x in v[i]) for m, v in TOU.items()}
        read(db, at, {**totals, **{m: v[i] for m, v in OTHER.items()}}, **regs)
    fee = "物业管理费" if language == "zh" else "Property management fee"
    billing = make_billing(
        {
            "pools": {
                "A": {
                    "main": "M-A",
                    "public": ["P-A"],
                    "price": "0.6000",
                    "method": "consumption",
                    "public_method": "area",
                    "mode": "bill",
                }
            },
            "charges": {
                "property": {"type": "property", "name": fee, "basis": "area", "rate": "2.50"}
            },
            "bills": {"language": language, **(CONTACT if language == "zh" else CONTACT_EN)},
        }
    )
    _month(db, billing, "2025-01", dt.date(2025, 2, 2))
    _pay(db, billing, "A-101", 5000, "wx-4200001", "wechat", dt.datetime(2025, 2, 10, 9))
    with db.begin() as conn:
        billing.bills.void(
            conn, "B-2025-01-A-201", reason="抄表错误", actor="cli:clerk", now=_at(2025, 2, 11)
        )
    _month(db, billing, "2025-02", dt.date(2025, 3, 2))
    with db.read() as conn:
        jan = billing.bills.get(conn, "B-2025-01-A-101")
    # Pays January off and 30.00 of February.
    rest = jan.total_fen - jan.paid_fen + 3000
    _pay(db, billing, "A-101", rest, "ali-88", "alipay", dt.datetime(2025, 3, 5, 9))
    return billing


def _at(*parts: int) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=TZ).astimezone(dt.UTC)


def _month(db: Database, billing: Billing, period: str, issue_on: dt.date) -> None:
    now = dt.datetime.combine(issue_on, dt.time(9), TZ).astimezone(dt.UTC)
    billing.month_end(db, period, actor="month-end", now=now)
    with db.begin() as conn:
        confirmed, refused = billing.bills.confirm(conn, period=period, actor="cli:a", now=now)
        assert refused == [] and confirmed
        billing.bills.issue(conn, period=period, on=issue_on, actor="cli:a", now=now)


def _pay(db: Database, billing: Billing, account: str, fen: int, ref: str, channel: str, when):
    with db.begin() as conn:
        billing.bills.pay(
            conn, account, fen, ref, channel=channel, actor="cli:a", now=when.replace(tzinfo=TZ)
        )


def page_of(db: Database, billing: Billing, number: str, **kwargs: Any) -> str:
    """The printed page of bill `number`, as the export writes it."""
    with db.read() as conn:
        bill = billing.bills.get(conn, number)
        account = documents._accounts(conn, [bill.account_id])[bill.account_id]
        earlier = documents._unpaid_before(conn, bill.period)
    return documents.bill_page(
        billing.site,
        billing.settings.bills,
        bill,
        account,
        payments=documents.shown_payments(bill, TZ),
        earlier_unpaid_fen=earlier.get(bill.account_id, 0),
        **kwargs,
    )


def text_of(page: str) -> str:
    """What a reader sees: the page without its tags, style and entities."""
    body = re.sub(r"<style>.*?</style>|<[^>]+>", " ", page, flags=re.S)
    return re.sub(r"\s+", " ", body.replace("&amp;", "&"))


# -- §4: the export leaves void bills out ------------------------------------------------------


def test_bill_export_lists_a_void_bill_but_neither_counts_nor_sums_it(db, tmp_path: Path):
    billing = bill_two_months(db)
    with db.read() as conn:
        written = documents.export_bills(conn, billing.bills, "2025-01", tmp_path, formats=["csv"])
        arrears = billing.bills.arrears(conn, dt.date(2025, 3, 1))
        feb = billing.bills.list(conn, period="2025-02")
        owed = receivable(conn)
    rows = list(csv.DictReader(io.StringIO(written[0].read_text("utf-8-sig"))))
    *bills, total = rows
    void = next(r for r in bills if r["state"] == "VOID")
    assert void["bill"] == "B-2025-01-A-201" and void["void reason"] == "抄表错误"
    assert void["outstanding"] == "0.00" and void["total"] != "0.00"  # listed, as it was
    assert total["account"] == "2 bills (1 void, not counted)"
    live = [r for r in bills if r["state"] != "VOID"]
    assert Decimal(total["total"]) == sum(Decimal(r["total"]) for r in live)
    assert Decimal(total["paid"]) == sum(Decimal(r["paid"]) for r in live)
    # Reconciles: January's outstanding is the arrears list's, and January plus February
    # is what the ledger says the tenants owe.
    outstanding = int(Decimal(total["outstanding"]) * 100)
    assert outstanding == sum(a.outstanding_fen for a in arrears) > 0
    assert outstanding + sum(b.outstanding_fen for b in feb) == sum(owed.values())


# -- §5: the printed bill ---------------------------------------------------------------------


def test_a_partly_paid_bill_in_chinese_reads_as_a_tenant_expects(sqlite_db):
    billing = bill_two_months(sqlite_db)
    page = page_of(sqlite_db, billing, "B-2025-02-A-101")
    text = text_of(page)
    assert '<html lang="zh-CN">' in page and "缴费通知单" in text
    # Quantities at the precision of the reading; the amount stays the bill's own fen.
    assert "水费 第1档 水表 W-A-101 4.672 m³ 3.00 14.02" in text
    assert "W-A-101 50.428 55.100 4.672 m³" in text  # the readings it was billed from
    assert "电费 高峰 电表 E-A-101 57.300 kWh 0.6000 34.38" in text
    assert "电费 低谷 电表 E-A-101 40.734 kWh 0.2000 8.15" in text
    # The common-area line with its kWh: the room's part of each shared energy.
    common = re.search(r"公摊电费 2025-02 公共区域用电 25\.00 kWh .*?→ \d+\.\d\d", text)
    assert common is not None and "按用量" in text and "kWh 0.6000" in text
    assert "滞纳金 账单 B-2025-01-A-101 逾期 11 天" in text and "0.1%/天" in text
    assert "物业管理费 2025-02 45.5 m² 2.5/m² 113.75" in text
    with sqlite_db.read() as conn:
        bill = billing.bills.get(conn, "B-2025-02-A-101")
    assert bill.paid_fen == 3000
    assert f"本期应缴合计 {bill.total_fen / 100:.2f} 元" in text
    assert "已缴金额 30.00 元" in text
    assert f"尚欠金额 {(bill.total_fen - 3000) / 100:.2f} 元" in text
    assert "2025-03-05 支付宝 ali-88 30.00" in text
    # The issuer's contact and how to pay, from the site file.
    for value in CONTACT.values():
        for line in value.splitlines():
            assert line in text
    assert not [w for w in INTERNAL if w in text.lower()], text
    shown = text.replace("kWh", "").replace("Tenant of A-101", "")  # the account's name
    assert not re.search(r"[A-Za-z]{4,}", shown), "English on a Chinese bill"


def test_the_bill_in_english_and_the_payments_it_received(sqlite_db):
    billing = bill_two_months(sqlite_db, language="en")
    text = text_of(page_of(sqlite_db, billing, "B-2025-01-A-101"))
    assert "Water tier 1 water meter W-A-101 0.428 m³ 3.00 1.28" in text
    assert "Electricity peak meter E-A-101 55.100 kWh 0.6000 33.06" in text
    assert "Common-area electricity 2025-01 public areas 30.00 kWh" in text
    assert "Property management fee 2025-01" in text and "Status Paid" in text
    assert "2025-02-10 WeChat Pay wx-4200001 50.00" in text
    assert "2025-03-05 Alipay ali-88" in text and "Amount due 0.00 CNY" in text
    assert (
        "Questions about this bill? Contact: Qingyuan Property Services; 0571-8888 6666; "
        "Building A, 8 Qingyuan Road" in text
    )
    assert "How to pay At the service desk: cash, WeChat Pay, Alipay Bank transfer" in text
    assert not [w for w in INTERNAL if w in text.lower()], text


def test_a_void_bill_is_marked_and_asks_for_nothing(sqlite_db):
    billing = bill_two_months(sqlite_db)
    qr = "data:image/png;base64,iVBORw0KGgo="
    page = page_of(sqlite_db, billing, "B-2025-01-A-201", payment_qr=qr)
    text = text_of(page)
    assert '<div class="void-mark">作废</div>' in page
    assert "本账单已作废，无需缴费（原因：抄表错误）" in text and "账单状态 已作废" in text
    assert "尚欠金额 0.00 元" in text
    assert qr not in page  # nothing to pay: no code to pay it with


def test_the_payment_qr_code_has_its_marked_place(sqlite_db):
    billing = bill_two_months(sqlite_db)
    empty = page_of(sqlite_db, billing, "B-2025-02-A-102")
    assert '<div class="qr" data-hook="payment-qr"></div>' in empty
    qr = "data:image/png;base64,iVBORw0KGgo="
    filled = page_of(sqlite_db, billing, "B-2025-02-A-102", payment_qr=qr)
    assert f'data-hook="payment-qr"><img src="{qr}" alt="">扫码缴费</div>' in filled
    with pytest.raises(ValueError, match="payment_qr: expected a data:image/ URI"):
        page_of(sqlite_db, billing, "B-2025-02-A-102", payment_qr="javascript:alert(1)")


def test_the_arrears_notice_in_the_tenants_words(sqlite_db, tmp_path: Path):
    billing = bill_two_months(sqlite_db)
    with sqlite_db.read() as conn:
        documents.export_arrears(
            conn, billing.bills, dt.date(2025, 3, 1), tmp_path, formats=["html"]
        )
    page = (tmp_path / "arrears-2025-03-01" / "notice-A-102.html").read_text("utf-8")
    text = text_of(page)
    assert "欠费催缴通知书" in text and "户名 Tenant of A-102" in text
    assert re.search(r"截至 2025-03-01，下列账单已过缴费截止日仍未缴清，共欠 \d+\.\d\d 元", text)
    assert "B-2025-01-A-102 2025-01 2025-02-17 12" in text
    assert 'data-hook="payment-qr"' in page
    for value in CONTACT.values():
        assert value.splitlines()[0] in text
    assert not [w for w in INTERNAL if w in text.lower()], text


def test_bills_drafted_before_exact_quantities_print_what_they_stored():
    """Lines stored before `quantity_value` and numeric readings existed, and a common-area
    description that cannot be read back, still print — as they were stored."""
    lines = [
        {
            "kind": "water",
            "meter": "W-1",
            "description": "W-1 tier 1",
            "quantity": "0.43 m³",
            "unit_price": "3.00",
            "amount_fen": 128,
        },
        {
            "kind": "meter_reading",
            "meter": "W-1",
            "description": "W-1: 12 → 12.428 = 0.428 m³ (water)",
            "energy": 428,
            "amount_fen": 0,
        },
        {
            "kind": "public_energy",
            "description": "common area A 2025-01: something else",
            "quantity": "",
            "unit_price": "0.6000",
            "amount_fen": 869,
        },
    ]
    rows, readings = printed_lines(lines, Words("en"))
    assert [(r.item, r.quantity, r.amount_fen) for r in rows] == [
        ("Water tier 1", "0.43 m³", 128),
        ("Common-area electricity 2025-01", "", 869),
    ]
    assert readings[0].note == "W-1: 12 → 12.428 = 0.428 m³ (water)"


def test_both_languages_have_the_same_words():
    assert set(ZH) == set(EN)
    for key in ZH:
        assert set(re.findall(r"{(\w+)}", ZH[key])) == set(re.findall(r"{(\w+)}", EN[key])), key


@pytest.mark.parametrize(
    ("bills", "message"),
    [
        ({"language": "fr"}, "billing.bills.language: expected one of zh, en; got 'fr'"),
        ({"language": 1}, "billing.bills.language: expected a string, got 1"),
        (
            {"issuer_phone": "0571\t8888"},
            "billing.bills.issuer_phone: control character '\\t' not allowed",
        ),
        ({"issuer_name": "x" * 101}, "billing.bills.issuer_name: at most 100 characters, got 101"),
        (
            {"payment_instructions": "a\x07"},
            "billing.bills.payment_instructions: control character '\\x07' other than line",
        ),
        ({"issuer_fax": "1"}, "billing.bills.issuer_fax: unknown key"),
    ],
)
def test_bill_settings_name_the_field(bills, message):
    errors = [str(e) for e in check_billing(parse_site(site_data(billing={"bills": bills})))]
    assert any(e.startswith(message) for e in errors), errors


def test_bill_settings_are_read():
    settings = make_billing({"bills": {"language": "en", **CONTACT}}).settings.bills
    assert settings.language == "en" and settings.issuer_phone == "0571-8888 6666"
    assert settings.payment_instructions.splitlines()[1].startswith("银行转账")
    default = make_billing({}).settings.bills
    assert (default.language, default.issuer_name, default.payment_instructions) == ("zh", "", "")
