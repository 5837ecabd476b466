"""Printed bills and notices through a real browser: Debian's Chromium, driven by Playwright,
prints each page to PDF (A4); the PDF has exactly one page and its text (read back with
pypdf) holds the amounts and words expected — Chinese glyphs included, so a missing CJK
font shows.

Without Chromium the tests are skipped with a message, except in CI (`CI=true`), where a
missing browser is a failure. `OPENPREPAY_BILL_SCREENSHOTS=docs/img` also writes the
screenshots the documentation shows (`bill-zh.png`, `bill-en.png`, `bill-void-zh.png`,
`notice-zh.png`).
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .test_bill_page import bill_two_months, page_of

CHROMIUM = "/usr/bin/chromium"


def _missing(message: str) -> None:
    """In CI a missing browser fails the run; on a workstation the tests are skipped."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if executable is None:
        _missing("chromium is not installed (apt-get install chromium; ./dev.sh setup does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[test]')")

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable)
        yield chromium
        chromium.close()


def print_pdf(browser: Any, html: str, screenshot: Path | None = None) -> tuple[int, str]:
    """Print `html` to an A4 PDF: (its number of pages, its text)."""
    from pypdf import PdfReader

    page = browser.new_page(viewport={"width": 794, "height": 1123})
    try:
        page.set_content(html, wait_until="load")
        pdf = page.pdf(format="A4")
        if screenshot is not None:
            page.screenshot(path=str(screenshot), full_page=True)
    finally:
        page.close()
    reader = PdfReader(io.BytesIO(pdf))
    text = "\n".join(p.extract_text() for p in reader.pages)
    return len(reader.pages), re.sub(r"[ \t]+", " ", text)


def _screenshot(name: str) -> Path | None:
    folder = os.environ.get("OPENPREPAY_BILL_SCREENSHOTS")
    return Path(folder) / name if folder else None


def test_a_chinese_bill_prints_on_one_a4_page(browser, sqlite_db):
    billing = bill_two_months(sqlite_db)
    html = page_of(sqlite_db, billing, "B-2025-02-A-101")
    pages, text = print_pdf(browser, html, _screenshot("bill-zh.png"))
    assert pages == 1
    with sqlite_db.read() as conn:
        bill = billing.bills.get(conn, "B-2025-02-A-101")
    for expected in (
        "缴费通知单",
        "B-2025-02-A-101",
        "青园物业服务中心",
        "0571-8888 6666",
        "4.672 m³",
        "57.300 kWh",
        "公摊电费",
        "滞纳金",
        "物业管理费",
        f"{bill.total_fen / 100:.2f}",
        "30.00",
        f"{(bill.total_fen - bill.paid_fen) / 100:.2f}",
        "尚欠金额",
        "支付宝",
        "缴费方式",
    ):
        assert expected in text, (expected, text)


def test_an_english_bill_prints_on_one_a4_page(browser, sqlite_db):
    billing = bill_two_months(sqlite_db, language="en")
    html = page_of(sqlite_db, billing, "B-2025-02-A-101")
    pages, text = print_pdf(browser, html, _screenshot("bill-en.png"))
    assert pages == 1
    for expected in ("Bill", "Amount due", "4.672 m³", "Late fee", "How to pay", "Alipay"):
        assert expected in text, (expected, text)


def test_a_void_bill_and_an_arrears_notice_print_on_one_page_each(browser, sqlite_db, tmp_path):
    from openprepay.core.billing.documents import export_arrears

    billing = bill_two_months(sqlite_db)
    void = page_of(sqlite_db, billing, "B-2025-01-A-201")
    pages, text = print_pdf(browser, void, _screenshot("bill-void-zh.png"))
    assert pages == 1 and "作废" in text and "无需缴费" in text
    with sqlite_db.read() as conn:
        export_arrears(conn, billing.bills, dt.date(2025, 3, 1), tmp_path, formats=["html"])
    notice = (tmp_path / "arrears-2025-03-01" / "notice-A-102.html").read_text("utf-8")
    pages, text = print_pdf(browser, notice, _screenshot("notice-zh.png"))
    assert pages == 1 and "欠费催缴通知书" in text and "B-2025-01-A-102" in text
