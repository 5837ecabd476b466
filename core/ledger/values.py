"""The ledger's value types: wallet and journal kinds, postings, journals and results."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any


class WalletKind(enum.StrEnum):
    ENERGY = "energy"
    GENERAL = "general"


class JournalKind(enum.StrEnum):
    TOPUP = "topup"
    USAGE = "usage"
    REFUND_REQUEST = "refund_request"
    REFUND_SETTLE = "refund_settle"
    EMERGENCY_CREDIT = "emergency_credit"
    EMERGENCY_REPAY = "emergency_repay"
    OPENING_BALANCE = "opening_balance"
    REVERSAL = "reversal"
    #: Billing operations posted through `post_journal` (common-area, property fee...).
    CHARGE = "charge"
    ALLOCATION = "allocation"
    SETTLEMENT = "settlement"
    ADJUSTMENT = "adjustment"


@dataclass(frozen=True, slots=True)
class Posting:
    """One journal line: positive amount = debit, negative = credit."""

    ledger_account: str
    amount_fen: int


@dataclass(frozen=True, slots=True)
class Journal:
    id: int
    kind: str
    idempotency_key: str
    account_id: str | None
    meter_id: str | None
    reverses_id: int | None
    request: Mapping[str, Any]
    memo: str
    requested_by: str
    created_at: datetime
    postings: tuple[Posting, ...] = ()


@dataclass(frozen=True, slots=True)
class Posted:
    journal: Journal
    #: True when the key had been used already: nothing was written this time.
    replayed: bool


@dataclass(frozen=True, slots=True)
class Balances:
    account_id: str
    energy_fen: int
    general_fen: int
    #: Emergency credit advanced and not repaid yet (included in `energy_fen`).
    emergency_outstanding_fen: int = 0
    energy_version: int = 0


@dataclass(frozen=True, slots=True)
class TopUpResult:
    reference: str
    account_id: str
    amount_fen: int
    channel: str
    journal_id: int
    #: The energy wallet after the top-up (and after repaying emergency credit).
    balance_fen: int
    replayed: bool
    emergency_repaid_fen: int = 0
    #: For a LOCAL meter: the meter, its purchase count and the RECHARGE command.
    meter_id: str | None = None
    buy_count: int | None = None
    command_id: int | None = None


@dataclass(frozen=True, slots=True)
class RefundAllocation:
    topup_reference: str
    channel: str
    amount_fen: int


@dataclass(frozen=True, slots=True)
class RefundResult:
    reference: str
    account_id: str
    amount_fen: int
    state: str
    balance_fen: int
    allocations: tuple[RefundAllocation, ...]
    replayed: bool
    #: For a LOCAL meter: the meter debited first and its REFUND command.
    meter_id: str | None = None
    command_id: int | None = None


@dataclass(frozen=True, slots=True)
class UsageResult:
    journal_id: int | None
    account_id: str
    meter_id: str
    amount_fen: int
    balance_fen: int
    replayed: bool
