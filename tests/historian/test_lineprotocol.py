"""Line protocol: the vectorised encoder writes every value exactly, the careful path
handles what it cannot, and the schema (measurement, tags, fields, time) is the documented one."""

from __future__ import annotations

import math
import random
import re
from datetime import UTC, datetime, timedelta

from openprepay.core.config.site import parse_site
from openprepay.core.events import CommandExecuted, HistorianDataDropped
from openprepay.core.field.diagnostics import LINK_MODEL
from openprepay.core.model import Quality, Sample
from openprepay.core.prepay.account_points import ACCOUNT_MODEL, account_sample
from openprepay.core.prepay.feecontrol import FeeState
from openprepay.historian.lineprotocol import LineEncoder, from_ns, gunzip, gzip_member, to_ns

from .conftest import BASE, MODEL, sample

SITE = parse_site(
    {
        "site": {"id": "s1"},
        "links": {"gw1": {"type": "rtu_over_tcp", "host": "h", "port": 1}},
        "buildings": {"A": {"floors": ["1"]}},
        "rooms": {"A-101": {"building": "A", "floor": "1"}},
        "devices": {"M000": {"model": "test.meter", "link": "gw1", "unit_id": 1, "room": "A-101"}},
    }
)

_SPLIT = re.compile(r"(?<!\\) ")


def parse(line: str) -> tuple[str, dict[str, str], dict[str, object], int]:
    """A small line-protocol reader for the tests (no commas inside string fields)."""
    head, rest = _SPLIT.split(line, maxsplit=1)
    fields, ts = rest.rsplit(" ", 1)
    measurement, *tags = re.split(r"(?<!\\),", head)
    tag_map = dict(t.split("=", 1) for t in tags)
    values: dict[str, object] = {}
    for item in re.split(r"(?<!\\),", fields):
        key, text = item.split("=", 1)
        if text.endswith("i"):
            values[key] = int(text[:-1])
        elif text in ("true", "false", "True", "False"):
            values[key] = text.lower() == "true"
        elif text.startswith('"'):
            values[key] = text[1:-1]
        else:
            values[key] = float(text)
        assert "nan" not in text.lower() and "inf" not in text.lower(), item
    return measurement, tag_map, values, int(ts)


def lines_of(encoder: LineEncoder, items: list, max_lines: int = 5000) -> list[str]:
    out = []
    for chunk in encoder.encode(items, max_lines):
        text = chunk.data.decode()
        assert text.endswith("\n")
        assert chunk.lines == text.count("\n")
        out += text.splitlines()
    return out


def test_schema_of_a_meter_sample() -> None:
    s = sample(0, 3)
    [line] = lines_of(LineEncoder(SITE), [s])
    measurement, tags, fields, ts = parse(line)
    assert measurement == "electric"
    assert tags == {
        "building": "A",
        "meter": "M000",
        "model": "test.meter",
        "room": "A-101",
        "site": "s1",
    }
    assert fields == {**s.values, "quality": 0}
    assert isinstance(fields["buy_count"], int) and isinstance(fields["voltage"], float)
    assert ts == to_ns(s.read_at)


def test_every_value_round_trips_exactly() -> None:
    """Decimals, negatives, zeros, huge and tiny numbers, thirds: parse(text) == value."""
    rng = random.Random(5)
    specials = [0.0, -0.0, 1e-7, -1234.5678, 1 / 3, 2.0**60, 123456789.123, 0.1 + 0.2, 5e-324]
    samples = []
    for i in range(3000):
        values = {
            "energy_total": round(rng.uniform(-1e6, 1e6), rng.randrange(0, 3)),
            "power_active": rng.choice(specials) if i % 7 == 0 else rng.uniform(-10, 10),
            "voltage": round(rng.uniform(0, 400), 1),
            "buy_count": rng.randrange(-(2**40), 2**40),
            "supply_on": rng.random() < 0.5,
        }
        t = BASE + timedelta(microseconds=rng.randrange(10**12))
        samples.append(Sample(f"M{i % 50:03d}", MODEL, t, values))
    lines = lines_of(LineEncoder(SITE), samples, max_lines=700)
    assert len(lines) == len(samples)
    by_time = {to_ns(s.read_at): s for s in samples}
    for line in lines:
        _, tags, fields, ts = parse(line)
        original = by_time[ts]
        assert tags["meter"] == original.source
        for name, value in original.values.items():
            assert fields[name] == value and type(fields[name]) is type(value), (name, line)


def test_vectorised_and_careful_paths_agree() -> None:
    encoder = LineEncoder(SITE)
    samples = [sample(m, i) for m in range(5) for i in range(40)]
    fast = sorted(lines_of(encoder, samples))
    careful = sorted(encoder.sample_line(s)[0] for s in samples)
    assert [parse(a) for a in fast] == [parse(b) for b in careful]


def test_non_finite_and_mistyped_values_are_written_safely() -> None:
    good = sample(0, 1)
    nan = Sample("M001", MODEL, BASE, {**good.values, "power_active": math.nan})
    inf = Sample("M002", MODEL, BASE, {**good.values, "voltage": math.inf})
    as_int = Sample("M003", MODEL, BASE, {**good.values, "voltage": 230, "supply_on": 1})
    fraction = Sample("M004", MODEL, BASE, {**good.values, "buy_count": 2.5})
    lines = {
        parse(x)[1]["meter"]: parse(x)[2]
        for x in lines_of(LineEncoder(SITE), [good, nan, inf, as_int, fraction])
    }
    assert "power_active" not in lines["M001"] and lines["M001"]["quality_power_active"] == 3
    assert "voltage" not in lines["M002"] and lines["M002"]["quality_voltage"] == 3
    assert lines["M003"]["voltage"] == 230.0 and lines["M003"]["supply_on"] is True
    assert "buy_count" not in lines["M004"] and lines["M004"]["quality_buy_count"] == 3
    assert lines["M000"] == {**good.values, "quality": 0}


def test_bad_sample_records_its_quality_and_error_never_a_value() -> None:
    bad = Sample("M000", MODEL, BASE, {}, Quality.BAD_COMM_FAILURE, error="timeout, no answer")
    uncertain = Sample(
        "M001", MODEL, BASE, sample(1, 0).values, point_quality={"supply_on": Quality.UNCERTAIN}
    )
    lines = lines_of(LineEncoder(SITE), [bad, uncertain])
    _, _, fields, _ = parse(lines[0].replace("timeout, no answer", "timeout no answer"))
    assert fields == {"quality": 2, "error": "timeout no answer"}
    _, _, fields, _ = parse(lines[1])
    assert fields["quality"] == 0 and fields["quality_supply_on"] == 1
    assert fields["supply_on"] == sample(1, 0).values["supply_on"]


def test_device_time_is_the_point_time() -> None:
    device = BASE - timedelta(seconds=2, microseconds=500)
    s = Sample("M000", MODEL, BASE, sample(0, 0).values, device_time=device)
    line_fast = lines_of(LineEncoder(SITE), [s])[0]
    line_careful = LineEncoder(SITE).sample_line(s)[0]
    for line in (line_fast, line_careful):
        _, _, fields, ts = parse(line)
        assert ts == to_ns(device)
        assert fields["read_lag_ms"] == 2000.5


def test_links_accounts_and_events() -> None:
    encoder = LineEncoder(SITE)
    link = Sample("gw 1", LINK_MODEL, BASE, {"connected": True, "errors": 3, "latency_ms": 1.5})
    account = account_sample(
        "acc-7",
        BASE,
        energy_balance_fen=-530,
        general_balance_fen=12000,
        alarm_level=FeeState.OVERDRAFT,
        supply_on=False,
    )
    trip = CommandExecuted("M000", "gw 1", "TRIP", True, "relay open", "overdraft", at=BASE)
    drop = HistorianDataDropped(10, 50, "drop_oldest", "spool full", first=BASE, at=BASE)
    lines = lines_of(encoder, [link, account, trip, drop])
    parsed = {parse(x)[0]: parse(x) for x in lines}
    assert parsed["link"][1] == {"link": r"gw\ 1", "site": "s1"}
    assert parsed["account"][1] == {"account": "acc-7", "site": "s1"}
    assert parsed["account"][2]["energy_balance_fen"] == -530
    assert parsed["account"][2]["alarm_level"] == 4
    assert ACCOUNT_MODEL.point("energy_balance_fen").unit == "fen"
    _, tags, fields, ts = parsed["supply_event"]
    assert tags == {
        "command": "TRIP",
        "link": r"gw\ 1",
        "meter": "M000",
        "site": "s1",
        "type": "CommandExecuted",
    }
    assert fields["confirmed"] is True and ts == to_ns(BASE)
    assert parsed["event"][1]["type"] == "HistorianDataDropped"
    assert parsed["event"][2]["lines"] == 10


def test_chunks_respect_the_batch_size_and_gzip_members_concatenate() -> None:
    samples = [sample(m, i) for m in range(3) for i in range(100)]
    chunks = LineEncoder(SITE).encode(samples, 70)
    assert [c.lines for c in chunks] == [70, 70, 70, 70, 20]
    assert sum(c.points for c in chunks) == 300 * 5
    stream = b"".join(gzip_member(c.data) for c in chunks)
    assert gunzip(stream) == b"".join(c.data for c in chunks)


def test_time_conversions_are_exact() -> None:
    t = datetime(2026, 3, 1, 8, 0, 0, 999999, tzinfo=UTC)
    assert from_ns(to_ns(t)) == t
    assert to_ns(t.replace(tzinfo=None)) == to_ns(t)
