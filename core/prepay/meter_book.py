"""What metering holds in memory for one meter between database writes: its rating state,
the month's accrual, and the consumption per day not yet saved."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from typing import Any

import numpy as np

from ..rating.engine import MeterState, RatingEngine
from ..rating.rounding import Accrual


@dataclass(slots=True)
class MeterBook:
    """What metering holds in memory for one meter between database writes."""

    account_id: str
    mode: str
    state: MeterState
    saved_at: datetime
    #: Unsaved state is written at least this often (persist_s, spread per meter).
    persist: timedelta
    cycle: str | None = None
    accrual: Accrual | None = None
    #: Cost rated while the cycle's saved accrual was not loaded yet (fen, exact).
    pending_cost: Fraction = Fraction(0)
    #: The last rated reading (epoch seconds): the posting's period key.
    period: str = ""
    #: Unsaved changes (baseline moved, energy not yet added to `meter_usage_day`).
    dirty: bool = False
    #: Energy not yet added to `meter_usage_day`: day → (units, units per rate).
    days: dict[str, tuple[int, dict[str, int]]] = field(default_factory=dict)
    #: Replacements rated into the state and not saved yet (meter_replacement ids).
    replaced: list[int] = field(default_factory=list)


def add_usage(book: MeterBook, engine: RatingEngine, rated: Any, tz: Any) -> None:
    """Add a rated batch's energy to the book's unsaved per-day consumption (not money)."""
    energy = np.asarray(rated.energy, np.int64)
    if not energy.any():
        return
    days = [datetime.fromtimestamp(int(x), UTC).astimezone(tz).date().isoformat() for x in rated.t]
    names = engine.compiled.rate_names
    for day in sorted(set(days)):
        rows = np.asarray([d == day for d in days])
        units = int(energy[rows].sum())
        if not units:
            continue
        total, by_rate = book.days.get(day, (0, {}))
        for vi, rate_names in enumerate(names):
            sel = rows & (rated.version == vi)
            if not sel.any():
                continue
            sums = rated.rate_energy[sel].sum(axis=0, dtype=np.int64)
            for c, name in enumerate(rate_names):
                if int(sums[c]):
                    key = name or "total"
                    by_rate[key] = by_rate.get(key, 0) + int(sums[c])
        book.days[day] = (total + units, by_rate)
