"""`AlipayProvider`: the `core.contracts.PaymentProvider` of channel "alipay".

create → alipay.trade.precreate (当面付 QR), query → alipay.trade.query, close →
alipay.trade.close, refund → alipay.trade.refund, trade_bill →
alipay.data.dataservice.bill.downloadurl.query + the zip. `verify` is CPU only.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, date, datetime

from openprepay.core.contracts import (
    NotifyAnswer,
    PaymentNotice,
    PaymentPrepared,
    PaymentRequest,
    TradeRecord,
)
from openprepay.core.errors import RequestError

from .amounts import beijing_time, to_fen, to_yuan
from .bill import parse_bill
from .client import AlipayClient, AlipayError
from .notification import CHANNEL, STATES, verify_notification
from .settings import AlipaySettings

#: Alipay's answer when a precreated QR was never scanned (the trade is created on scan).
NOT_EXIST = "ACQ.TRADE_NOT_EXIST"
#: The bill of a day without trades, or not generated yet.
BILL_EMPTY = ("isp.bill_not_exist",)
#: Alipay takes at most 64 characters; we keep to the set both providers accept.
OUT_TRADE_NO = re.compile(r"^[0-9A-Za-z_-]{1,64}$")
#: Subject is at most 256 characters at Alipay.
MAX_SUBJECT = 256
#: timeout_express: 1m .. 15d.
MAX_TIMEOUT_MIN = 15 * 24 * 60


class AlipayProvider:
    channel = CHANNEL

    def __init__(
        self, settings: AlipaySettings, clock: Callable[[], datetime] | None = None
    ) -> None:
        self.settings = settings
        self.merchant_id = settings.seller_id
        self.app_id = settings.app_id
        self.clock = clock or (lambda: datetime.now(UTC))
        self.client = AlipayClient(settings, self.clock)

    # -- callbacks ------------------------------------------------------------------------
    def verify(self, headers: Mapping[str, str], body: bytes, now: datetime) -> PaymentNotice:
        return verify_notification(self.settings, body, now)

    def answer(self, accepted: bool) -> NotifyAnswer:
        # Alipay stops resending only on the exact body "success"; anything else is a retry.
        if accepted:
            return NotifyAnswer(200, b"success", "text/plain")
        return NotifyAnswer(400, b"failure", "text/plain")

    # -- API calls ------------------------------------------------------------------------
    async def create(self, request: PaymentRequest) -> PaymentPrepared:
        if request.method != "qr":
            raise RequestError("method", f'Alipay offers "qr" (precreate), not {request.method!r}')
        if not OUT_TRADE_NO.match(request.out_trade_no):
            raise RequestError(
                "out_trade_no", f"Alipay takes 1-64 of [0-9A-Za-z_-], got {request.out_trade_no!r}"
            )
        if request.currency != "CNY":
            raise RequestError("currency", f"Alipay precreate takes CNY, got {request.currency!r}")
        left_s = (request.expires_at - self.clock()).total_seconds()
        if left_s < 60:
            raise RequestError("expires_at", "less than a minute left; Alipay's minimum is 1m")
        # Whole minutes, rounded down: Alipay never accepts a payment our order no longer would.
        minutes = min(math.floor(left_s / 60), MAX_TIMEOUT_MIN)
        biz = {
            "out_trade_no": request.out_trade_no,
            "total_amount": to_yuan(request.amount_fen, "amount_fen"),
            "subject": request.description[:MAX_SUBJECT],
            "timeout_express": f"{minutes}m",
        }
        body = await self.client.call("alipay.trade.precreate", biz, request.notify_url)
        code = body.get("qr_code")
        if not isinstance(code, str) or not code:
            raise AlipayError("alipay.trade.precreate", "answer has no qr_code")
        if body.get("out_trade_no", request.out_trade_no) != request.out_trade_no:
            raise AlipayError("alipay.trade.precreate", "answer is for another out_trade_no")
        return PaymentPrepared(code_url=code)

    async def query(self, out_trade_no: str) -> PaymentNotice:
        try:
            body = await self.client.call("alipay.trade.query", {"out_trade_no": out_trade_no})
        except AlipayError as exc:
            if exc.sub_code != NOT_EXIST:
                raise
            # Not scanned yet: Alipay creates the trade when the payer scans the QR.
            return self._notice(out_trade_no, "NOTPAY", 0, None, None, {})
        status = str(body.get("trade_status", ""))
        if status not in STATES:
            raise AlipayError("alipay.trade.query", f"unknown trade_status {status!r}")
        total_fen = to_fen(str(body.get("total_amount", "")), "total_amount", low_fen=1)
        state = STATES[status]
        paid = body.get("send_pay_date")
        paid_at = beijing_time(paid, "send_pay_date") if isinstance(paid, str) and paid else None
        if status == "TRADE_CLOSED" and paid_at is not None:
            state = "REFUNDED"  # closed after a payment: the whole amount went back
        return self._notice(
            str(body.get("out_trade_no") or out_trade_no),
            state,
            total_fen,
            str(body["trade_no"]) if body.get("trade_no") else None,
            paid_at,
            body,
        )

    async def close(self, out_trade_no: str) -> None:
        try:
            await self.client.call("alipay.trade.close", {"out_trade_no": out_trade_no})
        except AlipayError as exc:
            if exc.sub_code != NOT_EXIST:  # never scanned: nothing to close
                raise

    async def refund(
        self, out_trade_no: str, out_refund_no: str, refund_fen: int, total_fen: int, reason: str
    ) -> PaymentNotice:
        if isinstance(refund_fen, int) and isinstance(total_fen, int) and refund_fen > total_fen:
            raise RequestError("refund_fen", f"{refund_fen} fen is more than the total {total_fen}")
        biz = {
            "out_trade_no": out_trade_no,
            "refund_amount": to_yuan(refund_fen, "refund_fen"),
            # The same out_request_no again refunds once (Alipay answers fund_change N).
            "out_request_no": out_refund_no,
            "refund_reason": reason[:256],
        }
        body = await self.client.call("alipay.trade.refund", biz)
        notice = self._notice(
            out_trade_no,
            "REFUNDED",
            total_fen,
            str(body["trade_no"]) if body.get("trade_no") else None,
            None,
            body,
        )
        # Accepted is refunded at Alipay (synchronous); a repeat of the same out_request_no
        # answers fund_change "N" and refunds nothing more.
        return replace(notice, out_refund_no=out_refund_no, refund_fen=refund_fen)

    async def query_refund(self, out_trade_no: str, out_refund_no: str) -> PaymentNotice:
        """alipay.trade.fastpay.refund.query: an answer with the refund (refund_status
        REFUND_SUCCESS, or empty in older answers) is a refund done; none means Alipay did
        not refund it (the same number sent again refunds once)."""
        biz = {
            "out_trade_no": out_trade_no,
            "out_request_no": out_refund_no,
            "query_options": ["gmt_refund_pay"],
        }
        body = await self.client.call("alipay.trade.fastpay.refund.query", biz)
        status = str(body.get("refund_status") or "")
        if not body.get("refund_amount") or status not in ("", "REFUND_SUCCESS"):
            raise AlipayError(
                "alipay.trade.fastpay.refund.query",
                f"refund {out_refund_no} not made at Alipay (status {status or 'none'}): "
                "send it again",
            )
        refund_fen = to_fen(str(body["refund_amount"]), "refund_amount", low_fen=1)
        total_fen = to_fen(str(body.get("total_amount", "")), "total_amount", low_fen=1)
        notice = self._notice(
            str(body.get("out_trade_no") or out_trade_no),
            "REFUNDED",
            total_fen,
            str(body["trade_no"]) if body.get("trade_no") else None,
            None,
            body,
        )
        return replace(notice, out_refund_no=out_refund_no, refund_fen=refund_fen)

    async def trade_bill(self, day: date) -> list[TradeRecord]:
        biz = {"bill_type": "trade", "bill_date": day.isoformat()}
        try:
            body = await self.client.call("alipay.data.dataservice.bill.downloadurl.query", biz)
        except AlipayError as exc:
            if exc.sub_code in BILL_EMPTY:
                return []
            raise
        url = body.get("bill_download_url")
        if not isinstance(url, str) or not url:
            raise AlipayError("bill.downloadurl.query", "answer has no bill_download_url")
        return parse_bill(await self.client.download(url))

    def _notice(
        self,
        out_trade_no: str,
        state: str,
        amount_fen: int,
        transaction_id: str | None,
        paid_at: datetime | None,
        raw: Mapping[str, object],
    ) -> PaymentNotice:
        # Query and refund answers carry no seller_id: the signed answer to our own app's
        # call is about our merchant.
        return PaymentNotice(
            channel=CHANNEL,
            out_trade_no=out_trade_no,
            state=state,
            amount_fen=amount_fen,
            currency="CNY",
            transaction_id=transaction_id,
            merchant_id=self.merchant_id,
            app_id=self.app_id,
            paid_at=paid_at,
            raw=dict(raw),
        )
