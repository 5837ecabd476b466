"""`WechatPayProvider`: the core's `PaymentProvider` for WeChat Pay API v3, direct merchant.

`verify` and `answer` are CPU-only (the callback must be answered within WeChat's 5 s);
the rest are signed API calls through `client.ApiClient`. Amounts cross this boundary as
integer fen both ways: WeChat's v3 API is in fen too, only the trade bill is in yuan.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from datetime import date, datetime, timedelta, timezone
from urllib.parse import quote, urlsplit

from openprepay.core.contracts import (
    NotifyAnswer,
    PaymentNotice,
    PaymentPrepared,
    PaymentRequest,
    TradeRecord,
)
from openprepay.core.errors import RequestError

from . import signing
from .bill import check_sha1, parse_trade_bill
from .client import ApiClient
from .errors import WechatPayError
from .notices import (
    CHANNEL,
    MalformedObject,
    refund_notice,
    transaction_notice,
    verify_notification,
)
from .settings import WechatSettings

#: The subset of characters every WeChat page allows in out_trade_no (payments.md §1).
OUT_TRADE_NO = re.compile(r"^[0-9A-Za-z_-]{6,32}$")
OUT_REFUND_NO = re.compile(r"^[0-9A-Za-z_|*@-]{1,64}$")
DESCRIPTION_BYTES = 127
CHINA = timezone(timedelta(hours=8))
#: WeChat's error code for an order it has never been given.
ORDER_NOT_EXIST = "ORDER_NOT_EXIST"
FAIL_BODY = json.dumps({"code": "FAIL", "message": "失败"}, ensure_ascii=False).encode()


class WechatPayProvider:
    channel = CHANNEL

    def __init__(self, settings: WechatSettings) -> None:
        self.settings = settings
        self.merchant_id = settings.mchid
        self.app_id = settings.appid
        self._api = ApiClient(settings)

    def __repr__(self) -> str:
        return f"WechatPayProvider(mchid={self.merchant_id}, base_url={self.settings.base_url})"

    # -- callbacks ------------------------------------------------------------------------
    def verify(self, headers: Mapping[str, str], body: bytes, now: datetime) -> PaymentNotice:
        return verify_notification(self.settings, headers, body, now)

    def answer(self, accepted: bool) -> NotifyAnswer:
        if accepted:
            return NotifyAnswer(204)
        # Any 4xx/5xx makes WeChat retry; this body is the one its documentation shows.
        return NotifyAnswer(500, FAIL_BODY, "application/json")

    # -- orders ---------------------------------------------------------------------------
    async def create(self, request: PaymentRequest) -> PaymentPrepared:
        body = self._order_body(request)
        if request.method == "native":
            answer = await self._api.call("POST", "/v3/pay/transactions/native", body)
            code_url = _field(answer, "code_url")
            return PaymentPrepared(code_url=code_url)
        body["payer"] = {"openid": request.payer_id}
        answer = await self._api.call("POST", "/v3/pay/transactions/jsapi", body)
        return PaymentPrepared(jsapi=self.jsapi_parameters(_field(answer, "prepay_id")))

    def jsapi_parameters(self, prepay_id: str) -> dict[str, str]:
        """What the page passes to WeixinJSBridge `getBrandWCPayRequest`, signed."""
        timestamp, nonce = str(int(time.time())), signing.nonce_str()
        package = f"prepay_id={prepay_id}"
        message = signing.jsapi_message(self.app_id, timestamp, nonce, package)
        return {
            "appId": self.app_id,
            "timeStamp": timestamp,
            "nonceStr": nonce,
            "package": package,
            "signType": "RSA",
            "paySign": signing.sign(self.settings.merchant_key, message),
        }

    def _order_body(self, request: PaymentRequest) -> dict[str, object]:
        """The order as WeChat wants it; input the API would refuse is refused here first,
        naming the field."""
        if request.method not in ("native", "jsapi"):
            raise RequestError(
                "method", f"WeChat Pay offers native or jsapi, not {request.method!r}"
            )
        if request.method == "jsapi" and not request.payer_id:
            raise RequestError("payer_id", "JSAPI needs the payer's openid (OAuth snsapi_base)")
        _out_trade_no(request.out_trade_no)
        if request.currency != "CNY":
            raise RequestError("currency", f"WeChat Pay takes CNY, not {request.currency!r}")
        if isinstance(request.amount_fen, bool) or not isinstance(request.amount_fen, int):
            raise RequestError("amount_fen", f"expected integer fen, got {request.amount_fen!r}")
        if request.amount_fen <= 0:
            raise RequestError("amount_fen", f"expected at least 1 fen, got {request.amount_fen}")
        if request.expires_at.tzinfo is None:
            raise RequestError("expires_at", "expected an aware time (with its offset)")
        notify = urlsplit(request.notify_url)
        if notify.scheme not in ("https", "http") or notify.query or len(request.notify_url) > 255:
            raise RequestError(
                "notify_url", "expected an https URL of at most 255 characters, no query string"
            )
        return {
            "appid": self.app_id,
            "mchid": self.merchant_id,
            "description": _cut(request.description, DESCRIPTION_BYTES),
            "out_trade_no": request.out_trade_no,
            # RFC 3339 in China time, as WeChat's own examples write it.
            "time_expire": request.expires_at.astimezone(CHINA).isoformat(timespec="seconds"),
            "notify_url": request.notify_url,
            "amount": {"total": request.amount_fen, "currency": "CNY"},
        }

    async def query(self, out_trade_no: str) -> PaymentNotice:
        _out_trade_no(out_trade_no)
        path = f"/v3/pay/transactions/out-trade-no/{out_trade_no}?mchid={quote(self.merchant_id)}"
        try:
            answer = await self._api.call("GET", path)
        except WechatPayError as exc:
            if exc.code != ORDER_NOT_EXIST:
                raise
            # WeChat never got the order (a crash or a lost answer between ours and its):
            # unpaid, as the contract wants, so it is asked again and closed at expiry.
            return self._not_paid(out_trade_no)
        try:
            return transaction_notice(answer if isinstance(answer, dict) else {})
        except MalformedObject as exc:
            raise WechatPayError("ANSWER", f"query of {out_trade_no}: {exc}") from None

    async def close(self, out_trade_no: str) -> None:
        _out_trade_no(out_trade_no)
        path = f"/v3/pay/transactions/out-trade-no/{out_trade_no}/close"
        try:
            await self._api.call("POST", path, {"mchid": self.merchant_id})
        except WechatPayError as exc:
            if exc.code != ORDER_NOT_EXIST:  # never created there: nothing to close
                raise

    def _not_paid(self, out_trade_no: str) -> PaymentNotice:
        return PaymentNotice(
            channel=CHANNEL,
            out_trade_no=out_trade_no,
            state="NOTPAY",
            amount_fen=0,
            currency="CNY",
            transaction_id=None,
            merchant_id=self.merchant_id,
            app_id=self.app_id,
            raw={"code": ORDER_NOT_EXIST},
        )

    async def refund(
        self, out_trade_no: str, out_refund_no: str, refund_fen: int, total_fen: int, reason: str
    ) -> PaymentNotice:
        _out_trade_no(out_trade_no)
        if not OUT_REFUND_NO.match(out_refund_no):
            raise RequestError("out_refund_no", "expected 1-64 of 0-9 A-Z a-z _ - | * @")
        if not 0 < refund_fen <= total_fen:
            raise RequestError(
                "refund_fen", f"expected 1..{total_fen} fen (the order's total), got {refund_fen}"
            )
        body: dict[str, object] = {
            "out_trade_no": out_trade_no,
            "out_refund_no": out_refund_no,
            "amount": {"refund": refund_fen, "total": total_fen, "currency": "CNY"},
        }
        if reason:
            body["reason"] = _cut(reason, 80)
        if not self.settings.refund_notify_url:
            # Without it WeChat tells nobody when the refund is done (only queries would).
            raise RequestError(
                "payments.wechat.refund_notify_url",
                "not configured: set it to the site's notify route, e.g. "
                '"https://pay.example.com/pay/notify/wechat"',
            )
        body["notify_url"] = self.settings.refund_notify_url
        answer = await self._api.call("POST", "/v3/refund/domestic/refunds", body)
        try:
            return refund_notice(
                answer if isinstance(answer, dict) else {}, self.merchant_id, self.app_id
            )
        except MalformedObject as exc:
            raise WechatPayError("ANSWER", f"refund {out_refund_no}: {exc}") from None

    async def query_refund(self, out_trade_no: str, out_refund_no: str) -> PaymentNotice:
        if not OUT_REFUND_NO.match(out_refund_no):
            raise RequestError("out_refund_no", "expected 1-64 of 0-9 A-Z a-z _ - | * @")
        answer = await self._api.call("GET", f"/v3/refund/domestic/refunds/{out_refund_no}")
        try:
            return refund_notice(
                answer if isinstance(answer, dict) else {}, self.merchant_id, self.app_id
            )
        except MalformedObject as exc:
            raise WechatPayError("ANSWER", f"refund query {out_refund_no}: {exc}") from None

    async def trade_bill(self, day: date) -> list[TradeRecord]:
        # Uncompressed: the SHA-1 WeChat gives is of the file itself.
        path = f"/v3/bill/tradebill?bill_date={day.isoformat()}&bill_type=ALL"
        answer = await self._api.call("GET", path)
        content = await self._api.download(_field(answer, "download_url"))
        check_sha1(content, _field(answer, "hash_type"), _field(answer, "hash_value"))
        return parse_trade_bill(content)


def _out_trade_no(value: str) -> None:
    if not isinstance(value, str) or not OUT_TRADE_NO.match(value):
        raise RequestError("out_trade_no", "expected 6-32 of 0-9 A-Z a-z _ -")


def _field(answer: object, key: str) -> str:
    value = answer.get(key) if isinstance(answer, dict) else None
    if not isinstance(value, str) or not value:
        raise WechatPayError("ANSWER", f"the answer has no {key}")
    return value


def _cut(text: str, limit: int) -> str:
    """`text` cut to `limit` UTF-8 bytes without splitting a character."""
    return text.encode()[:limit].decode("utf-8", "ignore")
