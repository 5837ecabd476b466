"""LOCAL meters through the public interfaces (issue 9 §6), on real simulated meters:

- a LOCAL meter that already carries purchases is read at attach and the platform aligns
  with it (audited): the first top-up is delivered with the meter's count + 1, not refused
  eight times and left FAILED;
- a meter made LOCAL by the account (`E-101:LOCAL`, REMOTE in the site file) is aligned and
  reconciled like one declared LOCAL in the site file;
- a FAILED RECHARGE is an alarm (CommandFailed, `account show`, open failures) and is
  retried — with the same purchase count: a meter that took it while its reply was lost
  confirms it and is not credited twice — or refunded (its top-up reversed, the count
  aligned again so that the next top-up is delivered).
"""

from __future__ import annotations

from typing import Any

from click.testing import CliRunner
from pymodbus.constants import ExcCodes

from openprepay.core import ledger
from openprepay.core.events import (
    AuditRecord,
    CommandFailed,
    CommandResolved,
    ReconciliationBreak,
)
from openprepay.core.prepay import accounts as acc
from tests.conftest import until

from .conftest import site_data


class Recorder:
    def __init__(self, bus: Any) -> None:
        self.items: list[object] = []
        bus.subscribe(object, self.items.append)

    def of(self, kind: type) -> list:
        return [i for i in self.items if isinstance(i, kind)]


def attach(run: Any, account_id: str, *meters: str) -> None:
    """Open an account as `account open` does (no test shortcut for the purchase count)."""
    site, models = run.runtime.site, run.runtime.plugins.models
    assigned = []
    for text in meters:
        meter, _, mode = text.partition(":")
        assigned.append(acc.resolve_meter(site, models, meter, mode or None))
    with run.db.begin() as conn:
        acc.create_account(conn, acc.AccountSpec(account_id, "tenant", tuple(assigned)))


def verified(run: Any) -> bool:
    with run.db.read() as conn:
        return ledger.verify(conn).ok


def devices_with(meter: str, **options: Any) -> dict[str, Any]:
    devices = site_data()["devices"]
    devices[meter] = dict(devices[meter], options=dict(devices[meter]["options"], **options))
    return devices


def engine(**changes: Any) -> dict[str, Any]:
    prepay = site_data()["prepay"]
    return dict(prepay, engine=dict(prepay["engine"], **changes))


async def test_a_local_meter_with_purchases_of_its_own_is_aligned_at_attach(running) -> None:
    run = await running(speedup=0, devices=devices_with("E-102", sim_buy_count=5))
    seen = Recorder(run.runtime.bus)
    meter = run.sim("E-102")
    attach(run, "A-102", "E-102")
    # Topped up at once: the RECHARGE waits until the meter's count has been read.
    result = run.ops.topup("A-102", 5000, "pay-1", actor="cashier:1")
    await until(lambda: run.ops.command(result.command_id).state == "CONFIRMED", 30)
    command = run.ops.command(result.command_id)
    assert command.attempts == 1 and command.params["meter_count"] == 6
    assert meter.buy_count == 6 and abs(meter.remaining - 50.0) < 1e-9
    await until(lambda: any(a.action == "align" for a in seen.of(AuditRecord)))
    (aligned,) = [a for a in seen.of(AuditRecord) if a.action == "align"]
    assert aligned.target == "E-102" and "meter's 5" in aligned.detail
    snap = run.ops.account_snapshot("A-102").meters[0]
    assert snap.meter_buy_count == 6 and not snap.align_pending
    # The next one follows on.
    second = run.ops.topup("A-102", 1000, "pay-2", actor="cashier:1")
    await until(lambda: run.ops.command(second.command_id).state == "CONFIRMED", 30)
    assert meter.buy_count == 7
    assert verified(run)


async def test_a_meter_made_local_by_its_account_is_aligned_and_reconciled(running) -> None:
    run = await running(speedup=0, prepay=engine(reconcile_every_s=0))
    seen = Recorder(run.runtime.bus)
    meter = run.sim("E-101")  # REMOTE in the site file; its simulator counts purchases (1)
    attach(run, "A-101", "E-101:LOCAL")
    result = run.ops.topup("A-101", 2000, "pay-l1", actor="cashier:1")
    await until(lambda: run.ops.command(result.command_id).state == "CONFIRMED", 30)
    assert meter.buy_count == 2
    # Recharged at the meter with a card the platform never saw; the count first, so that a
    # poll between the two changes never sees new money under the old count.
    meter.buy_count += 1
    meter.remaining += 30.0
    meter._refresh_prepaid()

    # The meter's own opening balance (100.00) never matched the platform's: a loaded
    # service may check a sample read between the confirmation and the card first, and say
    # that break (count 2 = 2, balance 120.00 vs 20.00). The card's purchase is a break of
    # its own, with the meter's new count.
    def card_break() -> ReconciliationBreak | None:
        return next(
            (
                e
                for e in seen.of(ReconciliationBreak)
                if e.meter_id == "E-101" and e.meter_buy_count == 3
            ),
            None,
        )

    await until(lambda: card_break() is not None, 30)
    event = card_break()
    assert event is not None and event.account_id == "A-101"
    assert (event.meter_buy_count, event.platform_buy_count) == (3, 2)
    earlier = [e for e in seen.of(ReconciliationBreak) if e.meter_id == "E-101" and e is not event]
    assert all((e.meter_buy_count, e.platform_buy_count) == (2, 2) for e in earlier)


def silence_after_recharge(sim: Any) -> list[int]:
    """The meter applies a RECHARGE and then stays silent (its reply and everything after
    lost) until the test lets it speak again."""
    original = sim.on_write
    applied: list[int] = []

    def on_write(function: int, address: int, words: list[int]) -> Any:
        before = sim.buy_count
        answer = original(function, address, words)
        if address == 0x004E and sim.buy_count != before:
            applied.append(sim.buy_count)
            sim.silent = True
        return answer

    sim.on_write = on_write
    return applied


async def test_a_failed_recharge_is_an_alarm_and_its_retry_keeps_the_count(running, cli) -> None:
    run = await running(speedup=0, prepay=engine(command_attempts=2))
    seen = Recorder(run.runtime.bus)
    meter = run.sim("E-102")
    applied = silence_after_recharge(meter)
    attach(run, "A-102", "E-102")
    result = run.ops.topup("A-102", 5000, "pay-lost", actor="cashier:1")
    await until(lambda: run.ops.command(result.command_id).state == "FAILED", 30)
    assert applied == [1] and abs(meter.remaining - 50.0) < 1e-9  # it did take the money
    await until(lambda: any(e.command_id == result.command_id for e in seen.of(CommandFailed)))
    (failed,) = [e for e in seen.of(CommandFailed) if e.command_id == result.command_id]
    assert failed.command == "RECHARGE" and failed.meter_id == "E-102"
    assert run.ops.account_snapshot("A-102").failed_commands == (result.command_id,)
    # Read with the other accounts (an OPC UA refresh's part): the alarm is A-102's alone.
    attach(run, "A-901")
    together = {s.account_id: s for s in run.ops.account_snapshots(run.ops.account_ids())}
    assert together["A-102"].failed_commands == (result.command_id,) and len(together) > 1
    assert all(s.failed_commands == () for a, s in together.items() if a != "A-102")
    show = run_cli(cli, run, "account", "show", "SITE", "A-102")
    assert f"ALARM   command {result.command_id} FAILED, money not delivered" in show

    meter.silent = False
    # It may hold the money (the reply was lost): no refund before the meter is read, and
    # none once it shows the purchase.
    refused = run_cli(
        cli, run, "command", "refund", "SITE", str(result.command_id), "--reason", "x", ok=False
    )
    assert "read it first" in refused and "openprepay meter align" in refused
    run_cli(cli, run, "meter", "align", "SITE", "E-102", "--reason", "before refunding")
    await until(lambda: not run.ops.account_snapshot("A-102").meters[0].align_pending, 30)
    refused = run_cli(
        cli, run, "command", "refund", "SITE", str(result.command_id), "--reason", "x", ok=False
    )
    assert "shows purchase 1: it took RECHARGE" in refused
    out = run_cli(
        cli, run, "command", "retry", "SITE", str(result.command_id), "--reason", "meter back"
    )
    retry_id = int(out.split()[1].rstrip(":"))
    await until(lambda: run.ops.command(retry_id).state == "CONFIRMED", 30)
    retry = run.ops.command(retry_id)
    assert retry.retry_of == result.command_id
    assert retry.params["meter_count"] == 1  # the count it was first sent with
    assert applied == [1] and abs(meter.remaining - 50.0) < 1e-9  # credited once
    assert run.ops.command(result.command_id).resolution == f"retried as #{retry_id}"
    assert run.ops.account_snapshot("A-102").failed_commands == ()
    # The service sees the CLI's resolution in the database and clears the alarm.
    await until(lambda: bool(seen.of(CommandResolved)))
    (resolved,) = seen.of(CommandResolved)
    assert (resolved.command_id, resolved.how, resolved.new_command_id) == (
        result.command_id,
        "retry",
        retry_id,
    )
    assert "already resolved" in run_cli(
        cli, run, "command", "retry", "SITE", str(result.command_id), "--reason", "x", ok=False
    )
    assert verified(run)


async def test_a_failed_recharge_can_be_refunded_and_the_next_is_delivered(running, cli) -> None:
    run = await running(speedup=0, prepay=engine(command_attempts=2))
    meter = run.sim("E-102")
    attach(run, "A-102", "E-102")
    await until(lambda: not run.ops.account_snapshot("A-102").meters[0].align_pending, 30)
    deliver = meter.on_write  # the meter fails every delivery for as long as it is tried
    meter.on_write = lambda f, a, w: ExcCodes.DEVICE_FAILURE if a == 0x004E else deliver(f, a, w)
    result = run.ops.topup("A-102", 5000, "pay-unreached", actor="cashier:1")
    await until(lambda: run.ops.command(result.command_id).state == "FAILED", 30)
    meter.on_write = deliver
    run_cli(cli, run, "meter", "align", "SITE", "E-102", "--reason", "before refunding")
    await until(lambda: not run.ops.account_snapshot("A-102").meters[0].align_pending, 30)
    out = run_cli(
        cli, run, "command", "refund", "SITE", str(result.command_id), "--reason", "meter broken"
    )
    assert f"RECHARGE #{result.command_id} refunded: 50.00 back to the payer" in out
    snap = run.ops.account_snapshot("A-102")
    assert snap.balance_fen == 0 and snap.failed_commands == ()
    assert run.ops.command(result.command_id).resolution.startswith("refunded: top-up")
    # The count it was given never reached the meter: the next top-up carries count 1.
    again = run.ops.topup("A-102", 2000, "pay-again", actor="cashier:1")
    await until(lambda: run.ops.command(again.command_id).state == "CONFIRMED", 30)
    assert meter.buy_count == 1 and abs(meter.remaining - 20.0) < 1e-9
    assert run.ops.command(again.command_id).params["meter_count"] == 1
    assert verified(run)


def run_cli(cli: Any, run: Any, *args: str, ok: bool = True) -> str:
    group, obj = cli
    argv = [str(run.site_file) if a == "SITE" else a for a in args]
    result = CliRunner().invoke(group, argv, obj=obj, catch_exceptions=False)
    assert (result.exit_code == 0) is ok, result.output
    return result.output
