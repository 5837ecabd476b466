"""§4: every number typed at the command line is read one strict way, within its bounds.

Click's own `float` and `int` took `nan`, `inf`, `1e308`, `1_000` and full-width digits:
`run --duration nan`, `simulate --speedup 0` or `account show --entries -5` were accepted.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import tomli_w
from click.testing import CliRunner

from tests.core.conftest import SITE_DATA


@pytest.fixture
def site_file(tmp_path: Path) -> str:
    path = tmp_path / "site.toml"
    data = {**SITE_DATA, "database": {"url": f"sqlite:///{tmp_path / 'op.db'}"}}
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    ("argv", "option", "message"),
    [
        (["run", "SITE", "--duration", "nan"], "--duration", "expected a number like 60"),
        (["run", "SITE", "--duration", "inf"], "--duration", "expected a number like 60"),
        (["run", "SITE", "--duration", "1e308"], "--duration", "expected a number like 60"),
        (["run", "SITE", "--duration", "-5"], "--duration", "expected at least 0.001, got -5"),
        (["simulate", "SITE", "--speedup", "0"], "--speedup", "expected at least 0.01, got 0"),
        (["simulate", "SITE", "--speedup", "1_000"], "--speedup", "expected a number like 60"),
        (["demo", "--floors", "５"], "--floors", "expected a number like 10"),
        (["demo", "--duration", "nan"], "--duration", "expected a number like 60"),
        (["account", "show", "SITE", "A-1", "--entries", "-5"], "--entries", "at least 0"),
        (["ledger", "reverse", "SITE", "0", "--reason", "x"], "JOURNAL_ID", "at least 1, got 0"),
        (["batch", "show", "SITE", "1_0"], "JOB_ID", "expected a number like 10"),
        (["report", "suspects", "SITE", "--days", "1e2"], "--days", "expected a number like 10"),
    ],
)
def test_cli_numbers_are_read_strictly(cli, site_file, argv, option, message) -> None:
    group, obj = cli
    result = CliRunner().invoke(group, [site_file if a == "SITE" else a for a in argv], obj=obj)
    assert result.exit_code == 2, result.output
    assert "Invalid value for" in result.output and option in result.output
    assert message in result.output
