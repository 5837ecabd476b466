"""Back-off between write attempts: exponential with jitter, capped, and the server's
Retry-After wins (seconds or an HTTP date)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

from openprepay.historian.config import read_config
from openprepay.historian.forward import Forwarder
from openprepay.historian.writer import InfluxWriter, WriteResult, parse_retry_after

from .conftest import fast, site_with


def forwarder(tmp_path: Path) -> Forwarder:
    config = read_config(
        site_with(
            fast(url="http://127.0.0.1:9", bucket="b", retry_initial_ms=100, retry_max_ms=800),
            tmp_path,
        )
    )
    assert config.influx is not None
    return Forwarder(None, InfluxWriter(config.influx), config)  # type: ignore[arg-type]


def test_exponential_back_off_with_jitter_and_a_cap(tmp_path: Path) -> None:
    f = forwarder(tmp_path)
    delays = []
    for _ in range(8):
        f._failed(WriteResult(False, None, "ConnectionRefusedError"))
        delays.append(f.next_delay())
    caps = [0.1, 0.2, 0.4, 0.8, 0.8, 0.8, 0.8, 0.8]
    assert all(cap / 2 <= d <= cap for d, cap in zip(delays, caps, strict=True))
    assert f.stats.retries == 8 and f.stats.connected is False
    f.close()


def test_retry_after_is_honoured(tmp_path: Path) -> None:
    f = forwarder(tmp_path)
    f._failed(WriteResult(False, 503, "overloaded", retry_after=parse_retry_after("7")))
    assert f.next_delay() == 7.0
    f._failed(WriteResult(False, 500, "oops"))  # no Retry-After: back to the back-off
    assert f.next_delay() <= 0.2
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    assert 25 <= parse_retry_after(later) <= 30
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None
    assert WriteResult(False, 400).rejected and WriteResult(False, 413).rejected
    assert not WriteResult(False, 429).rejected and not WriteResult(False, 404).rejected
    f.close()
