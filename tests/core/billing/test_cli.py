"""`openprepay billing|bill|batch|report` on a site file with the real device models: a
month of a common-area pool and a post-paid tenant from readings to exported bills, batch
jobs with a dry run and a progress bar, reports to CSV and XLSX; bad input names the field,
exits non-zero and changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from openpyxl import load_workbook

from openprepay.core.db import Database
from openprepay.core.db import schema as t

SITE = """
[site]
id = "cli-billing"
timezone = "Asia/Shanghai"

[links.gw]
type = "rtu_over_tcp"
host = "127.0.0.1"
port = 15997

[buildings.A]
floors = ["1"]

[rooms.A-101]
building = "A"
floor = "1"
area_m2 = 45.5

[rooms.A-102]
building = "A"
floor = "1"
area_m2 = 60.2

[devices.E-A-101]
model = "acrel.DDSY1352"
link = "gw"
unit_id = 1
room = "A-101"
control_mode = "POSTPAID"

[devices.E-A-102]
model = "acrel.DDSY1352"
link = "gw"
unit_id = 2
room = "A-102"

[devices.M-A]
model = "acrel.DTSD1352"
link = "gw"
unit_id = 3
building = "A"
control_mode = "POSTPAID"

[tariffs.flat]
price = "0.5000"

[prepay.engine]
default_tariffs = { electric = "flat" }

[billing.pools.A]
main = "M-A"
price = "0.6000"
method = "area"
mode = "bill"

[billing.charges.property]
type = "property"
name = "Property fee"
basis = "area"
rate = "2.50"
mode = "bill"

[database]
url = "sqlite:///{db}"

# The tenant page's signed room links: printed as each bill's payment QR code.
[web]
public_base_url = "https://pay.example.com"
tenant_secret = "cli-billing-tenant-secret-0123456789abcdef"
"""


@pytest.fixture
def site_file(tmp_path: Path) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(SITE.replace("{db}", str(tmp_path / "op.db")), encoding="utf-8")
    return path


@pytest.fixture
def run(cli, site_file):
    group, obj = cli

    def invoke(*args: str, ok: bool = True):
        argv = [a if a != "SITE" else str(site_file) for a in args]
        result = CliRunner().invoke(group, argv, obj=obj, catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        else:
            assert result.exit_code != 0, result.output
        return result

    invoke("db", "upgrade", "SITE")
    invoke(
        "account",
        "open",
        "SITE",
        "A-101",
        "--name",
        "Alice",
        "--room",
        "A-101",
        "--meter",
        "E-A-101",
    )
    invoke(
        "account", "open", "SITE", "A-102", "--name", "Bob", "--room", "A-102", "--meter", "E-A-102"
    )
    return invoke


def _count(site_file: Path, table) -> int:
    db = Database(f"sqlite:///{site_file.parent / 'op.db'}")
    try:
        with db.read() as conn:
            return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar()
    finally:
        db.dispose()


def test_a_month_from_readings_to_exported_bills(run, site_file, tmp_path):
    assert "OK" in run("check", "SITE").output
    for at, main, a101, a102 in (
        ("2025-01-01 00:00", 1000, 100, 200),
        ("2025-02-01 00:00", 1400, 200, 380),
    ):
        run("billing", "reading", "SITE", "M-A", "--at", at, "--value", str(main))
        run("billing", "reading", "SITE", "E-A-101", "--at", at, "--value", str(a101))
        run("billing", "reading", "SITE", "E-A-102", "--at", at, "--value", str(a102))
    out = run("billing", "readings", "SITE", "--period", "2025-01").output
    assert "M-A" in out and "1400.000" in out and "manual" in out
    dry = run("billing", "apportion", "SITE", "--period", "2025-01", "--dry-run").output
    assert "pool:A 2025-01: HELD (dry run), 72.00" in dry  # loss 120 kWh of 400 = 30 %
    assert _count(site_file, t.journal) == 0
    run("billing", "approve", "SITE", "A", "--period", "2025-01", ok=False)  # nothing held yet
    held = run("billing", "apportion", "SITE", "--period", "2025-01").output
    assert "HELD revision 1" in held and "above the cap 8.00%" in held
    approved = run("billing", "approve", "SITE", "A", "--period", "2025-01").output
    assert "POSTED" in approved and "72.00" in approved  # 120 kWh × 0.60 by area
    run("billing", "charge", "SITE", "--period", "2025-01")
    end = run("billing", "month-end", "SITE", "--period", "2025-01").output
    assert "unchanged" in end and "2 post-paid draft(s)" in end
    listed = run("bill", "list", "SITE", "--period", "2025-01").output
    assert "B-2025-01-A-101" in listed and "DRAFT" in listed
    shown = run("bill", "show", "SITE", "B-2025-01-A-101").output
    # (no property fee: the accounts were opened after January 2025, nothing to prorate)
    assert "100.00 kWh" in shown and "common area A 2025-01" in shown and "80.99" in shown
    run("bill", "confirm", "SITE", "--period", "2025-01")
    run("bill", "issue", "SITE", "--period", "2025-01", "--on", "2025-02-02")
    paid = run("bill", "pay", "SITE", "A-101", "50.00", "--ref", "cash-1").output
    assert "B-2025-01-A-101 50.00" in paid
    arrears = run("bill", "arrears", "SITE", "--as-of", "2025-03-01").output
    assert "B-2025-01-A-101" in arrears
    run("bill", "arrears", "SITE", "--as-of", "2025-03-01", "--export", str(tmp_path / "arrears"))
    assert (tmp_path / "arrears" / "arrears-2025-03-01" / "notice-A-101.html").exists()
    run("bill", "export", "SITE", "--period", "2025-01", "--out", str(tmp_path / "bills"))
    page = (tmp_path / "bills" / "bills-2025-01" / "B-2025-01-A-101.html").read_text(
        encoding="utf-8"
    )
    # Printed in Chinese by default, the readings it was billed from with it.
    assert "<td>E-A-101</td><td class='n'>100.000</td><td class='n'>200.000</td>" in page
    assert "80.99" in page and "缴费通知单" in page
    # The room's payment QR (the web plugin's signed tenant-page link, through the hook).
    assert 'data-hook="payment-qr"><img src="data:image/svg+xml;base64,' in page
    notice = tmp_path / "arrears" / "arrears-2025-03-01" / "notice-A-101.html"
    assert "data:image/svg+xml;base64," in notice.read_text(encoding="utf-8")
    assert (
        (tmp_path / "bills" / "bills-2025-01.csv")
        .read_text(encoding="utf-8-sig")
        .startswith("bill,account")
    )
    wb = load_workbook(tmp_path / "bills" / "bills-2025-01.xlsx")
    assert wb.sheetnames == ["Bills", "Lines"]
    statement = run("billing", "statement", "SITE", "A-102").output
    assert "common area A 2025-01" in statement
    assert "all invariants hold" in run("ledger", "verify", "SITE").output

    revenue = run(
        "report", "revenue", "SITE", "--from", "2020-01-01", "--to", "2030-12-31", "--by", "range"
    ).output
    assert "common area" in revenue
    run(
        "report",
        "revenue",
        "SITE",
        "--from",
        "2020-01-01",
        "--to",
        "2030-12-31",
        "--by",
        "year",
        "--out",
        str(tmp_path / "rev.xlsx"),
    )
    assert len(load_workbook(tmp_path / "rev.xlsx")["Revenue"]._charts) == 1
    run(
        "report",
        "orders",
        "SITE",
        "--from",
        "2020-01-01",
        "--to",
        "2030-12-31",
        "--out",
        str(tmp_path / "orders.csv"),
    )
    assert "payment" in (tmp_path / "orders.csv").read_text(encoding="utf-8-sig")
    run("report", "energy", "SITE", "--month", "2025-01")
    loss = run(
        "report", "loss", "SITE", "--from", "2025-01-01", "--to", "2025-01-03", "--out", "-"
    ).output
    assert loss.startswith("pool,building,day")
    assert (
        "no room looks bypassed" in run("report", "suspects", "SITE", "--to", "2025-01-31").output
    )


def test_void_a_bill_from_the_command_line(run, site_file):
    for at, value in (("2025-01-01 00:00", 100), ("2025-02-01 00:00", 200)):
        run("billing", "reading", "SITE", "E-A-101", "--at", at, "--value", str(value))
    run("bill", "draft", "SITE", "--period", "2025-01")
    run("bill", "confirm", "SITE", "B-2025-01-A-101")
    run("bill", "issue", "SITE", "B-2025-01-A-101", "--on", "2025-02-02")
    journals = _count(site_file, t.journal)
    run("bill", "void", "SITE", "B-2025-01-A-101", ok=False)  # --reason is required
    empty = run("bill", "void", "SITE", "B-2025-01-A-101", "--reason", " ", ok=False).output
    assert "reason: required" in empty
    unknown = run("bill", "void", "SITE", "B-1999-01-X", "--reason", "typo", ok=False).output
    assert "unknown bill 'B-1999-01-X'" in unknown
    assert _count(site_file, t.journal) == journals
    out = run("bill", "void", "SITE", "B-2025-01-A-101", "--reason", "wrong reading").output
    assert out == (
        "B-2025-01-A-101: VOID, 50.00 reversed, 0 item(s) back on the next draft of A-101 2025-01\n"
    )
    again = run("bill", "void", "SITE", "B-2025-01-A-101", "--reason", "wrong reading").output
    assert again.endswith("(already void)\n")
    assert _count(site_file, t.journal) == journals + 1
    shown = run("bill", "show", "SITE", "B-2025-01-A-101").output
    assert "VOID" in shown and "void: wrong reading (by " in shown
    assert "B-2025-01-A-101-R2" in run("bill", "draft", "SITE", "--period", "2025-01").output
    assert "B-2025-01-A-101 " in run("bill", "list", "SITE", "--state", "VOID").output
    assert "all invariants hold" in run("ledger", "verify", "SITE").output


def test_batch_from_the_command_line(run, site_file, tmp_path):
    dry = run(
        "batch",
        "create",
        "SITE",
        "topup",
        "--all",
        "--amount",
        "20.00",
        "--reason",
        "gift",
        "--dry-run",
    ).output
    assert "ok   A-101" in dry and "nothing written" in dry
    assert _count(site_file, t.batch_job) == 0
    done = run(
        "batch",
        "create",
        "SITE",
        "topup",
        "--building",
        "A",
        "--amount",
        "20.00",
        "--reason",
        "gift",
    )
    assert "2 done, 0 failed of 2" in done.output
    shown = run("batch", "show", "SITE", "1").output
    assert "A-101" in shown and "top-up 20.00" in shown
    csv = tmp_path / "rows.csv"
    csv.write_text("room,amount\nA-101,5.00\nA-999,1.00\n", encoding="utf-8")
    bad = run("batch", "create", "SITE", "topup", "--csv", str(csv), "--reason", "r", ok=False)
    assert "rows.csv:line 3: room: unknown room 'A-999'" in bad.output
    past = run(
        "batch",
        "create",
        "SITE",
        "set_tariff",
        "--all",
        "--tariff",
        "flat",
        "--reason",
        "r",
        "--at",
        "2020-01-01 08:00",
        ok=False,
    )
    assert "at: 2020-01-01 08:00 is in the past" in past.output
    later = run(
        "batch",
        "create",
        "SITE",
        "set_tariff",
        "--all",
        "--tariff",
        "flat",
        "--reason",
        "r",
        "--at",
        "2099-01-01 08:00",
        "--every",
        "month",
    )
    assert "at 2099-01-01 08:00, every month" in later.output
    assert "SCHEDULED" in run("batch", "list", "SITE").output
    run("batch", "run", "SITE", "2", ok=False)  # not due
    assert "CANCELLED" in run("batch", "cancel", "SITE", "2").output
    assert _count(site_file, t.batch_job) == 2


def test_bad_billing_section_is_reported_by_check(run, site_file):
    text = site_file.read_text(encoding="utf-8").replace('method = "area"', 'method = "floor"')
    site_file.write_text(text + '\n[billing.areas]\n"A-101" = -3\n', encoding="utf-8")
    out = run("check", "SITE", ok=False).output
    assert (
        "billing.pools.A.method: expected one of area, equal, consumption, ratio; got 'floor'"
        in out
    )
    assert "billing.areas.A-101: expected more than 0, got -3" in out
