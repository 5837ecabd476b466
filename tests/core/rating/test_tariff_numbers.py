"""§4: every number of a tariff, and of `tariff rate`, is read one strict way.

A negative tier adder used to rate a bill below zero (−250.00 CNY for 400 kWh at 0.50 with
an adder of −1.50); `--before -5000` used to start a cycle in negative energy and `--days -30`
to prorate the thresholds below zero. Prices with separators, exponents, Unicode digits,
NaN or 1e308 are refused with the entry and the accepted form.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from openprepay.core.cli import CliContext, OpenPrepayGroup
from openprepay.core.cli import tariff as tariff_cli
from openprepay.core.errors import FieldError
from openprepay.core.rating.tariff_reading import parse_tariffs

SITE_HEAD = """
[site]
id = "t"
timezone = "Asia/Shanghai"
[links.gw]
type = "modbus_tcp"
host = "127.0.0.1"
port = 15999
[tariffs.flat]
price = "0.5"
[tariffs.flat.tiers]
cycle = "annual"
thresholds = ["100"]
adders = ["0", "0.10"]
"""


def errors_of(tariffs: dict) -> list[str]:
    errors: list[FieldError] = []
    catalogue = parse_tariffs(tariffs, errors)
    assert not errors or "t" not in catalogue, "a refused tariff must not be usable"
    return [str(e) for e in errors]


def tiered(**tiers: object) -> dict:
    return {"t": {"price": "0.5", "tiers": {"cycle": "annual", "thresholds": ["100"], **tiers}}}


@pytest.mark.parametrize(
    ("tariffs", "field"),
    [
        (tiered(adders=["0", "-1.50"]), "tariffs.t.tiers.adders[1]"),
        (tiered(prices=["0.5", "-0.01"]), "tariffs.t.tiers.prices[1]"),
        (
            {
                "t": {
                    "rates": {"peak": "0.6", "valley": "0.3"},
                    "periods": [
                        {"start": "00:00", "end": "12:00", "rate": "peak"},
                        {"start": "12:00", "end": "24:00", "rate": "valley"},
                    ],
                    "tiers": {
                        "cycle": "annual",
                        "thresholds": ["100"],
                        "period_adders": [{}, {"peak": "0.06", "valley": "-0.40"}],
                    },
                }
            },
            "tariffs.t.tiers.period_adders[1].valley",
        ),
    ],
)
def test_negative_tier_adders_and_prices_are_refused(tariffs: dict, field: str) -> None:
    errors = errors_of(tariffs)
    assert any(e.startswith(f"{field}: expected at least 0, got -") for e in errors), errors


@pytest.mark.parametrize(
    "price",
    [
        "0,617",
        "6.17e-1",
        "1_0",
        "０.５",
        "٠.٥",
        " 0. 5",
        ".5",
        "+0.5",
        float("nan"),
        float("inf"),
        1e308,
        "1e308",
        "1001",
        -0.5,
    ],
)
def test_prices_are_read_strictly_and_within_bounds(price: object) -> None:
    errors = errors_of({"t": {"price": price}})
    assert any(e.startswith("tariffs.t.price: ") for e in errors), errors


@pytest.mark.parametrize("threshold", ["2_880", "2,880", "2880.0001", 1e308, float("nan"), "0"])
def test_tier_thresholds_are_read_strictly(threshold: object) -> None:
    errors = errors_of(tiered(thresholds=[threshold], adders=["0", "0.1"]))
    assert any(e.startswith("tariffs.t.tiers.thresholds[0]: ") for e in errors), errors


def test_plain_prices_and_toml_numbers_are_still_read() -> None:
    errors: list[FieldError] = []
    catalogue = parse_tariffs(
        {"a": {"price": "0.6170"}, "b": {"price": 0.617}, "c": {"price": 1}}, errors
    )
    assert not errors
    assert {
        str(catalogue.get(t).version_on(catalogue.get(t).versions[0].effective_from).rates)
        for t in ("a", "b")
    } == {"{'all': Decimal('0.6170')}", "{'all': Decimal('0.617')}"}


# -- tariff rate -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cli():
    group = OpenPrepayGroup("openprepay")
    tariff_cli.register(group)
    return group, CliContext()


@pytest.fixture
def site(tmp_path: Path) -> str:
    path = tmp_path / "site.toml"
    path.write_text(SITE_HEAD, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    ("options", "option", "message"),
    [
        (["--before", "-5000"], "--before", "expected at least 0, got -5000"),
        (["--before", "1_000"], "--before", "expected a number like 2880"),
        (["--before", "nan"], "--before", "expected a number like 2880"),
        (["--days", "-30"], "--days", "expected at least 1, got -30"),
        (["--days", "0"], "--days", "expected at least 1, got 0"),
        (["--days", "３０"], "--days", "expected a number like 10"),
        (["--kwh", "1,5"], "--kwh", "expected a quantity like 50"),
        (["--kwh", "flat=1e3"], "--kwh", "expected a quantity like 50"),
        (["--kwh", "-10"], "--kwh", "expected at least 0, got -10"),
    ],
)
def test_rate_refuses_numbers_a_person_would_not_type(cli, site, options, option, message):
    argv = ["tariff", "rate", site, "flat", *options]
    if option != "--kwh":
        argv += ["--kwh", "10"]
    result = CliRunner().invoke(cli[0], argv, obj=cli[1])
    assert result.exit_code == 2, result.output
    assert "Invalid value for" in result.output and option in result.output
    assert message in result.output
    assert "total" not in result.output
