"""What the ledger needs from whoever drives LOCAL meters (domain.md §1.5).

A LOCAL meter holds the tenant's money itself, so a top-up or refund for it is only half
money: the other half is a command to the meter. Queueing that command is not the ledger's
job (the ledger only posts money); the caller passes an object with these two methods, and
the ledger calls it inside its own transaction so that money and command commit together.
`core.prepay.local_money.LOCAL_MONEY` is the implementation the service uses.
"""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from sqlalchemy.engine import Connection

from .errors import LedgerIntegrityError


class LocalMeterCommands(Protocol):
    def recharge(
        self,
        conn: Connection,
        meter_id: str,
        *,
        account_id: str,
        amount_fen: int,
        journal_id: int,
        reason: str,
        requested_by: str,
        now: datetime,
    ) -> tuple[int, int]:
        """Queue the RECHARGE of a posted top-up; return (purchase count, command id)."""

    def refund(
        self,
        conn: Connection,
        meter_id: str,
        *,
        account_id: str,
        amount_fen: int,
        reference: str,
        reason: str,
        requested_by: str,
        now: datetime,
    ) -> int:
        """Queue the REFUND that debits the meter before the refund is posted; return the
        command id."""


def require_local(local: LocalMeterCommands | None, meter_id: str) -> LocalMeterCommands:
    """Refuse to move money for a LOCAL meter when no one would queue its command."""
    if local is None:
        raise LedgerIntegrityError(
            f"meter {meter_id} is LOCAL: its top-up or refund needs its device command queued "
            "in the same transaction (pass local=core.prepay.local_money.LOCAL_MONEY)"
        )
    return local
