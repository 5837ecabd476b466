"""What metering holds in memory for one meter between database writes: its rating state,
the month's accrual, and the consumption per day not yet saved."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

from ..rating.engine import MeterState, RatingEngine
from ..rating.rated import RatedRows
from ..rating.rounding import Accrual


@dataclass(slots=True)
class MeterBook:
    """What metering holds in memory for one meter between database writes.

    A book lives as long as the meter is billed here, and is frozen with the long-lived
    heap; what changes with every batch is kept as tuples of ints (`state_fields`,
    `pending_fen`), which the collector stops tracking, and not as a new `MeterState` or
    `Fraction` per batch, which every full collection would walk (docs/capacity.md,
    "The collector"); `days` is emptied in place when saved. `state` and `pending_cost`
    build them on demand.
    """

    account_id: str
    mode: str
    #: The rating state, `MeterState.as_tuple()`.
    state_fields: tuple[Any, ...]
    saved_at: datetime
    #: Unsaved state is written at least this often (persist_s, spread per meter).
    persist: timedelta
    cycle: str | None = None
    accrual: Accrual | None = None
    #: Cost rated while the cycle's saved accrual was not loaded yet (fen, exact), as
    #: (numerator, denominator).
    pending_fen: tuple[int, int] = (0, 1)
    #: The last rated reading (epoch seconds): the posting's period key.
    period: str = ""
    #: Unsaved changes (baseline moved, energy not yet added to `meter_usage_day`).
    dirty: bool = False
    #: Energy not yet added to `meter_usage_day`: day → (units, units per rate).
    days: dict[str, tuple[int, dict[str, int]]] = field(default_factory=dict)
    #: Replacements rated into the state and not saved yet (meter_replacement ids); a
    #: tuple, so that a saved book holds the empty tuple, not a new empty list per save.
    replaced: tuple[int, ...] = ()

    @classmethod
    def opened(
        cls, account_id: str, mode: str, state: MeterState, saved_at: datetime, persist: timedelta
    ) -> MeterBook:
        return cls(account_id, mode, state.as_tuple(), saved_at, persist)

    @property
    def state(self) -> MeterState:
        return MeterState(*self.state_fields)

    @state.setter
    def state(self, state: MeterState) -> None:
        self.state_fields = state.as_tuple()

    @property
    def pending_cost(self) -> Fraction:
        return Fraction(*self.pending_fen)

    @pending_cost.setter
    def pending_cost(self, cost: Fraction) -> None:
        self.pending_fen = (cost.numerator, cost.denominator)


def add_usage(book: MeterBook, engine: RatingEngine, rated: RatedRows, tz: Any) -> None:
    """Add a rated batch's energy to the book's unsaved per-day consumption (not money)."""
    if not any(rated.energy):
        return
    names = engine.compiled.rate_names
    rows_of_day: dict[str, list[int]] = {}
    for i, t in enumerate(rated.t):
        day = datetime.fromtimestamp(t, UTC).astimezone(tz).date().isoformat()
        rows_of_day.setdefault(day, []).append(i)
    for day in sorted(rows_of_day):
        rows = rows_of_day[day]
        units = sum(rated.energy[i] for i in rows)
        if not units:
            continue
        total, by_rate = book.days.get(day, (0, {}))
        sums: dict[tuple[int, int], int] = {}  # (tariff version, rate column) → energy
        for i in rows:
            for c, e in enumerate(rated.rate_energy[i]):
                key = (rated.version[i], c)
                sums[key] = sums.get(key, 0) + e
        for (version, c), energy in sorted(sums.items()):
            if energy and version < len(names) and c < len(names[version]):
                name = names[version][c] or "total"
                by_rate[name] = by_rate.get(name, 0) + energy
        book.days[day] = (total + units, by_rate)
