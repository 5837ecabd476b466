"""Alipay's notifications: believed only when Alipay signed them, mapped exactly, and
answered with the literal `success`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from openprepay.core.contracts import NotificationRefused, PaymentProvider
from openprepay.plugins.alipay.amounts import BEIJING, TIME_FORMAT
from openprepay.plugins.alipay.provider import AlipayProvider
from openprepay.plugins.alipay.settings import AlipaySettings
from tests.plugins.alipay.conftest import APP_ID, SELLER_ID
from tests.plugins.alipay.emulator import AlipayEmulator, new_key

NOW = datetime(2026, 12, 2, 2, 0, 5, tzinfo=UTC)  # 10:00:05 in Beijing
FORM = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}


@pytest.fixture
def alipay(app_key: rsa.RSAPrivateKey) -> AlipayEmulator:
    """The emulator's signing, no server needed."""
    return AlipayEmulator(APP_ID, SELLER_ID, app_key.public_key())


@pytest.fixture
def offline(app_key: rsa.RSAPrivateKey, alipay: AlipayEmulator) -> AlipayProvider:
    settings = AlipaySettings(APP_ID, SELLER_ID, app_key, alipay.key.public_key())
    return AlipayProvider(settings)


def fields(**overrides: str) -> dict[str, str]:
    base = {
        "gmt_create": "2026-12-02 09:59:40",
        "charset": "utf-8",
        "subject": "电费 A-101",
        "buyer_id": "2088102177846880",
        "notify_id": "2026120200222100005012345678",
        "fund_bill_list": '[{"amount":"12.30","fundChannel":"ALIPAYACCOUNT"}]',
        "notify_type": "trade_status_sync",
        "trade_status": "TRADE_SUCCESS",
        "app_id": APP_ID,
        "seller_id": SELLER_ID,
        "gmt_payment": "2026-12-02 10:00:01",
        "notify_time": "2026-12-02 10:00:02",
        "version": "1.0",
        "out_trade_no": "OP20261202A101x7Kq",
        "total_amount": "12.30",
        "trade_no": "2026120222001412345678901234",
        "buyer_logon_id": "159****5620",
    }
    base.update(overrides)
    return base


def test_the_provider_fits_the_contract(offline: AlipayProvider) -> None:
    assert isinstance(offline, PaymentProvider)
    assert (offline.channel, offline.merchant_id, offline.app_id) == ("alipay", SELLER_ID, APP_ID)


def test_a_signed_payment_is_decoded_exactly(
    offline: AlipayProvider, alipay: AlipayEmulator
) -> None:
    notice = offline.verify(FORM, alipay.signed_body(fields()), NOW)
    assert notice.channel == "alipay"
    assert notice.state == "PAID"
    assert notice.out_trade_no == "OP20261202A101x7Kq"
    assert notice.amount_fen == 1230
    assert notice.currency == "CNY"
    assert notice.transaction_id == "2026120222001412345678901234"
    assert (notice.merchant_id, notice.app_id) == (SELLER_ID, APP_ID)
    assert notice.paid_at == datetime(2026, 12, 2, 10, 0, 1, tzinfo=BEIJING)
    assert notice.paid_at == datetime(2026, 12, 2, 2, 0, 1, tzinfo=UTC)
    assert notice.raw is not None and notice.raw["subject"] == "电费 A-101"
    # Values are URL-decoded before they are signed-checked: JSON, Chinese, '*' all pass.
    assert notice.raw["fund_bill_list"].startswith('[{"amount"')


@pytest.mark.parametrize(
    ("status", "extra", "state"),
    [
        ("TRADE_SUCCESS", {}, "PAID"),
        ("TRADE_FINISHED", {}, "PAID"),
        ("WAIT_BUYER_PAY", {"gmt_payment": ""}, "NOTPAY"),
        ("TRADE_CLOSED", {"gmt_payment": ""}, "CLOSED"),
        ("TRADE_CLOSED", {"refund_fee": "12.30", "out_biz_no": "R1"}, "REFUNDED"),
        ("TRADE_SUCCESS", {"refund_fee": "2.30", "out_biz_no": "R1"}, "PAID"),
    ],
)
def test_trade_status_maps_to_our_states(
    offline: AlipayProvider,
    alipay: AlipayEmulator,
    status: str,
    extra: dict[str, str],
    state: str,
) -> None:
    body = alipay.signed_body(fields(trade_status=status, **extra))
    notice = offline.verify(FORM, body, NOW)
    assert notice.state == state
    if "refund_fee" in extra:
        assert notice.out_refund_no == "R1"
        assert notice.refund_fen == int(extra["refund_fee"].replace(".", ""))
    else:
        assert (notice.out_refund_no, notice.refund_fen) == (None, 0)


def refused(provider: AlipayProvider, body: bytes, now: datetime = NOW) -> str:
    with pytest.raises(NotificationRefused) as caught:
        provider.verify(FORM, body, now)
    return caught.value.reason


def test_a_signature_by_another_key_is_refused(
    offline: AlipayProvider, alipay: AlipayEmulator
) -> None:
    assert refused(offline, alipay.signed_body(fields(), key=new_key())) == "bad signature"


def test_a_notification_signed_with_the_apps_own_key_is_refused(
    offline: AlipayProvider, alipay: AlipayEmulator, app_key: rsa.RSAPrivateKey
) -> None:
    """Verification uses Alipay's public key, never the app's."""
    assert refused(offline, alipay.signed_body(fields(), key=app_key)) == "bad signature"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("total_amount", "1230.00"),
        ("out_trade_no", "OP20261202A102x7Kq"),
        ("trade_status", "TRADE_SUCCESS "),
        ("seller_id", "2088000000000000"),
        ("app_id", "2021000999999999"),
    ],
)
def test_any_field_changed_after_signing_is_refused(
    offline: AlipayProvider, alipay: AlipayEmulator, field: str, value: str
) -> None:
    body = alipay.signed_body(fields()).decode()
    original = urlencode({field: fields()[field]})
    assert original in body
    tampered = body.replace(original, urlencode({field: value})).encode()
    assert refused(offline, tampered) == "bad signature"


def test_an_added_field_is_refused(offline: AlipayProvider, alipay: AlipayEmulator) -> None:
    body = alipay.signed_body(fields()) + b"&refund_fee=12.30"
    assert refused(offline, body) == "bad signature"


def test_without_sign_or_with_another_sign_type_it_is_refused(
    offline: AlipayProvider, alipay: AlipayEmulator
) -> None:
    assert refused(offline, urlencode(fields()).encode()) == "no sign"
    body = alipay.signed_body(fields()).replace(b"sign_type=RSA2", b"sign_type=RSA")
    assert "RSA2" in refused(offline, body)
    body = alipay.signed_body(fields()).replace(b"&sign=", b"&sign=%21%21")
    assert refused(offline, body) == "bad signature"


def test_a_field_given_twice_is_refused(offline: AlipayProvider, alipay: AlipayEmulator) -> None:
    """Two values for one name: which one did Alipay sign? Neither is believed."""
    body = alipay.signed_body(fields()) + b"&total_amount=99.00"
    assert "twice" in refused(offline, body)


@pytest.mark.parametrize(
    "body", [b"", b'{"trade_status":"TRADE_SUCCESS"}', b"\xff\xfe=1", b"a" * 70_000]
)
def test_what_is_not_a_form_is_refused(offline: AlipayProvider, body: bytes) -> None:
    refused(offline, body)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("total_amount", "12.3456"),
        ("total_amount", "0.00"),
        ("total_amount", "1e3"),
        ("trade_status", "TRADE_PENDING"),
        ("gmt_payment", "yesterday"),
        ("out_trade_no", ""),
    ],
)
def test_signed_but_unusable_content_is_refused(
    offline: AlipayProvider, alipay: AlipayEmulator, field: str, value: str
) -> None:
    reason = refused(offline, alipay.signed_body(fields(**{field: value})))
    assert field in reason


def test_notify_time_far_off_is_refused_but_a_day_old_resend_is_not(
    offline: AlipayProvider, alipay: AlipayEmulator
) -> None:
    body = alipay.signed_body(fields())
    sent = datetime(2026, 12, 2, 10, 0, 2, tzinfo=BEIJING)
    # Alipay resends for about 25 hours: a genuine resend a day later still passes.
    assert offline.verify(FORM, body, sent + timedelta(hours=25)).state == "PAID"
    assert "older" in refused(offline, body, sent + timedelta(hours=49))
    assert "future" in refused(offline, body, sent - timedelta(minutes=11))
    # A few minutes of clock skew between Alipay and the edge box is tolerated.
    assert offline.verify(FORM, body, sent - timedelta(minutes=5)).state == "PAID"


def test_answers_are_the_literal_words_alipay_reads(offline: AlipayProvider) -> None:
    accepted = offline.answer(True)
    assert (accepted.status, accepted.body) == (200, b"success")
    assert accepted.content_type == "text/plain"
    refused_answer = offline.answer(False)
    assert refused_answer.body == b"failure"
    assert refused_answer.body != b"success"


def test_timestamps_in_notifications_are_beijing_time() -> None:
    assert (
        datetime(2026, 12, 2, 2, 0, 2, tzinfo=UTC).astimezone(BEIJING).strftime(TIME_FORMAT)
        == (fields()["notify_time"])
    )
