"""The latest sample of every source, for views and status commands."""

from __future__ import annotations

from ..events import EventBus
from ..model import Sample


class LatestReadings:
    """Keeps the newest sample and the newest Good sample per (source, model)."""

    def __init__(self, bus: EventBus) -> None:
        self.latest: dict[tuple[str, str], Sample] = {}
        self.latest_good: dict[tuple[str, str], Sample] = {}
        bus.subscribe(Sample, self._on_sample)

    def _on_sample(self, sample: Sample) -> None:
        key = (sample.source, sample.model.name)
        self.latest[key] = sample
        if sample.quality.is_good:
            self.latest_good[key] = sample

    def get(self, source: str, model: str) -> Sample | None:
        return self.latest.get((source, model))

    def good(self, source: str, model: str) -> Sample | None:
        return self.latest_good.get((source, model))
