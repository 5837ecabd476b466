"""Month-end for 20,000 accounts: rating, apportionment, charges and bills.

The site: 100 buildings of 200 rooms, each room a post-paid tenant with a DDSY1352 meter
on the residential time-of-use + annual tier tariff, each building a common-area pool (its
DTSD1352 main meter, the rooms as sub-meters, loss shared by consumption) and a property
fee by floor area, billed. The registers of all 20,100 meters at the two freeze instants
are in the database (as the service captures them). Timed, on a SQLite file (WAL,
synchronous=FULL), each stage its own transaction as the service runs it:

1. apportion   — 100 pools: loss = main − Σ subs, shared to the fen, one journal each;
2. charges     — the property fee of 20,000 accounts (prorated, rounded once each);
3. rating      — every post-paid meter's month rated from its T1..T4 registers
                 (`Bills.compute`: `rating.bill_usage`, tiers continuing from the year),
                 with the billed common-area shares and fees as lines;
4. drafts      — 20,000 draft bills stored (usage lines, billed common area and fee);
5. confirm     — the drafts confirmed: usage posted (one journal), items attached;
6. issue       — due dates set.

The baseline: the three posting stages (apportion, charges, confirm) written the
per-account way — one `post_journal` per account and charge, 3 × 20,000 journals — timed on
2,000 accounts and scaled; the ratio is that time over the same three stages here (which
post one journal per pool, per charge and per confirmation, with every account's postings).
Setup (accounts, readings) is bulk-inserted and not timed; the ledger is
verified afterwards. Target: total_s <= 30 on this machine.

    .venv/bin/python benchmarks/month_end.py [--buildings 100] [--rooms 200]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from openprepay.core import ledger
from openprepay.core.app.demo import residential_tariff
from openprepay.core.app.plugins import Plugins
from openprepay.core.billing.readings import Reading, save_captured
from openprepay.core.billing.service import Billing
from openprepay.core.config.site import parse_site
from openprepay.core.db import Database
from openprepay.core.db import schema as t

TZ = ZoneInfo("Asia/Shanghai")
PERIOD = "2025-03"


def site_data(buildings: int, rooms: int) -> dict[str, Any]:
    rng = random.Random(1)
    data: dict[str, Any] = {
        "site": {"id": "bench", "timezone": "Asia/Shanghai"},
        "links": {},
        "buildings": {},
        "rooms": {},
        "devices": {},
        "tariffs": {"residential": residential_tariff()},
        "prepay": {"engine": {"default_tariffs": {"electric": "residential"}}},
        "billing": {
            "pools": {},
            "charges": {
                "property": {
                    "type": "property",
                    "name": "Property fee",
                    "basis": "area",
                    "rate": "2.50",
                    "mode": "bill",
                }
            },
        },
    }
    for b in range(buildings):
        bid = f"B{b:03d}"
        data["buildings"][bid] = {"floors": ["1"]}
        data["links"][f"gw-{bid}"] = {"type": "rtu_over_tcp", "host": "127.0.0.1", "port": 502}
        for r in range(rooms):
            room = f"{bid}-{r:03d}"
            data["rooms"][room] = {
                "building": bid,
                "floor": "1",
                "area_m2": round(rng.uniform(30, 120), 1),
            }
            data["devices"][f"E-{room}"] = {
                "model": "acrel.DDSY1352",
                "link": f"gw-{bid}",
                "unit_id": r + 1,
                "room": room,
                "control_mode": "POSTPAID",
            }
        data["devices"][f"M-{bid}"] = {
            "model": "acrel.DTSD1352",
            "link": f"gw-{bid}",
            "unit_id": rooms + 1,
            "building": bid,
            "control_mode": "POSTPAID",
        }
        data["billing"]["pools"][bid] = {
            "main": f"M-{bid}",
            "building": bid,
            "price": "0.6000",
            "method": "consumption",
            "mode": "bill",
        }
    return data


def setup(db: Database, site: Any, rooms_per_building: int) -> None:
    """Accounts, wallets, meters and the freeze readings, bulk-inserted (not timed)."""
    now = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
    rng = random.Random(2)
    accounts, wallets, codes, meters, links = [], [], [], [], []
    for room in site.rooms:
        accounts.append(
            {
                "id": room,
                "name": f"tenant {room}",
                "room": room,
                "state": "OPEN",
                "tariff_id": "residential",
                "protected": False,
                "alarm1_fen": 2000,
                "alarm2_fen": 500,
                "overdraft_limit_fen": 0,
                "close_limit_fen": 0,
                "hoard_limit_fen": 500000,
                "notify": [],
                "fee_state": "NORMAL",
                "created_at": now,
                "opened_at": now,
                "updated_at": now,
            }
        )
        for kind in ("energy", "general"):
            code = ledger.wallet_code(room, kind)
            codes.append({"code": code, "type": "liab", "created_at": now})
            wallets.append(
                {
                    "account_id": room,
                    "kind": kind,
                    "ledger_account": code,
                    "balance_fen": 0,
                    "version": 0,
                }
            )
        meters.append(
            {
                "id": f"E-{room}",
                "kind": "electric",
                "buy_count": 0,
                "confirmed_buy_count": 0,
                "updated_at": now,
            }
        )
        links.append(
            {
                "account_id": room,
                "meter_id": f"E-{room}",
                "kind": "electric",
                "control_mode": "POSTPAID",
                "attached_at": now,
            }
        )
    with db.begin() as conn:
        for table, rows in (
            (t.account, accounts),
            (t.ledger_account, codes),
            (t.wallet, wallets),
            (t.meter, meters),
            (t.account_meter, links),
        ):
            conn.execute(table.insert(), rows)
    start = dt.datetime(2025, 3, 1, tzinfo=TZ).astimezone(dt.UTC)
    end = dt.datetime(2025, 4, 1, tzinfo=TZ).astimezone(dt.UTC)
    readings = []
    names = ("energy_sharp", "energy_peak", "energy_flat", "energy_valley")
    main: dict[str, list[int]] = {}
    for room in site.rooms:
        before = [rng.randint(0, 200_000) * 10 for _ in names]  # ytd-ish registers, 0.01 kWh
        month = [rng.randint(0, 8_000) * 10 for _ in names]
        after = [a + m for a, m in zip(before, month, strict=True)]
        meter = f"E-{room}"
        readings.append(
            Reading(meter, start, start, sum(before), dict(zip(names, before, strict=True)))
        )
        readings.append(Reading(meter, end, end, sum(after), dict(zip(names, after, strict=True))))
        m = main.setdefault(site.rooms[room].building, [0, 0])
        m[0] += sum(before)
        m[1] += sum(after)
    for building, (a, b) in main.items():
        loss = (b - a) * 4 // 96  # about 4 % of the main meter
        readings.append(Reading(f"M-{building}", start, start, a + 10_000_000, {}))
        readings.append(Reading(f"M-{building}", end, end, b + loss + 10_000_000, {}))
    with db.begin() as conn:
        for i in range(0, len(readings), 5000):
            save_captured(conn, readings[i : i + 5000], now=end)


def baseline_post_journal(db: Database, n: int) -> float:
    """Seconds for n journals written one `post_journal` each (the per-account way)."""
    with db.read() as conn:
        ids = list(conn.execute(sa.select(t.account.c.id).limit(n)).scalars())
    t0 = time.perf_counter()
    with db.begin() as conn:
        for i, account in enumerate(ids):
            ledger.post_journal(
                conn,
                "charge",
                [ledger.Posting(f"asset:ar:{account}", 100), ledger.Posting("rev:service", -100)],
                idempotency_key=f"baseline:{i}",
                account_id=account,
            )
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--buildings", type=int, default=100)
    ap.add_argument("--rooms", type=int, default=200)
    args = ap.parse_args()
    plugins = Plugins.load()
    t0 = time.perf_counter()
    site = parse_site(site_data(args.buildings, args.rooms))
    billing = Billing(site, plugins.models)
    folder = Path(tempfile.mkdtemp(prefix="openprepay-month-end-"))
    db = Database(f"sqlite:///{folder / 'bench.db'}")
    db.upgrade()
    setup(db, site, args.rooms)
    n = len(site.rooms)
    print(
        f"setup: {n} accounts, {len(site.devices)} meters, {len(billing.settings.pools)} pools "
        f"in {time.perf_counter() - t0:.1f} s (not timed)"
    )

    now = dt.datetime(2025, 4, 2, 9, tzinfo=TZ).astimezone(dt.UTC)
    stages: dict[str, float] = {}

    def stage(name: str, fn: Any) -> Any:
        s = time.perf_counter()
        result = fn()
        stages[name] = time.perf_counter() - s
        print(f"{name:<10} {stages[name]:7.2f} s")
        return result

    def rating() -> Any:
        with db.read() as conn:
            return billing.bills.compute(conn, PERIOD)

    def apportion() -> Any:
        with db.begin() as conn:
            return billing.apportionment.run(conn, PERIOD, actor="bench", now=now)

    def charges() -> Any:
        with db.begin() as conn:
            return billing.charges.run(conn, PERIOD, actor="bench", now=now)

    def drafts() -> Any:
        with db.begin() as conn:
            return billing.bills.draft(conn, PERIOD, now=now, computed=rated)

    def confirm() -> Any:
        with db.begin() as conn:
            return billing.bills.confirm(conn, period=PERIOD, actor="bench", now=now)

    def issue() -> Any:
        with db.begin() as conn:
            return billing.bills.issue(
                conn, period=PERIOD, on=dt.date(2025, 4, 2), actor="bench", now=now
            )

    pools = stage("apportion", apportion)
    charged = stage("charges", charges)
    assert all(c.state == "POSTED" for c in charged)
    rated = stage("rating", rating)
    drafted = stage("drafts", drafts)
    confirmed, refused = stage("confirm", confirm)
    issued = stage("issue", issue)
    total = sum(stages.values())

    assert len(rated) == n and not any(p for _, p, _ in rated.values())
    assert all(p.state == "POSTED" for p in pools), [(p.source, p.state, p.reason) for p in pools]
    assert all(sum(ln.amount_fen for ln in p.lines) == p.amount_fen for p in pools)
    assert len(drafted) == n and len(confirmed) == n and not refused and len(issued) == n
    with db.read() as conn:
        billed = conn.execute(sa.select(sa.func.sum(t.bill.c.total_fen))).scalar()
        owed = conn.execute(
            sa.select(sa.func.sum(t.posting.c.amount_fen)).where(
                t.posting.c.ledger_account.like("asset:ar:%")
            )
        ).scalar()
        journals = conn.execute(sa.select(sa.func.count()).select_from(t.journal)).scalar()
        report = ledger.verify(conn)
    assert billed == owed, (billed, owed)  # every bill is exactly what the ledger says is owed
    assert report.ok, report.breaks[:5]
    sample = min(2000, n)
    per_journal = baseline_post_journal(db, sample) / sample
    baseline = per_journal * n * 3  # a journal per account for fee, common area and usage
    posting = stages["apportion"] + stages["charges"] + stages["confirm"]
    print(
        f"total      {total:7.2f} s for {n} accounts ({n / total:,.0f} accounts/s); "
        f"{journals} journals; ledger verified"
    )
    print(
        f"baseline   {baseline:7.2f} s: the same postings as one post_journal per account and "
        f"charge ({per_journal * 1e3:.2f} ms each, measured on {sample})"
    )
    print(
        f"ratio      {baseline / posting:7.2f} (baseline / apportion + charges + confirm); "
        "target total_s <= 30: "
        f"{'met' if total <= 30 else 'NOT met'}"
    )
    figures = {
        "bench": "month_end",
        "accounts": n,
        "pools": len(pools),
        **{f"{k}_s": round(v, 3) for k, v in stages.items()},
        "total_s": round(total, 3),
        "baseline_s": round(baseline, 3),
        "ratio": round(baseline / posting, 2),
        "billed_fen": int(billed),
    }
    db.dispose()
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
