"""Opening and manual readings imported from a CSV file (`billing readings-import`): one
transaction for the file, every bad line reported at once with its column, value and fix,
nothing written when any line is bad, and one audit row and outbox entry per import — the
same door as `billing reading`."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from openprepay.core.db import schema as t

from .clerk import Run, audits, rows, runner
from .clerk import site_file as make_site_file


@pytest.fixture
def site_file(tmp_path: Path) -> Path:
    return make_site_file(tmp_path)


@pytest.fixture
def run(cli, site_file) -> Run:
    return runner(cli, site_file)


def _readings(site_file: Path) -> list[sa.Row]:
    r = t.billing_reading
    return rows(site_file, sa.select(r).order_by(r.c.meter_id, r.c.at))


BAD = (
    "meter,at,energy,energy_sharp,energy_shrp,read_at,note\n"
    "M-A,2025-01,1000.5,,,,opening\n"  # line 2: good
    "E-A-999,2025-01-01 00:00,10,,,,\n"  # line 3: unknown meter
    "E-A-101,2025-01-01 00:00,12.3456,,,,\n"  # line 4: four decimals
    "E-A-102,2025-01-01 00:00,99999999,,,,\n"  # line 5: beyond the register's range
    "E-A-102,yesterday,5,,,2025-13-01,\n"  # line 6: two bad times
    "M-A,2025-01-01 00:00,7,,,,\n"  # line 7: M-A at the same instant as line 2
    "E-A-101,2025-02,,,,,\n"  # line 8: energy missing
    "E-A-102,2025-02,300,,3,,\n"  # line 9: a register the model does not have
    "E-A-101,2025-03,400,-1,,,\n"  # line 10: a negative rate register
)


def test_a_file_with_bad_lines_is_refused_whole_with_every_problem(run, site_file, tmp_path):
    path = tmp_path / "opening.csv"
    path.write_text(BAD, encoding="utf-8")
    result = run("billing", "readings-import", "SITE", str(path), ok=False)
    assert result.exit_code == 1
    out = result.output
    for expected in (
        "opening.csv:line 3: meter: unknown meter 'E-A-999' (site meters: E-A-101, E-A-102",
        "opening.csv:line 4: energy: at most 3 decimal places, got 12.3456",
        "opening.csv:line 5: energy: expected at most 42949672.95, got 99999999 (the "
        "register's range)",
        "opening.csv:line 6: at: expected a time such as 2025-03-01 00:00 (site time) or a "
        "period (2025-03) (the cell holds 'yesterday')",
        "opening.csv:line 6: read_at: expected a time such as 2025-03-01 00:00 (site time) "
        "(the cell holds '2025-13-01')",
        "opening.csv:line 7: at: M-A has a reading for this instant on line 2 already: keep "
        "one of the two lines (the cell holds '2025-01-01 00:00')",
        "opening.csv:line 8: energy: required: fill it in",
        "opening.csv:line 9: energy_shrp: acrel.DDSY1352 has no cumulative register "
        "'energy_shrp' (it has: energy_deep_valley, energy_flat, energy_peak, energy_sharp, "
        "energy_total, energy_valley) (the cell holds '3')",
        "opening.csv:line 10: energy_sharp: expected at least 0, got -1 (the register's range)",
    ):
        assert expected in out, out
    assert "line 2" not in out.replace("on line 2 already", "")
    assert "8 bad line(s): nothing recorded" in out
    assert _readings(site_file) == []  # not even the good line
    assert audits(site_file, "billing_readings_import") == []
    # The refused attempt still reaches every running service (its audit event).
    (outbox,) = [
        r.payload for r in rows(site_file, sa.select(t.event_outbox)) if "readings" in str(r)
    ]
    assert "refused: file: 8 bad line(s), nothing written" in str(outbox)


def test_a_good_file_is_recorded_audited_and_read_back(run, site_file, tmp_path):
    path = tmp_path / "opening.csv"
    path.write_text(
        "\ufeffmeter,at,energy,energy_sharp,energy_peak,read_at,note\n"
        "M-A,2025-01,1000.5,,,,opening reading\n"
        "E-A-101,2025-01-01 00:00,100,10,20,2024-12-31 18:30,read by the caretaker\n"
        "E-A-102,2025-01-01,200.25,,,,\n",
        encoding="utf-8",
    )
    outbox_before = len(rows(site_file, sa.select(t.event_outbox)))
    dry = run("billing", "readings-import", "SITE", str(path), "--dry-run").output
    assert "would record 3 reading(s) of 3 meter(s) (dry run: nothing written)" in dry
    assert _readings(site_file) == [] and audits(site_file, "billing_readings_import") == []

    out = run("billing", "readings-import", "SITE", str(path)).output
    assert "opening.csv: recorded 3 reading(s) of 3 meter(s) (manual)" in out
    found = {r.meter_id: r for r in _readings(site_file)}
    assert {m: (r.energy, r.source) for m, r in found.items()} == {
        "E-A-101": (100_000, "manual"),
        "E-A-102": (200_250, "manual"),
        "M-A": (1_000_500, "manual"),
    }
    assert found["E-A-101"].registers == {"energy_sharp": 10_000, "energy_peak": 20_000}
    # 18:30 site time on 31 Dec is 10:30 UTC; the instant is 1 Jan 00:00 site time.
    assert f"{found['E-A-101'].read_at:%Y-%m-%d %H:%M}" == "2024-12-31 10:30"
    done = audits(site_file, "billing_readings_import")
    assert len(done) == 1 and done[0].ok and done[0].target == "opening.csv"
    assert done[0].detail.startswith("3 reading(s) of 3 meter(s) from opening.csv")
    assert "line 2 M-A: opening reading" in done[0].detail
    assert "line 3 E-A-101: read by the caretaker" in done[0].detail
    assert len(rows(site_file, sa.select(t.event_outbox))) == outbox_before + 1
    shown = run("billing", "readings", "SITE", "--at", "2025-01", "--meter", "E-A-101").output
    assert "2024-12-31 18:30:00" in shown and "100.000" in shown and "manual" in shown


def test_a_single_reading_goes_through_the_door_and_takes_a_period(run, site_file):
    out = run("billing", "reading", "SITE", "E-A-101", "--at", "2025-02", "--value", "12.5").output
    assert out == "E-A-101 at 2025-02-01 00:00: 12.500 (manual)\n"
    (audit,) = audits(site_file, "billing_reading")
    assert audit.target == "E-A-101" and "12.500" in audit.detail
