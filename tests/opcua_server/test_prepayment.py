"""Accounts, methods, roles and prepayment events over a real client.

Every method goes through `core.operations` (the CLI's path) against the real database and
simulated meters; events are received on the Server object.
"""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from asyncua import Client, ua
from asyncua.crypto.security_policies import SecurityPolicyBasic256Sha256

from tests.conftest import until, until_async

from .conftest import OpcUaSite

pytestmark = pytest.mark.asyncio(loop_scope="session")

S = ua.StatusCodes
V = ua.VariantType


class Events:
    def __init__(self) -> None:
        self.items: list[Any] = []

    def event_notification(self, event: Any) -> None:
        self.items.append(event)

    def status_change_notification(self, status: Any) -> None:
        pass

    def of(self, **fields: Any) -> list[Any]:
        return [e for e in self.items if all(getattr(e, k, None) == v for k, v in fields.items())]


async def subscribe(client: Client, *type_names: str) -> tuple[Any, Events]:
    t = await client.get_namespace_index("urn:openprepay:types")
    events = Events()
    sub = await client.create_subscription(50, events)
    types = [client.get_node(ua.NodeId(name, t)) for name in type_names]
    await sub.subscribe_events(client.nodes.server, types)
    return sub, events


async def call(
    client: Client, obj: str, method: str, *args: ua.Variant, owner: str = "AccountType"
) -> ua.CallMethodResult:
    """A raw Call (the result's status, argument results and diagnostics, no exception)."""
    t = await client.get_namespace_index("urn:openprepay:types")
    s = await client.get_namespace_index("urn:openprepay:site:t")
    request = ua.CallMethodRequest(
        ObjectId=ua.NodeId(obj, s),
        MethodId=ua.NodeId(f"{owner}/{method}", t),
        InputArguments=list(args),
    )
    (result,) = await client.uaclient.call([request])
    return result


async def value(client: Client, ident: str) -> Any:
    s = await client.get_namespace_index("urn:openprepay:site:t")
    return await client.get_node(ua.NodeId(ident, s)).read_value()


def d(x: float) -> ua.Variant:
    return ua.Variant(x, V.Double)


def text(x: str) -> ua.Variant:
    return ua.Variant(x, V.String)


async def test_accounts_in_the_tree_with_their_state(opcua_site: OpcUaSite) -> None:
    async with opcua_site.connect("viewer1") as client:
        t, s = await opcua_site.ns(client)
        accounts = await client.nodes.objects.get_child([f"{s}:OpenPrepay", f"{t}:Accounts"])
        names = {(await c.read_browse_name()).Name for c in await accounts.get_children()}
        assert {"A-101", "A-102"} <= names
        account = client.get_node(ua.NodeId("Account:A-101", s))
        typedef = await account.read_type_definition()
        assert typedef == ua.NodeId("AccountType", t)
        # The room screen finds its account from the room.
        room = client.get_node(ua.NodeId("Room:A-101", s))
        assert account.nodeid in [n.nodeid for n in await room.get_children()]

        async def seeded() -> bool:
            return await value(client, "Account:A-101/BalanceFen") is not None

        await until_async(seeded)
        fen = await value(client, "Account:A-101/BalanceFen")
        assert await value(client, "Account:A-101/Balance") == pytest.approx(fen / 100)
        assert await value(client, "Account:A-101/FeeState") == "NORMAL"
        assert await value(client, "Account:A-101/SupplyOn") is True
        assert await value(client, "Account:A-101/ControlMode") == "REMOTE"
        assert await value(client, "Account:A-101/State") == "OPEN"
        assert await value(client, "Account:A-101/Alarm1") == 20.0
        balance = client.get_node(ua.NodeId("Account:A-101/Balance", s))
        eu = await (await balance.get_child("0:EngineeringUnits")).read_value()
        assert eu.DisplayName.Text == "CNY"
        energy_today = client.get_node(ua.NodeId("Account:A-101/EnergyToday", s))
        eu = await (await energy_today.get_child("0:EngineeringUnits")).read_value()
        assert eu.DisplayName.Text == "kWh"
        props = {
            (await c.read_browse_name()).Name: await c.read_value()
            for c in await account.get_properties()
        }
        assert props == {"AccountId": "A-101", "Name": "Tenant A-101", "Room": "A-101"}


async def test_topup_is_idempotent_updates_the_balance_and_is_audited(
    opcua_site: OpcUaSite,
) -> None:
    async with opcua_site.connect("cashier1") as client:
        t, s = await opcua_site.ns(client)
        sub, events = await subscribe(client, "OpenPrepayAuditEventType")
        before = (await asyncio.to_thread(opcua_site.ops.account_snapshot, "A-101")).balance_fen
        account = client.get_node(ua.NodeId("Account:A-101", s))
        balance, replayed = await account.call_method(f"{t}:TopUp", d(12.5), text("opcua-topup-1"))
        assert replayed is False
        after = (await asyncio.to_thread(opcua_site.ops.account_snapshot, "A-101")).balance_fen
        # Usage keeps being deducted while the meters run: compare what was credited.
        assert balance == pytest.approx(after / 100, abs=0.5)
        assert after >= before + 1250 - 100

        # The same reference again: nothing changes.
        _, replayed = await account.call_method(f"{t}:TopUp", d(12.5), text("opcua-topup-1"))
        assert replayed is True

        await until(lambda: len(events.of(Operation="topup", Target="A-101")) >= 2)
        first = events.of(Operation="topup", Target="A-101")[0]
        assert first.ClientUserId == "opcua:cashier1"
        assert first.Status is True
        assert first.MethodId == ua.NodeId("AccountType/TopUp", t)
        assert first.SourceNode == ua.NodeId("Account:A-101", s)
        assert "12.50" in first.Result

        # The variable follows (account samples and snapshots).
        async def shows_credit() -> bool:
            fen = await value(client, "Account:A-101/BalanceFen")
            return fen is not None and fen >= before + 1250 - 200

        await until_async(shows_credit)
        await sub.delete()


async def test_refund_to_low_balance_raises_a_retained_low_balance_alarm(
    opcua_site: OpcUaSite,
) -> None:
    async with opcua_site.connect("cashier1") as client:
        t, s = await opcua_site.ns(client)
        sub, events = await subscribe(client, "LowBalanceAlarmType")
        account = client.get_node(ua.NodeId("Account:A-102", s))
        snapshot = await asyncio.to_thread(opcua_site.ops.account_snapshot, "A-102")
        # Bring the balance to 15.00: below alarm 1 (20.00), above alarm 2 (5.00).
        refund = (snapshot.balance_fen - 1500) / 100
        await account.call_method(f"{t}:Refund", d(refund), text("opcua-refund-1"))

        await until(lambda: events.of(SourceName="A-102", Retain=True))
        alarm = events.of(SourceName="A-102", Retain=True)[0]
        assert alarm.AlarmLevel == 1
        assert alarm.AccountId == "A-102"
        assert alarm.SourceNode == ua.NodeId("Account:A-102", s)
        assert alarm.NodeId == ua.NodeId("Account:A-102/LowBalance", s)
        assert alarm.Balance == pytest.approx(15.0, abs=0.5)
        assert alarm.Severity == 400
        assert getattr(alarm, "ActiveState/Id", None) is True or alarm.ActiveState.Text == "Active"

        async def level() -> Any:
            return await value(client, "Account:A-102/AlarmLevel")

        await until_async(lambda: _eq(level(), 1))

        # Active alarms come back on ConditionRefresh.
        sub2, late = await subscribe(client, "LowBalanceAlarmType")
        await client.get_node(ua.ObjectIds.ConditionType).call_method(
            ua.NodeId(ua.ObjectIds.ConditionType_ConditionRefresh),
            ua.Variant(sub2.subscription_id, V.UInt32),
        )
        await until(lambda: late.of(SourceName="A-102", Retain=True))
        await sub2.delete()

        # A top-up clears it; nobody acknowledged it, so the inactive alarm is still
        # retained (Part 9) until an operator acknowledges it.
        await account.call_method(f"{t}:TopUp", d(50.0), text("opcua-topup-2"))
        await until(lambda: events.of(SourceName="A-102", **{"ActiveState/Id": False}))
        cleared = events.of(SourceName="A-102", **{"ActiveState/Id": False})[0]
        assert cleared.AlarmLevel == 0
        assert cleared.Retain is True
        assert getattr(cleared, "AckedState/Id") is False
        await until_async(lambda: _eq(level(), 0))
        async with opcua_site.connect("operator1") as operator:
            await acknowledge(operator, cleared.NodeId, cleared.EventId, "seen after top-up")
        await until(lambda: events.of(SourceName="A-102", Retain=False))
        done = events.of(SourceName="A-102", Retain=False)[0]
        assert getattr(done, "ActiveState/Id") is False
        assert getattr(done, "AckedState/Id") is True
        await sub.delete()


async def acknowledge(
    client: Client, condition: ua.NodeId, event_id: bytes, comment: str
) -> list[Any]:
    """AcknowledgeableConditionType.Acknowledge called on the condition (ObjectId =
    ConditionId), as SCADA alarm lists call it."""
    return await client.get_node(condition).call_method(
        ua.NodeId(ua.ObjectIds.AcknowledgeableConditionType_Acknowledge),
        ua.Variant(event_id, V.ByteString),
        ua.Variant(ua.LocalizedText(comment), V.LocalizedText),
    )


async def test_low_balance_alarm_is_acknowledged_by_an_operator(
    opcua_site: OpcUaSite,
) -> None:
    ops = opcua_site.ops
    emitter = opcua_site.service.events
    assert emitter is not None
    async with (
        opcua_site.connect("operator1") as client,
        opcua_site.connect("viewer1") as viewer,
    ):
        _, s = await opcua_site.ns(client)
        cid = ua.NodeId("Account:A-102/LowBalance", s)
        sub, events = await subscribe(client, "LowBalanceAlarmType", "OpenPrepayAuditEventType")
        snapshot = await asyncio.to_thread(ops.account_snapshot, "A-102")
        # 15.00: below alarm 1 (20.00), above alarm 2 (5.00).
        await asyncio.to_thread(
            ops.refund, "A-102", snapshot.balance_fen - 1500, "ack-prepare", actor="test"
        )
        try:
            active = {"SourceName": "A-102", "ActiveState/Id": True}
            await until(lambda: events.of(**active))
            raised = events.of(**active)[0]
            assert raised.NodeId == cid
            assert raised.Retain is True
            assert getattr(raised, "AckedState/Id") is False
            assert raised.AckedState.Text == "Unacknowledged"

            # A viewer may not acknowledge: refused before anything runs, and audited.
            with pytest.raises(ua.uaerrors.BadUserAccessDenied):
                await acknowledge(viewer, cid, raised.EventId, "viewer says ok")
            await until(lambda: events.of(Operation="Acknowledge", Status=False))
            denied = events.of(Operation="Acknowledge", Status=False)[0]
            assert denied.ClientUserId == "opcua:viewer1"
            assert denied.Target == "A-102"
            assert "may not call Acknowledge" in denied.Result
            assert emitter.conditions[cid].acked is False

            # Unknown condition, stale or unknown EventId.
            with pytest.raises(ua.uaerrors.BadNodeIdUnknown):
                await acknowledge(
                    client, ua.NodeId("Account:NOPE/LowBalance", s), raised.EventId, "x"
                )
            with pytest.raises(ua.uaerrors.BadEventIdUnknown):
                await acknowledge(client, cid, b"\x00" * 16, "unknown event")
            # Down to 3.00 (alarm level 2): a new event of the same, still unacknowledged,
            # condition; the level-1 event is stale now.
            await asyncio.to_thread(ops.refund, "A-102", 1200, "ack-level2", actor="test")
            await until(lambda: events.of(AlarmLevel=2, **active))
            latest = events.of(AlarmLevel=2, **active)[0]
            assert getattr(latest, "AckedState/Id") is False
            assert latest.EventId != raised.EventId
            with pytest.raises(ua.uaerrors.BadEventIdUnknown):
                await acknowledge(client, cid, raised.EventId, "stale event")
            assert emitter.conditions[cid].acked is False
            assert not events.of(SourceName="A-102", **{"AckedState/Id": True})

            # The operator acknowledges the latest event.
            await acknowledge(client, cid, latest.EventId, "tenant called")
            acked = {"SourceName": "A-102", "AckedState/Id": True}
            await until(lambda: events.of(**acked))
            ack = events.of(**acked)[0]
            assert ack.NodeId == cid
            assert ack.EventId != latest.EventId
            assert ack.Comment.Text == "tenant called"
            assert ack.ClientUserId == "opcua:operator1"
            assert "acknowledged by opcua:operator1: tenant called" in ack.Message.Text
            assert ack.AckedState.Text == "Acknowledged"
            assert getattr(ack, "ActiveState/Id") is True
            assert ack.Retain is True  # still active
            assert ack.AlarmLevel == 2

            # Once is enough: again with either EventId.
            for event_id in (latest.EventId, ack.EventId):
                with pytest.raises(ua.uaerrors.BadConditionBranchAlreadyAcked):
                    await acknowledge(client, cid, event_id, "again")

            # Every call is audited: unknown condition, unknown and stale EventIds, the
            # acknowledgement, twice already acknowledged.
            def operator_audits() -> list[Any]:
                return events.of(Operation="Acknowledge", ClientUserId="opcua:operator1")

            await until(lambda: len(operator_audits()) >= 6)
            audits = operator_audits()
            assert len(audits) == 6
            assert [a.Status for a in audits].count(True) == 1
            good = next(a for a in audits if a.Status)
            assert good.Target == "A-102" and "tenant called" in good.Result
            assert good.MethodId == ua.NodeId(ua.ObjectIds.AcknowledgeableConditionType_Acknowledge)
            assert any("already acknowledged" in a.Result for a in audits)
            assert any("not the latest event" in a.Result for a in audits)

            # ConditionRefresh gives the acknowledged state.
            sub2, late = await subscribe(client, "LowBalanceAlarmType")
            await client.get_node(ua.ObjectIds.ConditionType).call_method(
                ua.NodeId(ua.ObjectIds.ConditionType_ConditionRefresh),
                ua.Variant(sub2.subscription_id, V.UInt32),
            )
            await until(lambda: late.of(SourceName="A-102"))
            (refreshed,) = late.of(SourceName="A-102")
            assert getattr(refreshed, "AckedState/Id") is True
            assert refreshed.Comment.Text == "tenant called"
            assert refreshed.Retain is True
            await sub2.delete()
        finally:
            await asyncio.to_thread(ops.topup, "A-102", 30_00, "ack-restore", actor="test")

        # Recovered and acknowledged: no longer retained, and gone from ConditionRefresh.
        inactive = {"SourceName": "A-102", "ActiveState/Id": False}
        await until(lambda: events.of(**inactive))
        cleared = events.of(**inactive)[0]
        assert cleared.Retain is False
        assert getattr(cleared, "AckedState/Id") is True
        sub3, after = await subscribe(client, "LowBalanceAlarmType")
        await client.get_node(ua.ObjectIds.ConditionType).call_method(
            ua.NodeId(ua.ObjectIds.ConditionType_ConditionRefresh),
            ua.Variant(sub3.subscription_id, V.UInt32),
        )
        await asyncio.sleep(0.5)
        assert not after.of(SourceName="A-102")
        await sub3.delete()
        await sub.delete()


async def _eq(awaitable: Any, expected: Any) -> bool:
    return (await awaitable) == expected


async def test_settings_methods_for_admin(opcua_site: OpcUaSite) -> None:
    async with opcua_site.connect("admin1") as client:
        t, s = await opcua_site.ns(client)
        account = client.get_node(ua.NodeId("Account:A-101", s))
        await account.call_method(f"{t}:SetTariff", text("peak"))
        await until_async(lambda: _eq(value(client, "Account:A-101/TariffId"), "peak"))

        await account.call_method(
            f"{t}:SetAlarmThresholds", d(25.0), d(8.0), d(math.nan), d(math.nan)
        )
        snap = await asyncio.to_thread(opcua_site.ops.account_snapshot, "A-101")
        assert (snap.thresholds.alarm1_fen, snap.thresholds.alarm2_fen) == (2500, 800)
        assert snap.thresholds.overdraft_limit_fen == 0  # NaN kept it
        await until_async(lambda: _eq(value(client, "Account:A-101/Alarm1"), 25.0))

        await account.call_method(f"{t}:Protect", ua.Variant(True, V.Boolean))
        await until_async(lambda: _eq(value(client, "Account:A-101/Protected"), True))
        await account.call_method(f"{t}:Protect", ua.Variant(False, V.Boolean))
        await until_async(lambda: _eq(value(client, "Account:A-101/Protected"), False))
        await account.call_method(
            f"{t}:SetAlarmThresholds", d(20.0), d(5.0), d(math.nan), d(math.nan)
        )


async def test_disconnect_and_reconnect_a_meter_raise_supply_events(
    opcua_site: OpcUaSite,
) -> None:
    async with opcua_site.connect("operator1") as client:
        t, s = await opcua_site.ns(client)
        sub, events = await subscribe(client, "SupplyChangedEventType")
        meter = client.get_node(ua.NodeId("Meter:E-A-101", s))
        supply = client.get_node(ua.NodeId("Meter:E-A-101/supply_on", s))
        commands = await meter.call_method(f"{t}:Disconnect", text("maintenance of the riser"))
        assert "TRIP" in commands

        await until(lambda: events.of(MeterId="E-A-101", Action="trip"), timeout=30)
        trip = events.of(MeterId="E-A-101", Action="trip")[0]
        assert trip.SupplyOn is False
        assert trip.Actor == "opcua:operator1"
        assert "maintenance of the riser" in trip.Reason
        assert trip.AccountId == "A-101"
        assert trip.SourceNode == ua.NodeId("Meter:E-A-101", s)

        async def supply_is(on: int) -> bool:
            dv = await supply.read_data_value(raise_on_bad_status=False)
            return dv.StatusCode.is_good() and dv.Value.Value == on

        await until_async(lambda: supply_is(0), timeout=30)
        await meter.call_method(f"{t}:Reconnect", text("maintenance done"))
        await until(lambda: events.of(MeterId="E-A-101", Action="close"), timeout=30)
        assert events.of(MeterId="E-A-101", Action="close")[0].SupplyOn is True
        await until_async(lambda: supply_is(1), timeout=30)
        await sub.delete()


async def test_malformed_arguments_are_refused_and_change_nothing(opcua_site: OpcUaSite) -> None:
    async with opcua_site.connect("admin1") as client:
        sub, audit = await subscribe(client, "OpenPrepayAuditEventType")
        before = await asyncio.to_thread(opcua_site.ops.account_snapshot, "A-101")
        cases = [
            (("TopUp", d(-5.0), text("neg-1")), S.BadOutOfRange, 0, "more than 0.00"),
            (("TopUp", d(0.0), text("zero-1")), S.BadOutOfRange, 0, "more than 0.00"),
            (("TopUp", d(1.234), text("dec-1")), S.BadInvalidArgument, 0, "at most 2 decimals"),
            (("TopUp", d(math.inf), text("inf-1")), S.BadOutOfRange, 0, "finite number"),
            (("TopUp", d(2_000_000.0), text("big-1")), S.BadOutOfRange, 0, "capacity"),
            (("TopUp", d(1e30), text("huge-1")), S.BadOutOfRange, 0, "capacity"),
            (("TopUp", d(math.nan), text("nan-1")), S.BadOutOfRange, 0, "finite number"),
            (("Refund", d(1e30), text("r-huge")), S.BadOutOfRange, 0, "capacity"),
            (("Refund", d(-math.inf), text("r-inf")), S.BadOutOfRange, 0, "finite number"),
            (("TopUp", text("ten"), text("str-1")), S.BadInvalidArgument, 0, "expected a number"),
            (("TopUp", d(10.0), text("")), S.BadInvalidArgument, None, "reference"),
            (("TopUp", d(10.0)), S.BadArgumentsMissing, None, "Reference"),
            (("TopUp", d(1.0), text("x"), text("y")), S.BadTooManyArguments, None, "takes 2"),
            (("Refund", d(-1.0), text("r-neg")), S.BadOutOfRange, 0, "more than 0.00"),
            (("SetTariff", text("no-such-tariff")), S.BadInvalidArgument, None, "unknown tariff"),
            (
                ("SetAlarmThresholds", d(-1.0), d(5.0), d(0.0), d(0.0)),
                S.BadOutOfRange,
                0,
                "0.00 to",
            ),
            (
                ("SetAlarmThresholds", d(1e30), d(5.0), d(0.0), d(0.0)),
                S.BadOutOfRange,
                0,
                "capacity",
            ),
            (
                ("SetAlarmThresholds", d(10.0), d(math.nan), d(0.0), d(0.0)),
                S.BadOutOfRange,
                1,
                "finite number",
            ),
            (("Protect", text("yes")), S.BadInvalidArgument, 0, "Boolean"),
            (("Disconnect", text("   ")), S.BadInvalidArgument, None, "reason"),
        ]
        for (method, *args), status, arg, message in cases:
            result = await call(client, "Account:A-101", method, *args)
            assert result.StatusCode.value == status, (method, args, result.StatusCode)
            infos = [i.AdditionalInfo for i in result.InputArgumentDiagnosticInfos or []]
            assert any(message in (i or "") for i in infos), (method, infos)
            if arg is not None:
                assert not result.InputArgumentResults[arg].is_good()
        # A string where a number belongs is a type mismatch on that argument.
        result = await call(client, "Account:A-101", "TopUp", text("ten"), text("str-2"))
        assert result.InputArgumentResults[0].value == S.BadTypeMismatch

        after = await asyncio.to_thread(opcua_site.ops.account_snapshot, "A-101")
        assert after.tariff_id == before.tariff_id
        assert after.thresholds == before.thresholds
        assert after.balance_fen <= before.balance_fen  # only usage, never a credit
        assert all(m.supply_on is not False for m in after.meters)

        # A method of accounts called on a meter.
        result = await call(client, "Meter:E-A-101", "TopUp", d(1.0), text("wrong-obj"))
        assert result.StatusCode.value == S.BadMethodInvalid

        # Every refused call is audited, with the reason.
        await until(lambda: len(audit.of(Status=False)) >= len(cases))
        refused = audit.of(Status=False, Operation="TopUp")
        assert any("at most 2 decimals" in e.Result for e in refused)
        assert all(e.ClientUserId == "opcua:admin1" for e in audit.of(Status=False))
        await sub.delete()


@pytest.mark.parametrize(
    ("user", "method", "args"),
    [
        ("viewer1", "TopUp", (d(10.0), text("viewer-topup"))),
        ("operator1", "TopUp", (d(10.0), text("operator-topup"))),
        ("viewer1", "Disconnect", (text("viewer cut"),)),
        ("cashier1", "Disconnect", (text("cashier cut"),)),
        ("cashier1", "SetTariff", (text("peak"),)),
        ("operator1", "SetAlarmThresholds", (d(1.0), d(0.5), d(0.0), d(0.0))),
    ],
)
async def test_roles_are_enforced_on_every_call(
    opcua_site: OpcUaSite, user: str, method: str, args: tuple[ua.Variant, ...]
) -> None:
    async with opcua_site.connect(user) as client:
        t, s = await opcua_site.ns(client)
        before = await asyncio.to_thread(opcua_site.ops.account_snapshot, "A-102")
        account = client.get_node(ua.NodeId("Account:A-102", s))
        with pytest.raises(ua.uaerrors.BadUserAccessDenied):
            await account.call_method(f"{t}:{method}", *args)
        after = await asyncio.to_thread(opcua_site.ops.account_snapshot, "A-102")
        assert after.balance_fen <= before.balance_fen
        assert after.tariff_id == before.tariff_id
        assert after.thresholds == before.thresholds
        assert all(m.supply_on is not False for m in after.meters)
        # Reading stays allowed.
        assert await value(client, "Account:A-102/State") == "OPEN"


async def test_account_disconnect_cuts_every_meter_and_reconnect_restores(
    opcua_site: OpcUaSite,
) -> None:
    async with opcua_site.connect("operator1") as client:
        t, s = await opcua_site.ns(client)
        sub, events = await subscribe(client, "SupplyChangedEventType")
        account = client.get_node(ua.NodeId("Account:A-101", s))
        commands = await account.call_method(f"{t}:Disconnect", text("tenant moved out"))
        assert "E-A-101" in commands and "W-A-101" in commands
        await until(
            lambda: (
                events.of(MeterId="E-A-101", Action="trip")
                and events.of(MeterId="W-A-101", Action="trip")
            ),
            timeout=30,
        )
        await until_async(lambda: _eq(value(client, "Account:A-101/SupplyOn"), False))
        await account.call_method(f"{t}:Reconnect", text("new tenant"))
        await until(
            lambda: (
                events.of(MeterId="E-A-101", Action="close")
                and events.of(MeterId="W-A-101", Action="close")
            ),
            timeout=30,
        )
        await until_async(lambda: _eq(value(client, "Account:A-101/SupplyOn"), True))
        await sub.delete()


async def test_historian_drop_and_cli_operations_reach_server_subscribers(
    opcua_site: OpcUaSite,
) -> None:
    from datetime import UTC, datetime

    from openprepay.core.events import HistorianDataDropped

    async with opcua_site.connect("viewer1") as client:
        sub, events = await subscribe(
            client, "HistorianDataDroppedEventType", "OpenPrepayAuditEventType"
        )
        # The historian raises this when its spool is full (here: published as it would).
        now = datetime.now(UTC)
        opcua_site.runtime.bus.publish(
            HistorianDataDropped(120, 1800, "drop_oldest", "spool full", now, now)
        )
        await until(lambda: events.of(Policy="drop_oldest"))
        dropped = events.of(Policy="drop_oldest")[0]
        assert (dropped.Lines, dropped.Points, dropped.Reason) == (120, 1800, "spool full")
        assert dropped.Severity == 800

        # An operation from another channel (the CLI's path) is audited on OPC UA too.
        await asyncio.to_thread(
            opcua_site.ops.topup, "A-101", 100, "cli-audit-1", actor="cli:alice"
        )
        await until(lambda: events.of(ClientUserId="cli:alice"))
        assert events.of(ClientUserId="cli:alice")[0].Operation == "topup"
        await sub.delete()


async def test_alarms_active_when_the_server_starts_come_back_on_condition_refresh(
    opcua_site: OpcUaSite, tmp_path: Any
) -> None:
    from openprepay.opcua_server.assembly import make_service
    from openprepay.opcua_server.config import OpcUaConfig
    from openprepay.opcua_server.pki import trust
    from openprepay.opcua_server.users import add_user

    ops = opcua_site.ops
    snapshot = await asyncio.to_thread(ops.account_snapshot, "A-102")
    # A-102 at 10.00: alarm level 1 before a second server over the same runtime starts.
    await asyncio.to_thread(
        ops.refund, "A-102", snapshot.balance_fen - 1000, "restart-prepare", actor="test"
    )
    config = OpcUaConfig(port=0, hostname="localhost", pki_dir=tmp_path)
    add_user(config.users_path, "viewer1", "viewer-secret", "viewer")
    service = make_service(config, opcua_site.runtime)
    await service.start()
    try:
        trust(service.pki, str(opcua_site.trusted.cert))
        client = Client(f"opc.tcp://localhost:{service.port}/openprepay", timeout=10)
        client.application_uri = opcua_site.trusted.uri
        client.set_user("viewer1")
        client.set_password("viewer-secret")
        await client.set_security(
            SecurityPolicyBasic256Sha256,
            str(opcua_site.trusted.cert),
            str(opcua_site.trusted.key),
            mode=ua.MessageSecurityMode.SignAndEncrypt,
        )
        async with client:
            sub, events = await subscribe(client, "LowBalanceAlarmType")
            await client.get_node(ua.ObjectIds.ConditionType).call_method(
                ua.NodeId(ua.ObjectIds.ConditionType_ConditionRefresh),
                ua.Variant(sub.subscription_id, V.UInt32),
            )
            await until(lambda: events.of(SourceName="A-102", Retain=True))
            assert events.of(SourceName="A-102", Retain=True)[0].AlarmLevel == 1
            assert not events.of(SourceName="A-101", Retain=True)
            await sub.delete()
    finally:
        await service.stop()
        await asyncio.to_thread(ops.topup, "A-102", 30_00, "restart-restore", actor="test")


async def test_a_full_account_refresh_reads_the_accounts_a_part_at_a_time(
    opcua_site: OpcUaSite, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each part is one worker-thread job that holds the interpreter while it builds the
    snapshots: every account of a large site in one job stalled polling once a minute."""
    from openprepay.opcua_server.accounts import view as view_module

    service = opcua_site.service
    [view] = [e for e in service.extensions if isinstance(e, view_module.AccountView)]
    ops = view.methods.ops
    parts: list[list[str]] = []
    read = ops.account_snapshots

    def recorded(ids: list[str]) -> Any:
        parts.append(list(ids))
        return read(ids)

    monkeypatch.setattr(view_module, "ACCOUNTS_PER_READ", 1)
    monkeypatch.setattr(ops, "account_snapshots", recorded)
    published: list[Any] = []
    monkeypatch.setattr(service.publisher, "on_sample", published.append)
    before = view.refreshes
    await view.refresh(service, None)
    # (the view's own refresh task may read a touched account meanwhile: a part of one too)
    assert ["A-101"] in parts and ["A-102"] in parts and all(len(p) == 1 for p in parts)
    assert {"A-101", "A-102"} <= {s.source for s in published}
    assert view.refreshes >= before + 1
