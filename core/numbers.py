"""How a number a person typed is read: one strict form, for every channel.

A typed number is ASCII digits with at most one '.' between digits, and a leading '-'
where the field allows negatives: `12.50`, `0.6170`, `-5`. Nothing else is read, because
everything else has a second reading somewhere: `1,5` is 1.5 in Hangzhou and 15 in
Houston, `1_000` and `1 000` are thousands only to some, full-width `１２` and other
Unicode digits look like other numbers to a cashier than to Python, `1e3` and `.5` are
programmer's notations, `+5` is a sign a till never prints. Numbers that arrive as
numbers (TOML floats and integers, an OPC UA Double) have no text to misread: they are
checked for being finite, for their decimal places and for the field's bounds only.

`read_decimal` is the one reader; `core.money.parse_yuan` builds yuan → fen on it,
and the site file, the CLI, CSV imports and OPC UA all go through one of the two.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

#: The whole accepted form (ASCII only: `[0-9]`, not `\d`, which matches every script's digits).
PLAIN_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")
#: Refused values are shown cut to this many characters.
MAX_LENGTH = 40
#: Whitespace around a number is dropped (a CSV cell, a pasted value); inside it is refused.
_EDGES = " \t\r\n"


class NumberRefused(ValueError):
    """A value that is not read as a number. `message` says what was expected (without the
    field, which the caller names); `out_of_range` tells a well-formed number outside the
    field's bounds from one that is not a number of the accepted form."""

    def __init__(self, message: str, *, out_of_range: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.out_of_range = out_of_range


def form(what: str, example: str, places: int | None) -> str:
    """The accepted form in words: `yuan like 12.50 (digits, one '.', at most 2 decimals,
    no separators)`."""
    decimals = "" if places is None else f", at most {places} decimals"
    if places == 0:
        return f"{what} like {example} (digits only, no separators)"
    return f"{what} like {example} (digits, one '.'{decimals}, no separators)"


def shown(value: object) -> str:
    """A refused value as an error shows it: text quoted (control characters escaped) and cut
    short, huge numbers in exponent form."""
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= MAX_LENGTH else text[: MAX_LENGTH - 2] + "…'"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"{Decimal(value):.3E}"
    text = str(value)
    return text if len(text) <= MAX_LENGTH else text[: MAX_LENGTH - 1] + "…"


def read_decimal(
    value: str | Decimal | int | float,
    *,
    places: int | None,
    low: Decimal | None = None,
    high: Decimal | None = None,
    what: str = "a number",
    example: str = "12.50",
) -> Decimal:
    """`value` as the Decimal a person reads in it, or `NumberRefused`.

    Text must be of the plain form (see the module); `places` caps the decimals as written
    (`12.340` has three; None: no cap); `low`/`high` are inclusive bounds. A float is taken
    by its shortest repr (the digits a TOML file or an OPC UA client wrote), never by its
    binary expansion."""
    expected = f"expected {form(what, example, places)}, got {shown(value)}"
    number, written = _number(value, expected)
    if low is not None and number < low:
        raise NumberRefused(f"expected at least {low}, got {_plain(number)}", out_of_range=True)
    if high is not None and number > high:
        raise NumberRefused(f"expected at most {high}, got {_plain(number)}", out_of_range=True)
    if places is not None and written > places:
        # Text that got this far is digits, '-' and '.': shown as typed, unquoted.
        got = value.strip(_EDGES) if isinstance(value, str) else _plain(number)
        raise NumberRefused(f"at most {places} decimal places, got {got}")
    return number


def _number(value: object, expected: str) -> tuple[Decimal, int]:
    """(the number, its decimal places as written), or `NumberRefused(expected)`."""
    if isinstance(value, str):
        text = value.strip(_EDGES)
        if not PLAIN_NUMBER.fullmatch(text):
            raise NumberRefused(expected)
        return Decimal(text), len(text.partition(".")[2])
    if isinstance(value, bool):
        raise NumberRefused(expected)
    if isinstance(value, int):
        return Decimal(value), 0
    if isinstance(value, float):
        if math.isinf(value):
            raise NumberRefused(f"expected a finite number, got {value}", out_of_range=True)
        if math.isnan(value):
            raise NumberRefused(expected)
        value = Decimal(repr(value))
    if isinstance(value, Decimal):
        if value.is_infinite():
            raise NumberRefused(f"expected a finite number, got {value}", out_of_range=True)
        if value.is_nan():
            raise NumberRefused(expected)
        return value, decimals(value)
    raise NumberRefused(expected)


def decimals(number: Decimal) -> int:
    """Significant decimal places: 12.50 → 1, 12.345 → 3, 1E+3 → 0."""
    if number.is_zero():
        return 0
    exponent = number.normalize().as_tuple().exponent
    return max(0, -int(exponent))


def _plain(number: Decimal) -> str:
    """A Decimal without exponent notation, short enough for a message."""
    try:
        text = f"{number:f}" if abs(number.adjusted()) < 16 else f"{number:.3E}"
    except (InvalidOperation, ValueError):
        text = str(number)
    return text
