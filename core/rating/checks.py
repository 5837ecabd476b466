"""What is checked on each reading (`RatingOptions`, `RegisterChecks`) and the `Flag`s a
reading can get."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

from .compiled import CompiledTariff
from .units import ENERGY_SCALE


class Flag(enum.IntFlag):
    """What happened to one reading (several may apply)."""

    #: The first reading of a meter (or of the new meter after a replacement): no delta.
    BASELINE = 1
    #: A register wrapped; its delta was taken modulo the register maximum.
    ROLLOVER = 2
    #: Lower than the baseline and not a plausible rollover: not billed, baseline held.
    DECREASE = 4
    #: More energy than `max_per_hour` allows since the baseline: not billed, held.
    SPIKE = 8
    #: More than `gap_s` since the baseline: billed (registers are cumulative), flagged.
    GAP = 16
    #: Δtotal differs from ΣΔT1..Tn by more than one count per register.
    MISMATCH = 32
    #: At or before the baseline time: already rated, ignored.
    STALE = 64
    #: The final reading of a replaced meter.
    REPLACED = 128
    #: The interval crosses a tier settlement instant (all of it counts in the new cycle).
    CYCLE_SPAN = 256
    #: The interval crosses a tariff version's start (all of it at the new version).
    VERSION_SPAN = 512

    @property
    def billed(self) -> bool:
        return not self & (Flag.BASELINE | Flag.DECREASE | Flag.SPIKE | Flag.STALE)


NOT_BILLED = int(Flag.BASELINE | Flag.DECREASE | Flag.SPIKE | Flag.STALE)


@dataclass(frozen=True, slots=True)
class RatingOptions:
    #: Largest plausible consumption per hour (kWh/h or m³/h); above it a reading is a SPIKE.
    #: Metering sets it per meter from the meter's plausibility limits (core/field/plausibility.py).
    max_per_hour: Decimal | None = None
    #: More than this many seconds between a reading and its baseline flags a GAP.
    gap_s: int | None = 3600
    #: A drop counts as a rollover only when the wrapped delta is at most this share of the
    #: register range (otherwise it is a DECREASE).
    rollover_window: Fraction = Fraction(1, 100)


@dataclass(frozen=True, slots=True)
class RegisterChecks:
    """The checks of `RatingOptions` as integers per register, for one compiled tariff.

    Built once per engine and shared by the vectorised and the scalar path, so both test a
    reading against the same numbers. Positions index the *used* registers: all of the
    layout's columns for a time-of-use tariff, the total register alone otherwise.
    """

    #: Layout columns that are differenced.
    used: tuple[int, ...]
    #: Energy units per count, per used register.
    factor: tuple[int, ...]
    #: Counts at which a register wraps; 0 for one that does not.
    modulus: tuple[int, ...]
    #: Largest wrapped delta taken as a ROLLOVER; -1 for a register that does not wrap.
    window: tuple[int, ...]
    #: Positions of the billed registers (contiguous: T1..Tn, or the total).
    bill: tuple[int, ...]
    #: Position of the total register checked against the billed ones (MISMATCH), or -1.
    total: int
    #: MISMATCH when the total differs from the billed sum by more energy than this.
    tolerance: int
    #: Energy units per hour above which a reading is a SPIKE (None: no check).
    max_per_hour: int | None
    #: Rounding allowance of the SPIKE check: two counts of the coarsest register.
    slack: int
    #: More seconds than this between a reading and its baseline flag a GAP.
    gap_s: int | None

    @classmethod
    def of(cls, compiled: CompiledTariff, options: RatingOptions) -> RegisterChecks:
        layout = compiled.layout
        tou = compiled.time_of_use
        used = tuple(range(len(layout.points))) if tou else (0,)
        modulus = [layout.modulus[c] for c in used]
        win = options.rollover_window
        factor = tuple(layout.unit_factor[c] for c in used)
        bill = tuple(compiled.columns) if tou else (0,)
        mph = options.max_per_hour
        return cls(
            used=used,
            factor=factor,
            modulus=tuple(m or 0 for m in modulus),
            window=tuple((m * win.numerator) // win.denominator if m else -1 for m in modulus),
            bill=bill,
            total=0 if tou and layout.has_total else -1,
            tolerance=sum(factor[c] for c in bill),
            max_per_hour=None if mph is None else int(Decimal(str(mph)) * ENERGY_SCALE),
            slack=2 * max(factor),
            gap_s=options.gap_s,
        )
