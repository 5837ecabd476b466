"""What a clerk reads: `billing runs` says who approved a held run and when (and no longer
"held" once approved), `billing statement` shows no internal ids — dates in site time,
what each charge is in words, amounts in yuan, how it is paid or which bill carries it —
and `account show` gives its times in the site's time zone, saying so."""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from .clerk import Run, runner
from .clerk import site_file as make_site_file

TZ = ZoneInfo("Asia/Shanghai")


@pytest.fixture
def site_file(tmp_path: Path) -> Path:
    return make_site_file(tmp_path)


@pytest.fixture
def run(cli, site_file) -> Run:
    """January of pool A read (loss 30 %, above the cap: held), as in test_cli.py."""
    invoke = runner(cli, site_file)
    for at, main, a101, a102 in (
        ("2025-01-01 00:00", 1000, 100, 200),
        ("2025-02-01 00:00", 1400, 200, 380),
    ):
        invoke("billing", "reading", "SITE", "M-A", "--at", at, "--value", str(main))
        invoke("billing", "reading", "SITE", "E-A-101", "--at", at, "--value", str(a101))
        invoke("billing", "reading", "SITE", "E-A-102", "--at", at, "--value", str(a102))
    return invoke


def _site_now() -> dt.datetime:
    return dt.datetime.now(TZ)


def _close_to_now(text: str, fmt: str) -> bool:
    """`text` (site time) is within two minutes of now — the UTC clock is 8 hours off."""
    shown = dt.datetime.strptime(text, fmt).replace(tzinfo=TZ)
    return abs(shown - _site_now()) < dt.timedelta(minutes=2)


def _row(out: str, start: str) -> str:
    (line,) = [ln for ln in out.splitlines() if ln.startswith(f"│ {start}")]
    return line


def test_runs_show_who_approved_and_when_and_no_held_after_approval(run):
    run("billing", "apportion", "SITE", "--period", "2025-01")
    held = _row(run("billing", "runs", "SITE").output, "pool:A")
    assert "HELD" in held and "held for approval" in held
    approving = run("billing", "approve", "SITE", "A", "--period", "2025-01").output
    assert "POSTED" in approving and "held" not in approving.lower()
    out = run("billing", "runs", "SITE", "--period", "2025-01").output
    assert "posted" in out and "approved" in out and "Times in site time (Asia/Shanghai)" in out
    approved = _row(out, "pool:A")
    assert "POSTED" in approved and "72.00" in approved
    assert "held" not in approved.lower()
    assert "loss 30.00% of the main meter is above the cap 8.00%: accepted on approval" in approved
    when = re.search(r"│ (\S+), (\d{4}-\d\d-\d\d \d\d:\d\d) +│", approved)
    assert when is not None, approved
    assert when.group(1) == "cli:" + when.group(1).split(":", 1)[1]  # the operator
    assert _close_to_now(when.group(2), "%Y-%m-%d %H:%M")


def test_statement_has_no_internal_ids_and_says_how_each_charge_is_paid(run):
    run("billing", "apportion", "SITE", "--period", "2025-01")
    run("billing", "approve", "SITE", "A", "--period", "2025-01")
    run("billing", "charge-once", "SITE", "A-101", "12.00", "--description", "Spare key",
        "--ref", "key-1")  # fmt: skip
    run("bill", "draft", "SITE", "--period", "2025-01")
    run("bill", "confirm", "SITE", "--period", "2025-01")
    out = run("billing", "statement", "SITE", "A-101").output
    assert "date" in out and "what" in out and "paid how" in out
    assert "Amounts in yuan (CNY); dates in site time (Asia/Shanghai)." in out
    key = next(ln for ln in out.splitlines() if "Spare key" in ln)
    assert "service" in key and "Spare key" in key and "12.00" in key
    assert "owed on the next bill (the general wallet was short)" not in key
    assert "owed on the next bill" in key or "on bill B-2025-01-A-101" in key
    common = next(ln for ln in out.splitlines() if "common area A 2025-01" in ln)
    assert "common area" in common and "30.99" in common
    assert "on bill B-2025-01-A-101" in common  # by its number, not the bill's row id
    assert "public_energy" not in out and "wallet short" not in out
    # No journal, run or wallet id anywhere: the only digits are dates, periods, amounts,
    # quantities and the bill number.
    for cell in (c.strip() for ln in out.splitlines() for c in ln.split("│")):
        assert not re.fullmatch(r"#?\d+", cell), f"an id on the statement: {cell!r}"


def test_account_show_gives_its_times_in_site_time(run):
    run("topup", "SITE", "A-101", "5.00", "--ref", "r-1")
    out = run("account", "show", "SITE", "A-101").output
    assert "UTC" not in out
    assert "times     site time (Asia/Shanghai)" in out
    created = re.search(r"\(created (\d{4}-\d\d-\d\d \d\d:\d\d)\)", out)
    assert created is not None and _close_to_now(created.group(1), "%Y-%m-%d %H:%M")
    entry = re.search(r"^  (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)  #", out, re.M)
    assert entry is not None and _close_to_now(entry.group(1), "%Y-%m-%d %H:%M:%S")
