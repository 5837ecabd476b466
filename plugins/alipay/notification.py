"""Alipay's asynchronous notification (异步通知): verified, then mapped to a `PaymentNotice`.

The body is `application/x-www-form-urlencoded`. Its signature covers every parameter but
`sign` and `sign_type`, sorted, joined `k=v&…` with the URL-decoded values, RSA2 with
Alipay's public key. Nothing of the body is believed before that check passes.

Freshness: Alipay defines no freshness rule and resends one notification (same `notify_id`)
for about 25 hours; whether `notify_time` changes between resends is not documented, so a
short window like WeChat's could refuse genuine resends. We refuse only a `notify_time`
more than `clock_skew_s` in the future or older than `notify_max_age_s` (48 h), and rely on
the core's idempotency (the trade number is the top-up reference, terminal states never go
back) for replays inside that window: a replayed genuine notice changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from urllib.parse import parse_qsl

from openprepay.core.contracts import NotificationRefused, PaymentNotice
from openprepay.core.errors import RequestError

from .amounts import beijing_time, to_fen
from .settings import AlipaySettings
from .signing import notification_content, verify

CHANNEL = "alipay"
#: trade_status → our state (TRADE_CLOSED becomes REFUNDED when the whole amount went back).
STATES = {
    "TRADE_SUCCESS": "PAID",
    "TRADE_FINISHED": "PAID",
    "TRADE_CLOSED": "CLOSED",
    "WAIT_BUYER_PAY": "NOTPAY",
}
#: A notification's body is a few hundred bytes; anything this big is not one.
MAX_BODY = 64 * 1024


def parse_form(body: bytes) -> dict[str, str]:
    """The form's fields, each once; `NotificationRefused` for anything else."""
    if len(body) > MAX_BODY:
        raise NotificationRefused(f"body of {len(body)} bytes")
    try:
        text = body.decode("ascii") if body.isascii() else body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True, errors="strict")
    except (UnicodeDecodeError, ValueError) as exc:
        raise NotificationRefused(f"not a form body: {exc}") from None
    fields: dict[str, str] = {}
    for key, value in pairs:
        if key in fields:
            # Two values for one name: which one was signed is ambiguous, so neither is.
            raise NotificationRefused(f"field {key!r} given twice")
        fields[key] = value
    return fields


def verify_notification(settings: AlipaySettings, body: bytes, now: datetime) -> PaymentNotice:
    fields = parse_form(body)
    signature = fields.get("sign")
    if not signature:
        raise NotificationRefused("no sign")
    if fields.get("sign_type", "RSA2") != "RSA2":
        raise NotificationRefused(f"sign_type {fields.get('sign_type')!r} (only RSA2)")
    if not verify(settings.alipay_public_key, notification_content(fields), signature):
        raise NotificationRefused("bad signature")
    # From here on the content is Alipay's word; what is malformed is still refused (the
    # core cannot act on it), and Alipay will resend it for a person to see in the log.
    try:
        return _notice(settings, fields, now)
    except RequestError as bad:
        raise NotificationRefused(f"signed but unusable: {bad}") from None


def _notice(settings: AlipaySettings, fields: Mapping[str, str], now: datetime) -> PaymentNotice:
    notify_time = fields.get("notify_time")
    if notify_time:
        sent = beijing_time(notify_time, "notify_time")
        age_s = (now - sent).total_seconds()
        if age_s < -settings.clock_skew_s:
            raise NotificationRefused(f"notify_time {notify_time} is in the future")
        if age_s > settings.notify_max_age_s:
            raise NotificationRefused(f"notify_time {notify_time} is older than Alipay resends")
    out_trade_no = fields.get("out_trade_no")
    if not out_trade_no:
        raise RequestError("out_trade_no", "missing")
    status = fields.get("trade_status", "")
    if status not in STATES:
        raise RequestError("trade_status", f"unknown trade_status {status!r}")
    total_fen = to_fen(fields.get("total_amount", ""), "total_amount", low_fen=1)
    refund_fen = to_fen(fields["refund_fee"], "refund_fee") if fields.get("refund_fee") else 0
    state = STATES[status]
    if status == "TRADE_CLOSED" and refund_fen and refund_fen == total_fen:
        state = "REFUNDED"
    paid = fields.get("gmt_payment")
    paid_at = beijing_time(paid, "gmt_payment") if paid else None
    return PaymentNotice(
        channel=CHANNEL,
        out_trade_no=out_trade_no,
        state=state,
        amount_fen=total_fen,
        currency=fields.get("trans_currency") or "CNY",
        transaction_id=fields.get("trade_no") or None,
        merchant_id=fields.get("seller_id", ""),
        app_id=fields.get("app_id", ""),
        paid_at=paid_at,
        # A refund's notification names the refund request (out_biz_no) and the fee refunded.
        out_refund_no=(fields.get("out_biz_no") or None) if refund_fen else None,
        refund_fen=refund_fen,
        raw=dict(fields),
    )
