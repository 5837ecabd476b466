"""A payment provider for tests: the `PaymentProvider` protocol with an HMAC-SHA256 signature
over `timestamp\\nnonce\\nbody\\n`, and a ledger of its own "payments" that `query` answers
from. It is a provider plugin for tests, not a mock of a server: the core cannot tell it
from WeChat Pay or Alipay, and the tests decide what the payer did (`pay`, `sign`).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

from openprepay.core.contracts import (
    NotificationRefused,
    NotifyAnswer,
    PaymentNotice,
    PaymentPrepared,
    PaymentProviderError,
    PaymentRequest,
    TradeRecord,
)
from openprepay.core.hookspecs import hookimpl

FRESH = timedelta(minutes=5)


class DoubleProvider:
    """Channel "test" (or another): orders opened, paid by the test, queried, closed."""

    def __init__(
        self,
        channel: str = "test",
        *,
        key: bytes = b"k" * 32,
        merchant_id: str = "M1",
        app_id: str = "A1",
    ) -> None:
        self.channel = channel
        self.merchant_id = merchant_id
        self.app_id = app_id
        self.key = key
        #: out_trade_no → the provider's word on it.
        self.orders: dict[str, PaymentNotice] = {}
        self.requests: list[PaymentRequest] = []
        self.closed: list[str] = []
        self.queries = 0
        #: out_refund_no → the provider's word on the refund.
        self.refunds: dict[str, PaymentNotice] = {}
        self.refund_calls = 0
        self.refund_queries = 0
        #: (message, final) to refuse refund calls with; None: accepted.
        self.refuse_refunds: tuple[str, bool] | None = None
        #: What the trade bill adds (paid there, unknown or uncredited here) and leaves out.
        self.bill_extra: list[TradeRecord] = []
        self.bill_missing: set[str] = set()

    # -- what the test does as the payer ---------------------------------------------------

    def pay(self, out_trade_no: str, *, amount_fen: int | None = None) -> PaymentNotice:
        """The payer pays: the provider's state becomes PAID with a new transaction id."""
        opened = self.orders[out_trade_no]
        paid = PaymentNotice(
            self.channel,
            out_trade_no,
            "PAID",
            opened.amount_fen if amount_fen is None else amount_fen,
            "CNY",
            "T" + secrets.token_hex(10),
            self.merchant_id,
            self.app_id,
            datetime.now(UTC),
        )
        self.orders[out_trade_no] = paid
        return paid

    def notification(
        self, notice: PaymentNotice, *, now: datetime | None = None, bad: bool = False
    ) -> tuple[dict[str, str], bytes]:
        """The callback the provider would send for `notice`: headers and raw body."""
        body = json.dumps(
            {
                "out_trade_no": notice.out_trade_no,
                "state": notice.state,
                "amount_fen": notice.amount_fen,
                "currency": notice.currency,
                "transaction_id": notice.transaction_id,
                "merchant_id": notice.merchant_id,
                "app_id": notice.app_id,
                # A refund's notification names the refund.
                "out_refund_no": notice.out_refund_no,
                "refund_fen": notice.refund_fen,
            }
        ).encode()
        ts = str(int((now or datetime.now(UTC)).timestamp()))
        nonce = secrets.token_hex(8)
        sig = self._sign(ts, nonce, body)
        if bad:
            sig = "0" * len(sig)
        return {"Test-Timestamp": ts, "Test-Nonce": nonce, "Test-Signature": sig}, body

    def _sign(self, ts: str, nonce: str, body: bytes) -> str:
        message = ts.encode() + b"\n" + nonce.encode() + b"\n" + body + b"\n"
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()

    # -- the PaymentProvider protocol ------------------------------------------------------

    def verify(self, headers: Mapping[str, str], body: bytes, now: datetime) -> PaymentNotice:
        lower = {k.lower(): v for k, v in headers.items()}
        try:
            ts, nonce, sig = (lower[f"test-{h}"] for h in ("timestamp", "nonce", "signature"))
        except KeyError as missing:
            raise NotificationRefused(f"header {missing} missing") from None
        if not hmac.compare_digest(sig, self._sign(ts, nonce, body)):
            raise NotificationRefused("bad signature")
        try:
            at = datetime.fromtimestamp(int(ts), UTC)
        except ValueError:
            raise NotificationRefused("bad timestamp") from None
        if abs(now - at) > FRESH:
            raise NotificationRefused("stale timestamp")
        data = json.loads(body)
        return PaymentNotice(
            self.channel,
            data["out_trade_no"],
            data["state"],
            int(data["amount_fen"]),
            data["currency"],
            data["transaction_id"],
            data["merchant_id"],
            data["app_id"],
            datetime.now(UTC) if data["state"] == "PAID" else None,
            out_refund_no=data.get("out_refund_no"),
            refund_fen=int(data.get("refund_fen") or 0),
            raw=data,
        )

    def answer(self, accepted: bool) -> NotifyAnswer:
        if accepted:
            return NotifyAnswer(204)
        return NotifyAnswer(500, b'{"code":"FAIL","message":"refused"}', "application/json")

    async def create(self, request: PaymentRequest) -> PaymentPrepared:
        self.requests.append(request)
        self.orders[request.out_trade_no] = PaymentNotice(
            self.channel,
            request.out_trade_no,
            "NOTPAY",
            request.amount_fen,
            request.currency,
            None,
            self.merchant_id,
            self.app_id,
        )
        return PaymentPrepared(code_url=f"test://pay/{request.out_trade_no}")

    async def query(self, out_trade_no: str) -> PaymentNotice:
        self.queries += 1
        return self.orders[out_trade_no]

    async def close(self, out_trade_no: str) -> None:
        self.closed.append(out_trade_no)
        opened = self.orders[out_trade_no]
        if opened.state == "NOTPAY":
            self.orders[out_trade_no] = PaymentNotice(
                self.channel,
                out_trade_no,
                "CLOSED",
                opened.amount_fen,
                "CNY",
                None,
                self.merchant_id,
                self.app_id,
            )

    async def refund(
        self, out_trade_no: str, out_refund_no: str, refund_fen: int, total_fen: int, reason: str
    ) -> PaymentNotice:
        """Accepted (PROCESSING) unless `refuse_refunds` says why not (`final` or not);
        the same number again answers what the first call did."""
        self.refund_calls += 1
        if self.refuse_refunds is not None:
            message, final = self.refuse_refunds
            error = PaymentProviderError(message)
            error.final = final
            raise error
        if out_refund_no not in self.refunds:
            paid = self.orders[out_trade_no]
            self.refunds[out_refund_no] = replace(
                paid, state="REFUND_PROCESSING", out_refund_no=out_refund_no, refund_fen=refund_fen
            )
        return self.refunds[out_refund_no]

    def finish_refund(self, out_refund_no: str, state: str = "REFUNDED") -> PaymentNotice:
        """The refund completes there (REFUNDED, REFUND_ABNORMAL, REFUND_FAILED)."""
        self.refunds[out_refund_no] = replace(self.refunds[out_refund_no], state=state)
        return self.refunds[out_refund_no]

    async def query_refund(self, out_trade_no: str, out_refund_no: str) -> PaymentNotice:
        self.refund_queries += 1
        return self.refunds[out_refund_no]

    async def trade_bill(self, day: date) -> list[TradeRecord]:
        rows = [
            TradeRecord(n.out_trade_no, n.transaction_id or "", n.state, n.amount_fen)
            for n in self.orders.values()
            if n.state == "PAID" and n.out_trade_no not in self.bill_missing
        ]
        rows += [
            TradeRecord(r.out_trade_no, r.transaction_id or "", "REFUNDED", 0, r.refund_fen)
            for r in self.refunds.values()
        ]
        return rows + list(self.bill_extra)


class DoublePlugin:
    """Registers the double as the site's provider when `[payments.test]` is present (the
    way a provider plugin answers `openprepay_payment_providers`); keeps what it made."""

    def __init__(self) -> None:
        self.made: list[DoubleProvider] = []

    @hookimpl
    def openprepay_payment_providers(self, site: Any) -> list[DoubleProvider]:
        section = (site.sections.get("payments") or {}).get("test")
        if not isinstance(section, dict):
            return []
        provider = DoubleProvider(key=str(section.get("key", "k" * 32)).encode())
        self.made.append(provider)
        return [provider]
