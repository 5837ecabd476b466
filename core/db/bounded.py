"""Bounded transactions: no writer holds the database's write lock for more than ~1 s.

SQLite has one write lock for the whole database; PostgreSQL's row locks are finer, but a
long transaction still holds every row it touched and delays vacuum. A writer that puts a
whole site's work in one transaction — 10,000 meters' usage in one billing flush — holds
the lock for as long as the work takes (57 s was measured), and every other writer waits
behind it: top-ups, command confirmations, the supply watch. So large batches are cut into
transactions of a bounded size, each committed on its own. The sizes below are what one
transaction of that kind does in well under a second on the 2-core reference machine
(SQLite, synchronous=FULL), with room for a slow disk and a loaded CPU.

Cutting is safe because each part of such a batch is correct on its own: a meter's usage
posting, its accrual and its baseline commit together (one meter is never split), a
reading or a batch item is one row of its own. A crash between two parts leaves the later
parts undone, and they are done again on the next run exactly as the batch would have been.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from . import Database

T = TypeVar("T")
R = TypeVar("R")

#: Metering flush: meters per transaction. A meter with fen due costs a usage journal (3
#: rows), its accrual, its baseline and fee control: ~1.5 ms with bulk postings, so 250
#: meters hold the lock ~0.4 s.
METERING_METERS = 250
#: Readings capture (`core/operations/readings.py`): rows per transaction; a plain insert
#: is ~50 µs, 2,000 rows ~0.1 s.
READINGS_ROWS = 2_000
#: Supply watch: meters whose observed supply state is saved per transaction, in one
#: statement (`upsert_states`). As one upsert each, 100 meters held a transaction 1.5–1.7 s
#: in the first check at 20,000 meters on a saturated box, where every meter's state is new.
SUPPLY_WATCH_METERS = 500
#: Demo start-up: accounts opened (account, wallets, meters, opening top-up) per
#: transaction, ~15 ms each.
DEMO_ACCOUNTS = 40
#: Batch jobs: items written per transaction (one row each).
BATCH_ITEMS = 2_000
#: SQLite: the pause between two parts. Its lock is not fair: a writer waiting on it sleeps
#: in its busy handler (up to 100 ms at a time) and a batch that begins its next part at
#: once takes the lock again before the waiter wakes, so the parts would hold it as one long
#: transaction. PostgreSQL queues lock waiters: no pause there.
PART_GAP_S = 0.05


def between_parts(db: Database) -> None:
    """Let writers that wait on SQLite's lock in (see PART_GAP_S)."""
    if db.dialect == "sqlite":
        time.sleep(PART_GAP_S)


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """`items` in consecutive slices of at most `size` (none for an empty sequence)."""
    if size < 1:
        raise ValueError(f"chunk size must be at least 1, got {size}")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def write_in_chunks(
    db: Database,
    items: Sequence[T],
    size: int,
    work: Callable[[Connection, Sequence[T]], R],
    *,
    what: str,
) -> list[R]:
    """`work(conn, part)` for each part of at most `size` items, each part in a write
    transaction of its own, run again while the database is busy (`Database.write`).
    Returns the parts' results in order."""
    out = []
    for n, part in enumerate(chunks(items, size)):
        if n:
            between_parts(db)
        out.append(db.write(lambda conn, part=part: work(conn, part), what=f"{what} ({len(part)})"))
    return out
