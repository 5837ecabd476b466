"""Money as text and as checked integer fen: the one place yuan become fen and back."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

from .errors import RequestError

#: Largest balance a prepaid meter can hold (999,999.99), in fen. Also the largest amount
#: accepted by any single top-up or refund.
CAPACITY_FEN = 99_999_999


def parse_yuan(text: str | Decimal | int, field: str = "amount") -> int:
    """`"12.34"` → 1234 fen. At most two decimals; no exponent, NaN or infinity.

    The sign is kept (`"-5"` → -500): callers decide whether negative amounts make sense.
    """
    if isinstance(text, bool):
        raise RequestError(field, f"expected an amount in yuan such as 12.34, got {text!r}")
    if isinstance(text, int):
        return text * 100
    raw = text.strip().replace(",", "") if isinstance(text, str) else text
    try:
        value = Decimal(raw)
    except (InvalidOperation, ValueError):
        raise RequestError(
            field, f"expected an amount in yuan such as 12.34, got {text!r}"
        ) from None
    if not value.is_finite() or (isinstance(raw, str) and re.search(r"[eE]", raw)):
        raise RequestError(field, f"expected an amount in yuan such as 12.34, got {text!r}")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -2 and value != value.quantize(Decimal("0.01")):
        raise RequestError(field, f"at most 2 decimals (fen), got {text}")
    return int(value.scaleb(2).to_integral_exact())


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
        raise RequestError(field, f"expected more than 0.00, got {format_fen(amount_fen)}")
    if amount_fen > CAPACITY_FEN:
        raise RequestError(
            field,
            f"{format_fen(amount_fen)} is above the meter capacity {format_fen(CAPACITY_FEN)}",
        )
    return amount_fen
