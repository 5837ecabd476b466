"""§4: money is parsed in one place, one way.

`ledger.parse_yuan` must never read an amount other than the one a person reads: either it
refuses the text, or it returns what a strict reference reading (written here, apart from
the product) gives. Property-based over random text and over near misses built from
digits, separators, signs, Unicode digits and blanks. Then every channel that takes money
from a person — CLI arguments and options, the CSV import, the site file — on SQLite and
PostgreSQL: `1,5`, `12,50`, `1_000`, `１２` are refused with the field and the accepted form,
and nothing changes.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import example, given, settings
from hypothesis import strategies as st

from openprepay.core.config.site import parse_site
from openprepay.core.errors import ConfigError
from openprepay.core.ledger import CAPACITY_FEN, AmountOutOfRange, RequestError, parse_yuan
from openprepay.core.prepay.settings import check_prepay
from tests.core.conftest import SITE_DATA

ASCII_DIGITS = "0123456789"


def person_reads(text: str) -> int | None:
    """The amount in fen a cashier reads in `text`, by a rule written apart from the
    product: blanks around, an optional '-', ASCII digits, optionally '.' and one or two
    ASCII digits. Anything else has no single reading: None."""
    body = text.strip(" \t\r\n")
    negative = body.startswith("-")
    body = body[1:] if negative else body
    whole, dot, fraction = body.partition(".")
    if not whole or any(c not in ASCII_DIGITS for c in whole):
        return None
    if dot and (not 1 <= len(fraction) <= 2 or any(c not in ASCII_DIGITS for c in fraction)):
        return None
    fen = 0
    for c in whole + fraction.ljust(2, "0"):
        fen = fen * 10 + ASCII_DIGITS.index(c)
    return -fen if negative else fen


#: Characters a near miss is made of: digits of several scripts, separators, signs, blanks,
#: exponent letters, fractions and superscripts.
NEAR = (
    list(ASCII_DIGITS)
    + list(".,_'- +eE")
    + ["\u00a0", "\u3000", "\u2009", "\u202f", "\t", "\n", "\u066b", "\u066c", "\uff0c", "\uff0e"]
    + ["１", "２", "٣", "४", "๕", "〇", "½", "²", "𝟗", "Ⅻ", "৫", "߃"]
    + ["nan", "NaN", "inf", "Infinity", "0x", "0b", "∞"]
)
near_misses = st.lists(st.sampled_from(NEAR), max_size=10).map("".join)


@st.composite
def damaged_amounts(draw: st.DrawFn) -> str:
    """A plain amount with one character inserted, replaced or doubled."""
    fen = draw(st.integers(0, CAPACITY_FEN))
    text = f"{fen // 100}.{fen % 100:02d}"
    at = draw(st.integers(0, len(text)))
    char = draw(st.sampled_from(NEAR))
    if draw(st.booleans()) and at < len(text):
        return text[:at] + char + text[at + 1 :]
    return text[:at] + char + text[at:]


def _reads_as_a_person(text: str) -> None:
    expected = person_reads(text)
    try:
        fen = parse_yuan(text, "amount")
    except RequestError as refused:
        assert refused.field == "amount"
        assert expected is None or abs(expected) > CAPACITY_FEN, (text, refused)
        return
    assert fen == expected, (text, fen, expected)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.text(max_size=14), near_misses, damaged_amounts()))
@example("1,5")
@example("12,50")
@example("1_000")
@example("１２")
@example("٣")
@example("+5")
@example(".5")
@example("5.")
@example("12.340")
def test_no_text_is_read_as_another_amount_than_a_person_reads(text: str) -> None:
    _reads_as_a_person(text)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(-CAPACITY_FEN, CAPACITY_FEN),
    st.sampled_from(["{y}.{f:02d}", "{y}.{f1}", "{y}", " {y}.{f:02d} ", "00{y}.{f:02d}"]),
)
def test_every_plain_amount_is_read_exactly(fen: int, shape: str) -> None:
    whole, rest = divmod(abs(fen), 100)
    if shape in ("{y}.{f1}",) and rest % 10:
        shape = "{y}.{f:02d}"  # one decimal only spells whole tens of fen
    if shape == "{y}" and rest:
        shape = "{y}.{f:02d}"
    text = ("-" if fen < 0 else "") + shape.format(y=whole, f=rest, f1=rest // 10).strip()
    assert parse_yuan(text, "amount") == fen
    assert person_reads(text) == fen


@pytest.mark.parametrize(
    "text",
    ["1,5", "12,50", "1_000", "1 000", "１２", "٣", "1e3", "1E3", "+5", ".5", "5.", "nan", "∞"],
)
def test_near_misses_are_refused_with_the_field_and_the_form(text: str) -> None:
    with pytest.raises(RequestError) as refused:
        parse_yuan(text, "amount")
    assert str(refused.value) == (
        "amount: expected yuan like 12.50 (digits, one '.', at most 2 decimals, no "
        f"separators), got {text!r}"
    )


@pytest.mark.parametrize(
    ("value", "low", "message"),
    [
        ("-5", 1, "amount: expected more than 0.00, got -5.00"),
        ("0", 1, "amount: expected more than 0.00, got 0.00"),
        ("-0.01", 0, "amount: expected at least 0.00, got -0.01"),
        ("1000000", 0, "amount: 1000000.00 is above the meter capacity 999999.99"),
        (1e30, 0, "amount: 1.000E+30 is above the meter capacity 999999.99"),
        (Decimal("1E+308"), 0, "amount: 1.000E+308 is above the meter capacity 999999.99"),
        (float("inf"), 0, "amount: expected a finite number, got inf"),
    ],
)
def test_amounts_outside_the_fields_bounds_are_out_of_range(value, low, message) -> None:
    with pytest.raises(AmountOutOfRange) as refused:
        parse_yuan(value, "amount", low_fen=low)
    assert str(refused.value) == message


def test_numbers_that_arrive_as_numbers_are_read_by_their_digits() -> None:
    assert parse_yuan(12.5, "amount") == 1250  # an OPC UA Double, a TOML float
    assert parse_yuan(0.1, "amount") == 10
    assert parse_yuan(Decimal("20.00"), "amount") == 2000
    for bad in (0.1 + 0.2, float("nan"), True, Decimal("NaN"), [12]):
        with pytest.raises(RequestError):
            parse_yuan(bad, "amount")  # type: ignore[arg-type]


# -- every channel --------------------------------------------------------------------------

SITE = """
[site]
id = "money"
timezone = "Asia/Shanghai"

[links.gw]
type = "rtu_over_tcp"
host = "127.0.0.1"
port = 15997

[buildings.A]
floors = ["1"]

[rooms.A-101]
building = "A"
floor = "1"

[devices.E-101]
model = "acrel.DDSY1352"
link = "gw"
unit_id = 1
room = "A-101"

[database]
url = "{url}"
"""

NEAR_MISS_AMOUNTS = ["1,5", "12,50", "1_000", "１２"]


@pytest.fixture
def site_file(tmp_path: Path, db_url: str) -> str:
    path = tmp_path / "site.toml"
    path.write_text(SITE.replace("{url}", db_url), encoding="utf-8")
    return str(path)


@pytest.fixture
def run(cli, site_file, db):  # `db`: the same database, migrated; `snapshot` reads it
    group, obj = cli

    def invoke(*args: str, ok: bool = True):
        argv = [a if a != "SITE" else site_file for a in args]
        result = CliRunner().invoke(group, argv, obj=obj, catch_exceptions=False)
        assert (result.exit_code == 0) == ok, result.output
        return result

    invoke("account", "open", "SITE", "A-101", "--name", "Alice", "--meter", "E-101")
    invoke("topup", "SITE", "A-101", "100.00", "--ref", "seed")
    return invoke


def test_cli_money_is_read_strictly_and_a_refusal_changes_nothing(run, snapshot, check):
    before = snapshot()
    for text in NEAR_MISS_AMOUNTS:
        for argv, field in (
            (("topup", "SITE", "A-101", text, "--ref", f"t-{len(text)}"), "amount"),
            (("refund", "SITE", "A-101", text, "--ref", f"r-{len(text)}"), "amount"),
            (("account", "open", "SITE", "A-9", "--name", "x", "--alarm1", text), "--alarm1"),
            (
                ("account", "open", "SITE", "A-9", "--name", "x", "--hoard-limit", text),
                "--hoard-limit",
            ),
        ):
            result = run(*argv, ok=False)
            assert result.exit_code == 1
            assert f"error: {field}: expected yuan like 12.50 (digits, one '.'" in result.output
            assert repr(text) in result.output
    assert snapshot() == before
    check()


def test_csv_import_money_is_read_strictly(run, snapshot, tmp_path):
    before = snapshot()
    csv_file = tmp_path / "accounts.csv"
    csv_file.write_text(
        'id,name,opening_balance,alarm1\nA-201,Bob,"12,50",\nA-202,Carol,,1_000\nA-203,Dan,１２,\n',
        encoding="utf-8",
    )
    result = run("account", "import", "SITE", str(csv_file), ok=False)
    assert f"{csv_file}:line 2: opening_balance: expected yuan like 12.50" in result.output
    assert f"{csv_file}:line 3: alarm1: expected yuan like 12.50" in result.output
    assert f"{csv_file}:line 4: opening_balance: expected yuan like 12.50" in result.output
    assert "3 row(s): nothing written, 0 unchanged, 3 bad" in result.output
    assert snapshot() == before


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("thresholds", "alarm1", "20,00", "expected yuan like 12.50"),
        ("thresholds", "alarm1", "1_000", "expected yuan like 12.50"),
        ("thresholds", "hoard_limit", "５０００", "expected yuan like 12.50"),
        ("thresholds", "alarm2", float("nan"), "expected yuan like 12.50"),
        ("thresholds", "alarm2", 1e308, "above the meter capacity"),
        ("policy", "friendly_credit", "1e3", "expected yuan like 12.50"),
        ("policy", "emergency_credit", float("inf"), "expected a finite number"),
    ],
)
def test_site_file_money_goes_through_the_same_parser(section, key, value, message) -> None:
    data = {**SITE_DATA, "prepay": {section: {key: value}}}
    errors = [str(e) for e in check_prepay(parse_site(data))]
    assert any(e.startswith(f"prepay.{section}.{key}: ") and message in e for e in errors), errors


def test_site_file_money_with_a_thousands_separator_stops_the_service_start() -> None:
    from openprepay.core.prepay.settings import load_prepay

    data = {**SITE_DATA, "prepay": {"thresholds": {"alarm1": "1,000.00"}}}
    with pytest.raises(ConfigError, match=r"prepay\.thresholds\.alarm1: expected yuan"):
        load_prepay(parse_site(data))
