"""The disk spool in front of the network: append-only segment files.

Layout of `spool_dir`::

    segments/000000000042.seg   records, appended in order; the last one is being written
    cursor                      "<segment> <offset>": everything before it was acknowledged
    counters.json               accepted / sent / dropped / quarantined totals
    quarantine/<id>.lp, .json   lines the server rejected, with its answer
    replay/<id>.lp              lines waiting to be put back into the spool (CLI replay)
    spool.lock                  held (flock) by the process that owns the spool

Records (records.py) hold up to `batch_size` lines each, gzip-compressed when requests are
sent compressed: what is stored is what is sent, and gzip members concatenate into one
valid gzip stream, so a request is the records' bodies joined. Quarantine and replay:
quarantine.py.

Durability: `append()` writes a commit's records and `fdatasync`s the segment before it
returns; only then do the lines count as accepted. A new segment's directory entry is
synced when the segment is created. After a crash, `open()` checks the last segment and
cuts off a torn tail (a record whose write never completed, so never accepted).

Acknowledgement: the forwarder reads records from the cursor; when the server acknowledged
them the cursor moves past them (written atomically: temp file, fsync, rename) and a
segment the cursor has left is deleted. Delivery is at-least-once: a crash between the
server's answer and the cursor write sends those records again, which InfluxDB absorbs
(same measurement, tags and time overwrite).

Bound: `spool_max_mb` limits the unsent data. When an append would exceed it,
`drop_oldest` deletes the oldest whole segments (a segment is at most 1/16 of the bound, and
at most 16 MB), `drop_newest` refuses the new records, and keeps refusing until the backlog
has drained below 90 % of the bound, so that what is kept is one stretch of time. Either way
the loss is counted and returned to the caller, which raises it as an event. Disk use can
exceed the bound by the acknowledged head of the segment being read (less than one segment).

Why files rather than SQLite: a 3 MB batch costs one sequential write and one fdatasync
here, where SQLite writes it twice (WAL, then checkpoint) and walks its overflow pages
again to free them on delete — several times the CPU per line on the path the benchmark
measures. The format is small enough to verify (CRC per record, torn tail cut at open).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from openprepay.core.errors import OpenPrepayError
from openprepay.core.private_files import open_private, private_dir

from .config import DropPolicy
from .lineprotocol import Chunk, gunzip
from .quarantine import Quarantine
from .records import (
    GZ,
    HEADER,
    MAGIC,
    Segment,
    fsync_dir,
    pack_records,
    scan_segment,
    write_atomic,
)

SEGMENTS = "segments"
CURSOR = "cursor"
COUNTERS_FILE = "counters.json"
QUARANTINE = "quarantine"
REPLAY = "replay"
LOCK_FILE = "spool.lock"

log = logging.getLogger("openprepay.historian")

#: After drop_newest refused data, new data is taken again below this share of the bound.
RESUME_BELOW = 0.9
COUNTERS = (
    "accepted_lines",
    "accepted_points",
    "sent_lines",
    "dropped_lines",
    "dropped_points",
    "quarantined_lines",
    "requeued_lines",
)


#: (header, body, chunk) of a record to append.
_Record = tuple[bytes, bytes, Chunk]
#: (lines, points, first ns, last ns, records) of what the drop policy threw away.
_Dropped = tuple[int, int, int | None, int | None, int]


class SpoolLocked(OpenPrepayError):
    """Another process (a running service) holds the spool."""


@dataclass(frozen=True, slots=True)
class SpoolBatch:
    """One record read from the spool."""

    segment: int
    offset: int
    end: int
    lines: int
    points: int
    body: bytes
    first_ns: int
    last_ns: int
    #: Whether `body` is a gzip member (else plain line protocol).
    gz: bool
    #: The record failed its CRC check: it cannot be sent, only set aside.
    corrupt: bool = False

    def plain(self) -> bytes:
        return gunzip(self.body) if self.gz else self.body


@dataclass(frozen=True, slots=True)
class Drop:
    """What the drop policy threw away in one append."""

    lines: int
    points: int
    batches: int
    first_ns: int | None
    last_ns: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class QueueState:
    batches: int
    lines: int
    bytes: int
    oldest_created_ns: int | None
    segments: int


class Spool:
    def __init__(
        self,
        folder: Path,
        max_bytes: int,
        policy: DropPolicy,
        quarantine_max_bytes: int = 64 * 1024 * 1024,
        compress: bool = True,
        segment_bytes: int | None = None,
    ) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.policy = policy
        self.quarantine_max_bytes = quarantine_max_bytes
        #: Store new records gzip-compressed (when requests are sent compressed).
        self.compress = compress
        self.segment_bytes = segment_bytes or max(64 * 1024, min(16 * 1024 * 1024, max_bytes // 16))
        self._mutex = threading.RLock()
        #: Appends are serialised; the head segment is written outside `_mutex`.
        self._append_lock = threading.Lock()
        self._segments: dict[int, Segment] = {}
        self._head: Segment | None = None
        self._head_fd: int | None = None
        self._cursor = (0, 0)
        self._read = (0, 0)
        #: Records read and not yet acknowledged, in read order, and those acknowledged
        #: out of order (with several requests in flight).
        self._outstanding: list[SpoolBatch] = []
        self._acked: set[tuple[int, int]] = set()
        self._fds: dict[int, int] = {}
        self._counters = dict.fromkeys(COUNTERS, 0)
        self._counters_dirty = False
        #: drop_newest refused data and refuses until the backlog drains below RESUME_BELOW.
        self._refusing = False
        self.quarantine = Quarantine(
            folder / QUARANTINE, folder / REPLAY, quarantine_max_bytes, self._count_trimmed
        )
        self._lock_fd: int | None = None
        self._writable = False
        self.opened = False

    # -- lifecycle ------------------------------------------------------------------------
    @property
    def segment_dir(self) -> Path:
        return self.folder / SEGMENTS

    def open(self, lock: bool = True) -> Spool:
        """Open for sending and appending (`lock`: as the spool's owner), or read-only."""
        private_dir(self.folder, own=True)  # the spool holds every reading: owner only
        for sub in (SEGMENTS, QUARANTINE, REPLAY):
            private_dir(self.folder / sub, own=True)
        if lock:
            self.lock()
        self._writable = lock
        counters = self.folder / COUNTERS_FILE
        if counters.exists():
            try:
                saved = json.loads(counters.read_text())
                self._counters.update({k: int(v) for k, v in saved.items() if k in COUNTERS})
            except (ValueError, OSError):
                pass
        cursor = self.folder / CURSOR
        if cursor.exists():
            try:
                seg, off = cursor.read_text().split()
                self._cursor = (int(seg), int(off))
            except (ValueError, OSError):
                self._cursor = (0, 0)
        ids = sorted(int(p.stem) for p in self.segment_dir.glob("*.seg") if p.stem.isdigit())
        for n, seg_id in enumerate(ids):
            path = self.segment_dir / f"{seg_id:012d}.seg"
            if seg_id < self._cursor[0]:
                if lock:
                    path.unlink(missing_ok=True)  # acknowledged; the delete did not happen
                continue
            segment = Segment(seg_id, path, sealed=True)
            start = self._cursor[1] if seg_id == self._cursor[0] else 0
            if start and start >= path.stat().st_size:
                if lock:
                    path.unlink(missing_ok=True)  # sent completely
                continue
            last = n == len(ids) - 1
            segment.size = scan_segment(segment, start, verify=last, repair=last and lock)
            self._segments[seg_id] = segment
        if self._cursor[0] not in self._segments:
            # The cursor's segment is gone (fully sent): start at the next one.
            self._cursor = (min(self._segments, default=self._cursor[0] + 1), 0)
        self._read = self._cursor
        self.opened = True
        return self

    def lock(self) -> None:
        private_dir(self.folder, own=True)
        fd = open_private(self.folder / LOCK_FILE, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolLocked(
                f"{self.folder} is in use by a running OpenPrepay service"
                " (it sends the spool itself)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def close(self) -> None:
        with self._mutex:
            if self._writable and self.opened:
                self._save_counters()
            if self._head_fd is not None:
                os.close(self._head_fd)
                self._head_fd = None
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            self._head = None
            self._segments.clear()
            self.opened = False
        self.unlock()

    def _save_counters(self) -> None:
        write_atomic(self.folder / COUNTERS_FILE, json.dumps(self._counters).encode())
        self._counters_dirty = False

    def save_counters(self) -> None:
        with self._mutex:
            if self._counters_dirty and self._writable:
                self._save_counters()

    # -- appending (the committer's thread) -----------------------------------------------
    def _new_head(self) -> Segment:
        if self._head is not None:
            self._head.sealed = True
            if self._head_fd is not None:
                os.close(self._head_fd)
                self._head_fd = None
        seg_id = max(self._segments, default=self._cursor[0] - 1) + 1
        seg_id = max(seg_id, self._cursor[0])
        path = self.segment_dir / f"{seg_id:012d}.seg"
        self._head_fd = open_private(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        fsync_dir(self.segment_dir)
        segment = Segment(seg_id, path)
        self._segments[seg_id] = segment
        self._head = segment
        return segment

    def _pending_bytes(self) -> int:
        return sum(s.bytes for s in self._segments.values())

    def _pending_lines_unlocked(self) -> int:
        return sum(s.lines for s in self._segments.values())

    def append(self, chunks: Sequence[Chunk]) -> tuple[int, Drop | None]:
        """Store `chunks` durably (written and fdatasync'd); (lines accepted, drop)."""
        if not chunks:
            return 0, None
        with self._append_lock:
            return self._append(chunks)

    def _append(self, chunks: Sequence[Chunk]) -> tuple[int, Drop | None]:
        now = time.time_ns()
        records = pack_records(chunks, now, self.compress)
        with self._mutex:
            records, dropped, reason = self._make_room(records)
            head = self._head
            if records and (head is None or head.size >= self.segment_bytes):
                head = self._new_head()
            fd = self._head_fd
        data = b""
        if records:
            # Only this thread writes the head segment; readers stop at its committed size,
            # so the write and the sync happen outside the lock.
            assert head is not None and fd is not None
            data = b"".join(h + b for h, b, _ in records)
            _write_synced(fd, data, head.size)
        accepted = sum(c.lines for _, _, c in records)
        points = sum(c.points for _, _, c in records)
        with self._mutex:
            if records:
                assert head is not None
                for h, b, c in records:
                    head.add(c.lines, c.points, len(h) + len(b), c.first_ns, c.last_ns, now)
                head.size += len(data)
            self._counters["accepted_lines"] += accepted
            self._counters["accepted_points"] += points
            self._counters_dirty = True
            drop = None
            if dropped:
                drop = self._drop_of(dropped, reason)
                self._counters["dropped_lines"] += drop.lines
                self._counters["dropped_points"] += drop.points
                self._save_counters()
        return accepted, drop

    def _make_room(self, records: list[_Record]) -> tuple[list[_Record], list[_Dropped], str]:
        """Apply the drop policy when `records` would exceed the bound (under the mutex):
        (the records to write, what was dropped, why)."""
        dropped: list[_Dropped] = []
        reason = ""
        incoming = sum(len(h) + len(b) for h, b, _ in records)
        if self._refusing and self._pending_bytes() < self.max_bytes * RESUME_BELOW:
            self._refusing = False
        if not self._refusing and self._pending_bytes() + incoming <= self.max_bytes:
            return records, dropped, reason
        if self.policy is DropPolicy.DROP_OLDEST:
            dropped += self._drop_oldest(self._pending_bytes() + incoming - self.max_bytes)
            reason = "spool full: oldest segments dropped"
        if self._refusing or self._pending_bytes() + incoming > self.max_bytes:
            # drop_newest (or a batch larger than the whole spool): refuse new data,
            # and keep refusing until the backlog has drained below RESUME_BELOW,
            # so that what is kept stays one contiguous stretch of time.
            kept = []
            used = self._pending_bytes()
            for rec in records:
                size = len(rec[0]) + len(rec[1])
                if not self._refusing and used + size <= self.max_bytes:
                    kept.append(rec)
                    used += size
                else:
                    self._refusing = self.policy is DropPolicy.DROP_NEWEST
                    c = rec[2]
                    dropped.append((c.lines, c.points, c.first_ns, c.last_ns, 1))
            records = kept
            reason = reason or "spool full: new data refused"
        return records, dropped, reason

    def _drop_of(self, dropped: list[_Dropped], reason: str) -> Drop:
        firsts = [d[2] for d in dropped if d[2] is not None]
        lasts = [d[3] for d in dropped if d[3] is not None]
        return Drop(
            lines=sum(d[0] for d in dropped),
            points=sum(d[1] for d in dropped),
            batches=sum(d[4] for d in dropped),
            first_ns=min(firsts) if firsts else None,
            last_ns=max(lasts) if lasts else None,
            reason=f"{reason} ({self.policy.value}, spool_max_mb "
            f"{round(self.max_bytes / 1048576, 3):g})",
        )

    def _drop_oldest(self, need: int) -> list[_Dropped]:
        """Delete the oldest segments (never the one being written) until `need` bytes are
        free."""
        dropped = []
        freed = 0
        for seg_id in sorted(self._segments):
            if freed >= need:
                break
            segment = self._segments[seg_id]
            if segment is self._head:
                if segment.bytes == 0:
                    continue
                self._new_head()  # seal it, so that it can go too
            dropped.append(
                (segment.lines, segment.points, segment.first_ns, segment.last_ns, segment.records)
            )
            freed += segment.bytes
            self._forget(seg_id)
        return dropped

    def _forget(self, seg_id: int, write: bool = True) -> None:
        segment = self._segments.pop(seg_id)
        fd = self._fds.pop(seg_id, None)
        if fd is not None:
            os.close(fd)
        segment.path.unlink(missing_ok=True)
        self._outstanding = [b for b in self._outstanding if b.segment != seg_id]
        self._acked = {k for k in self._acked if k[0] != seg_id}
        nxt = min(self._segments, default=seg_id + 1)
        if self._cursor[0] <= seg_id:
            self._cursor = (nxt, 0)
            if write:
                self._write_cursor()
        if self._read[0] <= seg_id:
            self._read = self._cursor

    def _write_cursor(self) -> None:
        write_atomic(self.folder / CURSOR, f"{self._cursor[0]} {self._cursor[1]}\n".encode())

    # -- sending (the forwarder's thread) -------------------------------------------------
    def _fd(self, seg_id: int) -> int:
        fd = self._fds.get(seg_id)
        if fd is None:
            fd = os.open(self._segments[seg_id].path, os.O_RDONLY)
            self._fds[seg_id] = fd
        return fd

    def peek(self, max_lines: int) -> list[SpoolBatch]:
        """The oldest unsent records from the read position, at least one, together at most
        `max_lines` lines; the read position moves past them."""
        out: list[SpoolBatch] = []
        total = 0
        with self._mutex:
            seg_id, offset = self._read
            while True:
                segment = self._segments.get(seg_id)
                if segment is None:
                    later = [s for s in self._segments if s > seg_id]
                    if not later:
                        break
                    seg_id, offset = min(later), 0
                    continue
                if offset >= segment.size:
                    if not segment.sealed:
                        break
                    later = [s for s in self._segments if s > seg_id]
                    if not later:
                        break
                    seg_id, offset = min(later), 0
                    continue
                fd = self._fd(seg_id)
                header = os.pread(fd, HEADER.size, offset)
                magic, flags, length, lines, points, _, first, last, crc = HEADER.unpack(header)
                if out and total + lines > max_lines:
                    break
                if magic == MAGIC and offset + HEADER.size + length > segment.size:
                    break  # not committed yet
                body = os.pread(fd, length, offset + HEADER.size)
                end = offset + HEADER.size + length
                corrupt = (
                    magic != MAGIC
                    or len(body) != length
                    or zlib.crc32(body, zlib.crc32(header[:-4])) != crc
                )
                if corrupt and magic != MAGIC:
                    end = segment.size  # the rest of the segment cannot be framed
                out.append(
                    SpoolBatch(
                        seg_id,
                        offset,
                        end,
                        lines,
                        points,
                        body,
                        first,
                        last,
                        bool(flags & GZ),
                        corrupt,
                    )
                )
                total += lines
                offset = end
                if total >= max_lines:
                    break
            self._read = (seg_id, offset)
            self._outstanding += out
        return out

    def release(self) -> None:
        """What was peeked was not delivered: read again from the cursor (anything still in
        flight is sent again; an acknowledgement for it that comes later is ignored)."""
        with self._mutex:
            self._read = self._cursor
            self._outstanding.clear()
            self._acked.clear()

    def unread(self) -> tuple[int, int]:
        """(lines not read yet, creation time in ns of the oldest unacknowledged record)."""
        with self._mutex:
            pending = self._pending_lines_unlocked()
            unread = pending - sum(b.lines for b in self._outstanding)
            if not unread:
                return 0, 0
            return unread, self._oldest_created()

    def ack(
        self, batches: Sequence[SpoolBatch], quarantined: Sequence[tuple[int, str, bytes]] = ()
    ) -> None:
        """The server acknowledged `batches` (except the `quarantined` (status, error, lines)
        it rejected, which are set aside): move the cursor past them, durably, and delete
        the segments left behind."""
        bad_lines = 0
        for status, error, data in quarantined:
            bad_lines += self.quarantine.put(status, error, data)
        with self._mutex:
            waiting = {(b.segment, b.offset) for b in self._outstanding}
            sent = 0
            for b in batches:
                key = (b.segment, b.offset)
                if key in waiting and key not in self._acked:
                    self._acked.add(key)
                    sent += b.lines
            moved = False
            while (
                self._outstanding
                and (key := (self._outstanding[0].segment, self._outstanding[0].offset))
                in self._acked
            ):
                b = self._outstanding.pop(0)
                self._acked.discard(key)
                segment = self._segments.get(b.segment)
                if segment is None:
                    continue  # dropped meanwhile
                segment.records -= 1
                segment.lines -= b.lines
                segment.points -= b.points
                segment.bytes -= b.end - b.offset
                self._cursor = (b.segment, b.end)
                moved = True
            if moved:
                for seg_id in sorted(self._segments):
                    segment = self._segments[seg_id]
                    if seg_id < self._cursor[0] or (
                        seg_id == self._cursor[0]
                        and segment.sealed
                        and self._cursor[1] >= segment.size
                    ):
                        self._forget(seg_id, write=False)
                self._write_cursor()
            self._counters["sent_lines"] += max(sent - bad_lines, 0)
            self._counters["quarantined_lines"] += bad_lines
            self._counters_dirty = True
            if quarantined:
                self._save_counters()

    def head(self) -> tuple[int, int]:
        """(lines waiting, creation time in ns of the oldest waiting record)."""
        with self._mutex:
            lines = self._pending_lines_unlocked()
            if not lines:
                return 0, 0
            return lines, self._oldest_created()

    def _oldest_created(self) -> int:
        seg_id, offset = self._cursor
        for sid in sorted(self._segments):
            segment = self._segments[sid]
            if sid < seg_id or not segment.records:
                continue
            start = offset if sid == seg_id else 0
            if start < segment.size:
                header = os.pread(self._fd(sid), HEADER.size, start)
                if len(header) == HEADER.size:
                    return HEADER.unpack(header)[5]
            return segment.created_ns or time.time_ns()
        return time.time_ns()

    # -- replay -------------------------------------------------------------------------
    def ingest_replay(self, max_lines: int = 5000) -> int:
        """Append what waits in `replay/` to the spool (owner only); the lines appended."""
        total = 0
        for path, chunks, lines in self.quarantine.replay_files(max_lines):
            self.append(chunks)
            path.unlink()
            total += lines
        if total:
            with self._mutex:
                self._counters["requeued_lines"] += total
                self._save_counters()
        return total

    def _count_trimmed(self, lines: int) -> None:
        """A quarantined piece deleted to keep the quarantine's bound: data lost."""
        with self._mutex:
            self._counters["dropped_lines"] += lines
            self._counters["dropped_points"] += lines

    # -- inspection -----------------------------------------------------------------------
    def queue(self) -> QueueState:
        with self._mutex:
            segments = self._segments.values()
            lines = sum(s.lines for s in segments)
            return QueueState(
                batches=sum(s.records for s in segments),
                lines=lines,
                bytes=sum(s.bytes for s in segments),
                oldest_created_ns=self._oldest_created() if lines else None,
                segments=len(self._segments),
            )

    def counters(self) -> dict[str, int]:
        with self._mutex:
            return dict(self._counters)


def _write_synced(fd: int, data: bytes, committed: int) -> None:
    """Append `data` and fdatasync; on failure cut the file back to `committed` bytes, so
    that no partial record is left behind."""
    try:
        written = os.write(fd, data)
        while written < len(data):
            written += os.write(fd, data[written:])
        os.fdatasync(fd)
    except OSError:
        os.ftruncate(fd, committed)
        raise
