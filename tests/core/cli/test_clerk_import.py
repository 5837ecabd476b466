"""`account import` as a clerk uses it: every bad cell of every row reported at once —
line, column, the value the cell holds and what to write instead — and nothing written
when any row is bad; the corrected file then imports whole."""

from __future__ import annotations

from pathlib import Path

from .test_accounts_and_money import SITE

HEADER = "id,name,room,meters,alarm1,alarm2,protected,state,opening_balance\n"


def _site(tmp_path: Path) -> str:
    path = tmp_path / "site.toml"
    path.write_text(SITE.replace("{url}", f"sqlite:///{tmp_path / 'op.db'}"), encoding="utf-8")
    return str(path)


def test_every_bad_cell_is_reported_and_nothing_is_written(cli, tmp_path):
    from click.testing import CliRunner

    group, obj = cli
    site = _site(tmp_path)

    def run(*args: str) -> tuple[int, str]:
        result = CliRunner().invoke(group, [a if a != "SITE" else site for a in args], obj=obj)
        return result.exit_code, result.output

    assert run("db", "upgrade", "SITE")[0] == 0
    csv_file = tmp_path / "tenants.csv"
    csv_file.write_text(
        HEADER
        + "A-101,Alice,A-101,E-101,,,,,10.00\n"  # line 2: good
        + "A-102,Bob,A-109,E-999,12.345,,maybe,,\n"  # line 3: four bad cells
        + "A-103,,A-102,,,,,CLOSED,-1\n"  # line 4: three bad cells
        + "A-104,Dan,A-102,E-101,,,,,\n",  # line 5: E-101 is on line 2 already
        encoding="utf-8",
    )
    code, out = run("account", "import", "SITE", str(csv_file))
    assert code == 1
    problems = [ln.split(":", 1)[1] for ln in out.splitlines() if ln.startswith(str(csv_file))]
    assert problems == [
        "line 3: room: unknown room 'A-109' (site rooms: A-101, A-102)",
        "line 3: meters: unknown meter 'E-999' (site devices: E-101, E-102)",
        "line 3: alarm1: at most 2 decimals (whole fen), got 12.345",
        "line 3: protected: expected yes or no (or empty: no) (the cell holds 'maybe')",
        "line 4: state: expected OPEN or PREREGISTERED (or empty: OPEN) (the cell holds 'CLOSED')",
        "line 4: opening_balance: expected at least 0.00, got -1.00",
        "line 4: name: required, at most 200 characters; got ''",
        "line 5: meters: meter 'E-101' is already on line 2: a meter belongs to one account",
    ], out
    assert "4 row(s): nothing written, 0 unchanged, 3 bad; correct the rows listed" in out
    assert "unknown account 'A-101'" in run("account", "show", "SITE", "A-101")[1]

    csv_file.write_text(
        HEADER + "A-101,Alice,A-101,E-101,,,,,10.00\nA-102,Bob,A-102,E-102,,,no,,\n",
        encoding="utf-8",
    )
    code, out = run("account", "import", "SITE", str(csv_file))
    assert code == 0 and "2 row(s): 2 created, 0 unchanged, 0 bad" in out
