"""Yuan at Alipay's boundary ⇄ fen, exactly, over Alipay's whole range."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from openprepay.core.errors import RequestError
from openprepay.plugins.alipay.amounts import beijing_text, beijing_time, to_fen, to_yuan


@pytest.mark.parametrize(
    ("fen", "yuan"),
    [
        (1, "0.01"),
        (10, "0.10"),
        (1230, "12.30"),
        (99_999_999, "999999.99"),
        (9_999_999_999, "99999999.99"),
        (10_000_000_000, "100000000.00"),
    ],
)
def test_fen_to_yuan_and_back_is_exact(fen: int, yuan: str) -> None:
    assert to_yuan(fen) == yuan
    assert to_fen(yuan, "total_amount") == fen


def test_every_fen_of_a_yuan_survives_the_round_trip() -> None:
    for fen in range(1, 1001):
        assert to_fen(to_yuan(fen), "x") == fen
    for fen in range(9_999_999_000, 10_000_000_001):
        assert to_fen(to_yuan(fen), "x") == fen


@pytest.mark.parametrize("bad", [0, -1, 10_000_000_001, 1.5, True])
def test_amounts_alipay_does_not_take_are_refused_with_the_field(bad: object) -> None:
    with pytest.raises(RequestError) as refused:
        to_yuan(bad, "amount_fen")  # type: ignore[arg-type]
    assert refused.value.field == "amount_fen"


@pytest.mark.parametrize("bad", ["12.345", "1e3", "12,30", "", "NaN", "0x10", "-0.01", "１２.３０"])
def test_yuan_that_is_not_whole_fen_is_refused(bad: str) -> None:
    with pytest.raises(RequestError) as refused:
        to_fen(bad, "total_amount")
    assert refused.value.field == "total_amount"


def test_a_float_never_becomes_fen() -> None:
    with pytest.raises(RequestError):
        to_fen(0.1, "total_amount")  # type: ignore[arg-type]


def test_times_are_beijing_time() -> None:
    at = datetime(2026, 12, 2, 2, 30, 5, tzinfo=UTC)
    assert beijing_text(at) == "2026-12-02 10:30:05"
    assert beijing_time("2026-12-02 10:30:05", "gmt_payment") == at
    with pytest.raises(RequestError) as refused:
        beijing_time("2026-12-02T10:30:05Z", "gmt_payment")
    assert refused.value.field == "gmt_payment"
