"""The login throttle, the log limiter and the rejected folder, on a clock the test moves
(no server, no waiting)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from openprepay.opcua_server.logins import LoginSource, LoginThrottle
from openprepay.opcua_server.loglimit import LogLimiter
from openprepay.opcua_server.pki import RejectedFolder


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


GUESSER = LoginSource("10.0.0.9", None)
USER = LoginSource("10.0.0.5", "ab" * 20)
SAME_ADDRESS_WITH_CERT = LoginSource("10.0.0.9", "cd" * 20)


def throttle(clock: Clock, **kwargs: float) -> LoginThrottle:
    options = {"free_failures": 3, "delay_s": 2.0, "max_delay_s": 60.0, **kwargs}
    return LoginThrottle(clock=clock, **options)  # type: ignore[arg-type]


def test_free_failures_then_growing_waits_up_to_the_cap() -> None:
    clock = Clock()
    t = throttle(clock)
    waits = []
    for _ in range(10):
        assert t.wait_s(GUESSER) == 0.0  # each attempt made once the wait is over
        waits.append(t.failed(GUESSER))
        clock.now += waits[-1]
    assert waits == [0, 0, 0, 2, 4, 8, 16, 32, 60, 60]


def test_a_waiting_source_blocks_only_itself() -> None:
    clock = Clock()
    t = throttle(clock)
    for _ in range(5):
        t.failed(GUESSER)
    assert t.wait_s(GUESSER) == 4.0
    assert t.wait_s(USER) == 0.0
    assert t.wait_s(SAME_ADDRESS_WITH_CERT) == 0.0  # same address, its own certificate
    clock.now += 3.0
    assert t.wait_s(GUESSER) == pytest.approx(1.0)


def test_failures_are_forgotten_after_a_quiet_period_not_after_a_success() -> None:
    clock = Clock()
    t = throttle(clock)
    for _ in range(4):
        t.failed(GUESSER)
    # (a success is not reported to the throttle at all: knowing one password does not
    # buy more guesses at another)
    clock.now += t.forget_after_s - 1
    assert t.failed(GUESSER) > 0  # still counted: 5 failures
    clock.now += t.forget_after_s + 1
    assert t.failed(GUESSER) == 0.0  # a fresh start
    assert t.failures(GUESSER) == 1


def test_the_number_of_sources_kept_is_bounded() -> None:
    clock = Clock()
    t = throttle(clock, max_sources=100)
    for i in range(1000):
        t.failed(LoginSource(f"10.1.{i // 250}.{i % 250}", None))
    assert len(t) <= 100
    assert t.failures(LoginSource("10.1.3.249", None)) == 1  # the newest are kept


def test_the_log_limiter_writes_one_line_per_kind_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    limiter = LogLimiter(logging.getLogger("test.limiter"), 60.0, clock)
    with caplog.at_level(logging.WARNING, logger="test.limiter"):
        for i in range(300):
            limiter.warning("certificate", "refused %d", i)
            clock.now += 0.1  # 300 in 30 s
        limiter.warning("login", "another kind")
        clock.now += 31
        limiter.warning("certificate", "refused %d", 300)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "refused 0",
        "another kind",
        "refused 300 (299 more like it since the last such line)",
    ]


def test_the_rejected_folder_keeps_one_file_per_certificate_within_its_bounds(
    tmp_path: Path,
) -> None:
    folder = RejectedFolder(tmp_path / "rejected", max_count=5, max_bytes=10_000)
    ders = {f"{i:040x}": os.urandom(1500) for i in range(8)}
    kept = []
    for n, (tp, der) in enumerate(ders.items()):
        # An earlier version left a metadata file beside each certificate.
        (tmp_path / "rejected").mkdir(exist_ok=True)
        (tmp_path / "rejected" / f"{tp}.json").write_text("{}")
        kept.append(folder.keep(der, tp))
        os.utime(tmp_path / "rejected" / f"{tp}.der", ns=(n * 10**9, n * 10**9))
    names = sorted(p.name for p in (tmp_path / "rejected").iterdir())
    assert names == sorted(f"{tp}.der" for tp in list(ders)[-5:])  # the newest five, no .json
    assert [k[1] for k in kept] == [0, 0, 0, 0, 0, 1, 1, 1]
    # Bytes bound: 1,500-byte certificates, 4,000 bytes → two files.
    small = RejectedFolder(tmp_path / "small", max_count=100, max_bytes=4000)
    for tp, der in ders.items():
        small.keep(der, tp)
    assert small.count() == 2
    # A certificate seen again gets the time of its new attempt; nothing is added.
    last = list(ders)[-1]
    assert folder.keep(ders[last], last) == (-1, 0)
    assert folder.count() == 5
