"""The spool's files: the record format, a segment's bookkeeping, and durable writes.

A record is a 48-byte header (magic, flags, body length, lines, points, creation time, data
time range, CRC-32 of header and body) and a body of up to `batch_size` lines of line
protocol — one gzip member when requests are sent compressed, plain text otherwise.
Records are appended to segment files (`segments/<id>.seg`); spool.py says when.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from openprepay.core.private_files import open_private

from .lineprotocol import Chunk, gzip_member

log = logging.getLogger("openprepay.historian")

HEADER = struct.Struct("<4sB3xIIIqqqI")
MAGIC = b"OPR1"
#: Header flag: the body is a gzip member.
GZ = 1


@dataclass(slots=True)
class Segment:
    """One segment file: its committed size and what of it is still unsent."""

    id: int
    path: Path
    #: Bytes of complete, committed records.
    size: int = 0
    sealed: bool = False
    #: Unsent records of the segment: count, lines, points, bytes, data time range.
    records: int = 0
    lines: int = 0
    points: int = 0
    bytes: int = 0
    first_ns: int | None = None
    last_ns: int | None = None
    created_ns: int | None = None

    def add(self, lines: int, points: int, size: int, first: int, last: int, created: int) -> None:
        self.records += 1
        self.lines += lines
        self.points += points
        self.bytes += size
        self.first_ns = first if self.first_ns is None else min(self.first_ns, first)
        self.last_ns = last if self.last_ns is None else max(self.last_ns, last)
        if self.created_ns is None:
            self.created_ns = created


def pack_records(
    chunks: Sequence[Chunk], created_ns: int, compress: bool
) -> list[tuple[bytes, bytes, Chunk]]:
    """(header, body, chunk) of each chunk's record, the CRC filled in."""
    flags = GZ if compress else 0
    records = []
    for c in chunks:
        body = gzip_member(c.data) if compress else c.data
        header = HEADER.pack(
            MAGIC, flags, len(body), c.lines, c.points, created_ns, c.first_ns, c.last_ns, 0
        )
        crc = zlib.crc32(body, zlib.crc32(header[:-4]))
        records.append((header[:-4] + struct.pack("<I", crc), body, c))
    return records


def scan_segment(segment: Segment, start: int, verify: bool, repair: bool) -> int:
    """Add the records from `start` to the segment's unsent totals; its valid size.

    With `verify` (the last segment, the one written when a crash happened), records
    that fail their CRC at the end of the file are a torn write and are cut off (with
    `repair`, in the file too); a damaged record followed by good ones is kept (and set
    aside when it is sent).
    """
    size = segment.path.stat().st_size
    records = []
    with open(segment.path, "rb") as f:
        offset = start
        while offset + HEADER.size <= size:
            f.seek(offset)
            header = f.read(HEADER.size)
            magic, _, length, lines, points, created, first, last, crc = HEADER.unpack(header)
            end = offset + HEADER.size + length
            if magic != MAGIC or end > size:
                break
            ok = not verify or zlib.crc32(f.read(length), zlib.crc32(header[:-4])) == crc
            records.append((ok, end - offset, lines, points, first, last, created))
            offset = end
    while records and not records[-1][0]:
        records.pop()
    valid = start + sum(r[1] for r in records)
    for _, length, lines, points, first, last, created in records:
        segment.add(lines, points, length, first, last, created)
    if valid < size and repair:
        log.warning(
            "historian spool: %d bytes of an unfinished write cut off %s",
            size - valid,
            segment.path,
        )
        with open(segment.path, "r+b") as f:
            f.truncate(valid)
            os.fsync(f.fileno())
    return valid


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data`: a crash leaves the old file or the new one."""
    tmp = path.with_name(path.name + ".tmp")
    with os.fdopen(open_private(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def time_range(data: bytes) -> tuple[int, int]:
    """(first, last) timestamp of the lines in `data`; (0, 0) without any."""
    times = []
    for line in data.splitlines():
        tail = line.rsplit(b" ", 1)[-1]
        if tail.isdigit():
            times.append(int(tail))
    return (min(times), max(times)) if times else (0, 0)
