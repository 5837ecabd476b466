"""What a batch job needs of the door (`core.operations.Operations` is one).

Batch jobs act only through the door; they know it by this structural type, so billing
does not import the layer above it (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from ...ledger import TopUpResult
from ...prepay import accounts as acc
from ...prepay import commands as cmds
from ...prepay.binding import TariffBinding


class BatchDoor(Protocol):
    #: Which tariff prices which meter (batch parameters are checked against it).
    binding: TariffBinding

    def set_tariff(self, account_id: str, tariff_id: str, *, actor: str) -> acc.Account: ...

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

    def disconnect(
        self, meter_or_account_id: str, reason: str, *, actor: str, override: bool = True
    ) -> list[cmds.MeterCommand]: ...

    def reconnect(
        self, meter_or_account_id: str, reason: str, *, actor: str
    ) -> list[cmds.MeterCommand]: ...

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
