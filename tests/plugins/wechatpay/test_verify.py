"""`verify` of WeChat Pay callbacks: every refusal, both key modes, the mapping to notices,
and the answers. Notifications are made by the emulator with its own keys."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from openprepay.core.contracts import NotificationRefused, PaymentProvider
from tests.plugins.wechatpay.emulator import Merchant, WechatPayEmulator

NOW = datetime.now(UTC)


def paid(emulator: WechatPayEmulator, merchant: Merchant, total: int = 5000) -> dict[str, Any]:
    return {
        "appid": merchant.appid,
        "mchid": merchant.mchid,
        "out_trade_no": "OP20261202A101x01",
        "transaction_id": "4200002345202612021234567890",
        "trade_type": "NATIVE",
        "trade_state": "SUCCESS",
        "trade_state_desc": "支付成功",
        "bank_type": "OTHERS",
        "success_time": "2026-12-02T19:30:05+08:00",
        "payer": {"openid": "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"},
        "amount": {
            "total": total,
            "payer_total": total,
            "currency": "CNY",
            "payer_currency": "CNY",
        },
    }


def refused(provider: PaymentProvider, headers: dict[str, str], body: bytes, **kw: Any) -> str:
    with pytest.raises(NotificationRefused) as caught:
        provider.verify(headers, body, kw.get("now", datetime.now(UTC)))
    return caught.value.reason


@pytest.mark.parametrize("mode", ["public_key", "certificate"])
def test_a_payment_notification_verifies_and_maps_to_a_notice(
    provider: PaymentProvider, emulator: WechatPayEmulator, merchant: Merchant, mode: str
) -> None:
    note = emulator.notification(paid(emulator, merchant), sign_with=mode)
    notice = provider.verify(note.headers, note.body, datetime.now(UTC))
    assert notice.channel == "wechat"
    assert notice.state == "PAID"
    assert notice.out_trade_no == "OP20261202A101x01"
    assert notice.amount_fen == 5000 and notice.currency == "CNY"
    assert notice.transaction_id == "4200002345202612021234567890"
    assert (notice.merchant_id, notice.app_id) == (merchant.mchid, merchant.appid)
    assert notice.paid_at == datetime(2026, 12, 2, 11, 30, 5, tzinfo=UTC)
    assert notice.raw is not None and notice.raw["trade_type"] == "NATIVE"


def test_headers_are_read_whatever_their_case(
    provider: PaymentProvider, emulator: WechatPayEmulator, merchant: Merchant
) -> None:
    note = emulator.notification(paid(emulator, merchant))
    lower = {k.lower(): v for k, v in note.headers.items()}
    assert provider.verify(lower, note.body, datetime.now(UTC)).state == "PAID"


def test_switch_over_mixes_both_modes_and_both_verify(
    provider: PaymentProvider, emulator: WechatPayEmulator, merchant: Merchant
) -> None:
    # During the switch to the public key WeChat signs some callbacks with either.
    for mode in ["certificate", "public_key", "public_key", "certificate"]:
        note = emulator.notification(paid(emulator, merchant), sign_with=mode)
        assert provider.verify(note.headers, note.body, datetime.now(UTC)).state == "PAID"


@pytest.mark.parametrize("mode", ["public_key", "certificate"])
def test_only_the_configured_mode_verifies(
    section: dict[str, Any],
    make_provider: Callable[[dict[str, Any]], PaymentProvider],
    emulator: WechatPayEmulator,
    merchant: Merchant,
    mode: str,
) -> None:
    only = dict(section)
    if mode == "public_key":
        del only["platform_certificates"]
    else:
        del only["public_key_file"], only["public_key_id"]
    provider = make_provider(only)
    note = emulator.notification(paid(emulator, merchant), sign_with=mode)
    assert provider.verify(note.headers, note.body, datetime.now(UTC)).state == "PAID"
    other = "certificate" if mode == "public_key" else "public_key"
    note = emulator.notification(paid(emulator, merchant), sign_with=other)
    assert "unknown Wechatpay-Serial" in refused(provider, note.headers, note.body)


@pytest.mark.parametrize("mode", ["public_key", "certificate"])
def test_a_bad_signature_is_refused(
    provider: PaymentProvider, emulator: WechatPayEmulator, merchant: Merchant, mode: str
) -> None:
    note = emulator.notification(paid(emulator, merchant), sign_with=mode)
    # The body changed after signing (e.g. a proxy re-serialised it).
    reason = refused(provider, note.headers, note.body.replace(b'", "', b'","', 1))
    assert reason.startswith("bad signature")
    # The amount raised in transit: the ciphertext cannot be edited, but a signature
    # from another key over a forged body must fail too.
    forged = emulator.notification(paid(emulator, merchant, total=1), sign_with=mode)
    headers = dict(forged.headers, **{"Wechatpay-Signature": note.headers["Wechatpay-Signature"]})
    assert refused(provider, headers, forged.body).startswith("bad signature")


def test_a_signature_that_is_not_base64_is_refused(
    provider: PaymentProvider, emulator: WechatPayEmulator, merchant: Merchant
) -> None:
    note = emulator.notification(paid(emulator, merchant))
    headers = dict(note.headers, **{"Wechatpay-Signature": "%%%not base64%%%"})
    assert refused(provider, headers, note.body).startswith("bad signature")


@pytest.mark.parametrize("mode", ["public_key", "certificate"])
def test_signature_probes_are_refused(
    provider: PaymentProvider, emulator: WechatPayEmulator, merchant: Merchant, mode: str
) -> None:
    note = emulator.notification(paid(emulator, merchant), sign_with=mode, probe=True)
    assert "probe" in refused(provider, note.headers, note.body)


@pytest.mark.parametrize("offset_s", [-301, 301, -3600, 86_400])
def test_stale_or_future_timestamps_are_refused(
    provider: PaymentProvider, emulator: WechatPayEmulator, merchant: Merchant, offset_s: int
) -> None:
    # `now` is fixed: the result depends on the offset alone, never on how long the test takes.
    base = int(time.time())
    note = emulator.notification(paid(emulator, merchant), timestamp=base + offset_s)
    now = datetime.fromtimestamp(base, UTC)
    assert "stale timestamp" in refused(provider, note.headers, note.body, now=now)


def test_the_window_is_measured_from_the_callers_now(
    provider: PaymentProvider, emulator: WechatPayEmulator, merchant: Merchant
) -> None:
    note = emulator.notification(paid(emulator, merchant))
    at = datetime.fromtimestamp(int(note.headers["Wechatpay-Timestamp"]), UTC)
    assert provider.verify(note.headers, note.body, at + timedelta(seconds=299)).state == "PAID"
    reason = refused(provider, note.headers, note.body, now=at + timedelta(seconds=301))
    assert "stale" in reason


def test_a_configured_window_applies(
    section: dict[str, Any],
    make_provider: Callable[[dict[str, Any]], PaymentProvider],
    emulator: WechatPayEmulator,
    merchant: Merchant,
) -> None:
    provider = make_provider({**section, "notify_window_s": 60})
    base = int(time.time())
    note = emulator.notification(paid(emulator, merchant), timestamp=base - 90)
    now = datetime.fromtimestamp(base, UTC)
    assert "window 60 s" in refused(provider, note.headers, note.body, now=now)


def test_a_timestamp_that_is_not_a_number_is_refused(
    provider: PaymentProvider, emulator: WechatPayEmulator, merchant: Merchant
) -> None:
    note = emulator.notification(paid(emulator, merchant))
    headers = dict(note.headers, **{"Wechatpay-Timestamp": "1.7e9"})
    assert "not a Unix time" in refused(provider, headers, note.body)


def test_an_unknown_serial_is_refused_without_any_fetch(
    provider: PaymentProvider, emulator: WechatPayEmulator, merchant: Merchant
) -> None:
    for serial in ["5157F09EFDC096DE15EBE81A47057A7232F1B8E1", "PUB_KEY_ID_0000", "x" * 500]:
        note = emulator.notification(paid(emulator, merchant))
        headers = dict(note.headers, **{"Wechatpay-Serial": serial})
        assert "unknown Wechatpay-Serial" in refused(provider, headers, note.body)
    # verify() is CPU-only: the emulator saw no request at all (no /v3/certificates).
    assert emulator.calls == [] and emulator.refused == []


@pytest.mark.parametrize("mode", ["public_key", "certificate"])
def test_a_bad_gcm_tag_is_refused(
    provider: PaymentProvider, emulator: WechatPayEmulator, merchant: Merchant, mode: str
) -> None:
    note = emulator.notification(paid(emulator, merchant), sign_with=mode, bad_tag=True)
    assert "does not decrypt" in refused(provider, note.headers, note.body)


def test_a_resource_sealed_with_another_apiv3_key_is_refused(
    provider: PaymentProvider, emulator: WechatPayEmulator, merchant: Merchant
) -> None:
    emulator.merchant = Merchant(key=merchant.key, apiv3_key=b"Z" * 32)
    note = emulator.notification(paid(emulator, merchant))
    assert "does not decrypt" in refused(provider, note.headers, note.body)


def test_associated_data_is_authenticated(
    provider: PaymentProvider, emulator: WechatPayEmulator, merchant: Merchant
) -> None:
    resource = emulator.encrypt(paid(emulator, merchant), "transaction")
    resource["associated_data"] = "refund"
    body = json.dumps(
        {"id": "1", "event_type": "TRANSACTION.SUCCESS", "resource": resource}
    ).encode()
    headers = emulator.signed_headers(body)
    assert "does not decrypt" in refused(provider, headers, body)


def test_missing_headers_are_refused(
    provider: PaymentProvider, emulator: WechatPayEmulator, merchant: Merchant
) -> None:
    note = emulator.notification(paid(emulator, merchant))
    for name in [
        "Wechatpay-Timestamp",
        "Wechatpay-Nonce",
        "Wechatpay-Signature",
        "Wechatpay-Serial",
    ]:
        headers = {k: v for k, v in note.headers.items() if k != name}
        assert "missing" in refused(provider, headers, note.body)


def test_another_signature_type_is_refused(
    provider: PaymentProvider, emulator: WechatPayEmulator, merchant: Merchant
) -> None:
    note = emulator.notification(paid(emulator, merchant))
    headers = dict(note.headers, **{"Wechatpay-Signature-Type": "WECHATPAY2-SM2-WITH-SM3"})
    assert "Signature-Type" in refused(provider, headers, note.body)


def test_signed_but_malformed_contents_are_refused(
    provider: PaymentProvider, emulator: WechatPayEmulator, merchant: Merchant
) -> None:
    cases: list[tuple[dict[str, Any], str, str]] = []
    float_amount = paid(emulator, merchant)
    float_amount["amount"]["total"] = 50.0
    cases.append((float_amount, "TRANSACTION.SUCCESS", "whole number of fen"))
    no_id = paid(emulator, merchant)
    del no_id["transaction_id"]
    cases.append((no_id, "TRANSACTION.SUCCESS", "transaction_id"))
    cases.append((paid(emulator, merchant), "TRANSACTION.CLOSED", "not handled"))
    for obj, event, why in cases:
        note = emulator.notification(obj, event)
        assert why in refused(provider, note.headers, note.body)
    body = b"not json"
    assert "undecodable" in refused(provider, emulator.signed_headers(body), body)


def test_a_wrong_amount_is_reported_as_sent_for_the_core_to_flag(
    provider: PaymentProvider, emulator: WechatPayEmulator, merchant: Merchant
) -> None:
    # Verification proves WeChat sent it; matching it to our order is the core's job.
    note = emulator.notification(paid(emulator, merchant, total=1))
    assert provider.verify(note.headers, note.body, datetime.now(UTC)).amount_fen == 1


@pytest.mark.parametrize(
    ("status", "state"),
    [("SUCCESS", "REFUNDED"), ("ABNORMAL", "REFUND_ABNORMAL"), ("CLOSED", "REFUND_FAILED")],
)
def test_refund_notifications_map_to_notices(
    provider: PaymentProvider,
    emulator: WechatPayEmulator,
    merchant: Merchant,
    status: str,
    state: str,
) -> None:
    obj = {
        "mchid": merchant.mchid,
        "out_trade_no": "OP20261202A101x01",
        "transaction_id": "4200002345202612021234567890",
        "out_refund_no": "R20261202x01",
        "refund_id": "50000000382019052709732678859",
        "refund_status": status,
        "success_time": "2026-12-02T20:00:00+08:00",
        "user_received_account": "支付用户零钱",
        "amount": {"total": 5000, "refund": 1234, "payer_total": 5000, "payer_refund": 1234},
    }
    note = emulator.notification(obj, f"REFUND.{status}")
    notice = provider.verify(note.headers, note.body, datetime.now(UTC))
    assert notice.state == state
    assert (notice.out_refund_no, notice.refund_fen, notice.amount_fen) == (
        "R20261202x01",
        1234,
        5000,
    )
    assert notice.transaction_id == "4200002345202612021234567890"
    assert (notice.merchant_id, notice.app_id, notice.currency) == (
        merchant.mchid,
        merchant.appid,
        "CNY",
    )


def test_answers(provider: PaymentProvider) -> None:
    ok = provider.answer(True)
    assert (ok.status, ok.body) == (204, b"")
    no = provider.answer(False)
    assert no.status == 500 and no.content_type == "application/json"
    assert json.loads(no.body) == {"code": "FAIL", "message": "失败"}
