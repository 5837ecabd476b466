"""The payment service on SQLite and PostgreSQL: the active query finds a payment whose
notification was lost, expired orders are closed at the provider and here, and a process
killed (SIGKILL) between storing a verified notice and crediting it is credited exactly once
by the service's start. `ledger verify` after each."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from openprepay.core import ledger
from openprepay.core.contracts import PaymentProviderError
from openprepay.core.db import Database
from openprepay.core.events import utcnow
from openprepay.core.operations import Operations
from openprepay.core.payments import get_order
from openprepay.core.payments.service import PaymentService
from openprepay.core.payments.states import OrderState

from .double import DoubleProvider

ROOT = Path(__file__).resolve().parents[2]


def balance(db: Database) -> int:
    with db.read() as conn:
        return ledger.balances(conn, "A-101").energy_fen


def state(db: Database, no: str) -> OrderState:
    with db.read() as conn:
        return get_order(conn, no).state


@pytest.fixture(autouse=True)
def _verify_after(check: Any) -> Any:
    yield
    check()


def service_at(ops: Operations, provider: DoubleProvider, later: timedelta) -> PaymentService:
    return PaymentService(ops, {provider.channel: provider}, clock=lambda: utcnow() + later)


async def _open(ops: Operations, provider: DoubleProvider, service: PaymentService) -> str:
    order, prepared = await service.start_payment(
        "A-101", 3000, "test", "native", actor="test:payer", description="Electricity A-101"
    )
    assert prepared.code_url and provider.requests[-1].amount_fen == 3000
    return order.out_trade_no


async def test_the_active_query_credits_a_payment_whose_notification_was_lost(
    ops: Operations, db: Database, provider: DoubleProvider
) -> None:
    now = service_at(ops, provider, timedelta(0))
    no = await _open(ops, provider, now)
    provider.pay(no)  # ...and the notification never arrives
    await now.sweep()
    assert provider.queries == 0 and state(db, no) is OrderState.CREATED  # too early to ask
    later = service_at(ops, provider, timedelta(seconds=61))
    await later.sweep()
    assert provider.queries == 1 and state(db, no) is OrderState.CREDITED
    assert balance(db) == 3000
    with db.read() as conn:
        assert get_order(conn, no).last_query_at is not None
    await later.sweep()  # credited: not asked again
    assert provider.queries == 1 and balance(db) == 3000


async def test_an_unpaid_order_is_asked_once_a_minute_then_closed_on_expiry(
    ops: Operations, db: Database, provider: DoubleProvider
) -> None:
    no = await _open(ops, provider, service_at(ops, provider, timedelta(0)))
    minute = service_at(ops, provider, timedelta(seconds=61))
    await minute.sweep()
    await minute.sweep()  # asked within the minute: not again
    assert provider.queries == 1 and state(db, no) is OrderState.CREATED
    expired = service_at(ops, provider, timedelta(minutes=16))
    await expired.sweep()
    assert provider.closed == [no] and state(db, no) is OrderState.CLOSED
    assert expired.counters.closed == 1 and balance(db) == 0


async def test_a_payment_at_the_last_second_is_credited_not_closed(
    ops: Operations, db: Database, provider: DoubleProvider
) -> None:
    no = await _open(ops, provider, service_at(ops, provider, timedelta(0)))
    provider.pay(no)
    await service_at(ops, provider, timedelta(minutes=16)).sweep()
    assert provider.closed == [] and state(db, no) is OrderState.CREDITED
    assert balance(db) == 3000


async def test_a_provider_refusing_the_order_closes_ours(
    ops: Operations, db: Database, provider: DoubleProvider
) -> None:
    async def refuse(request: Any) -> Any:
        raise RuntimeError("provider down")

    provider.create = refuse  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        await service_at(ops, provider, timedelta(0)).start_payment(
            "A-101", 3000, "test", "native", actor="test:payer", description="x"
        )
    from openprepay.core.payments import list_orders

    with db.read() as conn:
        assert [o.state for o in list_orders(conn)] == [OrderState.CLOSED]


async def test_a_provider_error_longer_than_a_reason_still_closes_ours(
    ops: Operations, db: Database, provider: DoubleProvider
) -> None:
    """A provider's message can be long (WeChat's: code, 300 characters, the HTTP status):
    the close must not be refused by the door's 400-character reason limit, leaving the
    order CREATED and the provider's error hidden behind a RequestError."""

    async def refuse(request: Any) -> Any:
        raise PaymentProviderError("x" * 500)

    provider.create = refuse  # type: ignore[method-assign]
    with pytest.raises(PaymentProviderError):
        await service_at(ops, provider, timedelta(0)).start_payment(
            "A-101", 3000, "test", "native", actor="test:payer", description="x"
        )
    from openprepay.core.payments import list_orders

    with db.read() as conn:
        assert [o.state for o in list_orders(conn)] == [OrderState.CLOSED]


async def test_killed_between_store_and_credit_is_credited_once_at_start(
    ops: Operations, db: Database, provider: DoubleProvider, db_url: str, tmp_path: Path
) -> None:
    service = service_at(ops, provider, timedelta(0))
    no = await _open(ops, provider, service)
    headers, body = provider.notification(provider.pay(no))
    (tmp_path / "body").write_bytes(body)
    proc = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "tests.payments.crash_after_store",
            str(tmp_path / "site.toml"),
            db_url,
            json.dumps(headers),
            str(tmp_path / "body"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == -9, proc.stderr
    assert proc.stdout.strip() == "stored"
    assert state(db, no) is OrderState.PAID and balance(db) == 0
    # The service's start: what was stored is credited, once.
    await service.start()
    await service.stop()
    assert state(db, no) is OrderState.CREDITED and balance(db) == 3000
    assert service.counters.recovered == 1 and service.counters.credited == 1
    again = service_at(ops, provider, timedelta(0))
    await again.start()
    await again.stop()
    assert again.counters.recovered == 0 and balance(db) == 3000


def test_the_service_figures_are_points(ops: Operations, provider: DoubleProvider) -> None:
    from openprepay.core.model import Sample

    samples: list[Sample] = []
    ops.bus.subscribe(Sample, samples.append)
    service = service_at(ops, provider, timedelta(0))
    service.counters.queries = 3
    service.publish()
    assert samples[-1].source == "payments" and samples[-1].model.name == "openprepay.payments"
    assert samples[-1].values["queries"] == 3


async def test_an_open_order_is_asked_again_every_minute_until_paid(
    ops: Operations, db: Database, provider: DoubleProvider
) -> None:
    no = await _open(ops, provider, service_at(ops, provider, timedelta(0)))
    await service_at(ops, provider, timedelta(seconds=61)).sweep()
    assert provider.queries == 1 and state(db, no) is OrderState.CREATED
    provider.pay(no)  # paid later; its notification is lost too
    await service_at(ops, provider, timedelta(seconds=122)).sweep()
    assert provider.queries == 2 and state(db, no) is OrderState.CREDITED
    assert balance(db) == 3000


async def test_a_failing_query_is_tried_again_a_minute_later_not_at_every_sweep(
    ops: Operations, db: Database, provider: DoubleProvider
) -> None:
    no = await _open(ops, provider, service_at(ops, provider, timedelta(0)))
    calls: list[str] = []

    async def down(out_trade_no: str) -> Any:
        calls.append(out_trade_no)
        raise ConnectionError("provider unreachable")

    provider.query = down  # type: ignore[method-assign]
    shift = [timedelta(seconds=61)]
    service = PaymentService(ops, {"test": provider}, clock=lambda: utcnow() + shift[0])
    await service.sweep()
    await service.sweep()
    assert calls == [no] and service.counters.query_errors == 1
    shift[0] = timedelta(seconds=122)
    await service.sweep()
    assert calls == [no, no] and state(db, no) is OrderState.CREATED
