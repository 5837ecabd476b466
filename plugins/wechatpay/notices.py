"""A WeChat Pay callback → a `PaymentNotice`, or `NotificationRefused`.

Checks, cheapest first, all before anything is believed: the four `Wechatpay-*` headers are
there; the signature is not a `WECHATPAY/SIGNTEST` probe; the timestamp is within the
freshness window of `now` (a replayed capture is stale); the serial names a configured key;
RSA-SHA256 verifies over `timestamp\\nnonce\\nraw body\\n`; the resource decrypts with
AES-256-GCM under the APIv3 key (the tag authenticates it); its fields have their types.

The mapping of a decrypted transaction or refund object is shared with the API answers
(`query`, `refund`), which carry the same objects.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from openprepay.core.contracts import NotificationRefused, PaymentNotice

from . import signing
from .settings import WechatSettings

CHANNEL = "wechat"
PROBE_PREFIX = "WECHATPAY/SIGNTEST"

#: trade_state of a transaction → our state. USERPAYING/PAYERROR/REVOKED belong to
#: payment-code pay, which we do not use; they are mapped for completeness.
TRADE_STATES = {
    "SUCCESS": "PAID",
    "NOTPAY": "NOTPAY",
    "USERPAYING": "NOTPAY",
    "CLOSED": "CLOSED",
    "REVOKED": "CLOSED",
    "PAYERROR": "CLOSED",
    # 转入退款: it was paid and a refund was made.
    "REFUND": "REFUNDED",
}
REFUND_STATES = {
    "PROCESSING": "REFUND_PROCESSING",
    "SUCCESS": "REFUNDED",
    "CLOSED": "REFUND_FAILED",
    "ABNORMAL": "REFUND_ABNORMAL",
}


class MalformedObject(ValueError):
    """A transaction or refund object without a field we need, or of the wrong type."""


def verify_notification(
    settings: WechatSettings, headers: Mapping[str, str], body: bytes, now: datetime
) -> PaymentNotice:
    fields = {k.lower(): v for k, v in headers.items()}
    timestamp = fields.get("wechatpay-timestamp", "")
    nonce = fields.get("wechatpay-nonce", "")
    signature = fields.get("wechatpay-signature", "")
    serial = fields.get("wechatpay-serial", "")
    if not (timestamp and nonce and signature and serial):
        raise NotificationRefused("missing Wechatpay-Timestamp/Nonce/Signature/Serial header")
    if signature.startswith(PROBE_PREFIX):
        raise NotificationRefused("signature probe (WECHATPAY/SIGNTEST)")
    kind = fields.get("wechatpay-signature-type", signing.SCHEMA)
    if kind != signing.SCHEMA:
        raise NotificationRefused(f"unsupported Wechatpay-Signature-Type {kind[:40]!r}")
    check_fresh(timestamp, now.timestamp(), settings.notify_window_s)
    key = signing.key_for(settings.verification_keys, serial)
    if key is None:
        # Never fetched: the serial is the sender's to choose.
        raise NotificationRefused(f"unknown Wechatpay-Serial {serial[:80]!r}")
    if not signing.check(key, signing.wechat_message(timestamp, nonce, body), signature):
        raise NotificationRefused(f"bad signature (key {serial[:80]})")
    try:
        envelope = json.loads(body)
        event_type = envelope["event_type"]
        resource = envelope["resource"]
        plain = decrypt_resource(settings.apiv3_key, resource)
    except (ValueError, KeyError, TypeError) as exc:
        raise NotificationRefused(f"undecodable notification: {exc}") from None
    try:
        if event_type == "TRANSACTION.SUCCESS":
            return transaction_notice(plain)
        if isinstance(event_type, str) and event_type.startswith("REFUND."):
            return refund_notice(plain, settings.mchid, settings.appid)
    except MalformedObject as exc:
        raise NotificationRefused(f"malformed {event_type} resource: {exc}") from None
    raise NotificationRefused(f"event_type {str(event_type)[:40]!r} is not handled")


def check_fresh(timestamp: str, now_s: float, window_s: int) -> None:
    if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
        raise NotificationRefused(f"Wechatpay-Timestamp is not a Unix time: {timestamp[:20]!r}")
    age = now_s - int(timestamp)
    if abs(age) > window_s:
        raise NotificationRefused(f"stale timestamp: {age:.0f} s from now, window {window_s} s")


def decrypt_resource(apiv3_key: bytes, resource: Any) -> dict[str, Any]:
    """The decrypted JSON object of an `encrypt-resource`; ValueError when it does not
    decrypt (wrong key, tampered ciphertext or tag) or is not a JSON object."""
    if not isinstance(resource, dict):
        raise ValueError("resource is not an object")
    if resource.get("algorithm") != "AEAD_AES_256_GCM":
        raise ValueError(f"unsupported algorithm {str(resource.get('algorithm'))[:40]!r}")
    nonce = resource.get("nonce")
    ciphertext = resource.get("ciphertext")
    associated = resource.get("associated_data") or ""
    if not isinstance(nonce, str) or not isinstance(ciphertext, str):
        raise ValueError("resource nonce/ciphertext missing")
    if not isinstance(associated, str):
        raise ValueError("resource associated_data is not text")
    try:
        sealed = base64.b64decode(ciphertext, validate=True)
        plain = AESGCM(apiv3_key).decrypt(nonce.encode(), sealed, associated.encode())
    except (InvalidTag, binascii.Error):
        raise ValueError("resource does not decrypt with the APIv3 key (bad tag)") from None
    obj = json.loads(plain)
    if not isinstance(obj, dict):
        raise ValueError("decrypted resource is not an object")
    return obj


def transaction_notice(obj: Mapping[str, Any]) -> PaymentNotice:
    """A transaction object (notification resource or query answer) as a notice."""
    trade_state = _text(obj, "trade_state")
    state = TRADE_STATES.get(trade_state)
    if state is None:
        raise MalformedObject(f"unknown trade_state {trade_state[:40]!r}")
    amount = obj.get("amount")
    if not isinstance(amount, dict):
        raise MalformedObject("amount missing")
    transaction_id = obj.get("transaction_id") or None
    # Only a payment has a transaction id (an order closed unpaid has none).
    if state in ("PAID", "REFUNDED") and not isinstance(transaction_id, str):
        raise MalformedObject("transaction_id missing")
    success_time = obj.get("success_time")
    return PaymentNotice(
        channel=CHANNEL,
        out_trade_no=_text(obj, "out_trade_no"),
        state=state,
        amount_fen=_fen(amount, "total"),
        currency=_text(amount, "currency", "CNY"),
        transaction_id=transaction_id if isinstance(transaction_id, str) else None,
        merchant_id=_text(obj, "mchid"),
        app_id=_text(obj, "appid"),
        paid_at=_time(success_time) if success_time else None,
        raw=dict(obj),
    )


def refund_notice(obj: Mapping[str, Any], mchid: str, appid: str) -> PaymentNotice:
    """A refund object (REFUND.* resource or refund answer) as a notice. Refund objects
    carry no appid (and API answers no mchid): the merchant's own are given, since the
    signature under this merchant's keys is what binds them."""
    # Notifications say refund_status, API answers say status.
    status = obj.get("refund_status", obj.get("status"))
    amount = obj.get("amount")
    if not isinstance(status, str) or not isinstance(amount, dict):
        raise MalformedObject("refund_status/amount missing")
    if status in REFUND_STATES:
        state = REFUND_STATES[status]
    else:
        raise MalformedObject(f"unknown refund status {status[:40]!r}")
    sent_mchid = obj.get("mchid")
    return PaymentNotice(
        channel=CHANNEL,
        out_trade_no=_text(obj, "out_trade_no"),
        state=state,
        amount_fen=_fen(amount, "total"),
        currency=_text(amount, "currency", "CNY"),
        transaction_id=_text(obj, "transaction_id"),
        merchant_id=sent_mchid if isinstance(sent_mchid, str) and sent_mchid else mchid,
        app_id=appid,
        out_refund_no=_text(obj, "out_refund_no"),
        refund_fen=_fen(amount, "refund"),
        raw=dict(obj),
    )


def _text(obj: Mapping[str, Any], key: str, default: str | None = None) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str) or not value:
        raise MalformedObject(f"{key} missing or not text")
    return value


def _fen(obj: Mapping[str, Any], key: str) -> int:
    value = obj.get(key)
    # Integer fen on the wire; a float or a string here is not a WeChat amount.
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MalformedObject(f"amount.{key} is not a whole number of fen: {value!r}")
    return value


def _time(value: Any) -> datetime:
    if not isinstance(value, str):
        raise MalformedObject("success_time is not text")
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        raise MalformedObject(f"success_time is not RFC 3339: {value[:40]!r}") from None
    if at.tzinfo is None:
        raise MalformedObject(f"success_time has no offset: {value[:40]!r}")
    return at
