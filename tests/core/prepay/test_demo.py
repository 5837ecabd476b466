"""The demo is prepaid: an account per room, a nearly empty room is cut when it runs out,
and `openprepay topup` against the running demo brings it back; the live view shows
balance and alarm level."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import sqlalchemy as sa

from openprepay.core.app.demo import demo_site
from openprepay.core.app.view import DailyTotals, RoomView
from openprepay.core.cli.demo import _prepay_columns
from openprepay.core.db import Database
from openprepay.core.events import EventBus, utcnow
from openprepay.core.field.latest import LatestReadings
from openprepay.core.prepay.account_points import account_sample
from openprepay.core.prepay.feecontrol import FeeState
from tests.conftest import until

OPENPREPAY = str(Path(sys.executable).parent / "openprepay")


def commands(db_file: Path) -> list[tuple[str, str, str]]:
    if not db_file.exists():
        return []
    db = Database(f"sqlite:///{db_file}")
    try:
        with db.read() as conn:
            return [
                tuple(r)
                for r in conn.execute(
                    sa.text("SELECT meter_id, kind, state FROM meter_command ORDER BY id")
                ).all()
            ]
    except Exception:
        return []  # not migrated yet
    finally:
        db.dispose()


async def test_a_room_that_runs_out_is_cut_and_a_topup_brings_it_back(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    demo = await asyncio.create_subprocess_exec(
        OPENPREPAY,
        "demo",
        "--buildings",
        "1",
        "--floors",
        "1",
        "--rooms",
        "3",
        "--speedup",
        "600",
        "--headless",
        "--duration",
        "120",
        "--state-dir",
        str(state),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    db_file = state / "var" / "openprepay.db"
    try:
        cut = ("E-A-101", "TRIP", "CONFIRMED")
        await until(lambda: cut in commands(db_file), 60, step=0.5)
        topup = await asyncio.create_subprocess_exec(
            OPENPREPAY,
            "topup",
            str(state / "site.toml"),
            "A-101",
            "50",
            "--ref",
            "x",
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await topup.communicate()
        assert topup.returncode == 0 and b"50.00 to A-101" in out
        back = ("E-A-101", "CLOSE", "CONFIRMED")
        await until(lambda: back in commands(db_file), 30, step=0.5)
        assert ("W-A-101", "VALVE_CLOSE", "CONFIRMED") in commands(db_file)
        assert not any(m.startswith(("E-A-103", "W-A-103")) for m, _, _ in commands(db_file))
    finally:
        if demo.returncode is None:
            demo.terminate()
        await demo.wait()


def test_the_room_view_shows_balance_and_alarm_level(plugins) -> None:
    site = demo_site(buildings=1, floors=1, rooms_per_floor=2)
    bus = EventBus()
    readings = LatestReadings(bus)
    view = RoomView(site, readings, DailyTotals(site, bus), plugins.models)

    class Runtime:
        pass

    runtime = Runtime()
    runtime.readings = readings  # type: ignore[attr-defined]
    _prepay_columns(view, runtime)  # type: ignore[arg-type]
    bus.publish(
        account_sample(
            "A-101",
            utcnow(),
            energy_balance_fen=-12,
            general_balance_fen=0,
            alarm_level=FeeState.OVERDRAFT,
            supply_on=False,
        )
    )
    titles = [title for title, _ in view.extra_columns]
    assert titles == ["Balance ¥", "Alarm"]
    row = view._row("A-101")
    assert str(row[-2]) == "-0.12" and str(row[-1]) == "CUT"
    assert str(view._row("A-102")[-1]) == "–"  # no account sample yet
