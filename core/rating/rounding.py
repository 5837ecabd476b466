"""Money in fen: the one rounding (`round_fen`), largest-remainder allocation and the
drift-free `Accrual` (domain.md §5.4)."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Any

from .units import COST_PER_FEN


class Rounding(enum.StrEnum):
    """How an exact amount becomes whole fen (domain.md §5.4; half-up is the default)."""

    HALF_UP = "half_up"  # 四舍五入, halves away from zero
    HALF_EVEN = "half_even"  # banker's rounding (GB 8170 "5 to even")
    DOWN = "down"  # towards zero (what a meter display shows)
    UP = "up"  # away from zero


def round_fen(amount_fen: Fraction | int | Decimal, mode: Rounding = Rounding.HALF_UP) -> int:
    """The one place an exact amount of fen is rounded to an integer."""
    x = Fraction(amount_fen)
    sign = -1 if x < 0 else 1
    a = abs(x)
    whole, rest = divmod(a.numerator, a.denominator)
    frac = Fraction(rest, a.denominator)
    if frac == 0:
        return sign * whole
    if mode is Rounding.DOWN:
        up = False
    elif mode is Rounding.UP:
        up = True
    elif frac != Fraction(1, 2):
        up = frac > Fraction(1, 2)
    else:
        up = mode is Rounding.HALF_UP or whole % 2 == 1
    return sign * (whole + (1 if up else 0))


def largest_remainder(total_fen: int, exact_fen: Sequence[Fraction]) -> list[int]:
    """Whole-fen parts that sum to `total_fen`, as close as possible to `exact_fen`.

    floor every part, then give the fen still missing (or take the fen in excess) to the
    parts with the largest (smallest) fractional remainder; ties go to the larger part,
    then to the earlier one. Used for bill lines, so lines add up to the amount posted.
    """
    floors = [int(x.numerator // x.denominator) for x in exact_fen]
    rest = total_fen - sum(floors)
    order = sorted(
        range(len(exact_fen)),
        key=lambda i: (-(exact_fen[i] - floors[i]), -exact_fen[i], i),
    )
    out = list(floors)
    if not order:
        return out
    if rest >= 0:
        for k in range(rest):
            out[order[k % len(order)]] += 1
    else:
        for k in range(-rest):
            out[order[-1 - k % len(order)]] -= 1
    return out


def fen_from_cost(cost: int | Fraction) -> Fraction:
    """Internal cost units (1e-9 CNY) as an exact Fraction of a fen."""
    return Fraction(cost) / COST_PER_FEN


class Accrual:
    """Deduction without drift (domain.md §5.4), one per meter per billing cycle.

    `add(cost)` adds the exact (unrounded) cost of new usage and returns the whole fen to
    post now: `round(cum_exact) − posted`. However the usage is sliced, the fen posted sum to
    the rounded total of the cycle. The ledger persists (`cum_exact_fen`, `posted_fen`) —
    `to_record()` / `from_record()` — in the same transaction as the posting.

    The exact sum is kept as (numerator, denominator), not as a `Fraction`: an accrual lives
    as long as its meter's cycle and changes with every reading, and the collector stops
    tracking a tuple of ints, where it walks every Fraction at each full collection
    (docs/capacity.md, "The collector").
    """

    __slots__ = ("_cum", "posted_fen", "rounding")

    def __init__(
        self,
        cum_exact_fen: Fraction | int = 0,
        posted_fen: int = 0,
        rounding: Rounding = Rounding.HALF_UP,
    ) -> None:
        self._cum: tuple[int, int] = (0, 1)
        self.cum_exact_fen = Fraction(cum_exact_fen)
        self.posted_fen = posted_fen
        self.rounding = rounding

    @property
    def cum_exact_fen(self) -> Fraction:
        return Fraction(*self._cum)

    @cum_exact_fen.setter
    def cum_exact_fen(self, value: Fraction) -> None:
        self._cum = (value.numerator, value.denominator)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Accrual):
            return NotImplemented
        return (self._cum, self.posted_fen, self.rounding) == (
            other._cum,
            other.posted_fen,
            other.rounding,
        )

    def __repr__(self) -> str:
        return (
            f"Accrual(cum_exact_fen={self.cum_exact_fen!r}, posted_fen={self.posted_fen}, "
            f"rounding={self.rounding!r})"
        )

    def add(self, cost_fen: Fraction | int | Decimal) -> int:
        self.cum_exact_fen += Fraction(cost_fen)
        target = round_fen(self.cum_exact_fen, self.rounding)
        post = target - self.posted_fen
        self.posted_fen = target
        return post

    def preview(self, cost_fen: Fraction | int | Decimal) -> int:
        """What `add` would return, without changing the accrual."""
        return round_fen(self.cum_exact_fen + Fraction(cost_fen), self.rounding) - self.posted_fen

    @property
    def remainder_fen(self) -> Fraction:
        """Accrued but not yet posted (in (−1, 1) fen for the default rounding)."""
        return self.cum_exact_fen - self.posted_fen

    def to_record(self) -> dict[str, Any]:
        return {
            "cum_exact_fen": str(self.cum_exact_fen),
            "posted_fen": self.posted_fen,
            "rounding": self.rounding.value,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Accrual:
        return cls(
            Fraction(str(record["cum_exact_fen"])),
            int(record["posted_fen"]),
            Rounding(record.get("rounding", Rounding.HALF_UP.value)),
        )


def fen_text(fen: int) -> str:
    sign = "-" if fen < 0 else ""
    return f"{sign}{abs(fen) // 100}.{abs(fen) % 100:02d}"
