"""At most one log line per kind of refusal per minute.

Refused channels, tokens, logins and certificates are what a scan or a brute force
produces by the thousand; one line per connection would drown the log (and fill a disk).
`LogLimiter` writes the first line of a kind at once, then nothing of that kind for the
interval; the next line says how many were left out. The counters in the security
diagnostics (guard.py) count every one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any


class LogLimiter:
    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval_s = interval_s
        self.clock = clock
        #: kind -> (time the next line may be written, lines left out since the last)
        self._kinds: dict[str, tuple[float, int]] = {}

    def warning(self, kind: str, message: str, *args: Any) -> bool:
        """Log `message % args` unless a line of `kind` was written less than the
        interval ago; returns whether it was written."""
        now = self.clock()
        next_at, left_out = self._kinds.get(kind, (0.0, 0))
        if now < next_at:
            self._kinds[kind] = (next_at, left_out + 1)
            return False
        if left_out:
            message += " (%d more like it since the last such line)"
            args = (*args, left_out)
        self.logger.warning(message, *args)
        self._kinds[kind] = (now + self.interval_s, 0)
        return True
