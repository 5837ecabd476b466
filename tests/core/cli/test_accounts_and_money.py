"""The command line on SQLite and PostgreSQL: db upgrade, account open/list/show/close/import,
topup, refund, ledger verify/reverse. Amounts are yuan with at most two decimals; errors
name the field and exit non-zero; nothing changes on a refused request."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

SITE = """
[site]
id = "cli-test"
timezone = "Asia/Shanghai"

[links.gw]
type = "rtu_over_tcp"
host = "127.0.0.1"
port = 15998

[buildings.A]
floors = ["1"]

[rooms.A-101]
building = "A"
floor = "1"

[rooms.A-102]
building = "A"
floor = "1"

[devices.E-101]
model = "acrel.DDSY1352"
link = "gw"
unit_id = 1
room = "A-101"

[devices.E-102]
model = "acrel.DDSY1352"
link = "gw"
unit_id = 2
room = "A-102"
control_mode = "LOCAL"

[prepay.thresholds]
alarm1 = "30.00"

[database]
url = "{url}"
"""


@pytest.fixture
def site_file(tmp_path: Path, db_url: str) -> str:
    path = tmp_path / "site.toml"
    path.write_text(SITE.replace("{url}", db_url), encoding="utf-8")
    return str(path)


@pytest.fixture
def run(cli, site_file):
    group, obj = cli

    def invoke(*args: str, ok: bool = True):
        argv = [a if a != "SITE" else site_file for a in args]
        result = CliRunner().invoke(group, argv, obj=obj, catch_exceptions=False)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    return invoke


def test_a_day_at_the_counter(run, site_file):
    refused = run("account", "list", "SITE", ok=False)
    assert refused.exit_code == 1 and "openprepay db upgrade" in refused.output
    assert "migrated empty -> 0" in run("db", "upgrade", "SITE").output
    assert "already at 0" in run("db", "upgrade", "SITE").output

    out = run(
        "account", "open", "SITE", "A-101", "--name", "Alice", "--room", "A-101", "--meter", "E-101"
    ).output
    assert "account A-101 opened" in out and "E-101 (electric, REMOTE)" in out
    out = run(
        "account", "open", "SITE", "A-102", "--name", "Bob", "--meter", "E-102", "--preregister"
    ).output
    assert "pre-registered" in out
    assert "opened" in run("account", "open", "SITE", "A-102").output  # one action

    out = run("topup", "SITE", "A-101", "100.00", "--ref", "rcpt-1").output
    assert "energy balance 100.00" in out
    out = run("topup", "SITE", "A-101", "100.00", "--ref", "rcpt-1").output
    assert "already recorded; nothing changed" in out and "energy balance 100.00" in out
    out = run("topup", "SITE", "A-102", "50", "--ref", "rcpt-2", "--channel", "wechat").output
    assert "RECHARGE #1 queued for E-102 (purchase 1)" in out

    out = run("refund", "SITE", "A-101", "30.5", "--ref", "rf-1").output
    assert "30.50 from A-101, SETTLED" in out and "energy balance 69.50" in out

    listing = run("account", "list", "SITE").output
    assert "A-101" in listing and "69.50" in listing and "2 account(s)" in listing
    show = run("account", "show", "SITE", "A-102").output
    assert "alarm1 30.00" in show  # [prepay.thresholds] default
    assert "RECHARGE" in show and "PENDING" in show and "purchases 1" in show

    verify = run("ledger", "verify", "SITE").output
    assert "all invariants hold" in verify


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        ("-5", "amount: expected more than 0.00, got -5.00"),
        ("0", "amount: expected more than 0.00, got 0.00"),
        ("1.234", "amount: at most 2 decimals"),
        ("ten", "amount: expected yuan like 12.50"),
        ("1000000", "above the meter capacity 999999.99"),
        ("5000.01", "hoarding limit 5000.00"),
    ],
)
def test_bad_amounts_exit_non_zero_and_change_nothing(run, amount, message):
    run("db", "upgrade", "SITE")
    run("account", "open", "SITE", "A-101", "--name", "Alice", "--meter", "E-101")
    result = run("topup", "SITE", "A-101", amount, "--ref", "r1", ok=False)
    assert result.exit_code == 1 and message in result.output
    assert "A-101" in run("account", "list", "SITE").output
    assert " 0.00" in run("account", "show", "SITE", "A-101").output
    assert "1 journals" not in run("ledger", "verify", "SITE").output


def test_unknown_account_and_closed_account(run):
    run("db", "upgrade", "SITE")
    result = run("topup", "SITE", "NOPE", "5", "--ref", "r1", ok=False)
    assert "account: unknown account 'NOPE'" in result.output
    run("account", "open", "SITE", "A-101", "--name", "Alice")
    run("topup", "SITE", "A-101", "5", "--ref", "r1")
    assert "refund or settle" in run("account", "close", "SITE", "A-101", ok=False).output
    run("refund", "SITE", "A-101", "5", "--ref", "rf1")
    assert "closed" in run("account", "close", "SITE", "A-101").output
    assert "closed" in run("topup", "SITE", "A-101", "5", "--ref", "r2", ok=False).output


def test_open_refuses_unknown_room_and_meter(run):
    run("db", "upgrade", "SITE")
    out = run("account", "open", "SITE", "A-1", "--name", "x", "--room", "Z", ok=False).output
    assert "--room: unknown room 'Z'" in out
    out = run("account", "open", "SITE", "A-1", "--name", "x", "--meter", "E-9", ok=False).output
    assert "--meter: unknown meter 'E-9'" in out
    out = run("account", "open", "SITE", "A-1", ok=False).output
    assert "--name: required" in out


def test_import_reports_bad_rows_and_exits_non_zero(run, tmp_path):
    run("db", "upgrade", "SITE")
    csv_file = tmp_path / "accounts.csv"
    csv_file.write_text(
        "id,name,room,meters,opening_balance\n"
        "A-101,Alice,A-101,E-101,10.00\n"
        "A-102,Bob,A-109,E-102,\n"
        "A-103,Carol,A-102,E-102,-3\n",
        encoding="utf-8",
    )
    result = run("account", "import", "SITE", str(csv_file), ok=False)
    assert result.exit_code == 1
    assert f"{csv_file}:line 3: room: unknown room 'A-109'" in result.output
    assert f"{csv_file}:line 4: opening_balance: expected at least 0.00, got -3.00" in result.output
    # A file with a bad row writes nothing (not even its good rows).
    assert "3 row(s): nothing written, 0 unchanged, 2 bad" in result.output
    assert "unknown account 'A-101'" in run("account", "show", "SITE", "A-101", ok=False).output
    csv_file.write_text(
        "id,name,room,meters,opening_balance\nA-101,Alice,A-101,E-101,10.00\n", encoding="utf-8"
    )
    assert "1 row(s): 1 created" in run("account", "import", "SITE", str(csv_file)).output
    dry = run("account", "import", "SITE", str(csv_file), "--dry-run")
    assert "nothing written (dry run)" in dry.output and "1 unchanged" in dry.output
    assert "10.00" in run("account", "show", "SITE", "A-101").output


def test_verify_exits_non_zero_on_a_break_and_reverse_corrects(run, db_url):
    run("db", "upgrade", "SITE")
    run("account", "open", "SITE", "A-101", "--name", "Alice")
    run("topup", "SITE", "A-101", "20", "--ref", "r1")
    out = run("ledger", "reverse", "SITE", "1", "--reason", "test entry").output
    assert "journal 2 reverses 1" in out
    assert "all invariants hold" in run("ledger", "verify", "SITE").output
    engine = sa.create_engine(db_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE wallet SET balance_fen = 12345"))
    engine.dispose()
    result = run("ledger", "verify", "SITE", ok=False)
    assert result.exit_code == 1
    assert "BROKEN  wallet balance = -(sum of its postings)" in result.output
