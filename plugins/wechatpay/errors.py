"""What the WeChat Pay plugin raises when an API call does not give a usable answer."""

from __future__ import annotations

from openprepay.core.contracts import PaymentProviderError

#: Error codes of a 4xx answer that are worth the same call later (WeChat's own advice).
RETRYABLE = frozenset({"SYSTEM_ERROR", "FREQUENCY_LIMITED", "NOT_ENOUGH", "BANK_ERROR"})


class WechatPayError(PaymentProviderError):
    """An API call failed: WeChat answered an error (`status`, its `code` such as
    ORDER_NOT_EXIST or ORDERPAID), the answer's signature did not verify, or the network
    failed (`status` 0). Nothing was believed from the answer."""

    def __init__(self, code: str, message: str, status: int = 0) -> None:
        super().__init__(f"WeChat Pay {code}: {message}" + (f" (HTTP {status})" if status else ""))
        self.code = code
        self.message = message
        self.status = status
        # A 4xx is WeChat's "no" to this request: the same call again fails again, but
        # for the codes that mean "later" (rate limit, merchant balance short, busy).
        self.final = 400 <= status < 500 and status != 429 and code not in RETRYABLE


class BillError(WechatPayError):
    """A trade bill that fails its SHA-1 check or cannot be read to the fen; `where` names
    the row and column."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__("BILL", f"{where}: {message}")
        self.where = where
