"""Lines the server rejected, set aside, and lines waiting to be put back into the spool.

    quarantine/<id>.lp, .json   lines the server rejected, with its answer
    replay/<id>.lp              lines waiting to be appended again (CLI replay)

The quarantine is bounded (`quarantine_max_mb`): the oldest pieces go first, and what goes
is counted as dropped by the spool.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from openprepay.core.private_files import private_dir

from .lineprotocol import Chunk
from .records import fsync_dir, time_range, write_atomic


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    id: str
    at_ns: int
    status: int
    error: str
    first_ns: int
    last_ns: int
    lines: int
    bytes: int


class Quarantine:
    def __init__(
        self,
        folder: Path,
        replay_folder: Path,
        max_bytes: int,
        on_trimmed: Callable[[int], None],
    ) -> None:
        self.folder = folder
        self.replay_folder = replay_folder
        self.max_bytes = max_bytes
        #: Called with the lines of each piece trimmed to keep the bound (any thread).
        self.on_trimmed = on_trimmed
        self._count: int | None = None

    def put(self, status: int, error: str, data: bytes) -> int:
        """Set `data` aside with the server's answer; its lines."""
        entry = f"{time.time_ns()}-{os.getpid()}-{zlib.crc32(data):08x}"
        lines = data.count(b"\n")
        first, last = time_range(data)
        meta = {
            "at_ns": time.time_ns(),
            "status": status,
            "error": error[:2000],
            "lines": lines,
            "first_ns": first,
            "last_ns": last,
        }
        write_atomic(self.folder / f"{entry}.lp", data)
        write_atomic(self.folder / f"{entry}.json", json.dumps(meta).encode())
        self._count = None
        self._trim()
        return lines

    def _trim(self) -> None:
        entries = self.entries()
        total = sum(e.bytes for e in entries)
        for e in entries:
            if total <= self.max_bytes:
                break
            (self.folder / f"{e.id}.lp").unlink(missing_ok=True)
            (self.folder / f"{e.id}.json").unlink(missing_ok=True)
            self._count = None
            self.on_trimmed(e.lines)
            total -= e.bytes

    def count(self) -> int:
        """Pieces in the quarantine (cached; this process changes it, `replay` empties it)."""
        if self._count is None:
            self._count = len(list(self.folder.glob("*.json")))
        return self._count

    def entries(self) -> list[QuarantineEntry]:
        out = []
        for meta_path in sorted(self.folder.glob("*.json")):
            data_path = meta_path.with_suffix(".lp")
            try:
                meta = json.loads(meta_path.read_text())
                size = data_path.stat().st_size
            except (OSError, ValueError):
                continue
            out.append(
                QuarantineEntry(
                    meta_path.stem,
                    int(meta["at_ns"]),
                    int(meta["status"]),
                    str(meta["error"]),
                    int(meta["first_ns"]),
                    int(meta["last_ns"]),
                    int(meta["lines"]),
                    size,
                )
            )
        return out

    def requeue(self, from_ns: int | None = None, to_ns: int | None = None) -> tuple[int, int]:
        """Move quarantined batches whose data overlaps [from, to) to `replay/`, from where
        the spool's owner puts them back at the end of the queue; (batches, lines)."""
        lo = from_ns if from_ns is not None else -(2**63)
        hi = to_ns if to_ns is not None else 2**63 - 1
        private_dir(self.replay_folder, own=True)
        moved = lines = 0
        for e in self.entries():
            if e.last_ns < lo or e.first_ns >= hi:
                continue
            os.replace(self.folder / f"{e.id}.lp", self.replay_folder / f"{e.id}.lp")
            (self.folder / f"{e.id}.json").unlink(missing_ok=True)
            moved += 1
            lines += e.lines
        self._count = None
        fsync_dir(self.replay_folder)
        return moved, lines

    def add_replay(self, chunks: Sequence[Chunk]) -> int:
        """Lines produced outside the service (replay from an embedded store), left in
        `replay/` for the spool's owner to append."""
        private_dir(self.replay_folder, own=True)
        total = 0
        for n, c in enumerate(chunks):
            write_atomic(self.replay_folder / f"{time.time_ns()}-{n:06d}.lp", c.data)
            total += c.lines
        return total

    def replay_files(self, max_lines: int) -> Iterator[tuple[Path, list[Chunk], int]]:
        """Each file waiting in `replay/`: (path, its lines in chunks of at most
        `max_lines`, its line count). The caller appends the chunks, then deletes the file."""
        for path in sorted(self.replay_folder.glob("*.lp")):
            data = path.read_bytes()
            lines = [line for line in data.split(b"\n") if line.strip()]
            chunks = []
            for i in range(0, len(lines), max_lines):
                part = b"\n".join(lines[i : i + max_lines]) + b"\n"
                first, last = time_range(part)
                chunks.append(Chunk(part, len(lines[i : i + max_lines]), 0, first, last))
            yield path, chunks, len(lines)
