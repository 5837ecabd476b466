"""The provider against the emulator over real HTTP: orders (Native, JSAPI with its signed
parameters), query, close, refund, our request signatures and WeChat's answer signatures,
and notifications delivered to a callback receiver with the field's misbehaviours."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from openprepay.core.contracts import PaymentProvider, PaymentRequest
from openprepay.core.errors import RequestError
from openprepay.plugins.wechatpay.errors import WechatPayError
from tests.plugins.wechatpay.conftest import Receiver
from tests.plugins.wechatpay.emulator import Merchant, WechatPayEmulator, new_key, pem_private

OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"


def order(no: str, fen: int = 5000, method: str = "native", **kw: Any) -> PaymentRequest:
    return PaymentRequest(
        out_trade_no=no,
        amount_fen=fen,
        currency="CNY",
        description="电费充值 A-101",
        expires_at=datetime.now(UTC) + timedelta(minutes=15),
        method=method,
        notify_url=kw.pop("notify_url", "https://pay.example.com/pay/notify/wechat"),
        **kw,
    )


async def test_native_order_returns_the_code_url(
    provider: PaymentProvider, emulator: WechatPayEmulator, merchant: Merchant
) -> None:
    prepared = await provider.create(order("OP20261202A101n1", 5000))
    assert prepared.code_url is not None and prepared.code_url.startswith("weixin://wxpay/")
    assert prepared.jsapi is None
    kept = emulator.orders["OP20261202A101n1"]
    assert kept["amount"] == {"total": 5000, "currency": "CNY"}
    assert (kept["mchid"], kept["appid"]) == (merchant.mchid, merchant.appid)
    assert kept["time_expire"].endswith("+08:00")
    assert emulator.calls == [("POST", "/v3/pay/transactions/native")]
    # The same order again (a retry) gets the same code, not a second order.
    again = await provider.create(order("OP20261202A101n1", 5000))
    assert again.code_url == prepared.code_url and len(emulator.orders) == 1


async def test_jsapi_order_returns_parameters_signed_by_the_merchant(
    provider: PaymentProvider, emulator: WechatPayEmulator, merchant: Merchant
) -> None:
    prepared = await provider.create(order("OP20261202A101j1", 1990, "jsapi", payer_id=OPENID))
    params = prepared.jsapi
    assert params is not None and prepared.code_url is None
    prepay_id = emulator.orders["OP20261202A101j1"]["prepay_id"]
    assert emulator.orders["OP20261202A101j1"]["payer"] == {"openid": OPENID}
    assert params["appId"] == merchant.appid
    assert params["package"] == f"prepay_id={prepay_id}"
    assert params["signType"] == "RSA"
    assert params["timeStamp"].isdigit() and len(params["nonceStr"]) == 32
    # What WeChat's client checks: RSA-SHA256 over appId, timeStamp, nonceStr, package.
    message = (
        f"{params['appId']}\n{params['timeStamp']}\n{params['nonceStr']}\n{params['package']}\n"
    )
    merchant.key.public_key().verify(
        base64.b64decode(params["paySign"]), message.encode(), padding.PKCS1v15(), hashes.SHA256()
    )


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (order("OP20261202A101j2", method="jsapi"), "payer_id"),
        (order("OP20261202A101q1", method="qr"), "method"),
        (order("short"), "out_trade_no"),
        (order("OP2026 space here"), "out_trade_no"),
        (order("OP20261202A101z1", 0), "amount_fen"),
        (order("OP20261202A101q2", notify_url="https://x.example/n?room=A-101"), "notify_url"),
    ],
)
async def test_bad_orders_are_refused_naming_the_field_before_any_call(
    provider: PaymentProvider, emulator: WechatPayEmulator, request_: PaymentRequest, field: str
) -> None:
    with pytest.raises(RequestError) as caught:
        await provider.create(request_)
    assert caught.value.field == field
    assert emulator.calls == [] and emulator.orders == {}


async def test_a_long_description_is_cut_to_127_bytes_on_a_character_boundary(
    provider: PaymentProvider, emulator: WechatPayEmulator
) -> None:
    request = order("OP20261202A101d1")
    long = PaymentRequest(**{**_fields(request), "description": "电费" * 100})
    await provider.create(long)
    sent = emulator.orders["OP20261202A101d1"]["description"]
    assert len(sent.encode()) <= 127 and sent == "电费" * 21


def _fields(request: PaymentRequest) -> dict[str, Any]:
    return {name: getattr(request, name) for name in request.__slots__}


async def test_query_close_and_a_lost_notification(
    provider: PaymentProvider, emulator: WechatPayEmulator, merchant: Merchant
) -> None:
    await provider.create(order("OP20261202A101q3", 3000))
    unpaid = await provider.query("OP20261202A101q3")
    assert (unpaid.state, unpaid.amount_fen, unpaid.transaction_id) == ("NOTPAY", 3000, None)
    emulator.pay("OP20261202A101q3")
    assert await emulator.notify_paid("OP20261202A101q3", lost=True) == []
    found = await provider.query("OP20261202A101q3")  # the active query finds the payment
    assert found.state == "PAID" and found.amount_fen == 3000
    assert found.transaction_id == emulator.orders["OP20261202A101q3"]["transaction_id"]
    assert (found.merchant_id, found.app_id) == (merchant.mchid, merchant.appid)
    assert found.paid_at is not None and found.paid_at.tzinfo is not None
    with pytest.raises(WechatPayError) as paid:
        await provider.close("OP20261202A101q3")
    assert paid.value.code == "ORDERPAID"

    await provider.create(order("OP20261202A101q4", 100))
    await provider.close("OP20261202A101q4")
    closed = await provider.query("OP20261202A101q4")
    assert closed.state == "CLOSED"
    assert ("GET", "/v3/pay/transactions/out-trade-no/OP20261202A101q4?mchid=1900000109") in (
        emulator.calls
    )


async def test_an_order_wechat_never_got_is_not_paid_and_closes_quietly(
    provider: PaymentProvider, emulator: WechatPayEmulator
) -> None:
    """WeChat answers ORDER_NOT_EXIST (404): the contract's NOTPAY (the payment service asks
    again and closes it at expiry), and closing it is nothing to do."""
    notice = await provider.query("OP20261202NOSUCH")
    assert (notice.state, notice.transaction_id, notice.out_trade_no) == (
        "NOTPAY",
        None,
        "OP20261202NOSUCH",
    )
    assert (notice.merchant_id, notice.app_id) == (provider.merchant_id, provider.app_id)
    await provider.close("OP20261202NOSUCH")
    assert "OP20261202NOSUCH" not in emulator.orders


async def test_refund_is_accepted_then_its_notification_says_done(
    section: dict[str, Any],
    make_provider: Callable[[dict[str, Any]], PaymentProvider],
    emulator: WechatPayEmulator,
    receiver: Receiver,
) -> None:
    provider = make_provider({**section, "refund_notify_url": receiver.url})
    await provider.create(order("OP20261202A101r1", 5000))
    transaction = emulator.pay("OP20261202A101r1")
    accepted = await provider.refund("OP20261202A101r1", "RF20261202x1", 1234, 5000, "退租")
    assert accepted.state == "REFUND_PROCESSING"  # accepted, not done
    assert (accepted.out_refund_no, accepted.refund_fen, accepted.amount_fen) == (
        "RF20261202x1",
        1234,
        5000,
    )
    assert accepted.transaction_id == transaction["transaction_id"]
    # The same out_refund_no again refunds once.
    again = await provider.refund("OP20261202A101r1", "RF20261202x1", 1234, 5000, "退租")
    assert again.refund_fen == 1234 and len(emulator.refunds) == 1
    assert emulator.refunds["RF20261202x1"]["notify_url"] == receiver.url
    status, _ = await emulator.finish_refund("RF20261202x1")
    assert status == 204
    [done] = receiver.notices
    assert (done.state, done.out_refund_no, done.refund_fen) == ("REFUNDED", "RF20261202x1", 1234)
    assert (await provider.query("OP20261202A101r1")).state == "REFUNDED"


async def test_refund_input_is_checked_before_the_call(
    provider: PaymentProvider, emulator: WechatPayEmulator
) -> None:
    with pytest.raises(RequestError) as caught:
        await provider.refund("OP20261202A101r2", "RF1", 6000, 5000, "")
    assert caught.value.field == "refund_fen"
    with pytest.raises(RequestError) as caught:
        await provider.refund("OP20261202A101r2", "RF 1", 100, 5000, "")
    assert caught.value.field == "out_refund_no"
    assert emulator.calls == []


async def test_a_refund_wechat_refuses_is_an_error(
    section: dict[str, Any],
    make_provider: Callable[[dict[str, Any]], PaymentProvider],
    emulator: WechatPayEmulator,
    receiver: Receiver,
) -> None:
    provider = make_provider({**section, "refund_notify_url": receiver.url})
    await provider.create(order("OP20261202A101r3", 5000))
    with pytest.raises(WechatPayError) as caught:  # not paid
        await provider.refund("OP20261202A101r3", "RF20261202x3", 100, 5000, "")
    assert caught.value.code == "TRADE_ERROR" and caught.value.final  # the same again fails


async def test_a_refund_needs_the_refund_notify_url(
    provider: PaymentProvider, emulator: WechatPayEmulator
) -> None:
    with pytest.raises(RequestError) as caught:
        await provider.refund("OP20261202A101r4", "RF20261202x4", 100, 5000, "")
    assert caught.value.field == "payments.wechat.refund_notify_url"
    assert emulator.calls == []


async def test_a_refund_is_queried_until_done(
    section: dict[str, Any],
    make_provider: Callable[[dict[str, Any]], PaymentProvider],
    emulator: WechatPayEmulator,
    receiver: Receiver,
) -> None:
    provider = make_provider({**section, "refund_notify_url": receiver.url})
    await provider.create(order("OP20261202A101r5", 5000))
    emulator.pay("OP20261202A101r5")
    await provider.refund("OP20261202A101r5", "RF20261202x5", 700, 5000, "")
    asked = await provider.query_refund("OP20261202A101r5", "RF20261202x5")
    assert (asked.state, asked.out_refund_no, asked.refund_fen) == (
        "REFUND_PROCESSING",
        "RF20261202x5",
        700,
    )
    await emulator.finish_refund("RF20261202x5", "ABNORMAL")
    asked = await provider.query_refund("OP20261202A101r5", "RF20261202x5")
    assert asked.state == "REFUND_ABNORMAL"
    with pytest.raises(WechatPayError) as caught:
        await provider.query_refund("OP20261202A101r5", "RF-unknown")
    assert caught.value.code == "RESOURCE_NOT_EXISTS" and caught.value.final


def test_server_errors_and_later_codes_are_not_final() -> None:
    assert not WechatPayError("SYSTEM_ERROR", "busy", 500).final
    assert not WechatPayError("NOT_ENOUGH", "merchant balance", 403).final
    assert not WechatPayError("FREQUENCY_LIMITED", "slow down", 429).final
    assert not WechatPayError("NETWORK", "reset").final
    assert WechatPayError("INVALID_REQUEST", "no", 400).final


async def test_our_requests_are_signed_with_the_merchant_key(
    section: dict[str, Any],
    make_provider: Callable[[dict[str, Any]], PaymentProvider],
    emulator: WechatPayEmulator,
    tmp_path: Any,
) -> None:
    # A provider with another private key: the emulator checks our signature and refuses.
    (tmp_path / "wechat" / "other_key.pem").write_bytes(pem_private(new_key()))
    wrong = make_provider({**section, "private_key_file": "wechat/other_key.pem"})
    with pytest.raises(WechatPayError) as caught:
        await wrong.create(order("OP20261202A101s1"))
    assert (caught.value.code, caught.value.status) == ("SIGN_ERROR", 401)
    assert emulator.refused == ["the signature does not verify with the merchant's public key"]
    assert emulator.orders == {}


@pytest.mark.parametrize("mode", ["public_key", "certificate"])
async def test_answers_signed_by_either_configured_key_are_believed(
    provider: PaymentProvider, emulator: WechatPayEmulator, mode: str
) -> None:
    emulator.sign_with = mode
    prepared = await provider.create(order("OP20261202A101m1"))
    assert prepared.code_url


async def test_an_answer_with_a_forged_signature_is_not_believed(
    provider: PaymentProvider, emulator: WechatPayEmulator
) -> None:
    await provider.create(order("OP20261202A101f1"))
    emulator.pay("OP20261202A101f1")
    emulator.forge_answers = True  # someone between us and WeChat
    with pytest.raises(WechatPayError) as caught:
        await provider.query("OP20261202A101f1")
    assert caught.value.code == "RESPONSE_SIGNATURE"


async def test_an_unreachable_api_is_a_network_error(
    section: dict[str, Any], make_provider: Callable[[dict[str, Any]], PaymentProvider]
) -> None:
    provider = make_provider({**section, "base_url": "http://127.0.0.1:9", "timeout_s": 2})
    with pytest.raises(WechatPayError) as caught:
        await provider.query("OP20261202A101u1")
    assert caught.value.code == "NETWORK"


# -- notifications over HTTP ------------------------------------------------------------------


async def test_paid_notification_reaches_the_receiver_and_is_answered_204(
    provider: PaymentProvider, emulator: WechatPayEmulator, receiver: Receiver
) -> None:
    await provider.create(order("OP20261202A101h1", 5000, notify_url=receiver.url))
    emulator.pay("OP20261202A101h1")
    assert await emulator.notify_paid("OP20261202A101h1") == [(204, b"")]
    [notice] = receiver.notices
    assert (notice.out_trade_no, notice.state, notice.amount_fen) == (
        "OP20261202A101h1",
        "PAID",
        5000,
    )


async def test_two_copies_within_a_second_both_verify_with_one_transaction_id(
    provider: PaymentProvider, emulator: WechatPayEmulator, receiver: Receiver
) -> None:
    # Both are genuine: crediting once is the core's (idempotency on transaction_id).
    await provider.create(order("OP20261202A101h2", 5000, notify_url=receiver.url))
    emulator.pay("OP20261202A101h2")
    answers = await emulator.notify_paid("OP20261202A101h2", copies=2)
    assert [status for status, _ in answers] == [204, 204]
    assert len({n.transaction_id for n in receiver.notices}) == 1 and len(receiver.notices) == 2


@pytest.mark.parametrize(("misbehaviour", "reason"), [("probe", "probe"), ("stale", "stale")])
async def test_probe_and_stale_notifications_are_answered_with_an_error(
    provider: PaymentProvider,
    emulator: WechatPayEmulator,
    receiver: Receiver,
    misbehaviour: str,
    reason: str,
) -> None:
    await provider.create(order("OP20261202A101h3", 5000, notify_url=receiver.url))
    emulator.pay("OP20261202A101h3")
    [(status, body)] = await emulator.notify_paid("OP20261202A101h3", **{misbehaviour: True})
    assert status == 500 and b'"FAIL"' in body
    assert receiver.notices == [] and reason in receiver.refused[0]


async def test_a_wrong_amount_arrives_as_sent(
    provider: PaymentProvider, emulator: WechatPayEmulator, receiver: Receiver
) -> None:
    await provider.create(order("OP20261202A101h4", 5000, notify_url=receiver.url))
    emulator.pay("OP20261202A101h4")
    await emulator.notify_paid("OP20261202A101h4", amount_fen=1)
    [notice] = receiver.notices
    assert notice.amount_fen == 1  # ≠ the order's 5000: the core marks the order in conflict


async def test_the_emulator_resends_on_the_compressed_schedule_until_answered(
    provider: PaymentProvider, emulator: WechatPayEmulator
) -> None:
    # A callback endpoint that is down twice, then verifies and accepts.
    answers = [500, 503]
    notices = []

    async def flaky(request: web.Request) -> web.Response:
        body = await request.read()
        if answers:
            return web.Response(status=answers.pop(0))
        notices.append(provider.verify(request.headers, body, datetime.now(UTC)))
        return web.Response(status=provider.answer(True).status)

    app = web.Application()
    app.router.add_post("/pay/notify/wechat", flaky)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/pay/notify/wechat"
    try:
        await provider.create(order("OP20261202A101w1", 800, notify_url=url))
        emulator.pay("OP20261202A101w1")
        assert await emulator.notify_with_retries("OP20261202A101w1") == [500, 503, 204]
    finally:
        await runner.cleanup()
    [notice] = notices
    assert (notice.state, notice.amount_fen) == ("PAID", 800)
