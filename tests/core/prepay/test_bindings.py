"""Every meter on a tariff is billed, or someone is told (issue 9 §5), where bindings are
made — on SQLite and PostgreSQL, through the command line, the CSV import, the service
function behind OPC UA SetTariff and batch tariff changes.

A three-rate time-of-use tariff (peak, flat, valley) cannot bill the four rate registers
of a DDSY1352 (尖 sharp, 峰, 平, 谷) without a register map: refused, naming the register
and the fix; unknown tariff ids are refused too; nothing is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from openprepay.core.billing.batch import Batches
from openprepay.core.config.site import load_site
from openprepay.core.db import Database
from openprepay.core.ledger import RequestError
from openprepay.core.operations import Operations

SITE = """
[site]
id = "bind"
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

[tariffs.flat]
price = "0.5000"

[tariffs.tou3]
rates = { peak = "0.6000", flat = "0.5000", valley = "0.2000" }
periods = [
  { start = "00:00", end = "08:00", rate = "valley" },
  { start = "08:00", end = "18:00", rate = "flat" },
  { start = "18:00", end = "24:00", rate = "peak" },
]

[tariffs.tou3mapped]
rates = { peak = "0.6000", flat = "0.5000", valley = "0.2000" }
registers = ["peak", "peak", "flat", "valley"]
periods = [
  { start = "00:00", end = "08:00", rate = "valley" },
  { start = "08:00", end = "18:00", rate = "flat" },
  { start = "18:00", end = "24:00", rate = "peak" },
]
{engine}
[database]
url = "{url}"
"""

NO_RATE_FOR_T1 = "has no rate 'sharp' for register T1 of acrel.DDSY1352"
FIX = 'registers = ["peak", "peak", "flat", "valley"]'


def write_site(tmp_path: Path, db_url: str, engine: str = "") -> Path:
    path = tmp_path / "site.toml"
    path.write_text(SITE.replace("{url}", db_url).replace("{engine}", engine), encoding="utf-8")
    return path


@pytest.fixture
def site_file(tmp_path: Path, db_url: str) -> Path:
    return write_site(tmp_path, db_url)


@pytest.fixture
def run(cli, site_file):
    group, obj = cli

    def invoke(*args: str, ok: bool = True):
        argv = [a if a != "SITE" else str(site_file) for a in args]
        result = CliRunner().invoke(group, argv, obj=obj, catch_exceptions=False)
        assert (result.exit_code == 0) is ok, result.output
        return result

    invoke("db", "upgrade", "SITE")
    return invoke


def accounts(site_file: Path) -> list[tuple[str, str | None]]:
    site = load_site(site_file)
    db = Database(site.sections["database"]["url"])
    try:
        with db.read() as conn:
            return [tuple(r) for r in conn.execute(sa.text("SELECT id, tariff_id FROM account"))]
    finally:
        db.dispose()


def test_check_refuses_a_default_tariff_that_cannot_bill_the_room_meters(cli, tmp_path, db_url):
    group, obj = cli
    bad = write_site(tmp_path, db_url, '[prepay.engine]\ndefault_tariffs = { electric = "tou3" }\n')
    result = CliRunner().invoke(group, ["check", str(bad)], obj=obj, catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert "prepay.engine.default_tariffs.electric" in result.output
    assert "tariff 'tou3' cannot bill meter E-101" in result.output
    assert NO_RATE_FOR_T1 in result.output and FIX in result.output
    result = CliRunner().invoke(group, ["tariff", "check", str(bad)], obj=obj)
    assert result.exit_code == 2 and "tariff 'tou3' cannot bill meter E-101" in result.output
    good = write_site(
        tmp_path, db_url, '[prepay.engine]\ndefault_tariffs = { electric = "tou3mapped" }\n'
    )
    result = CliRunner().invoke(group, ["check", str(good)], obj=obj, catch_exceptions=False)
    assert result.exit_code == 0, result.output


def test_account_open_refuses_unknown_and_unfitting_tariffs(run, site_file):
    out = run(
        "account",
        "open",
        "SITE",
        "A-101",
        "--name",
        "A",
        "--meter",
        "E-101",
        "--tariff",
        "tou3",
        ok=False,
    ).output
    assert "--tariff: meter E-101 cannot be billed" in out
    assert NO_RATE_FOR_T1 in out and FIX in out
    out = run(
        "account",
        "open",
        "SITE",
        "A-101",
        "--name",
        "A",
        "--meter",
        "E-101",
        "--tariff",
        "nope",
        ok=False,
    ).output
    assert "--tariff: unknown tariff 'nope' (site tariffs: flat, tou3, tou3mapped)" in out
    assert accounts(site_file) == []
    run(
        "account",
        "open",
        "SITE",
        "A-101",
        "--name",
        "A",
        "--meter",
        "E-101",
        "--tariff",
        "tou3mapped",
    )
    assert accounts(site_file) == [("A-101", "tou3mapped")]


def test_csv_import_refuses_unknown_and_unfitting_tariffs(run, site_file, tmp_path):
    rows = tmp_path / "accounts.csv"
    rows.write_text(
        "id,name,meters,tariff\nA-101,Alice,E-101,tou3\nA-102,Bob,E-102,nope\nA-103,Carol,,flat\n",
        encoding="utf-8",
    )
    result = run("account", "import", "SITE", str(rows), ok=False)
    assert "line 2: tariff: meter E-101 cannot be billed: tariff tou3" in result.output
    assert "line 3: tariff: unknown tariff 'nope'" in result.output
    assert "nothing written" in result.output  # a file with a bad row is refused whole
    assert accounts(site_file) == []


def test_set_tariff_and_batch_refuse_a_tariff_that_cannot_bill(run, site_file, cli):
    plugins = cli[1].plugins
    run("account", "open", "SITE", "A-101", "--name", "A", "--meter", "E-101", "--tariff", "flat")
    site = load_site(site_file)
    db = Database(site.sections["database"]["url"])
    try:
        ops = Operations(site, db, models=plugins.models)
        with pytest.raises(RequestError) as refused:
            ops.set_tariff("A-101", "tou3", actor="opcua:admin")  # what SetTariff calls
        assert refused.value.field == "tariff" and NO_RATE_FOR_T1 in refused.value.message
        assert FIX in refused.value.message
        batches = Batches(site, plugins.models, db, ops)
        plan = batches.plan("set_tariff", {"tariff": "tou3"}, {"accounts": ["A-101"]})
        assert [(p.target, p.ok) for p in plan] == [("A-101", False)]
        assert NO_RATE_FOR_T1 in plan[0].text
        ops.set_tariff("A-101", "tou3mapped", actor="opcua:admin")
    finally:
        db.dispose()
    assert accounts(site_file) == [("A-101", "tou3mapped")]
