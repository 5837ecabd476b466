"""Reading TOML tables field by field, collecting every error with its exact path.

A `TableReader` wraps one table and the path that leads to it (`links.gw1`). Each accessor
checks one field and records a `FieldError` such as
`links.gw1.port: expected 1..65535, got 70000` instead of raising, so a user sees every
mistake of a file at once. `finish()` reports keys nobody asked for: typos surface instead
of being silently ignored.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from typing import Any, TypeVar

from ..errors import FieldError, RequestError
from ..money import CAPACITY_FEN, parse_yuan
from ..numbers import NumberRefused, form, read_decimal, shown

T = TypeVar("T")
_MISSING: Any = object()

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
#: No setting of a site file needs a number beyond this (10^12); NaN and infinities are never
#: settings. Fields give tighter bounds of their own.
NUMBER_LIMIT = 10**12


def describe(value: Any) -> str:
    """A short rendering of a bad value for an error message."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class TableReader:
    def __init__(self, data: Any, path: str, errors: list[FieldError]) -> None:
        self.path = path
        self.errors = errors
        if isinstance(data, dict):
            self.data: dict[str, Any] = data
        else:
            self.data = {}
            self.error(f"expected a table, got {describe(data)}")
        self._seen: set[str] = set()

    # -- plumbing -------------------------------------------------------------------------
    def at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def error(self, message: str, key: str | None = None) -> None:
        self.errors.append(FieldError(self.at(key) if key else self.path, message))

    def has(self, key: str) -> bool:
        return key in self.data

    def _get(self, key: str, default: Any) -> tuple[bool, Any]:
        """(present, value); a missing key without a default is an error."""
        self._seen.add(key)
        if key in self.data:
            return True, self.data[key]
        if default is _MISSING:
            self.error("missing (required)", key)
            return False, None
        return False, default

    def finish(self) -> None:
        """Report keys that no accessor asked for."""
        for key in self.data:
            if key not in self._seen:
                known = ", ".join(sorted(self._seen)) or "nothing"
                self.error(f"unknown key (expected one of: {known})", key)

    # -- scalars --------------------------------------------------------------------------
    def str(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        choices: Sequence[str] | None = None,
        pattern: re.Pattern[str] | None = None,
        hint: str = "",
    ) -> Any:
        present, value = self._get(key, default)
        if not present:
            return value
        if not isinstance(value, str):
            self.error(f"expected a string, got {describe(value)}", key)
            return None
        if choices is not None and value not in choices:
            self.error(f"expected one of {', '.join(choices)}; got {value!r}", key)
            return None
        if pattern is not None and not pattern.match(value):
            self.error(f"{hint or 'invalid value'}; got {value!r}", key)
            return None
        return value

    def id(self, key: str, default: Any = _MISSING) -> Any:
        return self.str(
            key,
            default,
            pattern=ID_PATTERN,
            hint="expected an id of letters, digits, '_', '-', '.' (at most 64)",
        )

    def int(
        self, key: str, default: Any = _MISSING, *, low: int | None = None, high: int | None = None
    ) -> Any:
        present, value = self._get(key, default)
        if not present:
            return value
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(f"expected an integer{_range(low, high)}, got {describe(value)}", key)
            return None
        if (low is not None and value < low) or (high is not None and value > high):
            self.error(f"expected {_span(low, high)}, got {shown(value)}", key)
            return None
        if abs(value) > NUMBER_LIMIT:
            self.error(f"expected {_span(-NUMBER_LIMIT, NUMBER_LIMIT)}, got {shown(value)}", key)
            return None
        return value

    def number(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        low: float | None = None,
        high: float | None = None,
        low_exclusive: bool = False,
    ) -> Any:
        """A finite TOML number: NaN, infinities and anything beyond ±`NUMBER_LIMIT` are
        refused whatever the bounds (`interval_s = nan` would compare false to every bound
        and start a service that never polls)."""
        present, value = self._get(key, default)
        if not present:
            return value
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(f"expected a number{_range(low, high)}, got {describe(value)}", key)
            return None
        if not math.isfinite(value) or abs(value) > NUMBER_LIMIT:
            self.error(f"expected a finite number{_range(low, high)}, got {shown(value)}", key)
            return None
        too_low = low is not None and (value <= low if low_exclusive else value < low)
        if too_low or (high is not None and value > high):
            if not low_exclusive:
                span = _span(low, high)
            else:
                span = f"more than {low}" if too_low else f"at most {high}"
            self.error(f"expected {span}, got {value}", key)
            return None
        return float(value)

    def decimal(
        self,
        key: str,
        default: Any = _MISSING,
        *,
        places: int | None,
        low: Decimal | None = None,
        high: Decimal | None = None,
        what: str = "a decimal",
        example: str = '"0.6170"',
    ) -> Any:
        """An exact decimal (a price, a quantity): a TOML string of the plain form of
        `core.numbers` ("0.6170"), or a TOML number, finite, within `places` and bounds
        (never beyond ±`NUMBER_LIMIT`)."""
        present, value = self._get(key, default)
        if not present:
            return value
        if not isinstance(value, str | int | float):
            self.error(f"expected {form(what, example, places)}, got {describe(value)}", key)
            return None
        try:
            return read_decimal(
                value,
                places=places,
                low=Decimal(-NUMBER_LIMIT) if low is None else low,
                high=Decimal(NUMBER_LIMIT) if high is None else high,
                what=what,
                example=example,
            )
        except NumberRefused as refused:
            self.error(refused.message, key)
            return None

    def yuan(
        self,
        key: str,
        default_fen: Any = _MISSING,
        *,
        low_fen: int = 0,
        high_fen: int | None = None,
    ) -> Any:
        """A CNY amount ("20.00", or a TOML number) as integer fen, through the one money
        parser (`core.money`); non-negative and at most the meter capacity unless told
        otherwise."""
        present, value = self._get(key, default_fen)
        if not present:
            return value
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            self.error(f'expected an amount in CNY such as "20.00", got {describe(value)}', key)
            return None
        try:
            return parse_yuan(
                value, key, low_fen=low_fen, high_fen=CAPACITY_FEN if high_fen is None else high_fen
            )
        except RequestError as refused:
            self.error(refused.message, key)
            return None

    def bool(self, key: str, default: Any = _MISSING) -> Any:
        present, value = self._get(key, default)
        if present and not isinstance(value, bool):
            self.error(f"expected true or false, got {describe(value)}", key)
            return None
        return value

    def str_list(self, key: str, default: Any = _MISSING) -> Any:
        present, value = self._get(key, default)
        if not present:
            return value
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.error(f"expected a list of strings, got {describe(value)}", key)
            return None
        return value

    # -- nested tables --------------------------------------------------------------------
    def table(self, key: str, required: bool = False) -> TableReader:
        _, value = self._get(key, _MISSING if required else {})
        return TableReader({} if value is None else value, self.at(key), self.errors)

    def raw(self, key: str, default: Any = None) -> Any:
        return self._get(key, default)[1]

    def entries(self, key: str, required: bool = False) -> Iterator[tuple[str, TableReader]]:
        """Iterate a table of tables keyed by id (`[links.gw1]`, `[links.gw2]`)."""
        outer = self.table(key, required)
        for entry_id, value in outer.data.items():
            outer._seen.add(entry_id)
            if not ID_PATTERN.match(entry_id):
                outer.error("id must be letters, digits, '_', '-', '.' (at most 64)", entry_id)
                continue
            yield entry_id, TableReader(value, outer.at(entry_id), self.errors)

    def each(self, key: str, read: Callable[[str, TableReader], T | None]) -> dict[str, T]:
        out: dict[str, T] = {}
        for entry_id, reader in self.entries(key):
            item = read(entry_id, reader)
            reader.finish()
            if item is not None:
                out[entry_id] = item
        return out


def _span(low: float | None, high: float | None) -> str:
    if low is not None and high is not None:
        return f"{low}..{high}"
    if low is not None:
        return f"at least {low}"
    if high is not None:
        return f"at most {high}"
    return "a value"


def _range(low: float | None, high: float | None) -> str:
    return "" if low is None and high is None else f" ({_span(low, high)})"
