"""What the WeChat Pay plugin raises when an API call does not give a usable answer."""

from __future__ import annotations

from openprepay.core.contracts import PaymentProviderError


class WechatPayError(PaymentProviderError):
    """An API call failed: WeChat answered an error (`status`, its `code` such as
    ORDER_NOT_EXIST or ORDERPAID), the answer's signature did not verify, or the network
    failed (`status` 0). Nothing was believed from the answer."""

    def __init__(self, code: str, message: str, status: int = 0) -> None:
        super().__init__(f"WeChat Pay {code}: {message}" + (f" (HTTP {status})" if status else ""))
        self.code = code
        self.message = message
        self.status = status


class BillError(WechatPayError):
    """A trade bill that fails its SHA-1 check or cannot be read to the fen; `where` names
    the row and column."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__("BILL", f"{where}: {message}")
        self.where = where
