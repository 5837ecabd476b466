"""§4 and §8 at the billing commands, on SQLite and PostgreSQL.

- Exports (CSV and XLSX): a tenant named `=cmd|' /C calc'!A0` used to become an active
  formula in the XLSX energy report. Text a spreadsheet would run is neutralised; numbers,
  negative amounts included, stay numeric cells.
- The CSV import refuses control characters in names and references, with row and field.
- Money and numbers typed at `bill pay`, `billing charge-once`, `batch create` and
  `billing reading` are read strictly; a manual reading beyond the register's range (the
  DDSY1352's 32-bit ×0.01 kWh register wraps at 42,949,672.96) is refused.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from openpyxl import load_workbook

from openprepay.core.db import Database
from openprepay.core.db import schema as t

SITE = """
[site]
id = "safety"
timezone = "Asia/Shanghai"

[links.gw]
type = "rtu_over_tcp"
host = "127.0.0.1"
port = 15996

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

[devices.E-A-102]
model = "acrel.DDSY1352"
link = "gw"
unit_id = 2
room = "A-102"

[tariffs.flat]
price = "0.5000"

[prepay.engine]
default_tariffs = { electric = "flat" }

[database]
url = "{url}"
"""

FORMULA_NAME = "=cmd|' /C calc'!A0"


@pytest.fixture
def site_file(tmp_path: Path, db_url: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(SITE.replace("{url}", db_url), encoding="utf-8")
    return path


@pytest.fixture
def run(cli, site_file, db):  # `db`: the site's database, migrated
    group, obj = cli

    def invoke(*args: str, ok: bool = True):
        argv = [a if a != "SITE" else str(site_file) for a in args]
        result = CliRunner().invoke(group, argv, obj=obj, catch_exceptions=False)
        assert (result.exit_code == 0) == ok, result.output
        return result

    invoke("account", "open", "SITE", "A-101", "--name", FORMULA_NAME, "--meter", "E-A-101")
    invoke("account", "open", "SITE", "A-102", "--name", "@SUM(1+1)*cmd", "--meter", "E-A-102")
    return invoke


def _rows(db: Database, table: sa.Table) -> int:
    with db.read() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def test_exports_neutralise_formulas_and_keep_numbers_numeric(run, tmp_path: Path) -> None:
    run("topup", "SITE", "A-101", "100.00", "--ref", "pay-1")
    run("refund", "SITE", "A-101", "12.50", "--ref", "rf-1")
    run("report", "energy", "SITE", "--month", "2025-01", "--out", str(tmp_path / "e.xlsx"))
    run("report", "energy", "SITE", "--month", "2025-01", "--out", str(tmp_path / "e.csv"))
    span = ["--from", "2020-01-01", "--to", "2040-12-31"]
    run("report", "orders", "SITE", *span, "--out", str(tmp_path / "o.xlsx"))
    run("report", "orders", "SITE", *span, "--out", str(tmp_path / "o.csv"))

    for name in ("e.xlsx", "o.xlsx"):
        cells = [c for ws in load_workbook(tmp_path / name) for row in ws.iter_rows() for c in row]
        assert not [c.coordinate for c in cells if c.data_type == "f"], name  # no formula at all
    report = load_workbook(tmp_path / "e.xlsx").active
    named = [c for row in report.iter_rows() for c in row if c.value == FORMULA_NAME]
    assert len(named) == 1 and named[0].data_type == "s" and named[0].quotePrefix
    orders = load_workbook(tmp_path / "o.xlsx").active
    amounts = [c.value for row in orders.iter_rows() for c in row if c.data_type == "n"]
    assert -12.5 in amounts  # the refund: a negative number, not text with a quote

    energy = list(csv.reader(io.StringIO((tmp_path / "e.csv").read_text("utf-8-sig"))))
    assert ["'" + FORMULA_NAME] in [[c for c in r if FORMULA_NAME in c] for r in energy]
    assert ["'@SUM(1+1)*cmd"] in [[c for c in r if "SUM" in c] for r in energy]
    order_cells = [
        c for r in csv.reader(io.StringIO((tmp_path / "o.csv").read_text("utf-8-sig"))) for c in r
    ]
    assert "-12.50" in order_cells and "'-12.50" not in order_cells
    risky = [c for c in order_cells if c and c[0] in "=+-@\t\r" and c != "-12.50"]
    assert not risky, risky


def test_csv_import_refuses_control_characters_with_row_and_field(run, db, tmp_path) -> None:
    before = _rows(db, t.account)
    csv_file = tmp_path / "accounts.csv"
    csv_file.write_text(
        "id,name,notify\n"
        'A-201,"Eve\nINFO forged line",\n'
        "A-202,Mallory\x1b[2J,\n"
        "A-203,Trent\u202egnp.exe,\n"
        "A-204,Peggy,email:p@example.com\r\n",
        encoding="utf-8",
        newline="",
    )
    result = run("account", "import", "SITE", str(csv_file), ok=False)
    assert f"{csv_file}:line 3: name: control character \\n at position 4" in result.output
    assert f"{csv_file}:line 4: name: control character \\x1b at position 8" in result.output
    assert f"{csv_file}:line 5: name: control character \\u202e at position 6" in result.output
    # Peggy's row is good (the CRLF ends it), but a file with a bad row is refused whole.
    assert "4 row(s): nothing written, 0 unchanged, 3 bad" in result.output
    assert _rows(db, t.account) == before


@pytest.mark.parametrize("amount", ["1,5", "12,50", "1_000", "１２"])
def test_billing_money_is_read_strictly(run, db, tmp_path, amount) -> None:
    before = (_rows(db, t.journal), _rows(db, t.batch_job))
    paid = run("bill", "pay", "SITE", "A-101", amount, "--ref", "p-1", ok=False)
    assert "error: amount: expected yuan like 12.50" in paid.output
    charged = run(
        "billing", "charge-once", "SITE", "A-101", amount, "--description", "key",
        "--ref", "c-1", ok=False,
    )  # fmt: skip
    assert "error: amount: expected yuan like 12.50" in charged.output
    rows = tmp_path / "topups.csv"
    rows.write_text(f'account,amount\nA-101,"{amount}"\n', encoding="utf-8")
    batch = run("batch", "create", "SITE", "topup", "--csv", str(rows), "--reason", "r", ok=False)
    assert "amount: expected yuan like 12.50" in batch.output
    assert (_rows(db, t.journal), _rows(db, t.batch_job)) == before


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--value", "42949672.96"], "energy: expected at most 42949672.95, got 42949672.96"),
        (["--value", "1e9"], "energy: expected a register value like 1234.56"),
        (["--value", "1,234.5"], "energy: expected a register value like 1234.56"),
        (["--value", "-1"], "energy: expected at least 0, got -1"),
        (
            ["--value", "100", "--register", "energy_sharp=99999999"],
            "registers.energy_sharp: expected at most 42949672.95",
        ),
        (
            ["--value", "100", "--register", "energy_bogus=1"],
            "registers.energy_bogus: acrel.DDSY1352 has no cumulative register 'energy_bogus'",
        ),
    ],
)
def test_a_manual_reading_stays_within_the_registers_range(run, db, options, message) -> None:
    at = ["--at", "2025-01-01 00:00"]
    result = run("billing", "reading", "SITE", "E-A-101", *at, *options, ok=False)
    assert message in result.output
    assert _rows(db, t.billing_reading) == 0
    ok = run("billing", "reading", "SITE", "E-A-101", *at, "--value", "42949672.95")
    assert "42949672.950 (manual)" in ok.output
