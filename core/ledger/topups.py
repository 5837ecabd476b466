"""Top-ups: money in through a channel, onto the energy wallet (and to a LOCAL meter)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..db import FastStatement, db_time
from ..db import schema as t
from ..events import utcnow
from ..money import CAPACITY_FEN, check_amount, format_fen
from .codes import check_channel, clearing_code, emergency_code
from .errors import LedgerIntegrityError, RequestError
from .journal import check_reference, find_replay, write_journal
from .local import LocalMeterCommands, require_local
from .position import Position, energy_balance, local_meter_for, lock_position, peek_position
from .values import Journal, JournalKind, Posting, TopUpResult

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
    local: LocalMeterCommands | None = None,
) -> TopUpResult:
    """Credit the account's energy wallet: Dr asset:psp_clearing:{channel} / Cr wallet.

    `reference` is the payment's unique id (payment id, counter receipt number): the same
    reference for the same account and amount again — through any channel — returns the
    original result and changes nothing; for another account or amount it is refused. Refused with a
    `RequestError` naming the field: amount not > 0, above the 999,999.99 capacity or the
    account's hoarding limit (balance + amount > limit); unknown, pre-registered or closed
    account. Outstanding emergency credit is repaid from the top-up in the same
    transaction. For a LOCAL meter (the account's only one, or `meter_id`) `local` queues
    the RECHARGE command with the meter's next purchase count in the same transaction
    (domain.md §1.5); without it such a top-up is refused.
    """
    _check_request(amount_fen, reference, channel)
    key = f"topup:{reference}"
    request = {"account": account_id, "amount_fen": amount_fen, "channel": channel}
    if meter_id is not None:
        request["meter"] = meter_id

    counter = clearing_code(channel)
    pos = lock_position(conn, account_id, key=key, counter=counter)
    if pos.key_taken:
        return _topup_replay(conn, key, request)
    wallet = pos.wallet
    local_meter, after = _check_position(conn, account_id, amount_fen, meter_id, pos)
    if local_meter is not None:
        local = require_local(local, local_meter)
    now = now or utcnow()
    journal_id = _post_topup(conn, key, request, pos, counter, local_meter, requested_by, now)
    if journal_id is None:  # a concurrent request with the same reference won
        return _topup_replay(conn, key, request)

    # A LOCAL meter's emergency credit is the meter's own: it repays it itself.
    repaid = 0
    if not local_meter and pos.emergency_fen > 0:
        repaid = _repay_emergency(
            conn,
            account_id,
            wallet,
            min(pos.emergency_fen, amount_fen),
            reference,
            requested_by=requested_by,
            now=now,
        )

    buy_count = command_id = None
    if local_meter is not None and local is not None:
        reason = f"top-up {reference} of {format_fen(amount_fen)} via {channel}"
        buy_count, command_id = local.recharge(
            conn,
            local_meter,
            account_id=account_id,
            amount_fen=amount_fen,
            journal_id=journal_id,
            reason=reason,
            requested_by=requested_by or "ledger",
            now=now,
        )
    result = TopUpResult(
        reference,
        account_id,
        amount_fen,
        channel,
        journal_id,
        after - repaid,
        False,
        repaid,
        local_meter,
        buy_count,
        command_id,
    )
    _fast_topup.execute(conn, _order_row(conn, result, now)).close()
    return result


@dataclass(frozen=True, slots=True)
class TopUpCheck:
    """What a top-up would do: the energy balance before and after, the LOCAL meter it
    would recharge (None: platform wallet), or that its reference was used (a replay)."""

    balance_fen: int
    after_fen: int
    local_meter: str | None
    replayed: bool


def check_topup(
    conn: Connection,
    account_id: str,
    amount_fen: int,
    reference: str,
    *,
    channel: str = "cash",
    meter_id: str | None = None,
) -> TopUpCheck:
    """What `topup` would do now, or the `RequestError` it would refuse with; reads only
    (a dry run). It runs the checks `topup` runs, in the same order."""
    _check_request(amount_fen, reference, channel)
    pos = peek_position(conn, account_id, key=f"topup:{reference}", counter=clearing_code(channel))
    if pos.key_taken:
        return TopUpCheck(pos.balance_fen, pos.balance_fen, None, True)
    local_meter, after = _check_position(conn, account_id, amount_fen, meter_id, pos)
    return TopUpCheck(pos.balance_fen, after, local_meter, False)


def _check_request(amount_fen: int, reference: str, channel: str) -> None:
    check_amount(amount_fen)
    check_reference(reference)
    check_channel(channel)


def _check_position(
    conn: Connection, account_id: str, amount_fen: int, meter_id: str | None, pos: Position
) -> tuple[str | None, int]:
    """(the LOCAL meter to recharge or None, the balance after) — refused when the meter
    is ambiguous or the amount does not fit under the capacity and hoarding limit."""
    local_meter = local_meter_for(conn, account_id, meter_id, pos)
    return local_meter, _check_room(pos.balance_fen, amount_fen, pos.hoard_limit_fen)


def _post_topup(
    conn: Connection,
    key: str,
    request: dict[str, Any],
    pos: Position,
    counter: str,
    local_meter: str | None,
    requested_by: str,
    now: datetime,
) -> int | None:
    """The top-up's journal (Dr clearing / Cr wallet); None when a concurrent request with
    the same reference posted first."""
    amount_fen = request["amount_fen"]
    return write_journal(
        conn,
        JournalKind.TOPUP,
        key,
        [Posting(counter, amount_fen), Posting(pos.wallet, -amount_fen)],
        request=request,
        account_id=request["account"],
        meter_id=local_meter,
        memo=f"top-up via {request['channel']}",
        requested_by=requested_by,
        now=now,
        known_wallets=(pos.wallet,),
        known_accounts=(counter,) if pos.counter_exists else (),
    )


def _order_row(conn: Connection, r: TopUpResult, now: datetime) -> dict[str, Any]:
    """The top-up order row (what refunds allocate against and replays read back)."""
    return {
        "account_id": r.account_id,
        "reference": r.reference,
        "channel": r.channel,
        "amount_fen": r.amount_fen,
        "journal_id": r.journal_id,
        "meter_id": r.meter_id,
        "buy_count": r.buy_count,
        "command_id": r.command_id,
        "created_at": db_time(conn, now),
    }


def _check_room(balance_fen: int, amount_fen: int, hoard_limit_fen: int) -> int:
    """The balance after the top-up, refused above the meter capacity or the account's
    hoarding limit (0: none)."""
    after = balance_fen + amount_fen
    if after > CAPACITY_FEN:
        raise RequestError(
            "amount",
            f"balance {format_fen(balance_fen)} + {format_fen(amount_fen)} would exceed the "
            f"capacity {format_fen(CAPACITY_FEN)}",
        )
    if hoard_limit_fen and after > hoard_limit_fen:
        raise RequestError(
            "amount",
            f"balance {format_fen(balance_fen)} + {format_fen(amount_fen)} = {format_fen(after)} "
            f"would exceed the account's hoarding limit {format_fen(hoard_limit_fen)}",
        )
    return after


def _repay_emergency(
    conn: Connection,
    account_id: str,
    wallet: str,
    repaid: int,
    reference: str,
    *,
    requested_by: str,
    now: datetime,
) -> int:
    """Repay outstanding emergency credit from the top-up `reference`; returns `repaid`."""
    write_journal(
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
    return repaid


#: What makes two top-ups under one reference the same payment. The channel and the meter
#: are how it arrived: the same payment entered at the counter and then on the SCADA screen
#: is a replay, answered with the original result.
TOPUP_IDENTITY = ("account", "amount_fen")


def _topup_replay(conn: Connection, key: str, request: Mapping[str, Any]) -> TopUpResult:
    """The result of the top-up already posted under `key` (the same payment, whatever the
    channel, or a conflict)."""
    journal = find_replay(conn, key, request, "top-up", TOPUP_IDENTITY)
    assert journal is not None
    return _topup_result(conn, journal, replayed=True)


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
    return TopUpResult(
        row.reference,
        row.account_id,
        row.amount_fen,
        row.channel,
        journal.id,
        energy_balance(conn, row.account_id),
        replayed,
        int(repaid["amount_fen"]) if repaid else 0,
        row.meter_id,
        row.buy_count,
        row.command_id,
    )
