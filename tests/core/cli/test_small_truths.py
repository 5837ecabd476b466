"""Small truths (issue 9 §9) on SQLite and PostgreSQL: `billing apportion` and `billing
month-end` fail when a pool is in FAULT; `account show` and `account list` show fee state,
supply (decided and read) and what is owed; a replayed LOCAL top-up does not say its
RECHARGE was queued when it was confirmed long ago."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from openprepay.core.config.site import load_site
from openprepay.core.db import Database
from openprepay.core.prepay import commands as cmds
from openprepay.core.prepay.purchase_count import set_meter_buy_count

SITE = """
[site]
id = "truths"
timezone = "Asia/Shanghai"

[links.gw]
type = "rtu_over_tcp"
host = "127.0.0.1"
port = 15995

[buildings.A]
floors = ["1"]

[rooms.A-101]
building = "A"
floor = "1"
area_m2 = 40

[rooms.A-102]
building = "A"
floor = "1"
area_m2 = 60

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

[devices.M-A]
model = "acrel.DTSD1352"
link = "gw"
unit_id = 3
building = "A"

[tariffs.flat]
price = "0.5000"

[prepay.engine]
default_tariffs = { electric = "flat" }

[billing.pools.A]
main = "M-A"
price = "0.6000"
method = "area"

[database]
url = "{url}"
"""


@pytest.fixture
def site_file(tmp_path: Path, db_url: str) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(SITE.replace("{url}", db_url), encoding="utf-8")
    return path


@pytest.fixture
def run(cli, site_file):
    group, obj = cli

    def invoke(*args: str, ok: bool = True):
        argv = [a if a != "SITE" else str(site_file) for a in args]
        result = CliRunner().invoke(group, argv, obj=obj, catch_exceptions=False)
        assert (result.exit_code == 0) is ok, result.output + result.stderr
        return result

    invoke("db", "upgrade", "SITE")
    invoke(
        "account", "open", "SITE", "A-101", "--name", "Alice", "--room", "A-101", "--meter", "E-101"
    )
    invoke(
        "account", "open", "SITE", "A-102", "--name", "Bob", "--room", "A-102", "--meter", "E-102"
    )
    return invoke


def test_apportion_and_month_end_fail_on_a_pool_in_fault(run):
    # The main meter reads less than its sub-meters: a meter fault.
    for at, main, a101, a102 in (
        ("2025-01-01 00:00", 1000, 100, 200),
        ("2025-02-01 00:00", 1100, 200, 380),
    ):
        run("billing", "reading", "SITE", "M-A", "--at", at, "--value", str(main))
        run("billing", "reading", "SITE", "E-101", "--at", at, "--value", str(a101))
        run("billing", "reading", "SITE", "E-102", "--at", at, "--value", str(a102))
    apportion = run("billing", "apportion", "SITE", "--period", "2025-01", ok=False)
    assert apportion.exit_code == 1
    assert "pool:A 2025-01: FAULT" in apportion.output
    assert "error: pool:A 2025-01 is in FAULT, nothing was allocated" in apportion.stderr
    dry = run("billing", "apportion", "SITE", "--period", "2025-01", "--dry-run", ok=False)
    assert "FAULT" in dry.stderr
    month_end = run("billing", "month-end", "SITE", "--period", "2025-01", ok=False)
    assert month_end.exit_code == 1 and "is in FAULT" in month_end.stderr


def test_account_show_and_list_tell_fee_state_supply_and_what_is_owed(run):
    run("topup", "SITE", "A-101", "3.00", "--ref", "r1")
    run(
        "billing",
        "charge-once",
        "SITE",
        "A-101",
        "12.50",
        "--description",
        "key",
        "--ref",
        "k1",
        "--bill",
    )
    run("meter", "trip", "SITE", "E-101", "--reason", "inspection")
    show = run("account", "show", "SITE", "A-101").output
    assert "owed      12.50  (energy arrears 0.00, general 0.00, bills and charges 12.50)" in show
    assert "fee state ALARM2 (alarm level 2)" in show
    assert "supply cut/? (decided/read)" in show
    assert "E-101  electric  REMOTE  supply decided cut, reads not read yet" in show
    listing = run("account", "list", "SITE").output.splitlines()
    header, alice = listing[0].split(), next(x for x in listing if x.startswith("A-101")).split()
    assert header[:8] == ["ACCOUNT", "STATE", "ROOM", "FEE", "SUPPLY", "ENERGY", "GENERAL", "OWED"]
    assert alice[:8] == ["A-101", "OPEN", "A-101", "ALARM2", "cut/?", "3.00", "0.00", "12.50"]


def test_a_replayed_local_topup_reports_its_recharge_as_it_stands(run, site_file, cli):
    site = load_site(site_file)
    db = Database(site.sections["database"]["url"])
    try:
        with db.begin() as conn:  # what the service does at attach: read the count (0)
            set_meter_buy_count(conn, "E-102", 0)
        first = run("topup", "SITE", "A-102", "50", "--ref", "local-1").output
        assert "RECHARGE #1 queued for E-102 (purchase 1)" in first
        assert (
            "RECHARGE #1 still on its way"
            in run("topup", "SITE", "A-102", "50", "--ref", "local-1").output
        )
        with db.begin() as conn:  # the service delivers it and the meter confirms
            (claimed,) = cmds.claim_due(conn, 5)
            cmds.mark_sent(conn, claimed.id)
            cmds.mark_confirmed(conn, claimed.id, readback={"buy_count": 1})
    finally:
        db.dispose()
    replay = run("topup", "SITE", "A-102", "50", "--ref", "local-1").output
    assert "already recorded; nothing changed" in replay
    assert "queued" not in replay
    assert "RECHARGE #1 already confirmed for E-102 (purchase 1)" in replay
