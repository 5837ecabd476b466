"""Single values of the tariff file: decimals, decimal lists, times of day, days of the year
and dates, each read with an error naming the exact entry."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from ..config.reader import NUMBER_LIMIT, TableReader, describe
from ..numbers import NumberRefused, read_decimal
from .tariffs import PRICE_PLACES, parse_hhmm


def to_decimal(value: Any) -> Decimal | None:
    """A TOML value or typed text as the Decimal a person reads in it (the strict form of
    `core.numbers`: no separators, exponents in text, NaN or infinities; floats by their
    shortest repr), within ±`NUMBER_LIMIT`; None when it is not one."""
    if not isinstance(value, str | int | float | Decimal):
        return None
    limit = Decimal(NUMBER_LIMIT)
    try:
        return read_decimal(value, places=None, low=-limit, high=limit)
    except NumberRefused:
        return None


def read_decimal_key(
    r: TableReader, key: str, places: int, low: Decimal, high: Decimal
) -> Decimal | None:
    what = "a price" if places == PRICE_PLACES else "an amount"
    value: Decimal | None = r.decimal(key, None, places=places, low=low, high=high, what=what)
    return value


def read_decimal_list(
    r: TableReader,
    key: str,
    places: int,
    *,
    low: Decimal,
    high: Decimal,
    positive: bool = False,
) -> list[Decimal] | None:
    present, value = r._get(key, None)
    if not present:
        r.error("missing (required)", key)
        return None
    if not isinstance(value, list):
        r.error(f"expected a list of decimals, got {describe(value)}", key)
        return None
    out = []
    for i, item in enumerate(value):
        at = f"{key}[{i}]"
        if not isinstance(item, str | int | float):
            r.error(f'expected a decimal such as "2880", got {describe(item)}', at)
            continue
        try:
            d = read_decimal(item, places=places, low=low, high=high, example='"2880"')
        except NumberRefused as refused:
            r.error(refused.message, at)
            continue
        if positive and d == 0:
            r.error(f"expected more than 0, got {item}", at)
            continue
        out.append(d)
    return out if len(out) == len(value) else None


def read_hhmm(r: TableReader, key: str) -> int | None:
    value = r.str(key)
    if value is None:
        return None
    minutes = parse_hhmm(value)
    if minutes is None:
        r.error(f"expected a time HH:MM from 00:00 to 24:00, got {value!r}", key)
    return minutes


def read_month_day(r: TableReader, key: str) -> tuple[int, int] | None:
    value = r.str(key)
    if value is None:
        return None
    try:
        parsed = dt.datetime.strptime("2024-" + value.strip(), "%Y-%m-%d")
    except ValueError:
        r.error(f'expected a day of the year MM-DD such as "07-01", got {value!r}', key)
        return None
    return parsed.month, parsed.day


def read_date(r: TableReader, key: str, default: Any = None) -> dt.date | None:
    required = default is None
    present, value = r._get(key, None)
    if not present:
        if required:
            r.error("missing (required): the date the version takes effect (YYYY-MM-DD)", key)
        return default
    if isinstance(value, dt.datetime):
        r.error("expected a date (YYYY-MM-DD); versions start at site-local midnight", key)
        return None
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            pass
    r.error(f"expected a date YYYY-MM-DD, got {describe(value)}", key)
    return None
