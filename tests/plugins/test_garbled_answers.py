"""A garbled answer costs one structured log line and the one poll, never the link
(issue 9 §10). Before: on Modbus TCP an answer pymodbus could not decode raised inside
the socket callback, asyncio logged a 20-line traceback and closed the connection (every
device of the link went offline), and the reason given was "CRC or length error" on a
link that has no CRC."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from openprepay.core.config.site import LinkType
from openprepay.core.events import LinkStateChanged
from openprepay.core.model import Quality
from tests.conftest import until
from tests.faultproxy import Fault

from .conftest import StartProxied

SITE: dict[str, Any] = {
    "site": {"id": "garbled"},
    "poll": {
        "interval_s": 0.2,
        "stats_interval_s": 60,
        "backoff_initial_s": 0.2,
        "backoff_max_s": 0.4,
    },
    "links": {"gw": {"type": "rtu_over_tcp", "host": "127.0.0.1", "port": 1, "timeout_ms": 500}},
    "buildings": {"A": {"floors": ["1"]}},
    "devices": {
        f"E-{u}": {"model": "acrel.DDSY1352", "link": "gw", "unit_id": u, "building": "A"}
        for u in (1, 2)
    },
}

#: A well-framed answer whose PDU no Modbus decoder understands (function code 0x42).
UNDECODABLE = bytes([0x42, 0x01, 0x02])


async def test_a_garbled_answer_is_one_line_and_keeps_the_link(
    proxied: StartProxied, link_type: LinkType, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    run = await proxied(SITE)
    await until(lambda: any(s.quality.is_good for s in run.of("E-1")))
    fault = run.proxy.inject(Fault(unit=1, start=0x0000, pdu=UNDECODABLE))

    def recovered() -> bool:
        samples = run.of("E-1")
        bad = [i for i, s in enumerate(samples) if not s.quality.is_good]
        return bool(bad) and any(s.quality.is_good for s in samples[bad[0] :])

    await until(recovered)
    assert fault.applied == 1
    bad = [s for s in run.of("E-1") if not s.quality.is_good]
    assert [s.quality for s in bad] == [Quality.BAD_DEVICE_FAILURE]

    lines = [r for r in caplog.records if "cannot be used" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]
    line = lines[0]
    assert (line.meter, line.link, line.unit) == ("E-1", "gw", 1)  # type: ignore[attr-defined]
    if link_type is LinkType.MODBUS_TCP:
        assert "function code 0x42 that cannot be decoded" in line.getMessage()
        assert "CRC" not in line.getMessage()
    else:
        assert "RTU frame with a CRC or length error" in line.getMessage()
    assert not [r for r in caplog.records if r.exc_info or r.name == "asyncio"], "a traceback"

    # The link stayed open: never reopened, and the neighbour on it never missed a poll.
    assert not [e for e in run.events if isinstance(e, LinkStateChanged) and not e.connected]
    assert run.runtime.arbiter.workers["gw"].stats.reconnects == 0
    assert run.of("E-2") and all(s.quality.is_good for s in run.of("E-2"))
