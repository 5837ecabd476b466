"""Failed logins are throttled by where they come from, never by the user name.

A source is the client's address together with the thumbprint of the certificate its
secure channel was opened with (no certificate on a None channel). Each source may fail
`free_failures` times; every further failure makes it wait before its next attempt is even
checked: `delay_s`, then twice as long, up to `max_delay_s`. Attempts while it waits are
refused without looking at the password (no password check, no KDF work for the attacker).
A source that has not failed for twice the longest delay starts afresh.

Because the user name plays no part, nobody can lock a real user out by guessing their
password: the guesser's source waits, the user logging in from their own address (or with
their own trusted certificate, also from a shared address) is not slowed down. A
successful login does not wipe a source's failures, so knowing one password does not buy
more guesses at another.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LoginSource:
    #: The client's IP address (without the port: a new connection gets a new port).
    address: str
    #: SHA-1 thumbprint of the client certificate of the channel; None on a None channel.
    certificate: str | None

    def __str__(self) -> str:
        cert = f"certificate {self.certificate[:12]}" if self.certificate else "no certificate"
        return f"{self.address} ({cert})"


@dataclass(slots=True)
class _Record:
    failures: int
    last_failure: float
    wait_until: float


class LoginThrottle:
    """Failures per source, and how long each source waits before its next attempt."""

    def __init__(
        self,
        *,
        free_failures: int,
        delay_s: float,
        max_delay_s: float,
        max_sources: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free_failures = free_failures
        self.delay_s = delay_s
        self.max_delay_s = max(max_delay_s, delay_s)
        self.max_sources = max_sources
        self.clock = clock
        #: Least recently failed first, so a flood of new sources drops the oldest.
        self._records: OrderedDict[LoginSource, _Record] = OrderedDict()

    @property
    def forget_after_s(self) -> float:
        return 2 * self.max_delay_s

    def wait_s(self, source: LoginSource) -> float:
        """Seconds before `source` may try again; 0 when it may try now."""
        record = self._records.get(source)
        if record is None:
            return 0.0
        return max(0.0, record.wait_until - self.clock())

    def failed(self, source: LoginSource) -> float:
        """Count a failed login of `source`; returns how long it must now wait (0: none)."""
        now = self.clock()
        record = self._records.pop(source, None)
        if record is None or now - record.last_failure > self.forget_after_s:
            record = _Record(0, now, now)
        record.failures += 1
        record.last_failure = now
        beyond = record.failures - self.free_failures
        wait = 0.0
        if beyond > 0:
            # 2 ** beyond overflows no float before the cap applies (beyond is bounded below).
            wait = min(self.delay_s * 2 ** min(beyond - 1, 64), self.max_delay_s)
            record.wait_until = now + wait
        self._records[source] = record
        self._forget(now)
        return wait

    def failures(self, source: LoginSource) -> int:
        record = self._records.get(source)
        return 0 if record is None else record.failures

    def __len__(self) -> int:
        return len(self._records)

    def _forget(self, now: float) -> None:
        """Drop sources quiet for long enough; beyond `max_sources`, the least recent."""
        records = self._records
        while records:
            source, oldest = next(iter(records.items()))
            quiet = now - oldest.last_failure > self.forget_after_s and oldest.wait_until <= now
            if not quiet and len(records) <= self.max_sources:
                break
            del records[source]
