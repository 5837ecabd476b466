"""Daily consumption shapes for simulated devices.

`LoadShape` gives a device's demand at a local time: a base level times a daily curve with
morning and evening peaks (residential) plus seeded noise, so every simulated meter is
different but every run is repeatable.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime

#: Relative demand by local hour, residential: night trough, morning and evening peaks.
RESIDENTIAL = (
    0.35,
    0.3,
    0.28,
    0.27,
    0.27,
    0.3,
    0.55,
    0.9,
    1.0,
    0.8,
    0.7,
    0.75,
    0.9,
    0.8,
    0.7,
    0.7,
    0.8,
    1.1,
    1.5,
    1.7,
    1.6,
    1.3,
    0.9,
    0.55,
)


@dataclass
class LoadShape:
    base: float
    curve: tuple[float, ...] = RESIDENTIAL
    noise: float = 0.15
    seed: int = 0

    def __post_init__(self) -> None:
        self._factor = 1.0
        self._factor_slot = -1

    def at(self, local: datetime) -> float:
        """Demand at `local` (a time in the device's zone), in the unit of `base`."""
        hour = local.hour + local.minute / 60
        i = int(hour) % 24
        frac = hour - int(hour)
        level = self.curve[i] * (1 - frac) + self.curve[(i + 1) % 24] * frac
        slot = int(local.timestamp() // 300)  # noise changes every 5 minutes
        if slot != self._factor_slot:
            # Seeded by the slot, not drawn in sequence: any caller asking for the same
            # moment (a main meter summing its sub-meters) sees the same demand.
            self._factor_slot = slot
            rng = random.Random((self.seed * 1_000_003) ^ slot)
            self._factor = max(0.0, 1 + rng.gauss(0, self.noise))
        return self.base * level * self._factor


def seed_for(name: str, seed: int) -> int:
    """A stable per-device seed (Python's hash() of a str changes between runs)."""
    h = 0
    for ch in name:
        h = (h * 131 + ord(ch)) % 2_147_483_647
    return (h ^ seed) & 0x7FFFFFFF
