"""Ledger throughput: durable top-ups per second, each its own committed transaction.

Baseline and product in the same run, on the same database:
- baseline: a plain loop of one INSERT per committed transaction on the database's own
  connection (SQLite: WAL, synchronous=FULL, BEGIN IMMEDIATE; PostgreSQL: defaults);
- product: `core.ledger.topup()` in its own `Database.begin()` transaction per call — the
  replay check, the account and wallet lock, the journal, two postings, the cached wallet
  balance and the top-up order row, every one fsynced at commit.

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
import time
import uuid
from collections.abc import Callable

import sqlalchemy as sa

from openprepay.core import accounts, ledger
from openprepay.core.db import Database
from openprepay.core.feecontrol import FeeThresholds

ACCOUNTS = 200
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
    with db.read() as conn:
        report = ledger.verify(conn)
    if not report.ok:
        raise SystemExit(f"ledger broken after the benchmark: {report.breaks[:3]}")
    return base, prod


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="per measurement")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        db = Database(f"sqlite:///{tmp}/bench.db")
        try:
            sqlite_base, sqlite_prod = measure(db, args.seconds)
        finally:
            db.dispose()
    sqlite_ratio = sqlite_prod / sqlite_base
    print(
        f"SQLite (WAL, synchronous=FULL): baseline INSERT-per-commit {sqlite_base:,.0f}/s, "
        f"durable top-ups {sqlite_prod:,.0f}/s, ratio {sqlite_ratio:.2f} (target >= 1,000/s: "
        f"{'met' if sqlite_prod >= 1000 else 'NOT met'})"
    )

    pg_base = pg_prod = pg_ratio = None
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
            pg_base, pg_prod = measure(db, args.seconds)
        finally:
            db.dispose()
            with admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            admin.dispose()
        pg_ratio = pg_prod / pg_base
        print(
            f"PostgreSQL: baseline INSERT-per-commit {pg_base:,.0f}/s, "
            f"durable top-ups {pg_prod:,.0f}/s, ratio {pg_ratio:.2f}"
        )

    print(
        json.dumps(
            {
                "bench": "ledger",
                "sqlite_topups_per_s": round(sqlite_prod),
                "sqlite_baseline_inserts_per_s": round(sqlite_base),
                "sqlite_ratio": round(sqlite_ratio, 3),
                "postgres_topups_per_s": None if pg_prod is None else round(pg_prod),
                "postgres_baseline_inserts_per_s": None if pg_base is None else round(pg_base),
                "postgres_ratio": None if pg_ratio is None else round(pg_ratio, 3),
                "ratio": round(sqlite_ratio, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
