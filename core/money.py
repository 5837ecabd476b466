"""Money as text and as checked integer fen: the one place yuan become fen and back.

`parse_yuan` is the only way an amount a person or a client gave becomes fen: the CLI,
CSV imports, the site file and OPC UA methods all call it, each with the bounds of its
field. The form it reads is `core.numbers` (plain digits, one '.', at most two decimals,
no separators, no exponent, a '-' only where the bounds allow negatives).
"""

from __future__ import annotations

from decimal import Decimal

from .errors import RequestError
from .numbers import NumberRefused, read_decimal

#: Largest balance a prepaid meter can hold (999,999.99), in fen. Also the largest amount
#: accepted by any single top-up or refund.
CAPACITY_FEN = 99_999_999


class AmountOutOfRange(RequestError):
    """A well-formed amount outside its field's bounds (OPC UA answers BadOutOfRange)."""


def parse_yuan(
    value: str | Decimal | int | float,
    field: str = "amount",
    *,
    low_fen: int = -CAPACITY_FEN,
    high_fen: int = CAPACITY_FEN,
) -> int:
    """`"12.50"` → 1250 fen, or a `RequestError` naming `field` and the accepted form.

    Text is read strictly (`core.numbers`); numbers that arrive as numbers (a TOML value,
    an OPC UA Double, a Decimal) are checked for being finite and whole fen. The bounds are
    inclusive, in fen; by default any amount a meter can hold, either sign. A refusal for
    the bounds is an `AmountOutOfRange`."""
    try:
        yuan = read_decimal(value, places=2, what="yuan", example="12.50")
    except NumberRefused as refused:
        if refused.out_of_range:  # an infinity
            raise AmountOutOfRange(field, refused.message) from None
        message = refused.message.replace("decimal places,", "decimals (whole fen),")
        raise RequestError(field, message) from None
    fen = int(yuan.scaleb(2))
    if fen < low_fen:
        floor = "more than 0.00" if low_fen == 1 else f"at least {format_fen(low_fen)}"
        raise AmountOutOfRange(field, f"expected {floor}, got {_shown_fen(fen)}")
    if fen > high_fen:
        if high_fen == CAPACITY_FEN:
            raise AmountOutOfRange(
                field,
                f"{_shown_fen(fen)} is above the meter capacity {format_fen(CAPACITY_FEN)}",
            )
        raise AmountOutOfRange(
            field, f"expected at most {format_fen(high_fen)}, got {_shown_fen(fen)}"
        )
    return fen


def _shown_fen(fen: int) -> str:
    """Fen as yuan for a message; absurd amounts in exponent form."""
    return format_fen(fen) if abs(fen) < 10**17 else f"{Decimal(fen).scaleb(-2):.3E}"


def format_fen(amount_fen: int) -> str:
    """1234 → `"12.34"`, -5 → `"-0.05"` (no rounding: fen are exact).

    Integral Decimals (PostgreSQL's SUM of BIGINT) are accepted; floats never."""
    if isinstance(amount_fen, float) or amount_fen != int(amount_fen):
        raise TypeError(f"fen must be an integer, got {amount_fen!r}")
    amount_fen = int(amount_fen)
    sign = "-" if amount_fen < 0 else ""
    whole, fen = divmod(abs(amount_fen), 100)
    return f"{sign}{whole}.{fen:02d}"


def check_amount(amount_fen: int, field: str = "amount") -> int:
    if isinstance(amount_fen, bool) or not isinstance(amount_fen, int):
        raise RequestError(field, f"expected an integer number of fen, got {amount_fen!r}")
    if amount_fen <= 0:
        raise AmountOutOfRange(field, f"expected more than 0.00, got {format_fen(amount_fen)}")
    if amount_fen > CAPACITY_FEN:
        raise AmountOutOfRange(
            field,
            f"{format_fen(amount_fen)} is above the meter capacity {format_fen(CAPACITY_FEN)}",
        )
    return amount_fen
