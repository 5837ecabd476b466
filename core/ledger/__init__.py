"""The ledger: the one place where money is written.

Double entry in integer fen. Every money event is a *journal* of two or more *postings*
that sum to zero, written in one database transaction together with whatever the event
causes (a RECHARGE command for a LOCAL meter, the top-up order row). A posting's amount is
positive for a debit and negative for a credit. Customer wallets are liabilities (money the
platform owes the customer), so a wallet's balance is minus the sum of its postings; it is
also cached on the `wallet` row with a version, and `verify()` checks the two agree.

Ledger accounts (domain.md §5.1)::

    asset:psp_clearing:{channel}      money received through a channel (cash, wechat, ...)
    asset:emergency_credit:{account}  emergency credit advanced, repaid by the next top-up
    liab:wallet:{account}:energy      the energy wallet (what fee control reads)
    liab:wallet:{account}:general     the general wallet (property fee, rent, services)
    liab:refund_payable               refunds requested and not yet paid out
    liab:suspense                     money that could not be matched (amount mismatch...)
    equity:opening_balance            balances carried over from a previous system
    rev:{electricity|water|public_energy|property|rent|service|late_fee}
    exp:psp_fee

Every journal has a UNIQUE idempotency key (`topup:<reference>`, `refund:<reference>`,
`usage:<meter>:<period>`, `<pool>:<period>` ...). Posting again with the same key returns
the original journal and changes nothing; the same key with a different request is an
`IdempotencyConflict`, never a silent second meaning. Corrections are reversing journals
(`reverse()`), never edits.

The service functions take a SQLAlchemy `Connection` inside a transaction (see
`core.db.Database.begin`) so callers can combine them atomically; they raise
`RequestError` (naming the offending field) before writing anything when a request is bad.

The package is split by job: `money` (yuan text and fen), `codes` (ledger account codes),
`values` and `errors` (the types), `journal` (the one writer and idempotency), `position`
(accounts, wallets and balances as the ledger sees them), one module per money event
(`topups`, `usage`, `emergency`, `reversal`, `refunds`), `reading` and `verification`. Import the
public names from here (`from openprepay.core.ledger import topup`).
"""

from __future__ import annotations

from ..errors import RequestError
from ..money import CAPACITY_FEN, AmountOutOfRange, format_fen, parse_yuan
from .codes import (
    ACCOUNT_TYPES,
    OPENING_BALANCE,
    PSP_FEE,
    REFUND_PAYABLE,
    REVENUE_STREAMS,
    SUSPENSE,
    check_channel,
    clearing_code,
    emergency_code,
    revenue_code,
    wallet_code,
)
from .emergency import grant_emergency_credit, post_opening_balance
from .errors import IdempotencyConflict, LedgerIntegrityError
from .journal import get_journal, insert_ignore, load_journal, post_journal, reused_key
from .position import balances
from .reading import JournalLine, journals_since, usage_fen_since, wallet_history
from .refunds import (
    REFUND_WINDOW,
    abandon_meter_refund,
    complete_meter_refund,
    fail_refund,
    refund,
    refund_result,
    refundable,
    settle_refund,
)
from .reversal import reverse
from .topups import TopUpCheck, check_topup, topup
from .usage import load_accrual, post_usage
from .usage_bulk import UsageRequest, load_accruals, post_usages
from .values import (
    Balances,
    Journal,
    JournalKind,
    Posted,
    Posting,
    RefundAllocation,
    RefundResult,
    TopUpResult,
    UsageResult,
    WalletKind,
)
from .verification import Break, VerifyReport, verify

__all__ = [
    "ACCOUNT_TYPES",
    "CAPACITY_FEN",
    "OPENING_BALANCE",
    "PSP_FEE",
    "REFUND_PAYABLE",
    "REFUND_WINDOW",
    "REVENUE_STREAMS",
    "SUSPENSE",
    "AmountOutOfRange",
    "Balances",
    "Break",
    "IdempotencyConflict",
    "Journal",
    "JournalKind",
    "JournalLine",
    "LedgerIntegrityError",
    "Posted",
    "Posting",
    "RefundAllocation",
    "RefundResult",
    "RequestError",
    "TopUpCheck",
    "TopUpResult",
    "UsageRequest",
    "UsageResult",
    "VerifyReport",
    "WalletKind",
    "abandon_meter_refund",
    "balances",
    "check_channel",
    "check_topup",
    "clearing_code",
    "complete_meter_refund",
    "emergency_code",
    "fail_refund",
    "format_fen",
    "get_journal",
    "grant_emergency_credit",
    "insert_ignore",
    "journals_since",
    "load_accrual",
    "load_accruals",
    "load_journal",
    "parse_yuan",
    "post_journal",
    "post_opening_balance",
    "post_usage",
    "post_usages",
    "refund",
    "refund_result",
    "refundable",
    "reused_key",
    "revenue_code",
    "reverse",
    "settle_refund",
    "topup",
    "usage_fen_since",
    "verify",
    "wallet_code",
    "wallet_history",
]
