"""Issue 9 §3, §5, §6 over a real asyncua client: a meter that disobeys the supply decision
raises a SupplyMismatch alarm (cleared when it obeys again); an unbilled meter a Billing
alarm; ReplaceMeter and RetryCommand call the CLI's service functions; the account shows
what is owed, the decided supply and its alarms."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from asyncua import ua

from openprepay.core.events import BillingAlarm, utcnow
from openprepay.core.prepay import commands as cmds
from tests.conftest import until, until_async

from .conftest import OpcUaSite
from .test_prepayment import call, subscribe, text, value

pytestmark = pytest.mark.asyncio(loop_scope="session")

S = ua.StatusCodes
V = ua.VariantType


async def test_a_meter_that_disobeys_raises_a_supply_mismatch_alarm(opcua_site: OpcUaSite) -> None:
    watch = opcua_site.runtime.prepay.supply_watch
    grace = watch.grace
    watch.grace = timedelta(seconds=0.5)  # the site's 30 s default, shortened for the test
    relay = opcua_site.sims.devices["E-A-102"]
    try:
        async with opcua_site.connect("operator1") as client:
            t, s = await opcua_site.ns(client)
            sub, events = await subscribe(client, "SupplyMismatchAlarmType")
            meter = client.get_node(ua.NodeId("Meter:E-A-102", s))
            (trip,) = await asyncio.to_thread(
                opcua_site.ops.disconnect, "E-A-102", "tamper test", actor="test"
            )
            await until(lambda: opcua_site.ops.command(trip.id).state == "CONFIRMED", 30)
            # Someone closes the relay at the meter.
            relay.forced_trip = False
            relay._update_relay()
            relay._refresh_prepaid()
            await until(lambda: events.of(MeterId="E-A-102", **{"ActiveState/Id": True}), 30)
            alarm = events.of(MeterId="E-A-102", **{"ActiveState/Id": True})[0]
            assert alarm.NodeId == ua.NodeId("Meter:E-A-102/SupplyMismatch", s)
            assert alarm.SourceNode == ua.NodeId("Meter:E-A-102", s)
            assert (alarm.DesiredOn, alarm.ObservedOn) == (False, True)
            assert alarm.AccountId == "A-102" and alarm.Count >= 1 and alarm.CommandId > 0
            assert alarm.Severity == 800 and "possible tamper" in alarm.Message.Text
            # It obeys the re-assertion: the alarm goes inactive.
            await until(lambda: events.of(MeterId="E-A-102", **{"ActiveState/Id": False}), 30)
            await meter.call_method(f"{t}:Reconnect", text("tamper test done"))
            await until(lambda: relay.snapshot()["supply_on"] == 1, 30)
            await sub.delete()
    finally:
        watch.grace = grace


async def test_an_unbilled_meter_raises_a_billing_alarm(opcua_site: OpcUaSite) -> None:
    async with opcua_site.connect("viewer1") as client:
        s = (await opcua_site.ns(client))[1]
        sub, events = await subscribe(client, "BillingAlarmType")
        bus = opcua_site.runtime.bus
        bus.publish(BillingAlarm("E-A-101", "A-101", True, "no tariff prices it"))
        await until(lambda: events.of(MeterId="E-A-101", **{"ActiveState/Id": True}))
        alarm = events.of(MeterId="E-A-101", **{"ActiveState/Id": True})[0]
        assert alarm.NodeId == ua.NodeId("Meter:E-A-101/Billing", s)
        assert alarm.Reason == "no tariff prices it" and alarm.AccountId == "A-101"
        bus.publish(BillingAlarm("E-A-101", "A-101", False, "billed again"))
        await until(lambda: events.of(MeterId="E-A-101", **{"ActiveState/Id": False}))
        await sub.delete()


async def test_account_shows_owed_decided_supply_and_alarm_counts(opcua_site: OpcUaSite) -> None:
    async with opcua_site.connect("viewer1") as client:

        async def ready() -> bool:
            return await value(client, "Account:A-101/OwedFen") is not None

        await until_async(ready)
        assert await value(client, "Account:A-101/OwedFen") == 0
        assert await value(client, "Account:A-101/Owed") == 0.0
        assert await value(client, "Account:A-101/UnbilledMeters") == 0
        assert await value(client, "Account:A-101/FailedDeliveries") == 0
        assert await value(client, "Account:A-101/SupplyDesired") in (True, False)


async def test_replace_meter_records_the_swap(opcua_site: OpcUaSite) -> None:
    sim = opcua_site.sims.devices["E-A-102"]
    names = ("energy_total", "energy_sharp", "energy_peak", "energy_flat", "energy_valley")
    registers = ",".join(
        f"{n}={sim.values[p]:.2f}"
        for n, p in zip(("total", "T1", "T2", "T3", "T4"), names, strict=True)
    )
    async with opcua_site.connect("admin1") as client:
        bad = await call(
            client,
            "Meter:E-A-102",
            "ReplaceMeter",
            text("total=1"),
            text("S-2"),
            text("0"),
            text("test"),
            owner="MeterType",
        )
        assert bad.StatusCode.value == S.BadInvalidArgument
        assert "missing register(s) T1" in bad.InputArgumentDiagnosticInfos[0].AdditionalInfo
        good = await call(
            client,
            "Meter:E-A-102",
            "ReplaceMeter",
            text(registers),
            text("DDSY-OPCUA-1"),
            text(registers),  # the same registers: a swap that changes nothing billed
            text("OPC UA test"),
            owner="MeterType",
        )
        assert good.StatusCode.is_good(), good
        assert "meter E-A-102 replaced" in good.OutputArguments[0].Value
        assert "DDSY-OPCUA-1" in good.OutputArguments[0].Value


async def test_retry_command_sends_a_failed_command_of_that_meter_again(
    opcua_site: OpcUaSite,
) -> None:
    db, later = opcua_site.runtime.db, utcnow() + timedelta(days=1)
    with db.begin() as conn:  # a valve command that failed (out of the executor's reach)
        queued = cmds.enqueue(
            conn, "W-A-101", "VALVE_OPEN", reason="test", requested_by="test", not_before=later
        )
        (claimed,) = cmds.claim_due(conn, 1, owner="test", meters=["W-A-101"], now=later)
        cmds.mark_failed(conn, claimed.id, "no answer", final=True, owner="test")
    command_id = ua.Variant(queued.id, V.Int64)
    async with opcua_site.connect("operator1") as client:
        other = await call(
            client, "Meter:E-A-101", "RetryCommand", command_id, text("x"), owner="MeterType"
        )
        assert other.StatusCode.value == S.BadInvalidArgument
        assert "is for meter W-A-101" in other.InputArgumentDiagnosticInfos[0].AdditionalInfo
        result = await call(
            client,
            "Meter:W-A-101",
            "RetryCommand",
            command_id,
            text("valve back"),
            owner="MeterType",
        )
        assert result.StatusCode.is_good(), result
        assert "VALVE_OPEN #" in result.OutputArguments[0].Value
    retried = opcua_site.ops.command(queued.id)
    assert retried.resolution and retried.resolution.startswith("retried as #")
    new_id = int(retried.resolution.rsplit("#", 1)[1])
    await until(lambda: opcua_site.ops.command(new_id).state == "CONFIRMED", 30)
    assert opcua_site.ops.command(new_id).requested_by == "test"  # the decision's requester
