"""Click types for every number the command line takes, read by `core.numbers`.

Click's own `float`/`int` accept `nan`, `inf`, `1e308`, `1_000` and full-width digits;
these types accept the one plain form (digits, one '.', a '-' only where the bounds allow
it) within explicit bounds, and say which, naming the option. Money arguments are not
click types: they go through `ledger.parse_yuan` with their field's bounds.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

import click

from ..numbers import NumberRefused, read_decimal


class PlainNumber(click.ParamType):
    """A decimal from `low` to `high` (inclusive) with at most `places` decimals, as a
    Decimal (`as_float`: a float, for durations and speeds)."""

    name = "number"

    def __init__(
        self,
        low: Decimal | int | float,
        high: Decimal | int | float,
        *,
        places: int | None = None,
        as_float: bool = False,
        example: str = "12.5",
    ) -> None:
        self.low, self.high = Decimal(str(low)), Decimal(str(high))
        self.places = places
        self.as_float = as_float
        self.example = example

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, Decimal | float):
            return float(value) if self.as_float else value  # a default, already checked
        try:
            number = read_decimal(
                value,
                places=self.places,
                low=self.low,
                high=self.high,
                example=self.example,
            )
        except NumberRefused as refused:
            self.fail(refused.message, param, ctx)
        return float(number) if self.as_float else number


class Count(click.ParamType):
    """A whole number from `low` to `high` (inclusive), digits only."""

    name = "integer"

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return value  # a default
        try:
            number = read_decimal(
                value, places=0, low=Decimal(self.low), high=Decimal(self.high), example="10"
            )
        except NumberRefused as refused:
            self.fail(refused.message, param, ctx)
        return int(number)


#: A row id (job, journal, run number): digits, 1 or more.
ROW_ID = Count(1, 2**63 - 1)
#: `--duration`: seconds, more than 0, at most a year.
DURATION = PlainNumber(Decimal("0.001"), 366 * 86_400, places=3, as_float=True, example="60")
#: `--speedup`: simulated seconds per real second.
SPEEDUP = PlainNumber(Decimal("0.01"), 100_000, places=2, as_float=True, example="60")
#: `--sim-step`: simulated seconds a simulated meter's physics may lag a read.
SIM_STEP = PlainNumber(0, 3600, places=3, as_float=True, example="1")

F = TypeVar("F", bound=Callable[..., Any])


def simulator_options(command: F) -> F:
    """`--sim-server` and `--sim-step`: how `simulate` and `demo` serve simulated meters."""
    command = click.option(
        "--sim-server",
        type=click.Choice(["lean", "pymodbus"]),
        default="lean",
        show_default=True,
        help="Modbus server of the simulated links: the lean one, or pymodbus' server (the "
        "tests' reference; about three times the CPU per poll).",
    )(command)
    return click.option(
        "--sim-step",
        type=SIM_STEP,
        default=1.0,
        show_default=True,
        help="Simulated seconds a meter's physics may lag a read, so the reads of one poll "
        "share a step; 0 steps on every request. Energy accrues exactly either way.",
    )(command)
