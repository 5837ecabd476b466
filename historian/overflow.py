"""The historian's overflow: samples that do not fit in memory wait on disk, not dropped.

The bus listener keeps samples in memory until the next commit; at site scale a commit can
fall behind (a slow disk, a loaded CPU) and the list grows past `max_pending`. Rather than
applying the drop policy there, the oldest samples are spilled to a file on disk, on a
thread of their own (the event loop never writes), and the committer takes them back,
oldest first, whenever the memory queue has room again. Only when the file reaches
`[historian] overflow_max_mb` (default 512) does the drop policy apply, counted and raised
as before.

The file is a scratch area, not part of the durable history: what is in it was never
accepted (`accepted_lines` counts commits), so it is not fsync'd. Records are
`<u32 length><pickle of a list of samples and events>`; device models are written by name
and resolved against the models seen when they were spilled, so a record is small. A file
left by a process that died is read back at the next start.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import struct
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from openprepay.core.model import DeviceModel

log = logging.getLogger("openprepay.historian")

_LENGTH = struct.Struct("<I")
OVERFLOW_FILE = "overflow.bin"


class _Pickler(pickle.Pickler):
    def __init__(self, file: io.BytesIO, models: dict[str, DeviceModel]) -> None:
        super().__init__(file, protocol=pickle.HIGHEST_PROTOCOL)
        self.models = models

    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, DeviceModel):
            self.models.setdefault(obj.name, obj)
            return obj.name
        return None


class _Unpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, models: dict[str, DeviceModel]) -> None:
        super().__init__(file)
        self.models = models

    def persistent_load(self, pid: Any) -> Any:
        try:
            return self.models[pid]
        except KeyError:
            raise pickle.UnpicklingError(f"unknown device model {pid!r}") from None


class Overflow:
    """Spill and take back samples (see the module docstring). Thread-safe."""

    def __init__(
        self, path: Path, max_bytes: int, models: dict[str, DeviceModel] | None = None
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.models: dict[str, DeviceModel] = dict(models or {})
        self._lock = threading.Lock()
        self._file: Any = None
        self._head = 0
        self._end = 0
        #: Items in the file now, and spilled since start.
        self.waiting = 0
        self.spilled = 0

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+b")  # noqa: SIM115 — held open until close()
        self._end = self._file.seek(0, os.SEEK_END)
        self._head = 0
        if self._end:
            log.info("historian: %d bytes of overflow from the last run are taken back", self._end)
            self.waiting = 1  # unknown until read: make take() look

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    @property
    def bytes(self) -> int:
        return self._end - self._head

    def spill(self, items: Sequence[Any]) -> list[Any]:
        """Append `items` to the file; returns those that did not fit (the drop policy
        applies to them)."""
        if not items:
            return []
        buffer = io.BytesIO()
        try:
            _Pickler(buffer, self.models).dump(list(items))
        except Exception as exc:  # an item that cannot be written waits nowhere
            log.warning("historian: overflow could not write %d samples: %s", len(items), exc)
            return list(items)
        record = buffer.getvalue()
        with self._lock:
            if self._file is None or self.bytes + len(record) + 4 > self.max_bytes:
                return list(items)
            self._file.seek(0, os.SEEK_END)
            self._file.write(_LENGTH.pack(len(record)) + record)
            self._file.flush()
            self._end += len(record) + 4
            self.waiting += len(items)
            self.spilled += len(items)
        return []

    def take(self, limit: int) -> list[Any]:
        """Up to about `limit` of the oldest items waiting (whole records), removed from
        the file; the file is emptied once everything was taken back."""
        out: list[Any] = []
        with self._lock:
            if self._file is None:
                self.waiting = 0
                return out
            while self._file is not None and self._head < self._end and len(out) < limit:
                self._file.seek(self._head)
                header = self._file.read(4)
                if len(header) < 4:
                    self._head = self._end  # torn tail of a crashed run
                    break
                (n,) = _LENGTH.unpack(header)
                body = self._file.read(n)
                self._head += 4 + n
                if len(body) < n:
                    self._head = self._end
                    break
                try:
                    out.extend(_Unpickler(io.BytesIO(body), self.models).load())
                except Exception as exc:
                    log.warning("historian: an overflow record could not be read: %s", exc)
            if self._file is not None and self._head >= self._end:
                self._file.truncate(0)
                self._head = self._end = 0
                self.waiting = 0
            else:
                self.waiting = max(self.waiting - len(out), 1)
        return out
