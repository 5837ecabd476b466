"""The supply watch's listener (poll path) and its check (a worker thread) at the same time:
meters first seen while a check takes its snapshot never break the check."""

from __future__ import annotations

import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import sqlalchemy as sa

from openprepay.core.db import Database
from openprepay.core.db import schema as t
from openprepay.core.model import Sample, SupplyControl
from openprepay.core.prepay.supply_watch import SupplyWatch

METERS = 20_000
RELAY = SupplyControl(cut="trip", restore="close", state_point="relay_closed")


def test_meters_seen_during_a_check_never_break_it(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'site.db'}")
    db.upgrade()
    meters = {f"E-{i}": RELAY for i in range(METERS)}
    control = SimpleNamespace()  # the checks only store observed states here
    watch = SupplyWatch(db, control, meters, grace_s=30, backoff_max_s=600)  # type: ignore[arg-type]
    model = SimpleNamespace(name="stand-in")  # the listener reads values, not the model
    start = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(0, METERS, 2):  # half the meters seen before the checks begin
        watch.on_sample(Sample(f"E-{i}", model, start, {"relay_closed": 1}))  # type: ignore[arg-type]
    done = threading.Event()

    def listener() -> None:
        for i in range(1, METERS, 2):  # the other half arrive while the checks run
            watch.on_sample(
                Sample(f"E-{i}", model, start + timedelta(seconds=i), {"relay_closed": 1})
            )  # type: ignore[arg-type]
        done.set()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # the threads take turns often: the snapshot meets the listener
    try:
        thread = threading.Thread(target=listener)
        thread.start()
        checks = 0
        while not done.is_set() or checks < 2:
            watch.check()
            checks += 1
        thread.join()
        watch.check()  # a last check takes the meters seen after the one before it
        with db.read() as conn:  # every meter's observed state stored
            stored = conn.execute(
                sa.select(t.prepay_meter.c.meter_id).where(t.prepay_meter.c.supply_on.is_(True))
            ).scalars()
            assert sorted(stored) == sorted(meters)
    finally:
        sys.setswitchinterval(interval)
        db.dispose()
