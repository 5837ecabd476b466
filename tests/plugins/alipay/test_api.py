"""The provider against the Alipay emulator on loopback: precreate, scan and pay with
notifications (duplicates, bad signature, wrong amount, lost), query, close, refund and
the trade bill; our requests signed as Alipay checks them, its answers verified."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from openprepay.core.contracts import PaymentRequest
from openprepay.core.errors import FieldError, RequestError
from openprepay.plugins.alipay.client import AlipayError
from openprepay.plugins.alipay.provider import AlipayProvider
from openprepay.plugins.alipay.settings import AlipaySettings, parse_alipay
from tests.plugins.alipay.conftest import Receiver, section
from tests.plugins.alipay.emulator import AlipayEmulator, BillRow, new_key

BEIJING_DAY = date(2026, 12, 1)
PAID_AT = datetime(2026, 12, 1, 2, 0, 0, tzinfo=UTC)  # 10:00 in Beijing


def order(number: str, amount_fen: int, notify_url: str, minutes: float = 30) -> PaymentRequest:
    return PaymentRequest(
        out_trade_no=number,
        amount_fen=amount_fen,
        currency="CNY",
        description="电费充值 A-101",
        expires_at=datetime.now(UTC) + timedelta(minutes=minutes),
        method="qr",
        notify_url=notify_url,
    )


async def test_precreate_gives_the_qr_code_and_sends_exact_yuan(
    provider: AlipayProvider, emulator: AlipayEmulator, receiver: Receiver
) -> None:
    prepared = await provider.create(order("OP-A101-0001", 1230, receiver.url))
    assert prepared.code_url == "https://qr.alipay.com/bax0OP-A101-0001"
    assert prepared.jsapi is None
    method, biz = emulator.calls[-1]
    assert method == "alipay.trade.precreate"
    assert biz["total_amount"] == "12.30"
    assert biz["subject"] == "电费充值 A-101"
    assert biz["timeout_express"] in ("29m", "30m")
    assert emulator.trades["OP-A101-0001"].notify_url == receiver.url
    assert emulator.refused == []


@pytest.mark.parametrize(("fen", "yuan"), [(1, "0.01"), (9_999_999_999, "99999999.99")])
async def test_the_smallest_and_largest_amounts_go_out_exactly(
    provider: AlipayProvider, emulator: AlipayEmulator, receiver: Receiver, fen: int, yuan: str
) -> None:
    await provider.create(order(f"OP-EDGE-{fen}", fen, receiver.url))
    assert emulator.calls[-1][1]["total_amount"] == yuan
    await emulator.pay(f"OP-EDGE-{fen}")
    assert receiver.notices[-1].amount_fen == fen
    assert (await provider.query(f"OP-EDGE-{fen}")).amount_fen == fen


async def test_create_refuses_what_alipay_cannot_do(
    provider: AlipayProvider, emulator: AlipayEmulator, receiver: Receiver
) -> None:
    wrong_method = order("OP-X-1", 100, receiver.url)
    for bad, field in (
        (PaymentRequest(**{**_fields(wrong_method), "method": "native"}), "method"),
        (PaymentRequest(**{**_fields(wrong_method), "currency": "USD"}), "currency"),
        (order("OP-X-2", 100, receiver.url, minutes=0.5), "expires_at"),
        (order("OP-X-3", 0, receiver.url), "amount_fen"),
        (order("OP X 4", 100, receiver.url), "out_trade_no"),
        (order("O" * 65, 100, receiver.url), "out_trade_no"),
    ):
        with pytest.raises(RequestError) as refused:
            await provider.create(bad)
        assert refused.value.field == field
    assert emulator.calls == []  # nothing was sent


def _fields(request: PaymentRequest) -> dict[str, object]:
    return {f: getattr(request, f) for f in PaymentRequest.__slots__}


async def test_scan_and_pay_notifies_and_we_answer_the_literal_success(
    provider: AlipayProvider, emulator: AlipayEmulator, receiver: Receiver
) -> None:
    await provider.create(order("OP-A101-0002", 5000, receiver.url))
    (delivery,) = await emulator.pay("OP-A101-0002")
    assert (delivery.status, delivery.body) == (200, "success")
    (notice,) = receiver.notices
    assert (notice.state, notice.amount_fen, notice.out_trade_no) == ("PAID", 5000, "OP-A101-0002")
    assert notice.transaction_id == emulator.trades["OP-A101-0002"].trade_no


async def test_duplicate_notifications_at_once_all_verify_to_the_same_notice(
    provider: AlipayProvider, emulator: AlipayEmulator, receiver: Receiver
) -> None:
    """Idempotency is the core's (the trade number is the top-up reference); the plugin's
    part is that every copy verifies to the same transaction id and amount."""
    await provider.create(order("OP-A101-0003", 2000, receiver.url))
    deliveries = await emulator.pay("OP-A101-0003", copies=5)
    assert [d.body for d in deliveries] == ["success"] * 5
    assert len({(n.transaction_id, n.amount_fen, n.state) for n in receiver.notices}) == 1
    assert len(receiver.notices) == 5


async def test_a_badly_signed_notification_is_answered_failure(
    provider: AlipayProvider, emulator: AlipayEmulator, receiver: Receiver
) -> None:
    await provider.create(order("OP-A101-0004", 2000, receiver.url))
    (delivery,) = await emulator.pay("OP-A101-0004", bad_signature=True)
    assert delivery.body == "failure"  # Alipay will resend
    assert receiver.notices == [] and receiver.refused == ["bad signature"]


async def test_a_signed_wrong_amount_reaches_the_core_with_the_amount_alipay_says(
    provider: AlipayProvider, emulator: AlipayEmulator, receiver: Receiver
) -> None:
    """The amount check against the order is the core's (conflict, nothing credited)."""
    await provider.create(order("OP-A101-0005", 2000, receiver.url))
    await emulator.pay("OP-A101-0005", amount_fen=200)
    assert receiver.notices[0].amount_fen == 200


async def test_a_lost_notification_is_found_by_the_query(
    provider: AlipayProvider, emulator: AlipayEmulator, receiver: Receiver
) -> None:
    await provider.create(order("OP-A101-0006", 3333, receiver.url))
    before = await provider.query("OP-A101-0006")
    # Not scanned: Alipay says the trade does not exist; for us it is unpaid.
    assert (before.state, before.transaction_id) == ("NOTPAY", None)
    emulator.scan("OP-A101-0006")
    scanned = await provider.query("OP-A101-0006")
    assert (scanned.state, scanned.amount_fen) == ("NOTPAY", 3333)
    assert await emulator.pay("OP-A101-0006", lost=True, at=PAID_AT) == []
    assert receiver.notices == []
    found = await provider.query("OP-A101-0006")
    assert found.state == "PAID"
    assert found.amount_fen == 3333
    assert found.transaction_id == emulator.trades["OP-A101-0006"].trade_no
    assert found.paid_at == PAID_AT
    assert (found.merchant_id, found.app_id) == (provider.merchant_id, provider.app_id)


async def test_close_before_and_after_the_scan_and_not_after_payment(
    provider: AlipayProvider, emulator: AlipayEmulator, receiver: Receiver
) -> None:
    await provider.create(order("OP-C-1", 100, receiver.url))
    await provider.close("OP-C-1")  # never scanned: "does not exist" is fine
    await provider.create(order("OP-C-2", 100, receiver.url))
    emulator.scan("OP-C-2")
    await provider.close("OP-C-2")
    assert (await provider.query("OP-C-2")).state == "CLOSED"
    await provider.create(order("OP-C-3", 100, receiver.url))
    await emulator.pay("OP-C-3")
    with pytest.raises(AlipayError) as refused:
        await provider.close("OP-C-3")
    assert refused.value.sub_code == "ACQ.TRADE_STATUS_ERROR"


async def test_refund_once_per_number_partial_then_whole(
    provider: AlipayProvider, emulator: AlipayEmulator, receiver: Receiver
) -> None:
    await provider.create(order("OP-R-1", 1000, receiver.url))
    await emulator.pay("OP-R-1")
    first = await provider.refund("OP-R-1", "OP-R-1-r1", 300, 1000, "meter removed")
    assert (first.state, first.out_refund_no, first.refund_fen) == ("REFUNDED", "OP-R-1-r1", 300)
    assert emulator.calls[-1][1]["refund_amount"] == "3.00"
    assert emulator.calls[-1][1]["out_request_no"] == "OP-R-1-r1"
    again = await provider.refund("OP-R-1", "OP-R-1-r1", 300, 1000, "meter removed")
    assert again.refund_fen == 300
    assert emulator.trades["OP-R-1"].refunds == {"OP-R-1-r1": 300}  # refunded once
    with pytest.raises(AlipayError):
        await provider.refund("OP-R-1", "OP-R-1-r2", 800, 1000, "too much")
    await provider.refund("OP-R-1", "OP-R-1-r3", 700, 1000, "the rest")
    assert (await provider.query("OP-R-1")).state == "REFUNDED"
    # Alipay notifies the closed trade with the refund: REFUNDED, the whole amount.
    await emulator.notify("OP-R-1")
    notice = receiver.notices[-1]
    assert (notice.state, notice.refund_fen, notice.out_refund_no) == (
        "REFUNDED",
        1000,
        "OP-R-1-r3",
    )
    with pytest.raises(RequestError) as refused:
        await provider.refund("OP-R-1", "OP-R-1-r4", 1001, 1000, "x")
    assert refused.value.field == "refund_fen"


async def test_a_refund_query_says_done_or_not_made(
    provider: AlipayProvider, emulator: AlipayEmulator, receiver: Receiver
) -> None:
    await provider.create(order("OP-Q-1", 1000, receiver.url))
    await emulator.pay("OP-Q-1")
    await provider.refund("OP-Q-1", "OP-Q-1-r1", 400, 1000, "x")
    done = await provider.query_refund("OP-Q-1", "OP-Q-1-r1")
    assert (done.state, done.out_refund_no, done.refund_fen, done.amount_fen) == (
        "REFUNDED",
        "OP-Q-1-r1",
        400,
        1000,
    )
    assert emulator.calls[-1][0] == "alipay.trade.fastpay.refund.query"
    with pytest.raises(AlipayError) as caught:
        await provider.query_refund("OP-Q-1", "OP-Q-1-r2")
    assert "send it again" in str(caught.value) and not caught.value.final


def test_business_refusals_are_final_service_trouble_is_not() -> None:
    assert AlipayError("m", "x", "40004", "ACQ.TRADE_STATUS_ERROR").final
    assert not AlipayError("m", "x", "40004", "ACQ.SYSTEM_ERROR").final
    assert not AlipayError("m", "x", "20000", "isp.unknow-error").final
    assert not AlipayError("m", "gateway unreachable").final


async def test_the_trade_bill_with_extra_and_missing_rows(
    provider: AlipayProvider, emulator: AlipayEmulator, receiver: Receiver
) -> None:
    for number, fen in (("OP-B-1", 1230), ("OP-B-2", 1), ("OP-B-3", 9_999_999_999)):
        await provider.create(order(number, fen, receiver.url))
        await emulator.pay(number, lost=True, at=PAID_AT)
    await provider.refund("OP-B-1", "OP-B-1-r1", 30, 1230, "x")
    extra = BillRow("OP-NOT-OURS", "2026120122001400000000000099", 5000, at=PAID_AT)
    emulator.publish_bill(BEIJING_DAY, extra=[extra], missing={"OP-B-2"})
    records = await provider.trade_bill(BEIJING_DAY)
    paid = {r.out_trade_no: r for r in records if r.state == "PAID"}
    assert set(paid) == {"OP-B-1", "OP-B-3", "OP-NOT-OURS"}  # OP-B-2 is missing there
    assert paid["OP-B-1"].amount_fen == 1230
    assert paid["OP-B-3"].amount_fen == 9_999_999_999
    assert paid["OP-B-1"].transaction_id == emulator.trades["OP-B-1"].trade_no
    assert paid["OP-B-1"].at == PAID_AT
    (refund,) = [r for r in records if r.state == "REFUNDED"]
    assert (refund.out_trade_no, refund.refund_fen) == ("OP-B-1", 30)
    # A day without a bill is an empty list, not an error.
    assert await provider.trade_bill(date(2026, 11, 30)) == []


async def test_a_forged_answer_is_not_believed(
    provider: AlipayProvider, emulator: AlipayEmulator, receiver: Receiver
) -> None:
    emulator.answer_key = new_key()  # someone between us and Alipay
    with pytest.raises(AlipayError) as refused:
        await provider.create(order("OP-F-1", 100, receiver.url))
    assert "signature" in str(refused.value)
    with pytest.raises(AlipayError):
        await provider.query("OP-F-1")


async def test_alipay_refuses_requests_we_sign_with_another_key(
    tmp_path: Path, emulator: AlipayEmulator, receiver: Receiver
) -> None:
    errors: list[FieldError] = []
    data = section(tmp_path, new_key(), emulator.public_key_pem, gateway=emulator.gateway)
    settings = parse_alipay(data, errors, tmp_path)
    assert settings is not None
    with pytest.raises(AlipayError) as refused:
        await AlipayProvider(settings).create(order("OP-K-1", 100, receiver.url))
    assert refused.value.code == "40002"
    assert emulator.refused == ["isv.invalid-signature"]
    assert emulator.trades == {}


async def test_an_unreachable_gateway_is_an_error_not_a_state(
    settings: AlipaySettings, receiver: Receiver
) -> None:
    gone = AlipayProvider(replace(settings, gateway="http://127.0.0.1:9/gateway.do"))
    with pytest.raises(AlipayError) as refused:
        await gone.query("OP-U-1")
    assert "unreachable" in str(refused.value)


async def test_requests_carry_the_common_parameters_in_beijing_time(
    settings: AlipaySettings, app_key: rsa.RSAPrivateKey
) -> None:
    fixed = datetime(2026, 12, 1, 16, 30, 0, tzinfo=UTC)
    provider = AlipayProvider(settings, clock=lambda: fixed)
    params = provider.client.signed_params(
        "alipay.trade.query", {"out_trade_no": "OP-1"}, notify_url=None
    )
    assert params["timestamp"] == "2026-12-02 00:30:00"
    assert {k: params[k] for k in ("format", "charset", "sign_type", "version")} == {
        "format": "JSON",
        "charset": "utf-8",
        "sign_type": "RSA2",
        "version": "1.0",
    }
    assert params["biz_content"] == '{"out_trade_no":"OP-1"}'
    assert "notify_url" not in params


async def test_concurrent_calls_do_not_mix(
    provider: AlipayProvider, emulator: AlipayEmulator, receiver: Receiver
) -> None:
    numbers = [f"OP-P-{i}" for i in range(8)]
    await asyncio.gather(
        *(provider.create(order(n, 100 + i, receiver.url)) for i, n in enumerate(numbers))
    )
    for number in numbers:
        emulator.scan(number)
    states = await asyncio.gather(*(provider.query(n) for n in numbers))
    assert [s.amount_fen for s in states] == [100 + i for i in range(8)]
