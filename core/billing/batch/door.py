"""What a batch job needs of the door (`core.operations.Operations` is one).

Batch jobs act only through the door; they know it by this structural type, so billing
does not import the layer above it (docs/architecture.md). The `check_*` methods are the
door's read-only halves of its actions — the checks the real action runs first, and the
refusal it would raise — which the dry run (`preview.py`) calls instead of the action.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Protocol

from sqlalchemy.engine import Connection

from ...ledger import TopUpCheck, TopUpResult
from ...model import SupplyControl
from ...prepay import accounts as acc
from ...prepay import commands as cmds
from ...prepay.binding import TariffBinding
from ...prepay.control import CutPlan


class BatchDoor(Protocol):
    #: Which tariff prices which meter (batch parameters are checked against it).
    binding: TariffBinding
    #: The door's clock: a dry run asks the policy gate about the instant the door would.
    clock: Callable[[], datetime]

    def set_tariff(self, account_id: str, tariff_id: str, *, actor: str) -> acc.Account: ...

    def check_tariff(self, conn: Connection, account_id: str, tariff_id: str) -> acc.Account: ...

    def set_thresholds(
        self,
        account_id: str,
        *,
        alarm1_fen: int,
        alarm2_fen: int,
        overdraft_limit_fen: int | None = None,
        close_limit_fen: int | None = None,
        actor: str,
    ) -> acc.Account: ...

    def check_thresholds(
        self,
        conn: Connection,
        account_id: str,
        *,
        alarm1_fen: int,
        alarm2_fen: int,
        overdraft_limit_fen: int | None = None,
        close_limit_fen: int | None = None,
    ) -> tuple[acc.Account, acc.Thresholds]: ...

    def topup(
        self,
        account_id: str,
        amount_fen: int,
        reference: str,
        *,
        channel: str = "cash",
        actor: str,
        meter_id: str | None = None,
    ) -> TopUpResult: ...

    def check_topup(
        self,
        conn: Connection,
        account_id: str,
        amount_fen: int,
        reference: str,
        *,
        channel: str = "cash",
        meter_id: str | None = None,
    ) -> TopUpCheck: ...

    def disconnect(
        self, meter_or_account_id: str, reason: str, *, actor: str, override: bool = True
    ) -> list[cmds.MeterCommand]: ...

    def check_disconnect(
        self,
        conn: Connection,
        meter_or_account_id: str,
        reason: str,
        *,
        actor: str,
        override: bool = True,
        now: datetime,
        also_queued: Sequence[datetime] = (),
    ) -> CutPlan: ...

    def reconnect(
        self, meter_or_account_id: str, reason: str, *, actor: str
    ) -> list[cmds.MeterCommand]: ...

    def check_reconnect(
        self, conn: Connection, meter_or_account_id: str, reason: str
    ) -> list[tuple[str, SupplyControl]]: ...

    def set_params(
        self,
        meter_id: str,
        command: str,
        values: Mapping[str, object],
        reason: str,
        *,
        actor: str,
        idempotency_key: str,
    ) -> cmds.MeterCommand: ...

    def check_set_params(
        self, meter_id: str, command: str, values: Mapping[str, object]
    ) -> None: ...
