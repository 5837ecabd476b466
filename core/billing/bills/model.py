"""What the bill calls return: a bill's states, its views and the results of paying and
voiding it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


class BillState:
    DRAFT = "DRAFT"
    CONFIRMED = "CONFIRMED"
    ISSUED = "ISSUED"
    PAID = "PAID"
    VOID = "VOID"


#: States in which a bill is owed (payments apply to it).
OPEN_STATES = (BillState.CONFIRMED, BillState.ISSUED)


def bill_number(prefix: str, account_id: str, period: str, revision: int = 1) -> str:
    """The bill number; a bill made after `revision - 1` void ones gets `-R<revision>`."""
    base = f"{prefix}-{period}-{account_id}"
    return base if revision <= 1 else f"{base}-R{revision}"


#: The `bill_payment` channel of a general-wallet credit applied to bills (no money came
#: in: it was already in the wallet).
CREDIT_CHANNEL = "credit"


@dataclass(frozen=True, slots=True)
class BillPayment:
    """What one payment, or one general-wallet credit applied, put on a bill."""

    reference: str
    #: cash, wechat, ... or `credit` (the account's general wallet applied to its bills).
    channel: str
    #: The part of it this bill took.
    amount_fen: int
    at: dt.datetime
    by: str

    @property
    def credit(self) -> bool:
        return self.channel == CREDIT_CHANNEL


@dataclass(frozen=True, slots=True)
class BillView:
    number: str
    account_id: str
    period: str
    start_date: str
    end_date: str
    state: str
    total_fen: int
    paid_fen: int
    lines: tuple[Mapping[str, Any], ...]
    problems: tuple[str, ...]
    due_date: str | None
    issued_at: dt.datetime | None
    journal_id: int | None
    void_reason: str | None = None
    voided_by: str | None = None
    voided_at: dt.datetime | None = None
    void_journal_id: int | None = None
    #: The payments and credits applied to it, oldest first (their parts in `paid_fen`).
    payments: tuple[BillPayment, ...] = ()

    @property
    def outstanding_fen(self) -> int:
        return self.total_fen - self.paid_fen if self.state in OPEN_STATES else 0

    @property
    def credit_applied_fen(self) -> int:
        """What the account's general wallet paid of it (`bill apply-credit`)."""
        return sum(p.amount_fen for p in self.payments if p.credit)


def bill_view(row: Any) -> BillView:
    """A `bill` table row as a `BillView`."""
    return BillView(
        row.number,
        row.account_id,
        row.period,
        row.start_date,
        row.end_date,
        row.state,
        int(row.total_fen),
        int(row.paid_fen),
        tuple(row.lines or ()),
        tuple(row.problems or ()),
        row.due_date,
        row.issued_at,
        row.journal_id,
        row.void_reason,
        row.voided_by,
        row.voided_at,
        row.void_journal_id,
    )


@dataclass(frozen=True, slots=True)
class BillSummary:
    """A bill without its lines (what confirming and issuing many bills return)."""

    number: str
    account_id: str
    period: str
    state: str
    total_fen: int
    paid_fen: int
    due_date: str | None
    problems: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class PaymentResult:
    reference: str
    account_id: str
    amount_fen: int
    allocations: Mapping[str, int]
    to_wallet_fen: int
    journal_id: int
    replayed: bool


@dataclass(frozen=True, slots=True)
class VoidResult:
    number: str
    account_id: str
    period: str
    #: What the void journal took off `asset:ar:<account>` (the bill's usage and late fees).
    reversed_fen: int
    #: Billed items released for the account's next draft (common area, charges).
    released_items: int
    journal_id: int | None
    replayed: bool


@dataclass(frozen=True, slots=True)
class Arrear:
    number: str
    account_id: str
    name: str
    room: str | None
    period: str
    due_date: str
    total_fen: int
    paid_fen: int
    days_overdue: int
    #: Late fee accrued so far (not posted: the next bill posts it).
    late_fee_fen: int

    @property
    def outstanding_fen(self) -> int:
        return self.total_fen - self.paid_fen
