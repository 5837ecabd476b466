"""§4: the site file's numbers, and a site file that is not text or absurdly nested.

`interval_s = nan` compares false to every bound: it used to pass `check` and start a
service that polls nothing. Every float of the file goes through one TableReader accessor
that refuses NaN, infinities and 1e308. A file that is not UTF-8 or nested thousands deep
used to end in a UnicodeDecodeError or RecursionError traceback; now every command that
loads a site says in one line which file and where.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from click.testing import CliRunner

from openprepay.core.config.site import load_site, parse_site
from openprepay.core.errors import ConfigError
from tests.core.conftest import SITE_DATA

BAD_FLOATS = [float("nan"), float("inf"), float("-inf"), 1e308]


def _with(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    data = copy.deepcopy(SITE_DATA)
    table = data
    for key in path[:-1]:
        table = table.setdefault(key, {})
    table[path[-1]] = value
    return data


@pytest.mark.parametrize("value", BAD_FLOATS, ids=["nan", "inf", "-inf", "1e308"])
@pytest.mark.parametrize(
    "path",
    [
        ("poll", "interval_s"),
        ("poll", "backoff_initial_s"),
        ("poll", "backoff_max_s"),
        ("poll", "quarantine_probe_s"),
        ("poll", "stats_interval_s"),
        ("poll", "full_collection_s"),
        ("links", "gw1", "timeout_ms"),
        ("links", "gw1", "reconnect_max_s"),
        ("rooms", "A-101", "area_m2"),
        ("devices", "E-101", "poll_interval_s"),
    ],
    ids=lambda p: ".".join(p),
)
def test_every_float_of_the_site_refuses_nan_infinities_and_1e308(path, value) -> None:
    with pytest.raises(ConfigError) as refused:
        parse_site(_with(path, value))
    field = ".".join(path)
    assert any(e.path == field and "expected" in e.message for e in refused.value.errors), (
        refused.value
    )


def test_the_full_collection_period_is_read_and_bounded() -> None:
    """`[poll] full_collection_s`: how often the service runs a full garbage collection; the
    runtime hands it to its vitals. Below a minute the pauses would come too often, beyond
    a week the cyclic garbage would wait too long."""
    from openprepay.core.app.plugins import Plugins
    from openprepay.core.app.runtime import Runtime

    assert parse_site(SITE_DATA).poll.full_collection_s == 3600
    site = parse_site(_with(("poll", "full_collection_s"), 7200))
    assert site.poll.full_collection_s == 7200
    link = {"type": "modbus_tcp", "host": "127.0.0.1", "port": 1}
    bare = parse_site(
        {"site": {"id": "s"}, "links": {"gw": link}, "poll": {"full_collection_s": 7200}}
    )
    assert Runtime(bare, Plugins.load()).vitals.full_collection_s == 7200
    for absurd in (30, 8 * 86400):
        with pytest.raises(ConfigError) as refused:
            parse_site(_with(("poll", "full_collection_s"), absurd))
        assert [e.path for e in refused.value.errors] == ["poll.full_collection_s"]
        assert "expected 60" in str(refused.value)


def test_absurd_integers_are_refused_where_no_bound_is_given() -> None:
    from openprepay.core.prepay.settings import check_prepay

    site = parse_site(_with(("prepay", "rating", "gap_s"), 10**30))
    assert [str(e) for e in check_prepay(site)] == [
        "prepay.rating.gap_s: expected -1000000000000..1000000000000, got 1.000E+30"
    ]


# -- whole files, through the command line ---------------------------------------------------


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    good = copy.deepcopy(SITE_DATA)
    good["database"] = {"url": f"sqlite:///{tmp_path / 'op.db'}"}
    text = tomli_w.dumps(good)
    out = {}
    nan = tmp_path / "nan.toml"
    nan.write_text(text.replace("[poll]", "") + "\n[poll]\ninterval_s = nan\n", encoding="utf-8")
    out["nan"] = nan
    latin = tmp_path / "latin1.toml"
    latin.write_bytes(text.encode() + '\n[rooms.A-102]\nname = "Café"\n'.encode("latin-1"))
    out["latin1"] = latin
    deep = tmp_path / "deep.toml"
    deep.write_text(text + "\n[x]\na = " + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
    out["deep"] = deep
    dotted = tmp_path / "dotted.toml"
    dotted.write_text(text + "\n[x]\n" + "a." * 3000 + "a = 1\n", encoding="utf-8")
    out["dotted"] = dotted
    broken = tmp_path / "broken.toml"
    broken.write_text("[site\nid = 1\n", encoding="utf-8")
    out["broken"] = broken
    return out


def _line_count(text: str) -> int:
    return len(text.strip().splitlines())


@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("latin1", r"line \d+, column 12: not UTF-8 \(byte 0xe9\); save the file as UTF-8"),
        ("deep", r"line \d+, column 37: nested deeper than 32 levels of arrays and tables; .*"),
        ("dotted", r"key x\.a\.a\.a\.\.\. \(33 levels\): nested deeper than 32 levels of tables"),
        ("broken", r"not valid TOML: .*\(at line 1, column 6\)"),
    ],
)
@pytest.mark.parametrize(
    "command",
    [("check",), ("db", "status"), ("account", "list"), ("tariff", "list"), ("read",)],
    ids=" ".join,
)
def test_an_unreadable_site_file_is_one_line_with_file_and_position(
    cli, files, name, where, command
) -> None:
    import re

    group, obj = cli
    path = files[name]
    result = CliRunner().invoke(group, [*command, str(path)], obj=obj)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert _line_count(result.output) == 1, result.output
    assert re.fullmatch(rf"error: {re.escape(str(path))}: {where}", result.output.strip()), (
        result.output
    )


def test_load_site_refuses_nan_so_no_service_starts_polling_nothing(files, cli) -> None:
    with pytest.raises(ConfigError, match=r"poll\.interval_s: expected a finite number"):
        load_site(files["nan"])
    group, obj = cli
    result = CliRunner().invoke(group, ["run", str(files["nan"]), "--duration", "1"], obj=obj)
    assert result.exit_code == 2 and "poll.interval_s" in result.output
