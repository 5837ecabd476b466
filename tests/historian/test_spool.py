"""The disk spool on its own: order, acknowledgement, restarts, torn writes, the bound and
its drop policies, quarantine and replay."""

from __future__ import annotations

from pathlib import Path

import pytest

from openprepay.historian.config import DropPolicy
from openprepay.historian.lineprotocol import Chunk
from openprepay.historian.spool import SEGMENTS, Spool, SpoolLocked


def chunk(n: int, lines: int = 10) -> Chunk:
    """Chunk number `n`: `lines` lines whose times are n*1000 + line."""
    data = b"".join(b"m,k=v f=%di %d\n" % (n, n * 1000 + i) for i in range(lines))
    return Chunk(data, lines, lines, n * 1000, n * 1000 + lines - 1)


def numbers(batches) -> list[int]:
    """The chunk numbers of the lines in `batches`, in order."""
    out = []
    for b in batches:
        for line in b.plain().splitlines():
            n = int(line.split(b"f=")[1].split(b"i")[0])
            if not out or out[-1] != n:
                out.append(n)
    return out


def drain(spool: Spool) -> list[int]:
    seen = []
    while batches := spool.peek(25):
        seen += numbers(batches)
        spool.ack(batches)
    return seen


def open_spool(folder: Path, **kw) -> Spool:
    kw.setdefault("max_bytes", 10 * 1024 * 1024)
    kw.setdefault("policy", DropPolicy.DROP_OLDEST)
    return Spool(folder, **kw).open()


@pytest.mark.parametrize("compress", [True, False])
def test_in_order_acknowledged_once_and_survives_restart(tmp_path: Path, compress: bool) -> None:
    spool = open_spool(tmp_path, compress=compress, segment_bytes=600)
    for n in range(20):
        assert spool.append([chunk(n)]) == (10, None)
    assert spool.head()[0] == 200
    first = spool.peek(35)  # whole records, at most 35 lines
    assert numbers(first) == [0, 1, 2] and sum(b.lines for b in first) == 30
    spool.ack(first)
    spool.peek(25)  # read but never acknowledged: a crash now must not lose it
    spool.close()

    spool = open_spool(tmp_path, compress=not compress, segment_bytes=600)
    assert spool.queue().lines == 170
    assert drain(spool) == list(range(3, 20))
    assert spool.head() == (0, 0)
    counters = spool.counters()
    assert counters["accepted_lines"] == 200 and counters["sent_lines"] == 200
    # Segments behind the cursor are deleted; at most the head segment stays.
    assert len(list((tmp_path / SEGMENTS).glob("*.seg"))) <= 1
    spool.close()

    spool = open_spool(tmp_path)
    assert spool.peek(100) == []
    spool.append([chunk(99)])
    assert drain(spool) == [99]
    spool.close()


def test_release_rereads_what_was_not_delivered(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.append([chunk(1), chunk(2)])
    assert numbers(spool.peek(10)) == [1]
    spool.release()  # the server did not answer
    assert numbers(spool.peek(100)) == [1, 2]
    spool.close()


def test_a_torn_write_is_cut_off_and_damage_is_detected(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.append([chunk(1)])
    spool.append([chunk(2)])
    spool.close()
    [segment] = (tmp_path / SEGMENTS).glob("*.seg")
    intact = segment.stat().st_size
    with open(segment, "ab") as f:  # kill -9 in the middle of a write: half a record
        f.write(b"OPR1" + b"\x00" * 30)
    spool = open_spool(tmp_path)
    assert segment.stat().st_size == intact
    spool.append([chunk(3)])
    assert drain(spool) == [1, 2, 3]
    spool.close()

    spool = open_spool(tmp_path)
    spool.append([chunk(4), chunk(5)])
    spool.close()
    [segment] = sorted((tmp_path / SEGMENTS).glob("*.seg"))[-1:]
    raw = bytearray(segment.read_bytes())
    raw[60] ^= 0xFF  # a flipped bit in the first record's body
    segment.write_bytes(bytes(raw))
    spool = Spool(tmp_path, 10**7, DropPolicy.DROP_OLDEST).open()
    batches = spool.peek(100)
    assert [b.corrupt for b in batches] == [True, False]
    assert numbers(batches[1:]) == [5]
    spool.close()


def test_drop_oldest_keeps_the_newest_and_says_what_it_dropped(tmp_path: Path) -> None:
    spool = open_spool(tmp_path, max_bytes=4000, segment_bytes=1000, compress=False)
    drops = []
    for n in range(40):
        _, drop = spool.append([chunk(n)])
        if drop:
            drops.append(drop)
    assert drops, "the spool never filled"
    assert spool.queue().bytes <= 4000
    kept = drain(spool)
    assert kept == list(range(kept[0], 40))  # the newest survive, in order
    dropped_lines = sum(d.lines for d in drops)
    assert dropped_lines == 10 * kept[0]
    assert all("drop_oldest" in d.reason for d in drops)
    assert min(d.first_ns for d in drops) == 0
    counters = spool.counters()
    assert counters["dropped_lines"] == dropped_lines
    assert counters["dropped_points"] == dropped_lines
    assert counters["accepted_lines"] == 400
    spool.close()


def test_drop_newest_keeps_the_backlog(tmp_path: Path) -> None:
    spool = open_spool(
        tmp_path, max_bytes=4000, segment_bytes=1000, compress=False, policy=DropPolicy.DROP_NEWEST
    )
    refused = 0
    for n in range(40):
        accepted, drop = spool.append([chunk(n)])
        if drop:
            assert accepted == 0 and drop.lines == 10 and "refused" in drop.reason
            refused += 1
    kept = drain(spool)
    assert kept == list(range(40 - refused))
    assert spool.counters()["dropped_lines"] == 10 * refused
    # Once the backlog has drained, new data is taken again.
    assert spool.append([chunk(99)]) == (10, None)
    assert drain(spool) == [99]
    spool.close()


def test_quarantine_and_replay(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    spool.append([chunk(1)])
    batches = spool.peek(100)
    spool.ack(batches, [(400, "partial write: field type conflict", b"m f=1 5000\n")])
    [entry] = spool.quarantine.entries()
    assert (entry.status, entry.lines, entry.first_ns) == (400, 1, 5000)
    assert "type conflict" in entry.error
    assert spool.counters()["quarantined_lines"] == 1
    assert spool.counters()["sent_lines"] == 9
    assert spool.quarantine.requeue(from_ns=6000) == (0, 0)  # outside the range
    assert spool.quarantine.requeue(from_ns=4000, to_ns=6000) == (1, 1)
    assert spool.quarantine.entries() == []
    assert spool.ingest_replay() == 1
    [again] = spool.peek(100)
    assert again.plain() == b"m f=1 5000\n"
    spool.close()


def test_one_owner_at_a_time(tmp_path: Path) -> None:
    spool = open_spool(tmp_path)
    with pytest.raises(SpoolLocked):
        Spool(tmp_path, 10**6, DropPolicy.DROP_OLDEST).open()
    reader = Spool(tmp_path, 10**6, DropPolicy.DROP_OLDEST).open(lock=False)
    assert reader.queue().lines == 0
    reader.close()
    spool.close()
    Spool(tmp_path, 10**6, DropPolicy.DROP_OLDEST).open().close()
