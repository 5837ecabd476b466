"""A meter that cannot be billed is an alarm, not a log line (issue 9 §5): the running
service raises BillingAlarm and stores why on the meter; `account show` shows it, the
energy reports count it; once a tariff prices the meter it is billed again and the alarm
clears."""

from __future__ import annotations

from typing import Any

from click.testing import CliRunner

from openprepay.core.events import BillingAlarm
from tests.conftest import until

from .conftest import site_data


def cli_run(cli: Any, run: Any, *args: str) -> str:
    group, obj = cli
    argv = [str(run.site_file) if a == "SITE" else a for a in args]
    result = CliRunner().invoke(group, argv, obj=obj, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


async def test_an_unpriced_meter_raises_a_billing_alarm_until_it_is_priced(running, cli) -> None:
    prepay = site_data()["prepay"]
    engine = dict(prepay["engine"], default_tariffs={"water": "water"})  # none for electricity
    run = await running(speedup=3600, prepay=dict(prepay, engine=engine))
    alarms: list[BillingAlarm] = []
    run.runtime.bus.subscribe(BillingAlarm, alarms.append)
    run.open_account("A-101", ("E-101",), balance_fen=10000)
    await until(lambda: any(a.active for a in alarms), 30)
    (alarm,) = alarms
    assert (alarm.meter_id, alarm.account_id) == ("E-101", "A-101")
    assert "no tariff prices it" in alarm.reason and "default_tariffs" in alarm.reason
    snap = run.ops.account_snapshot("A-101")
    assert snap.billing_problems == {"E-101": alarm.reason}
    assert snap.balance_fen == 10000  # nothing was billed
    show = cli_run(cli, run, "account", "show", "SITE", "A-101")
    assert "ALARM   E-101 is not billed: no tariff prices it" in show
    header, row = cli_run(cli, run, "account", "list", "SITE").splitlines()[:2]
    assert header.split()[9] == "ALARM" and row.split()[9] == "1"
    today = snap.at.astimezone(run.runtime.site.info.tz).strftime("%Y-%m")
    report = cli_run(cli, run, "report", "energy", "SITE", "--month", today)
    assert "NOT BILLED: 1 meter(s) of open accounts — E-101" in report

    run.ops.set_tariff("A-101", "flat", actor="admin")
    await until(lambda: any(not a.active for a in alarms), 30)
    assert alarms[-1].reason == "billed again"
    await until(lambda: run.ops.account_snapshot("A-101").balance_fen < 10000, 30)
    assert run.ops.account_snapshot("A-101").billing_problems == {}
