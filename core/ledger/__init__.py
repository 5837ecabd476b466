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
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from ..db import FastStatement, db_time
from ..db import schema as t
from ..errors import OpenPrepayError
from ..events import utcnow

#: Largest balance a prepaid meter can hold (999,999.99), in fen. Also the largest amount
#: accepted by any single top-up or refund.
CAPACITY_FEN = 99_999_999
#: Refunds through the payment channel are possible within this window (domain.md §5.3).
REFUND_WINDOW = timedelta(days=365)

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
_CODE = re.compile(r"^(asset|liab|equity|rev|exp):[A-Za-z0-9_.\-]+(:[A-Za-z0-9_.\-]+)*$")
_CHANNEL = re.compile(r"^[a-z0-9_]{1,32}$")
_KEY_MAX = 200


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


# -- errors ----------------------------------------------------------------------------------


class RequestError(OpenPrepayError):
    """A request that cannot be carried out; `field` names what is wrong. Nothing changed."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class IdempotencyConflict(RequestError):
    """The idempotency key was already used for a different request."""


class LedgerIntegrityError(OpenPrepayError):
    """The ledger is inconsistent (found while posting); the transaction is rolled back."""


# -- money text ------------------------------------------------------------------------------


def parse_yuan(text: str | Decimal | int, field: str = "amount") -> int:
    """`"12.34"` → 1234 fen. At most two decimals; no exponent, NaN or infinity.

    The sign is kept (`"-5"` → -500): callers decide whether negative amounts make sense.
    """
    if isinstance(text, bool):
        raise RequestError(field, f"expected an amount in yuan such as 12.34, got {text!r}")
    if isinstance(text, int):
        return text * 100
    raw = text.strip().replace(",", "") if isinstance(text, str) else text
    try:
        value = Decimal(raw)
    except (InvalidOperation, ValueError):
        raise RequestError(
            field, f"expected an amount in yuan such as 12.34, got {text!r}"
        ) from None
    if not value.is_finite() or (isinstance(raw, str) and re.search(r"[eE]", raw)):
        raise RequestError(field, f"expected an amount in yuan such as 12.34, got {text!r}")
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -2 and value != value.quantize(Decimal("0.01")):
        raise RequestError(field, f"at most 2 decimals (fen), got {text}")
    return int(value.scaleb(2).to_integral_exact())


def format_fen(amount_fen: int) -> str:
    """1234 → `"12.34"`, -5 → `"-0.05"` (no rounding: fen are exact).

    Integral Decimals (PostgreSQL's SUM of BIGINT) are accepted; floats never."""
    if isinstance(amount_fen, float) or amount_fen != int(amount_fen):
        raise TypeError(f"fen must be an integer, got {amount_fen!r}")
    amount_fen = int(amount_fen)
    sign = "-" if amount_fen < 0 else ""
    whole, fen = divmod(abs(amount_fen), 100)
    return f"{sign}{whole}.{fen:02d}"


# -- ledger account codes --------------------------------------------------------------------


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


# -- values ----------------------------------------------------------------------------------


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


# -- the one writer --------------------------------------------------------------------------


_IGNORING: dict[tuple[str, str], Any] = {}


def _insert_ignore(conn: Connection, table: sa.Table) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING for the connection's dialect (built once)."""
    key = (conn.dialect.name, table.name)
    stmt = _IGNORING.get(key)
    if stmt is None:
        dialect = postgresql if key[0] == "postgresql" else sqlite
        stmt = dialect.insert(table).on_conflict_do_nothing()
        if table is t.journal:
            stmt = stmt.returning(t.journal.c.id)
        _IGNORING[key] = stmt
    return stmt


def _code_type(code: str) -> str:
    return code.split(":", 1)[0]


def _check_postings(postings: Sequence[Posting]) -> None:
    if len(postings) < 2:
        raise RequestError("postings", f"a journal needs at least 2 postings, got {len(postings)}")
    total = 0
    for i, p in enumerate(postings):
        where = f"postings[{i}]"
        if not isinstance(p.ledger_account, str) or not _CODE.match(p.ledger_account):
            raise RequestError(
                f"{where}.ledger_account",
                f"expected asset:..., liab:..., equity:..., rev:... or exp:...; "
                f"got {p.ledger_account!r}",
            )
        if len(p.ledger_account) > 160:
            raise RequestError(f"{where}.ledger_account", "at most 160 characters")
        if isinstance(p.amount_fen, bool) or not isinstance(p.amount_fen, int):
            raise RequestError(f"{where}.amount_fen", f"expected integer fen, got {p.amount_fen!r}")
        if p.amount_fen == 0:
            raise RequestError(f"{where}.amount_fen", "a posting must not be 0")
        if abs(p.amount_fen) > 10 * CAPACITY_FEN * 1000:
            raise RequestError(f"{where}.amount_fen", f"absurd amount {p.amount_fen}")
        total += p.amount_fen
    if total != 0:
        raise RequestError("postings", f"postings must sum to 0 fen, they sum to {total}")


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not key.strip():
        raise RequestError("idempotency_key", "required (a payment id, refund id, period...)")
    if len(key) > _KEY_MAX:
        raise RequestError("idempotency_key", f"at most {_KEY_MAX} characters, got {len(key)}")
    return key


_journal_by_key = sa.select(t.journal).where(t.journal.c.idempotency_key == sa.bindparam("key"))
_postings_of = (
    sa.select(t.posting.c.ledger_account, t.posting.c.amount_fen)
    .where(t.posting.c.journal_id == sa.bindparam("id"))
    .order_by(t.posting.c.id)
)


def _load_journal(conn: Connection, key: str) -> Journal | None:
    row = conn.execute(_journal_by_key, {"key": key}).first()
    if row is None:
        return None
    postings = conn.execute(_postings_of, {"id": row.id}).all()
    return Journal(
        row.id,
        row.kind,
        row.idempotency_key,
        row.account_id,
        row.meter_id,
        row.reverses_id,
        row.request,
        row.memo,
        row.requested_by,
        row.created_at,
        tuple(Posting(p.ledger_account, p.amount_fen) for p in postings),
    )


def get_journal(conn: Connection, journal_id: int) -> Journal:
    key = conn.execute(
        sa.select(t.journal.c.idempotency_key).where(t.journal.c.id == journal_id)
    ).scalar()
    if key is None:
        raise RequestError("journal", f"unknown journal {journal_id}")
    journal = _load_journal(conn, key)
    assert journal is not None
    return journal


def _same_request(journal: Journal, request: Mapping[str, Any], what: str) -> None:
    if dict(journal.request) != dict(request):
        raise IdempotencyConflict(
            "reference",
            f"{journal.idempotency_key!r} was already used for a different {what} "
            f"(journal {journal.id}: {dict(journal.request)}); use a new reference",
        )


_JOURNAL_COLUMNS = (
    "kind",
    "idempotency_key",
    "account_id",
    "meter_id",
    "reverses_id",
    "request",
    "memo",
    "requested_by",
    "created_at",
)
_fast_journal = FastStatement(lambda conn: _insert_ignore(conn, t.journal), _JOURNAL_COLUMNS)
_fast_account = FastStatement(
    lambda conn: _insert_ignore(conn, t.ledger_account), ("code", "type", "created_at")
)
_fast_posting = FastStatement(t.posting.insert(), ("journal_id", "ledger_account", "amount_fen"))
_fast_wallet_move = FastStatement(
    t.wallet.update()
    .where(t.wallet.c.ledger_account == sa.bindparam("code"))
    .values(
        balance_fen=t.wallet.c.balance_fen + sa.bindparam("delta", type_=sa.BigInteger()),
        version=t.wallet.c.version + 1,
    )
)
_TOPUP_COLUMNS = (
    "account_id",
    "reference",
    "channel",
    "amount_fen",
    "journal_id",
    "meter_id",
    "buy_count",
    "command_id",
    "created_at",
)
_fast_topup = FastStatement(t.topup.insert(), _TOPUP_COLUMNS)


def _write(
    conn: Connection,
    kind: str,
    key: str,
    postings: Sequence[Posting],
    *,
    request: Mapping[str, Any],
    account_id: str | None = None,
    meter_id: str | None = None,
    reverses_id: int | None = None,
    memo: str = "",
    requested_by: str = "",
    now: datetime,
    known_wallets: Iterable[str] = (),
    known_accounts: Iterable[str] = (),
) -> int | None:
    """Insert one journal and its postings and move the cached wallet balances.

    Every money write goes through here. Returns the new journal id, or None when the
    key already exists (a concurrent replay won): the caller then loads and returns the
    original. Checks that can fail run before anything is written.
    """
    wallets = sorted(
        {p.ledger_account for p in postings if p.ledger_account.startswith("liab:wallet:")}
    )
    unknown = [w for w in wallets if w not in known_wallets]
    if unknown:
        found = set(
            conn.execute(
                sa.select(t.wallet.c.ledger_account).where(t.wallet.c.ledger_account.in_(unknown))
            ).scalars()
        )
        missing = [w for w in unknown if w not in found]
        if missing:
            raise RequestError(
                "postings", f"unknown wallet {missing[0]!r} (wallets belong to an account)"
            )
    at = db_time(conn, now)
    cursor = _fast_journal.execute(
        conn,
        {
            "kind": str(kind),
            "idempotency_key": key,
            "account_id": account_id,
            "meter_id": meter_id,
            "reverses_id": reverses_id,
            "request": json.dumps(dict(request)),
            "memo": memo[:500],
            "requested_by": requested_by[:100],
            "created_at": at,
        },
    )
    row = cursor.fetchone()
    cursor.close()
    if row is None:
        return None
    journal_id = int(row[0])
    others = sorted(
        {
            p.ledger_account
            for p in postings
            if not p.ledger_account.startswith("liab:wallet:")
            and p.ledger_account not in known_accounts
        }
    )
    if others:
        _fast_account.executemany(
            conn, [{"code": c, "type": _code_type(c), "created_at": at} for c in others]
        )
    _fast_posting.executemany(
        conn,
        [
            {
                "journal_id": journal_id,
                "ledger_account": p.ledger_account,
                "amount_fen": p.amount_fen,
            }
            for p in postings
        ],
    )
    # Wallets are credit-normal: a credit (negative posting) raises the balance. Updated in
    # code order so that concurrent multi-wallet journals lock rows in the same order.
    for code in wallets:
        delta = -sum(p.amount_fen for p in postings if p.ledger_account == code)
        if delta:
            _fast_wallet_move.execute(conn, {"code": code, "delta": delta}).close()
    return journal_id


def post_journal(
    conn: Connection,
    kind: JournalKind | str,
    postings: Sequence[Posting],
    *,
    idempotency_key: str,
    account_id: str | None = None,
    meter_id: str | None = None,
    memo: str = "",
    requested_by: str = "",
    request: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> Posted:
    """Post a balanced journal: the generic entry point for billing operations.

    `postings` must be at least two, non-zero, integer fen, summing to zero; wallet
    postings must name existing wallets; other ledger accounts are created on first use.
    A replay of `idempotency_key` returns the original journal unchanged (`replayed=True`).
    Typical keys: `<pool>:<period>` for a common-area allocation, `property:<account>:
    <month>` for a property fee.
    """
    key = _check_key(idempotency_key)
    kind = str(kind)
    if not re.match(r"^[a-z_]{1,32}$", kind):
        raise RequestError("kind", f"expected a lower-case word such as charge, got {kind!r}")
    postings = [Posting(p.ledger_account, p.amount_fen) for p in postings]
    _check_postings(postings)
    if request is None:
        request = {
            "kind": kind,
            "postings": [[p.ledger_account, p.amount_fen] for p in postings],
        }
    existing = _load_journal(conn, key)
    if existing is not None:
        _same_request(existing, request, kind)
        return Posted(existing, True)
    if account_id is not None:
        _require_account(conn, account_id)
    now = now or utcnow()
    journal_id = _write(
        conn,
        kind,
        key,
        postings,
        request=request,
        account_id=account_id,
        meter_id=meter_id,
        memo=memo,
        requested_by=requested_by,
        now=now,
    )
    journal = _load_journal(conn, key)
    assert journal is not None
    if journal_id is None:
        _same_request(journal, request, kind)
    return Posted(journal, journal_id is None)


# -- accounts as the ledger sees them ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _AccountRow:
    id: str
    state: str
    hoard_limit_fen: int


_account_select = sa.select(t.account.c.id, t.account.c.state, t.account.c.hoard_limit_fen).where(
    t.account.c.id == sa.bindparam("id")
)


def _require_account(conn: Connection, account_id: str, *, open_only: bool = False) -> _AccountRow:
    if not isinstance(account_id, str) or not account_id:
        raise RequestError("account", "required")
    row = conn.execute(_account_select, {"id": account_id}).first()
    if row is None:
        raise RequestError("account", f"unknown account {account_id!r}")
    if open_only and row.state != "OPEN":
        hint = {
            "CLOSED": "it is closed",
            "PREREGISTERED": "it is pre-registered; open it first (openprepay account open)",
        }.get(row.state, f"its state is {row.state}")
        raise RequestError("account", f"account {account_id!r} cannot take this: {hint}")
    return _AccountRow(row.id, row.state, row.hoard_limit_fen)


def _lock_wallet(conn: Connection, account_id: str, kind: WalletKind) -> tuple[str, int]:
    """(ledger account, balance) of a wallet, row-locked until the transaction ends."""
    row = conn.execute(
        sa.select(t.wallet.c.ledger_account, t.wallet.c.balance_fen)
        .where(t.wallet.c.account_id == account_id, t.wallet.c.kind == kind.value)
        .with_for_update(),
    ).first()
    if row is None:
        raise LedgerIntegrityError(f"account {account_id!r} has no {kind} wallet")
    return row.ledger_account, row.balance_fen


@dataclass(frozen=True, slots=True)
class _Position:
    """An account's energy position, read with the wallet row locked."""

    state: str
    hoard_limit_fen: int
    wallet: str
    balance_fen: int
    emergency_fen: int
    local_meters: int
    first_local_meter: str | None
    #: Whether the journal key is taken and the counter-account exists (hot-path checks
    #: folded into the same query).
    key_taken: bool
    counter_exists: bool


_am = t.account_meter
_local_filter = sa.and_(
    _am.c.account_id == t.account.c.id,
    _am.c.detached_at.is_(None),
    _am.c.control_mode == "LOCAL",
)
_position_select = (
    sa.select(
        t.account.c.state,
        t.account.c.hoard_limit_fen,
        t.wallet.c.ledger_account,
        t.wallet.c.balance_fen,
        sa.select(sa.func.coalesce(sa.func.sum(t.posting.c.amount_fen), 0))
        .where(t.posting.c.ledger_account == sa.literal("asset:emergency_credit:") + t.account.c.id)
        .scalar_subquery()
        .label("emergency"),
        sa.select(sa.func.count()).where(_local_filter).scalar_subquery().label("local_meters"),
        sa.select(sa.func.min(_am.c.meter_id))
        .where(_local_filter)
        .scalar_subquery()
        .label("first_local"),
        sa.exists().where(t.journal.c.idempotency_key == sa.bindparam("key")).label("key_taken"),
        sa.exists()
        .where(t.ledger_account.c.code == sa.bindparam("counter"))
        .label("counter_exists"),
    )
    .join(t.wallet, sa.and_(t.wallet.c.account_id == t.account.c.id, t.wallet.c.kind == "energy"))
    .where(t.account.c.id == sa.bindparam("id"))
    .with_for_update(of=t.wallet)
)
_fast_position = FastStatement(_position_select)


def _position(
    conn: Connection,
    account_id: str,
    *,
    open_only: bool = True,
    key: str = "",
    counter: str = "",
) -> _Position:
    """Check the account exists (and is open) and lock its energy wallet; one query."""
    if not isinstance(account_id, str) or not account_id:
        raise RequestError("account", "required")
    cursor = _fast_position.execute(conn, {"id": account_id, "key": key, "counter": counter})
    row = cursor.fetchone()
    cursor.close()
    if row is None:
        _require_account(conn, account_id)  # raises "unknown account"
        raise LedgerIntegrityError(f"account {account_id!r} has no energy wallet")
    state, hoard, wallet, balance, emergency, local_meters, first_local, taken, exists = row
    if open_only and state != "OPEN" and not taken:
        _require_account(conn, account_id, open_only=True)  # raises with the reason
    return _Position(
        state,
        int(hoard),
        wallet,
        int(balance),
        int(emergency),
        int(local_meters),
        first_local,
        bool(taken),
        bool(exists),
    )


def _emergency_outstanding(conn: Connection, account_id: str) -> int:
    return int(
        conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(t.posting.c.amount_fen), 0)).where(
                t.posting.c.ledger_account == emergency_code(account_id)
            )
        ).scalar()
    )


def balances(conn: Connection, account_id: str) -> Balances:
    """The account's wallet balances (energy, general) and outstanding emergency credit."""
    _require_account(conn, account_id)
    rows = {
        r.kind: r
        for r in conn.execute(
            sa.select(t.wallet.c.kind, t.wallet.c.balance_fen, t.wallet.c.version).where(
                t.wallet.c.account_id == account_id
            )
        )
    }
    energy = rows.get("energy")
    general = rows.get("general")
    return Balances(
        account_id,
        energy.balance_fen if energy else 0,
        general.balance_fen if general else 0,
        _emergency_outstanding(conn, account_id),
        energy.version if energy else 0,
    )


def _check_amount(amount_fen: int, field: str = "amount") -> int:
    if isinstance(amount_fen, bool) or not isinstance(amount_fen, int):
        raise RequestError(field, f"expected an integer number of fen, got {amount_fen!r}")
    if amount_fen <= 0:
        raise RequestError(field, f"expected more than 0.00, got {format_fen(amount_fen)}")
    if amount_fen > CAPACITY_FEN:
        raise RequestError(
            field,
            f"{format_fen(amount_fen)} is above the meter capacity {format_fen(CAPACITY_FEN)}",
        )
    return amount_fen


def _check_reference(reference: str) -> str:
    if not isinstance(reference, str) or not reference.strip():
        raise RequestError("reference", "required (the payment id, receipt or refund number)")
    if len(reference) > 160 or any(c.isspace() for c in reference):
        raise RequestError("reference", f"at most 160 characters without spaces, got {reference!r}")
    return reference


# -- top-up -----------------------------------------------------------------------------------


def topup(
    conn: Connection,
    account_id: str,
    amount_fen: int,
    reference: str,
    *,
    channel: str = "cash",
    meter_id: str | None = None,
    requested_by: str = "",
    now: datetime | None = None,
) -> TopUpResult:
    """Credit the account's energy wallet: Dr asset:psp_clearing:{channel} / Cr wallet.

    `reference` is the payment's unique id (payment id, counter receipt number): the same
    reference again returns the original result and changes nothing. Refused with a
    `RequestError` naming the field: amount not > 0, above the 999,999.99 capacity or the
    account's hoarding limit (balance + amount > limit); unknown, pre-registered or closed
    account. Outstanding emergency credit is repaid from the top-up in the same
    transaction. For a LOCAL meter (the account's only one, or `meter_id`) the meter's next
    purchase count is allocated and a RECHARGE command is queued in the same transaction
    (domain.md §1.5).
    """
    from .. import commands

    _check_amount(amount_fen)
    _check_reference(reference)
    check_channel(channel)
    key = f"topup:{reference}"
    request = {"account": account_id, "amount_fen": amount_fen, "channel": channel}
    if meter_id is not None:
        request["meter"] = meter_id

    counter = clearing_code(channel)
    pos = _position(conn, account_id, key=key, counter=counter)
    if pos.key_taken:
        existing = _load_journal(conn, key)
        assert existing is not None
        _same_request(existing, request, "top-up")
        return _topup_result(conn, existing, replayed=True)
    wallet, balance = pos.wallet, pos.balance_fen
    if meter_id is not None:
        local = _local_meter_for(conn, account_id, meter_id)
    elif pos.local_meters > 1:
        local = _local_meter_for(conn, account_id, None)  # raises: which one?
    else:
        local = pos.first_local_meter
    after = balance + amount_fen
    if after > CAPACITY_FEN:
        raise RequestError(
            "amount",
            f"balance {format_fen(balance)} + {format_fen(amount_fen)} would exceed the "
            f"capacity {format_fen(CAPACITY_FEN)}",
        )
    if pos.hoard_limit_fen and after > pos.hoard_limit_fen:
        raise RequestError(
            "amount",
            f"balance {format_fen(balance)} + {format_fen(amount_fen)} = {format_fen(after)} "
            f"would exceed the account's hoarding limit {format_fen(pos.hoard_limit_fen)}",
        )
    now = now or utcnow()
    journal_id = _write(
        conn,
        JournalKind.TOPUP,
        key,
        [Posting(counter, amount_fen), Posting(wallet, -amount_fen)],
        request=request,
        account_id=account_id,
        meter_id=local,
        memo=f"top-up via {channel}",
        requested_by=requested_by,
        now=now,
        known_wallets=(wallet,),
        known_accounts=(counter,) if pos.counter_exists else (),
    )
    if journal_id is None:  # a concurrent request with the same reference won
        journal = _load_journal(conn, key)
        assert journal is not None
        _same_request(journal, request, "top-up")
        return _topup_result(conn, journal, replayed=True)

    repaid = 0
    outstanding = 0 if local else pos.emergency_fen
    if outstanding > 0:
        repaid = min(outstanding, amount_fen)
        _write(
            conn,
            JournalKind.EMERGENCY_REPAY,
            f"emergency_repay:{reference}",
            [Posting(wallet, repaid), Posting(emergency_code(account_id), -repaid)],
            request={"account": account_id, "amount_fen": repaid, "topup": reference},
            account_id=account_id,
            memo=f"emergency credit repaid from top-up {reference}",
            requested_by=requested_by,
            now=now,
            known_wallets=(wallet,),
        )

    buy_count = command_id = None
    if local is not None:
        buy_count = commands.allocate_buy_count(conn, local, now=now)
        command = commands.enqueue(
            conn,
            local,
            commands.CommandKind.RECHARGE,
            params={
                "buy_count": buy_count,
                "amount_fen": amount_fen,
                "amount": format_fen(amount_fen),
            },
            reason=f"top-up {reference} of {format_fen(amount_fen)} via {channel}",
            requested_by=requested_by or "ledger",
            journal_id=journal_id,
            account_id=account_id,
            now=now,
        )
        command_id = command.id
    _fast_topup.execute(
        conn,
        {
            "account_id": account_id,
            "reference": reference,
            "channel": channel,
            "amount_fen": amount_fen,
            "journal_id": journal_id,
            "meter_id": local,
            "buy_count": buy_count,
            "command_id": command_id,
            "created_at": db_time(conn, now),
        },
    ).close()
    return TopUpResult(
        reference,
        account_id,
        amount_fen,
        channel,
        journal_id,
        after - repaid,
        False,
        repaid,
        local,
        buy_count,
        command_id,
    )


def _local_meter_for(conn: Connection, account_id: str, meter_id: str | None) -> str | None:
    """The LOCAL meter a top-up must be delivered to, or None (platform-side wallet)."""
    rows = conn.execute(
        sa.select(t.account_meter.c.meter_id, t.account_meter.c.control_mode).where(
            t.account_meter.c.account_id == account_id, t.account_meter.c.detached_at.is_(None)
        )
    ).all()
    if meter_id is not None:
        for row in rows:
            if row.meter_id == meter_id:
                return meter_id if row.control_mode == "LOCAL" else None
        attached = ", ".join(r.meter_id for r in rows) or "none"
        raise RequestError(
            "meter",
            f"meter {meter_id!r} is not one of account {account_id!r}'s meters ({attached})",
        )
    local = [r.meter_id for r in rows if r.control_mode == "LOCAL"]
    if len(local) > 1:
        raise RequestError(
            "meter",
            f"account {account_id!r} has several LOCAL meters ({', '.join(local)}): "
            "name the one to recharge",
        )
    return local[0] if local else None


def _topup_result(conn: Connection, journal: Journal, *, replayed: bool) -> TopUpResult:
    reference = journal.idempotency_key.removeprefix("topup:")
    row = conn.execute(sa.select(t.topup).where(t.topup.c.reference == reference)).first()
    if row is None:
        raise LedgerIntegrityError(f"journal {journal.id} has no top-up order row")
    repaid = conn.execute(
        sa.select(t.journal.c.request).where(
            t.journal.c.idempotency_key == f"emergency_repay:{row.reference}"
        )
    ).scalar()
    energy = conn.execute(
        sa.select(t.wallet.c.balance_fen).where(
            t.wallet.c.account_id == row.account_id, t.wallet.c.kind == "energy"
        )
    ).scalar()
    return TopUpResult(
        row.reference,
        row.account_id,
        row.amount_fen,
        row.channel,
        journal.id,
        int(energy or 0),
        replayed,
        int(repaid["amount_fen"]) if repaid else 0,
        row.meter_id,
        row.buy_count,
        row.command_id,
    )


# -- usage ------------------------------------------------------------------------------------


def post_usage(
    conn: Connection,
    account_id: str,
    meter_id: str,
    amount_fen: int,
    period_key: str,
    idempotency_key: str | None = None,
    *,
    revenue: str | None = None,
    accrual: Mapping[str, Any] | None = None,
    cycle: str | None = None,
    memo: str = "",
    requested_by: str = "metering",
    now: datetime | None = None,
) -> UsageResult:
    """Deduct rated usage from the energy wallet: Dr wallet / Cr rev:{electricity|water}.

    Called by the metering engine with the fen the rating engine computed for one
    interval of one meter (`period_key`, e.g. the reading's timestamp or sequence). The
    default idempotency key is `usage:<meter>:<period_key>`; a replay changes nothing.
    The wallet may go negative (the energy was consumed); fee control reads the balance
    returned. `amount_fen == 0` posts nothing. The revenue stream follows the meter's kind
    unless `revenue` names one.

    `accrual` (with `cycle`) is the meter's drift-free deduction state after this period
    (`core.rating.Accrual.to_record()`); it is saved in the same transaction, even when
    the period posts 0 fen, together with `period_key`. Load it back with `load_accrual`.
    A period equal to the last one saved for the meter and cycle is a replay.
    """
    if accrual is not None and not cycle:
        raise RequestError("cycle", "required with an accrual (the billing cycle it belongs to)")
    if isinstance(amount_fen, bool) or not isinstance(amount_fen, int) or amount_fen < 0:
        raise RequestError("amount", f"expected integer fen >= 0, got {amount_fen!r}")
    if amount_fen > CAPACITY_FEN:
        raise RequestError("amount", f"absurd usage {format_fen(amount_fen)}")
    if not isinstance(period_key, str) or not period_key:
        raise RequestError("period_key", "required")
    key = _check_key(idempotency_key or f"usage:{meter_id}:{period_key}")
    request = {
        "account": account_id,
        "meter": meter_id,
        "amount_fen": amount_fen,
        "period": period_key,
    }
    existing = _load_journal(conn, key) if amount_fen else None
    if existing is not None:
        _same_request(existing, request, "usage")
        return UsageResult(
            existing.id, account_id, meter_id, amount_fen, _energy_balance(conn, account_id), True
        )
    if accrual is not None and amount_fen == 0:
        saved = load_accrual(conn, meter_id, cycle or "")
        if saved is not None and saved["period_key"] == period_key:
            return UsageResult(
                None, account_id, meter_id, 0, _energy_balance(conn, account_id), True
            )
    _require_account(conn, account_id, open_only=True)
    kind = conn.execute(
        sa.select(t.account_meter.c.kind).where(
            t.account_meter.c.account_id == account_id,
            t.account_meter.c.meter_id == meter_id,
            t.account_meter.c.detached_at.is_(None),
        )
    ).scalar()
    if kind is None:
        raise RequestError("meter", f"meter {meter_id!r} is not attached to account {account_id!r}")
    wallet, balance = _lock_wallet(conn, account_id, WalletKind.ENERGY)
    now = now or utcnow()
    if amount_fen == 0:
        if accrual is not None:
            _save_accrual(conn, account_id, meter_id, cycle or "", accrual, period_key, None, now)
        return UsageResult(None, account_id, meter_id, 0, balance, False)
    stream = revenue or ("water" if kind == "water" else "electricity")
    journal_id = _write(
        conn,
        JournalKind.USAGE,
        key,
        [Posting(wallet, amount_fen), Posting(revenue_code(stream), -amount_fen)],
        request=request,
        account_id=account_id,
        meter_id=meter_id,
        memo=memo or f"usage {period_key}",
        requested_by=requested_by,
        now=now,
        known_wallets=(wallet,),
    )
    if journal_id is None:
        journal = _load_journal(conn, key)
        assert journal is not None
        _same_request(journal, request, "usage")
        return UsageResult(
            journal.id, account_id, meter_id, amount_fen, _energy_balance(conn, account_id), True
        )
    if accrual is not None:
        _save_accrual(conn, account_id, meter_id, cycle or "", accrual, period_key, journal_id, now)
    return UsageResult(journal_id, account_id, meter_id, amount_fen, balance - amount_fen, False)


def load_accrual(conn: Connection, meter_id: str, cycle: str) -> dict[str, Any] | None:
    """The meter's saved accrual for `cycle` (`Accrual.from_record` takes it), with the last
    `period_key` applied; None before the first usage of the cycle."""
    row = conn.execute(
        sa.select(t.usage_accrual).where(
            t.usage_accrual.c.meter_id == meter_id, t.usage_accrual.c.cycle == cycle
        )
    ).first()
    if row is None:
        return None
    return {
        "cum_exact_fen": row.cum_exact_fen,
        "posted_fen": int(row.posted_fen),
        "rounding": row.rounding,
        "period_key": row.period_key,
        "journal_id": row.journal_id,
    }


def _save_accrual(
    conn: Connection,
    account_id: str,
    meter_id: str,
    cycle: str,
    accrual: Mapping[str, Any],
    period_key: str,
    journal_id: int | None,
    now: datetime,
) -> None:
    try:
        values = {
            "account_id": account_id,
            "cum_exact_fen": str(accrual["cum_exact_fen"]),
            "posted_fen": int(accrual["posted_fen"]),
            "rounding": str(accrual.get("rounding", "half_up")),
            "period_key": period_key,
            "updated_at": now,
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise RequestError("accrual", f"expected Accrual.to_record(), got {accrual!r}") from exc
    if journal_id is not None:
        values["journal_id"] = journal_id
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(t.usage_accrual).values(meter_id=meter_id, cycle=cycle, **values)
    conn.execute(stmt.on_conflict_do_update(index_elements=["meter_id", "cycle"], set_=values))


def _energy_balance(conn: Connection, account_id: str) -> int:
    return int(
        conn.execute(
            sa.select(t.wallet.c.balance_fen).where(
                t.wallet.c.account_id == account_id, t.wallet.c.kind == "energy"
            )
        ).scalar()
        or 0
    )


# -- emergency credit and opening balances -----------------------------------------------------


def grant_emergency_credit(
    conn: Connection,
    account_id: str,
    amount_fen: int,
    idempotency_key: str,
    *,
    requested_by: str = "",
    now: datetime | None = None,
) -> Posted:
    """Advance emergency credit: Dr asset:emergency_credit:{account} / Cr energy wallet.

    Repaid automatically from the next top-up. Refused while earlier emergency credit is
    outstanding, and for accounts with LOCAL meters (there the meter grants it).
    """
    _check_amount(amount_fen)
    key = _check_key(idempotency_key)
    request = {"account": account_id, "amount_fen": amount_fen}
    existing = _load_journal(conn, key)
    if existing is not None:
        _same_request(existing, request, "emergency credit")
        return Posted(existing, True)
    _require_account(conn, account_id, open_only=True)
    wallet, _ = _lock_wallet(conn, account_id, WalletKind.ENERGY)
    if _local_meters(conn, account_id):
        raise RequestError(
            "account", f"account {account_id!r} has LOCAL meters: emergency credit is the meter's"
        )
    outstanding = _emergency_outstanding(conn, account_id)
    if outstanding:
        raise RequestError(
            "amount",
            f"{format_fen(outstanding)} of emergency credit is still outstanding; "
            "it is repaid by the next top-up",
        )
    now = now or utcnow()
    _write(
        conn,
        JournalKind.EMERGENCY_CREDIT,
        key,
        [Posting(emergency_code(account_id), amount_fen), Posting(wallet, -amount_fen)],
        request=request,
        account_id=account_id,
        memo="emergency credit",
        requested_by=requested_by,
        now=now,
        known_wallets=(wallet,),
    )
    journal = _load_journal(conn, key)
    assert journal is not None
    return Posted(journal, False)


def post_opening_balance(
    conn: Connection,
    account_id: str,
    amount_fen: int,
    kind: WalletKind = WalletKind.ENERGY,
    *,
    requested_by: str = "",
    now: datetime | None = None,
) -> Posted:
    """Carry a balance over from a previous system (account import):
    Dr equity:opening_balance / Cr wallet. Once per account and wallet."""
    _check_amount(amount_fen, "opening_balance")
    key = f"opening:{account_id}:{WalletKind(kind).value}"
    return post_journal(
        conn,
        JournalKind.OPENING_BALANCE,
        [Posting(OPENING_BALANCE, amount_fen), Posting(wallet_code(account_id, kind), -amount_fen)],
        idempotency_key=key,
        account_id=account_id,
        memo="opening balance",
        requested_by=requested_by,
        request={"account": account_id, "amount_fen": amount_fen, "wallet": str(kind)},
        now=now,
    )


def _local_meters(conn: Connection, account_id: str) -> list[str]:
    return list(
        conn.execute(
            sa.select(t.account_meter.c.meter_id).where(
                t.account_meter.c.account_id == account_id,
                t.account_meter.c.detached_at.is_(None),
                t.account_meter.c.control_mode == "LOCAL",
            )
        ).scalars()
    )


# -- reversal ---------------------------------------------------------------------------------

#: Journals with a business record of their own: corrected through their own function.
_NOT_REVERSIBLE = {
    JournalKind.REFUND_REQUEST.value: "fail the refund instead (fail_refund)",
    JournalKind.REFUND_SETTLE.value: "a paid-out refund is final; post a new top-up",
    JournalKind.EMERGENCY_REPAY.value: "reverse the top-up that repaid it",
    JournalKind.REVERSAL.value: "post the original entry again under a new key",
}


def reverse(
    conn: Connection,
    journal_id: int,
    *,
    reason: str,
    requested_by: str = "",
    idempotency_key: str | None = None,
    now: datetime | None = None,
) -> Posted:
    """Correct a journal by posting its exact opposite (never an edit).

    A journal is reversed at most once (`reversal:<id>`); reversing a top-up also reverses
    the emergency-credit repayment it made and takes it out of the refundable top-ups. A
    top-up already delivered to a LOCAL meter, or partly refunded, cannot be reversed.
    """
    if not reason or not reason.strip():
        raise RequestError("reason", "required: say why the entry is reversed (audit)")
    original = get_journal(conn, journal_id)
    key = _check_key(idempotency_key or f"reversal:{journal_id}")
    request = {"reverses": journal_id, "reason": reason}
    existing = _load_journal(conn, key)
    if existing is not None:
        _same_request(existing, request, "reversal")
        return Posted(existing, True)
    if original.kind in _NOT_REVERSIBLE:
        raise RequestError(
            "journal",
            f"journal {journal_id} is a {original.kind}: {_NOT_REVERSIBLE[original.kind]}",
        )
    already = conn.execute(
        sa.select(t.journal.c.id).where(t.journal.c.reverses_id == journal_id)
    ).scalar()
    if already is not None:
        raise RequestError("journal", f"journal {journal_id} is already reversed by {already}")
    if original.account_id is not None:
        _lock_wallet(conn, original.account_id, WalletKind.ENERGY)
    now = now or utcnow()
    if original.kind == JournalKind.TOPUP:
        order = conn.execute(
            sa.select(t.topup).where(
                t.topup.c.reference == original.idempotency_key.removeprefix("topup:")
            )
        ).first()
        if order is not None and order.buy_count is not None:
            raise RequestError(
                "journal",
                f"top-up {order.reference} was delivered to LOCAL meter {order.meter_id} "
                f"(purchase {order.buy_count}); refund it through the meter instead",
            )
        if order is not None and order.refunded_fen:
            raise RequestError(
                "journal",
                f"top-up {order.reference} is partly refunded ({format_fen(order.refunded_fen)})",
            )
        if order is not None:
            repay = _load_journal(conn, f"emergency_repay:{order.reference}")
            if repay is not None:
                _write_reversal(conn, repay, key + ":repay", reason, requested_by, now)
    new_id = _write_reversal(conn, original, key, reason, requested_by, now, request=request)
    journal = _load_journal(conn, key)
    assert journal is not None
    return Posted(journal, new_id is None)


def _write_reversal(
    conn: Connection,
    original: Journal,
    key: str,
    reason: str,
    requested_by: str,
    now: datetime,
    request: Mapping[str, Any] | None = None,
) -> int | None:
    return _write(
        conn,
        JournalKind.REVERSAL,
        key,
        [Posting(p.ledger_account, -p.amount_fen) for p in original.postings],
        request=request or {"reverses": original.id, "reason": reason},
        account_id=original.account_id,
        meter_id=original.meter_id,
        reverses_id=original.id,
        memo=f"reversal of journal {original.id}: {reason}",
        requested_by=requested_by,
        now=now,
    )


# -- refunds ----------------------------------------------------------------------------------


def refundable(conn: Connection, account_id: str, *, now: datetime | None = None) -> int:
    """What can be refunded now: min(energy wallet − outstanding emergency credit − meter
    refunds under way, unrefunded top-ups of the last 365 days) (domain.md §5.3)."""
    b = balances(conn, account_id)
    orders = _refundable_topups(conn, account_id, now or utcnow())
    awaiting = _awaiting_meter_refunds(conn, account_id)
    return max(
        0, min(b.energy_fen - b.emergency_outstanding_fen - awaiting, sum(r[2] for r in orders))
    )


def _awaiting_meter_refunds(conn: Connection, account_id: str) -> int:
    """Refunds reserved while a LOCAL meter is being debited (not posted yet)."""
    return int(
        conn.execute(
            sa.select(sa.func.coalesce(sa.func.sum(t.refund.c.amount_fen), 0)).where(
                t.refund.c.account_id == account_id, t.refund.c.state == "AWAITING_METER"
            )
        ).scalar()
    )


def _refundable_topups(
    conn: Connection, account_id: str, now: datetime
) -> list[tuple[int, str, int, str]]:
    """(topup id, reference, unrefunded fen, channel), newest first, within the window."""
    reversed_ids = sa.select(t.journal.c.reverses_id).where(t.journal.c.reverses_id.is_not(None))
    rows = conn.execute(
        sa.select(
            t.topup.c.id,
            t.topup.c.reference,
            t.topup.c.amount_fen,
            t.topup.c.refunded_fen,
            t.topup.c.channel,
        )
        .where(
            t.topup.c.account_id == account_id,
            t.topup.c.created_at >= now - REFUND_WINDOW,
            t.topup.c.refunded_fen < t.topup.c.amount_fen,
            t.topup.c.journal_id.not_in(reversed_ids),
        )
        .order_by(t.topup.c.created_at.desc(), t.topup.c.id.desc())
    ).all()
    return [(r.id, r.reference, r.amount_fen - r.refunded_fen, r.channel) for r in rows]


def refund(
    conn: Connection,
    account_id: str,
    amount_fen: int,
    reference: str,
    *,
    settle: bool = False,
    meter_id: str | None = None,
    requested_by: str = "",
    now: datetime | None = None,
) -> RefundResult:
    """Refund from the energy wallet: Dr wallet / Cr liab:refund_payable (state REQUESTED).

    `reference` is the refund number (out_refund_no): the same number again returns the
    original result and changes nothing. The amount is allocated to the account's top-ups
    newest first, only those of the last 365 days, and may not exceed `refundable()`.
    `settle=True` also records the pay-out at once (cash at the counter):
    Dr liab:refund_payable / Cr asset:psp_clearing:{channel of each top-up}. Otherwise call
    `settle_refund` when the channel confirms, or `fail_refund` to reverse the request.

    An account with a LOCAL meter (the only one, or `meter_id`) holds its money in the
    meter, so the meter is debited first (domain.md §1.5, §5.3): the refund waits in
    AWAITING_METER with its top-ups reserved and an equal-count REFUND command queued;
    nothing is posted until the meter confirms (`commands.mark_confirmed` then posts the
    request, and the pay-out when `settle`). A REFUND that finally fails ends the refund
    FAILED and releases the top-ups.
    """
    from .. import commands

    _check_amount(amount_fen)
    _check_reference(reference)
    key = f"refund:{reference}"
    request = {"account": account_id, "amount_fen": amount_fen}
    replay = _refund_replay(conn, reference, request)
    if replay is not None:
        return replay
    pos = _position(conn, account_id)
    replay = _refund_replay(conn, reference, request)  # a concurrent twin may have won
    if replay is not None:
        return replay
    wallet, balance = pos.wallet, pos.balance_fen
    if meter_id is not None:
        local = _local_meter_for(conn, account_id, meter_id)
    elif pos.local_meters > 1:
        local = _local_meter_for(conn, account_id, None)  # raises: which one?
    else:
        local = pos.first_local_meter
    now = now or utcnow()
    awaiting = _awaiting_meter_refunds(conn, account_id)
    orders = _refundable_topups(conn, account_id, now)
    available = min(balance - pos.emergency_fen - awaiting, sum(o[2] for o in orders))
    if amount_fen > available:
        raise RequestError(
            "amount",
            f"at most {format_fen(max(available, 0))} can be refunded: energy wallet "
            f"{format_fen(balance)}"
            + (
                f" (of which {format_fen(pos.emergency_fen)} emergency credit)"
                if pos.emergency_fen
                else ""
            )
            + (f" (of which {format_fen(awaiting)} awaiting meter refunds)" if awaiting else "")
            + f", unrefunded top-ups of the last 365 days {format_fen(sum(o[2] for o in orders))}",
        )
    journal_id = None
    if local is None:
        journal_id = _write(
            conn,
            JournalKind.REFUND_REQUEST,
            key,
            [Posting(wallet, amount_fen), Posting(REFUND_PAYABLE, -amount_fen)],
            request=request,
            account_id=account_id,
            memo="refund requested",
            requested_by=requested_by,
            now=now,
            known_wallets=(wallet,),
        )
        if journal_id is None:
            journal = _load_journal(conn, key)
            assert journal is not None
            _same_request(journal, request, "refund")
            return _refund_result(conn, reference, replayed=True)
    refund_id = conn.execute(
        t.refund.insert().returning(t.refund.c.id),
        {
            "account_id": account_id,
            "reference": reference,
            "amount_fen": amount_fen,
            "state": "REQUESTED" if local is None else "AWAITING_METER",
            "request_journal_id": journal_id,
            "meter_id": local,
            "settle_on_confirm": bool(settle and local is not None),
            "created_at": now,
            "updated_at": now,
        },
    ).scalar_one()
    need = amount_fen
    for topup_id, _ref, free, _channel in orders:
        if need == 0:
            break
        take = min(free, need)
        need -= take
        conn.execute(
            t.refund_allocation.insert(),
            {"refund_id": refund_id, "topup_id": topup_id, "amount_fen": take},
        )
        conn.execute(
            t.topup.update()
            .where(t.topup.c.id == topup_id)
            .values(refunded_fen=t.topup.c.refunded_fen + take)
        )
    if local is not None:
        count = conn.execute(sa.select(t.meter.c.buy_count).where(t.meter.c.id == local)).scalar()
        command = commands.enqueue(
            conn,
            local,
            commands.CommandKind.REFUND,
            params={
                "buy_count": int(count or 0),
                "amount_fen": amount_fen,
                "amount": format_fen(amount_fen),
                "refund": reference,
            },
            reason=f"refund {reference} of {format_fen(amount_fen)}",
            requested_by=requested_by or "ledger",
            account_id=account_id,
            now=now,
        )
        conn.execute(
            t.refund.update().where(t.refund.c.id == refund_id).values(command_id=command.id)
        )
    elif settle:
        settle_refund(conn, reference, requested_by=requested_by, now=now)
    return _refund_result(conn, reference, replayed=False)


def _refund_replay(
    conn: Connection, reference: str, request: Mapping[str, Any]
) -> RefundResult | None:
    row = conn.execute(
        sa.select(t.refund.c.account_id, t.refund.c.amount_fen).where(
            t.refund.c.reference == reference
        )
    ).first()
    if row is None:
        return None
    if {"account": row.account_id, "amount_fen": int(row.amount_fen)} != dict(request):
        raise IdempotencyConflict(
            "reference",
            f"refund {reference!r} was already used for {format_fen(row.amount_fen)} from "
            f"{row.account_id}; use a new refund number",
        )
    return _refund_result(conn, reference, replayed=True)


def complete_meter_refund(
    conn: Connection, command_id: int, *, requested_by: str = "", now: datetime | None = None
) -> RefundResult | None:
    """The meter confirmed the REFUND command: post the refund request (and the pay-out
    when it was asked for). Called by `commands.mark_confirmed`; idempotent."""
    row = conn.execute(sa.select(t.refund).where(t.refund.c.command_id == command_id)).first()
    if row is None or row.state != "AWAITING_METER":
        return None
    pos = _position(conn, row.account_id, open_only=False)
    now = now or utcnow()
    key = f"refund:{row.reference}"
    journal_id = _write(
        conn,
        JournalKind.REFUND_REQUEST,
        key,
        [Posting(pos.wallet, row.amount_fen), Posting(REFUND_PAYABLE, -row.amount_fen)],
        request={"account": row.account_id, "amount_fen": int(row.amount_fen)},
        account_id=row.account_id,
        meter_id=row.meter_id,
        memo=f"refund requested; meter {row.meter_id} debited (command {command_id})",
        requested_by=requested_by,
        now=now,
        known_wallets=(pos.wallet,),
    )
    if journal_id is None:  # pragma: no cover - the state check above prevents it
        raise LedgerIntegrityError(f"refund {row.reference} was posted twice")
    conn.execute(
        t.refund.update()
        .where(t.refund.c.id == row.id)
        .values(state="REQUESTED", request_journal_id=journal_id, updated_at=now)
    )
    if row.settle_on_confirm:
        return settle_refund(conn, row.reference, requested_by=requested_by, now=now)
    return _refund_result(conn, row.reference, replayed=False)


def abandon_meter_refund(
    conn: Connection, command_id: int, reason: str, *, now: datetime | None = None
) -> RefundResult | None:
    """The meter refused the REFUND for good (or it was cancelled): nothing was posted, so
    the refund ends FAILED and its top-ups are released. Called by `commands`."""
    row = conn.execute(sa.select(t.refund).where(t.refund.c.command_id == command_id)).first()
    if row is None or row.state != "AWAITING_METER":
        return None
    _release_allocations(conn, row.id)
    conn.execute(
        t.refund.update()
        .where(t.refund.c.id == row.id)
        .values(state="FAILED", reason=reason[:500], updated_at=now or utcnow())
    )
    return _refund_result(conn, row.reference, replayed=False)


def _release_allocations(conn: Connection, refund_id: int) -> None:
    for topup_id, amount in conn.execute(
        sa.select(t.refund_allocation.c.topup_id, t.refund_allocation.c.amount_fen).where(
            t.refund_allocation.c.refund_id == refund_id
        )
    ).all():
        conn.execute(
            t.topup.update()
            .where(t.topup.c.id == topup_id)
            .values(refunded_fen=t.topup.c.refunded_fen - amount)
        )


def _load_refund(conn: Connection, reference: str) -> Any:
    row = conn.execute(sa.select(t.refund).where(t.refund.c.reference == reference)).first()
    if row is None:
        raise RequestError("reference", f"unknown refund {reference!r}")
    return row


def _allocations(conn: Connection, refund_id: int) -> list[RefundAllocation]:
    rows = conn.execute(
        sa.select(t.topup.c.reference, t.topup.c.channel, t.refund_allocation.c.amount_fen)
        .join(t.topup, t.topup.c.id == t.refund_allocation.c.topup_id)
        .where(t.refund_allocation.c.refund_id == refund_id)
        .order_by(t.topup.c.created_at.desc(), t.topup.c.id.desc())
    ).all()
    return [RefundAllocation(r.reference, r.channel, r.amount_fen) for r in rows]


def _refund_result(conn: Connection, reference: str, *, replayed: bool) -> RefundResult:
    row = _load_refund(conn, reference)
    return RefundResult(
        row.reference,
        row.account_id,
        row.amount_fen,
        row.state,
        _energy_balance(conn, row.account_id),
        tuple(_allocations(conn, row.id)),
        replayed,
        row.meter_id,
        row.command_id,
    )


def settle_refund(
    conn: Connection, reference: str, *, requested_by: str = "", now: datetime | None = None
) -> RefundResult:
    """The channel paid the refund out: Dr liab:refund_payable / Cr psp_clearing per channel."""
    row = _load_refund(conn, reference)
    if row.state == "SETTLED":
        return _refund_result(conn, reference, replayed=True)
    if row.state != "REQUESTED":
        raise RequestError("reference", f"refund {reference!r} is {row.state}, it cannot be paid")
    now = now or utcnow()
    by_channel: dict[str, int] = {}
    for a in _allocations(conn, row.id):
        by_channel[a.channel] = by_channel.get(a.channel, 0) + a.amount_fen
    postings = [Posting(REFUND_PAYABLE, row.amount_fen)] + [
        Posting(clearing_code(ch), -amount) for ch, amount in sorted(by_channel.items())
    ]
    journal_id = _write(
        conn,
        JournalKind.REFUND_SETTLE,
        f"refund_settle:{reference}",
        postings,
        request={"refund": reference},
        account_id=row.account_id,
        memo="refund paid out",
        requested_by=requested_by,
        now=now,
    )
    if journal_id is None:
        return _refund_result(conn, reference, replayed=True)
    conn.execute(
        t.refund.update()
        .where(t.refund.c.id == row.id)
        .values(state="SETTLED", settle_journal_id=journal_id, updated_at=now)
    )
    return _refund_result(conn, reference, replayed=False)


def fail_refund(
    conn: Connection,
    reference: str,
    reason: str,
    *,
    requested_by: str = "",
    now: datetime | None = None,
) -> RefundResult:
    """The channel could not pay the refund: reverse the request and give the money back to
    the wallet and the top-ups it was allocated to. Retry later under the same number."""
    if not reason or not reason.strip():
        raise RequestError("reason", "required: say why the refund failed (audit)")
    row = _load_refund(conn, reference)
    if row.state == "FAILED":
        return _refund_result(conn, reference, replayed=True)
    if row.state != "REQUESTED":
        raise RequestError("reference", f"refund {reference!r} is {row.state}, it cannot fail")
    _lock_wallet(conn, row.account_id, WalletKind.ENERGY)
    now = now or utcnow()
    original = get_journal(conn, row.request_journal_id)
    journal_id = _write_reversal(
        conn, original, f"refund_fail:{reference}", reason, requested_by, now
    )
    _release_allocations(conn, row.id)
    conn.execute(
        t.refund.update()
        .where(t.refund.c.id == row.id)
        .values(state="FAILED", reversal_journal_id=journal_id, reason=reason[:500], updated_at=now)
    )
    return _refund_result(conn, reference, replayed=False)


# -- reading the journal ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JournalLine:
    """A journal as the running service tails it (`journals_since`)."""

    id: int
    kind: str
    account_id: str | None
    meter_id: str | None
    created_at: datetime
    #: Net change of each wallet of the account in this journal (fen, + = more money).
    wallet_changes: Mapping[str, int] = field(default_factory=dict)


def journals_since(conn: Connection, after_id: int, limit: int = 1000) -> list[JournalLine]:
    """Journals with id > `after_id`, oldest first: how the service learns of top-ups and
    refunds made by the CLI or another instance (the database is the queue)."""
    rows = conn.execute(
        sa.select(
            t.journal.c.id,
            t.journal.c.kind,
            t.journal.c.account_id,
            t.journal.c.meter_id,
            t.journal.c.created_at,
        )
        .where(t.journal.c.id > after_id)
        .order_by(t.journal.c.id)
        .limit(limit)
    ).all()
    if not rows:
        return []
    changes: dict[int, dict[str, int]] = {}
    for jid, code, amount in conn.execute(
        sa.select(t.posting.c.journal_id, t.posting.c.ledger_account, t.posting.c.amount_fen).where(
            t.posting.c.journal_id.between(rows[0].id, rows[-1].id),
            t.posting.c.ledger_account.like("liab:wallet:%"),
        )
    ).all():
        kind = code.rsplit(":", 1)[1]
        changes.setdefault(jid, {})
        changes[jid][kind] = changes[jid].get(kind, 0) - amount
    return [
        JournalLine(r.id, r.kind, r.account_id, r.meter_id, r.created_at, changes.get(r.id, {}))
        for r in rows
    ]


def wallet_history(conn: Connection, account_id: str, limit: int = 50) -> list[dict[str, Any]]:
    """The latest entries that moved the account's wallets, newest first (for `account show`)."""
    codes = [wallet_code(account_id, k) for k in WalletKind]
    rows = conn.execute(
        sa.select(
            t.journal.c.id,
            t.journal.c.kind,
            t.journal.c.created_at,
            t.journal.c.memo,
            t.journal.c.idempotency_key,
            t.posting.c.ledger_account,
            t.posting.c.amount_fen,
        )
        .join(t.posting, t.posting.c.journal_id == t.journal.c.id)
        .where(t.posting.c.ledger_account.in_(codes))
        .order_by(t.journal.c.id.desc())
        .limit(limit)
    ).all()
    return [
        {
            "journal": r.id,
            "kind": r.kind,
            "at": r.created_at,
            "wallet": r.ledger_account.rsplit(":", 1)[1],
            "amount_fen": -r.amount_fen,
            "key": r.idempotency_key,
            "memo": r.memo,
        }
        for r in rows
    ]


def usage_fen_since(
    conn: Connection, account_ids: Sequence[str], since: datetime
) -> dict[str, int]:
    """Usage deducted from each account's energy wallet since `since` (fen, by account):
    today's cost in the room view and on OPC UA. Accounts without usage are left out."""
    if not account_ids:
        return {}
    rows = conn.execute(
        sa.select(t.journal.c.account_id, sa.func.sum(t.posting.c.amount_fen))
        .join(t.posting, t.posting.c.journal_id == t.journal.c.id)
        .where(
            t.journal.c.kind == JournalKind.USAGE.value,
            t.journal.c.created_at >= since,
            t.journal.c.account_id.in_(list(account_ids)),
            t.posting.c.ledger_account.like("liab:wallet:%"),
        )
        .group_by(t.journal.c.account_id)
    ).all()
    return {r[0]: int(r[1]) for r in rows}


# -- verification -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Break:
    """One broken invariant: which, and where."""

    invariant: str
    detail: str

    def __str__(self) -> str:
        return f"{self.invariant}: {self.detail}"


@dataclass(slots=True)
class VerifyReport:
    journals: int = 0
    postings: int = 0
    wallets: int = 0
    checks: list[str] = field(default_factory=list)
    breaks: list[Break] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.breaks


#: At most this many examples are listed per broken invariant.
_EXAMPLES = 20


def verify(conn: Connection) -> VerifyReport:
    """Check every ledger invariant (domain.md §5.5) and the bookkeeping around it.

    1. Σ all postings = 0.
    2. Every journal has ≥ 2 postings summing to 0.
    3. Every cached wallet balance = −Σ its postings (and the version counts its moves).
    4. Each payment reference, refund number, (meter, purchase count) and journal key
       (`(pool, period)` included) is applied at most once.
    5. Refunds: allocations sum to the refund; top-ups' refunded amounts match the
       allocations of refunds that did not fail; each state has its journals.
    6. Reversals negate their original exactly; a journal is reversed at most once.
    7. Ledger account types match their code; postings use known accounts.
    8. Purchase counters: a meter's counter is ≥ every count allocated to it, and RECHARGE
       commands carry distinct counts per meter.
    9. Closed accounts hold nothing; relay and valve commands record reason and requester.
    """
    report = VerifyReport()

    def check(name: str, rows: Iterable[Any], describe: Any) -> None:
        report.checks.append(name)
        for i, row in enumerate(rows):
            if i >= _EXAMPLES:
                report.breaks.append(Break(name, "... more"))
                break
            report.breaks.append(Break(name, describe(row)))

    p, j, w = t.posting, t.journal, t.wallet
    report.journals = conn.execute(sa.select(sa.func.count()).select_from(j)).scalar() or 0
    report.postings = conn.execute(sa.select(sa.func.count()).select_from(p)).scalar() or 0
    report.wallets = conn.execute(sa.select(sa.func.count()).select_from(w)).scalar() or 0

    total = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(p.c.amount_fen), 0))).scalar()
    check(
        "sum of all postings is 0",
        [total] if total else [],
        lambda v: f"all postings sum to {v} fen",
    )

    sums = (
        sa.select(
            j.c.id,
            sa.func.coalesce(sa.func.sum(p.c.amount_fen), 0).label("total"),
            sa.func.count(p.c.id).label("n"),
        )
        .select_from(j.outerjoin(p, p.c.journal_id == j.c.id))
        .group_by(j.c.id)
        .having(
            sa.or_(sa.func.coalesce(sa.func.sum(p.c.amount_fen), 0) != 0, sa.func.count(p.c.id) < 2)
        )
        .order_by(j.c.id)
    )
    check(
        "every journal balances with >= 2 postings",
        conn.execute(sums),
        lambda r: f"journal {r.id}: {r.n} posting(s) summing to {r.total} fen",
    )

    derived = (
        sa.select(p.c.ledger_account, sa.func.sum(p.c.amount_fen).label("total"))
        .group_by(p.c.ledger_account)
        .subquery()
    )
    net = (
        sa.select(p.c.ledger_account, p.c.journal_id)
        .group_by(p.c.ledger_account, p.c.journal_id)
        .having(sa.func.sum(p.c.amount_fen) != 0)
        .subquery()
    )
    moves = (
        sa.select(net.c.ledger_account, sa.func.count().label("n"))
        .group_by(net.c.ledger_account)
        .subquery()
    )
    wallet_rows = conn.execute(
        sa.select(
            w.c.ledger_account,
            w.c.balance_fen,
            w.c.version,
            sa.func.coalesce(derived.c.total, 0).label("total"),
            sa.func.coalesce(moves.c.n, 0).label("n"),
        )
        .select_from(
            w.outerjoin(derived, derived.c.ledger_account == w.c.ledger_account).outerjoin(
                moves, moves.c.ledger_account == w.c.ledger_account
            )
        )
        .order_by(w.c.ledger_account)
    ).all()
    check(
        "wallet balance = -(sum of its postings)",
        [r for r in wallet_rows if r.balance_fen != -r.total],
        lambda r: (
            f"{r.ledger_account}: cached {format_fen(r.balance_fen)}, "
            f"postings say {format_fen(-r.total)}"
        ),
    )
    check(
        "wallet version counts its journals",
        [r for r in wallet_rows if r.version < r.n],
        lambda r: f"{r.ledger_account}: version {r.version} < {r.n} journals",
    )
    orphan_wallets = conn.execute(
        sa.select(p.c.ledger_account)
        .where(p.c.ledger_account.like("liab:wallet:%"))
        .where(p.c.ledger_account.not_in(sa.select(w.c.ledger_account)))
        .distinct()
    ).all()
    check(
        "wallet postings name existing wallets",
        orphan_wallets,
        lambda r: f"{r.ledger_account} has postings but no wallet row",
    )

    def duplicates(column: Any, *extra: Any, where: Any = None) -> list[Any]:
        cols = (column, *extra)
        q = sa.select(*cols, sa.func.count().label("n")).group_by(*cols)
        if where is not None:
            q = q.where(where)
        return conn.execute(q.having(sa.func.count() > 1)).all()

    check(
        "journal idempotency keys are unique",
        duplicates(j.c.idempotency_key),
        lambda r: f"key {r[0]!r} used {r.n} times",
    )
    check(
        "payment references are applied once",
        duplicates(t.topup.c.reference),
        lambda r: f"top-up {r[0]!r} recorded {r.n} times",
    )
    check(
        "refund numbers are applied once",
        duplicates(t.refund.c.reference),
        lambda r: f"refund {r[0]!r} recorded {r.n} times",
    )
    check(
        "(meter, purchase count) is applied once",
        duplicates(t.topup.c.meter_id, t.topup.c.buy_count, where=t.topup.c.buy_count.is_not(None)),
        lambda r: f"meter {r[0]} purchase {r[1]} delivered by {r.n} top-ups",
    )
    check(
        "a journal is reversed at most once",
        duplicates(j.c.reverses_id, where=j.c.reverses_id.is_not(None)),
        lambda r: f"journal {r[0]} reversed {r.n} times",
    )

    topup_journal = conn.execute(
        sa.select(t.topup.c.reference, t.topup.c.amount_fen, j.c.kind, j.c.idempotency_key)
        .select_from(t.topup.outerjoin(j, j.c.id == t.topup.c.journal_id))
        .where(
            sa.or_(
                j.c.id.is_(None),
                j.c.kind != JournalKind.TOPUP.value,
                j.c.idempotency_key != sa.literal("topup:") + t.topup.c.reference,
            )
        )
    ).all()
    check(
        "every top-up order has its journal",
        topup_journal,
        lambda r: f"top-up {r.reference}: journal {r.idempotency_key!r} ({r.kind})",
    )

    alloc = (
        sa.select(
            t.refund_allocation.c.refund_id,
            sa.func.sum(t.refund_allocation.c.amount_fen).label("total"),
        )
        .group_by(t.refund_allocation.c.refund_id)
        .subquery()
    )
    check(
        "refund allocations sum to the refund",
        conn.execute(
            sa.select(t.refund.c.reference, t.refund.c.amount_fen, alloc.c.total)
            .select_from(t.refund.outerjoin(alloc, alloc.c.refund_id == t.refund.c.id))
            .where(sa.func.coalesce(alloc.c.total, 0) != t.refund.c.amount_fen)
        ),
        lambda r: (
            f"refund {r.reference}: {format_fen(r.amount_fen)} but allocations "
            f"{format_fen(r.total or 0)}"
        ),
    )
    live = (
        sa.select(
            t.refund_allocation.c.topup_id,
            sa.func.sum(t.refund_allocation.c.amount_fen).label("total"),
        )
        .join(t.refund, t.refund.c.id == t.refund_allocation.c.refund_id)
        .where(t.refund.c.state != "FAILED")
        .group_by(t.refund_allocation.c.topup_id)
        .subquery()
    )
    check(
        "top-up refunded amounts match live refund allocations",
        conn.execute(
            sa.select(t.topup.c.reference, t.topup.c.refunded_fen, live.c.total)
            .select_from(t.topup.outerjoin(live, live.c.topup_id == t.topup.c.id))
            .where(sa.func.coalesce(live.c.total, 0) != t.topup.c.refunded_fen)
        ),
        lambda r: (
            f"top-up {r.reference}: refunded {format_fen(r.refunded_fen)}, "
            f"allocations {format_fen(r.total or 0)}"
        ),
    )
    check(
        "refund states have their journals",
        conn.execute(
            sa.select(t.refund.c.reference, t.refund.c.state).where(
                sa.or_(
                    sa.and_(t.refund.c.state == "SETTLED", t.refund.c.settle_journal_id.is_(None)),
                    sa.and_(
                        t.refund.c.state == "FAILED",
                        t.refund.c.request_journal_id.is_not(None),
                        t.refund.c.reversal_journal_id.is_(None),
                    ),
                    sa.and_(
                        t.refund.c.state.in_(["REQUESTED", "SETTLED"]),
                        t.refund.c.request_journal_id.is_(None),
                    ),
                    sa.and_(
                        t.refund.c.state == "REQUESTED",
                        sa.or_(
                            t.refund.c.settle_journal_id.is_not(None),
                            t.refund.c.reversal_journal_id.is_not(None),
                        ),
                    ),
                    sa.and_(
                        t.refund.c.state == "AWAITING_METER",
                        sa.or_(
                            t.refund.c.request_journal_id.is_not(None),
                            t.refund.c.command_id.is_(None),
                        ),
                    ),
                )
            )
        ),
        lambda r: f"refund {r.reference} is {r.state} without the matching journal",
    )

    original = p.alias("orig")
    rev = j.alias("rev")
    mine = (
        sa.select(p.c.ledger_account, sa.func.sum(p.c.amount_fen).label("s"), p.c.journal_id)
        .group_by(p.c.journal_id, p.c.ledger_account)
        .subquery()
    )
    theirs = (
        sa.select(
            original.c.ledger_account,
            sa.func.sum(original.c.amount_fen).label("s"),
            original.c.journal_id,
        )
        .group_by(original.c.journal_id, original.c.ledger_account)
        .subquery()
    )
    # For every reversal and every account either side touches: reversal + original = 0.
    both = sa.union(
        sa.select(rev.c.id.label("rid"), mine.c.ledger_account.label("acct")).join(
            mine, mine.c.journal_id == rev.c.id
        ),
        sa.select(rev.c.id.label("rid"), theirs.c.ledger_account.label("acct")).join(
            theirs, theirs.c.journal_id == rev.c.reverses_id
        ),
    ).subquery()
    bad_reversals = conn.execute(
        sa.select(both.c.rid, both.c.acct)
        .select_from(
            both.join(rev, rev.c.id == both.c.rid)
            .outerjoin(
                mine, sa.and_(mine.c.journal_id == rev.c.id, mine.c.ledger_account == both.c.acct)
            )
            .outerjoin(
                theirs,
                sa.and_(
                    theirs.c.journal_id == rev.c.reverses_id,
                    theirs.c.ledger_account == both.c.acct,
                ),
            )
        )
        .where(rev.c.reverses_id.is_not(None))
        .where(sa.func.coalesce(mine.c.s, 0) + sa.func.coalesce(theirs.c.s, 0) != 0)
        .order_by(both.c.rid)
    ).all()
    check(
        "reversals negate their original",
        bad_reversals,
        lambda r: f"journal {r.rid} does not cancel its original on {r.acct}",
    )

    check(
        "ledger account types match their codes",
        [
            r
            for r in conn.execute(sa.select(t.ledger_account.c.code, t.ledger_account.c.type))
            if r.type != _code_type(r.code) or r.type not in ACCOUNT_TYPES
        ],
        lambda r: f"{r.code} has type {r.type!r}",
    )

    max_count = (
        sa.select(t.topup.c.meter_id, sa.func.max(t.topup.c.buy_count).label("top"))
        .where(t.topup.c.buy_count.is_not(None))
        .group_by(t.topup.c.meter_id)
        .subquery()
    )
    check(
        "purchase counters cover every allocated count",
        conn.execute(
            sa.select(max_count.c.meter_id, max_count.c.top, t.meter.c.buy_count)
            .select_from(max_count.outerjoin(t.meter, t.meter.c.id == max_count.c.meter_id))
            .where(sa.or_(t.meter.c.buy_count.is_(None), t.meter.c.buy_count < max_count.c.top))
        ),
        lambda r: f"meter {r.meter_id}: counter {r.buy_count}, allocated {r.top}",
    )
    recharge_counts: dict[tuple[str, int], int] = {}
    for meter_id, params in conn.execute(
        sa.select(t.meter_command.c.meter_id, t.meter_command.c.params).where(
            t.meter_command.c.kind == "RECHARGE"
        )
    ):
        if "buy_count" in (params or {}):
            k = (meter_id, int(params["buy_count"]))
            recharge_counts[k] = recharge_counts.get(k, 0) + 1
    check(
        "RECHARGE commands carry distinct purchase counts",
        [(k, n) for k, n in sorted(recharge_counts.items()) if n > 1],
        lambda r: f"meter {r[0][0]} purchase {r[0][1]} in {r[1]} RECHARGE commands",
    )

    check(
        "closed accounts hold nothing",
        conn.execute(
            sa.select(w.c.ledger_account, w.c.balance_fen)
            .join(t.account, t.account.c.id == w.c.account_id)
            .where(t.account.c.state == "CLOSED", w.c.balance_fen != 0)
        ),
        lambda r: f"{r.ledger_account} holds {format_fen(r.balance_fen)}",
    )
    check(
        "every meter command records reason and requester",
        conn.execute(
            sa.select(t.meter_command.c.id, t.meter_command.c.kind).where(
                sa.or_(
                    sa.func.trim(t.meter_command.c.reason) == "",
                    sa.func.trim(t.meter_command.c.requested_by) == "",
                )
            )
        ),
        lambda r: f"command {r.id} ({r.kind}) has no reason or requester",
    )
    return report
