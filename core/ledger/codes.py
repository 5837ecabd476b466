"""Ledger account codes (domain.md §5.1): the fixed accounts and the per-account ones."""

from __future__ import annotations

import re

from .errors import RequestError
from .values import WalletKind

REFUND_PAYABLE = "liab:refund_payable"
SUSPENSE = "liab:suspense"
OPENING_BALANCE = "equity:opening_balance"
PSP_FEE = "exp:psp_fee"
REVENUE_STREAMS = (
    "electricity",
    "water",
    "public_energy",
    "property",
    "rent",
    "service",
    "late_fee",
)
ACCOUNT_TYPES = ("asset", "liab", "equity", "rev", "exp")
CODE_PATTERN = re.compile(r"^(asset|liab|equity|rev|exp):[A-Za-z0-9_.\-]+(:[A-Za-z0-9_.\-]+)*$")
_CHANNEL = re.compile(r"^[a-z0-9_]{1,32}$")


def wallet_code(account_id: str, kind: WalletKind | str = WalletKind.ENERGY) -> str:
    return f"liab:wallet:{account_id}:{WalletKind(kind).value}"


def clearing_code(channel: str) -> str:
    return f"asset:psp_clearing:{channel}"


def emergency_code(account_id: str) -> str:
    return f"asset:emergency_credit:{account_id}"


def revenue_code(stream: str) -> str:
    if stream not in REVENUE_STREAMS:
        raise RequestError(
            "revenue", f"expected one of {', '.join(REVENUE_STREAMS)}; got {stream!r}"
        )
    return f"rev:{stream}"


def check_channel(channel: str) -> str:
    if not isinstance(channel, str) or not _CHANNEL.match(channel):
        raise RequestError(
            "channel",
            f"expected lower-case letters, digits or '_' (cash, wechat...); got {channel!r}",
        )
    return channel


def code_type(code: str) -> str:
    return code.split(":", 1)[0]
