"""Ledger throughput: durable top-ups per second, each its own committed transaction.

Baseline and product in the same run, on the same database:
- baseline: a plain loop of one INSERT per committed transaction on the database's own
  connection (SQLite: WAL, synchronous=FULL, BEGIN IMMEDIATE; PostgreSQL: defaults);
- product: `core.ledger.topup()` — the replay check, the account and wallet lock, the
  journal, two postings, the cached wallet balance and the top-up order row — durable
  before it returns: one at a time in its own transaction, and from 16 concurrent callers
  through the group commit the service functions use (core/db/group.py: the requests
  waiting meanwhile share one commit, each in its own savepoint). The target and the JSON
  figure are the concurrent case — payment callbacks and cashiers arrive at once.

Top-ups are spread over 200 accounts (so the cached balances see contention patterns of a
real site) with unique payment references. SQLite runs in a temporary file; PostgreSQL in a
throwaway database created and dropped on 127.0.0.1:5432 (user postgres; skipped with a
note when the server is not reachable). Prints absolute figures and the ratio product /
baseline, then one JSON line. Target: >= 1,000 top-ups/s on SQLite.

    .venv/bin/python benchmarks/ledger.py [--seconds 6]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Callable

import sqlalchemy as sa

from openprepay.core import ledger
from openprepay.core.db import Database
from openprepay.core.db.group import GroupCommit
from openprepay.core.prepay import accounts
from openprepay.core.prepay.feecontrol import FeeThresholds

ACCOUNTS = 200
#: Concurrent callers in the group-commit case.
CLIENTS = 16
PG_SERVER = os.environ.get("OPENPREPAY_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def alternate(seconds: float, rounds: int, *steps: Callable[[int], None]) -> list[float]:
    """Operations per second of each `step(i)`, measured in alternating slices of
    `seconds / rounds` so that a burst of load on the machine hits both alike."""
    counts = [0] * len(steps)
    spent = [0.0] * len(steps)
    for k, step in enumerate(steps):  # warm-up: statement caches, pages
        for i in range(50):
            step(-1 - i - 1000 * k)
    for _ in range(rounds):
        for k, step in enumerate(steps):
            start = time.perf_counter()
            deadline = start + seconds / rounds
            while True:
                for _ in range(25):
                    step(counts[k])
                    counts[k] += 1
                now = time.perf_counter()
                if now >= deadline:
                    spent[k] += now - start
                    break
    return [n / t for n, t in zip(counts, spent, strict=True)]


def measure(db: Database, seconds: float) -> tuple[float, float]:
    db.upgrade()
    with db.begin() as conn:
        for a in range(ACCOUNTS):
            accounts.create_account(
                conn,
                accounts.AccountSpec(
                    f"B-{a:04d}", f"bench tenant {a}", thresholds=FeeThresholds(hoard_limit_fen=0)
                ),
            )
        conn.execute(
            sa.text("CREATE TABLE bench_baseline (id BIGINT PRIMARY KEY, k VARCHAR(64), v BIGINT)")
        )
    run = uuid.uuid4().hex[:8]

    insert = sa.text("INSERT INTO bench_baseline (id, k, v) VALUES (:id, :k, :v)")

    def baseline(i: int) -> None:
        with db.begin() as conn:
            conn.execute(insert, {"id": i + 1_000_000_000, "k": f"{run}-{i}", "v": i})

    def product(i: int) -> None:
        with db.begin() as conn:
            ledger.topup(conn, f"B-{i % ACCOUNTS:04d}", 100 + i % 7, f"{run}-{i}", channel="wechat")

    base, prod = alternate(seconds, 6, baseline, product)
    grouped = concurrent(db, seconds / 2, run)
    with db.read() as conn:
        report = ledger.verify(conn)
    if not report.ok:
        raise SystemExit(f"ledger broken after the benchmark: {report.breaks[:3]}")
    return base, prod, grouped


def concurrent(db: Database, seconds: float, run: str) -> float:
    """Top-ups/s from CLIENTS threads at once (payment callbacks, cashiers) through the
    group commit the service functions use: each answered only after its commit."""
    writer = GroupCommit(db)
    done = [0] * CLIENTS
    stop_at = time.perf_counter() + seconds

    def client(c: int) -> None:
        i = 0
        while time.perf_counter() < stop_at:
            key = f"{run}-g{c}-{i}"
            account = f"B-{(c * 7919 + i) % ACCOUNTS:04d}"
            writer.run(
                lambda conn, a=account, k=key: ledger.topup(conn, a, 100, k, channel="wechat")
            )
            i += 1
        done[c] = i

    start = time.perf_counter()
    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    writer.close()
    return sum(done) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="per measurement")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{tmp}/bench.db")
        try:
            sqlite_base, sqlite_seq, sqlite_group = measure(db, args.seconds)
        finally:
            db.dispose()
    sqlite_ratio = sqlite_group / sqlite_base
    print(
        f"SQLite (WAL, synchronous=FULL): baseline INSERT-per-commit {sqlite_base:,.0f}/s; "
        f"durable top-ups one at a time {sqlite_seq:,.0f}/s, from {CLIENTS} callers at once "
        f"(group commit) {sqlite_group:,.0f}/s; ratio {sqlite_ratio:.2f} "
        f"(target >= 1,000/s: {'met' if sqlite_group >= 1000 else 'NOT met'})"
    )

    pg_base = pg_seq = pg_prod = pg_ratio = None
    name = f"openprepay_bench_{uuid.uuid4().hex[:8]}"
    admin = None
    try:
        admin = sa.create_engine(
            PG_SERVER.replace("postgresql://", "postgresql+psycopg://", 1),
            isolation_level="AUTOCOMMIT",
        )
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except Exception as exc:
        print(f"PostgreSQL: skipped ({PG_SERVER} not usable: {type(exc).__name__})")
        admin = None
    if admin is not None:
        db = Database(f"{PG_SERVER.rsplit('/', 1)[0]}/{name}")
        try:
            pg_base, pg_seq, pg_prod = measure(db, args.seconds)
        finally:
            db.dispose()
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.dispose()
        pg_ratio = pg_prod / pg_base
        print(
            f"PostgreSQL: baseline INSERT-per-commit {pg_base:,.0f}/s; durable top-ups one at "
            f"a time {pg_seq:,.0f}/s, from {CLIENTS} callers {pg_prod:,.0f}/s; "
            f"ratio {pg_ratio:.2f}"
        )

    print(
        json.dumps(
            {
                "bench": "ledger",
                "sqlite_topups_per_s": round(sqlite_group),
                "sqlite_sequential_topups_per_s": round(sqlite_seq),
                "sqlite_baseline_inserts_per_s": round(sqlite_base),
                "sqlite_ratio": round(sqlite_ratio, 3),
                "postgres_topups_per_s": None if pg_prod is None else round(pg_prod),
                "postgres_sequential_topups_per_s": None if pg_seq is None else round(pg_seq),
                "postgres_baseline_inserts_per_s": None if pg_base is None else round(pg_base),
                "postgres_ratio": None if pg_ratio is None else round(pg_ratio, 3),
                "ratio": round(sqlite_ratio, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
