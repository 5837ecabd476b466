"""Money through the door: top-ups, emergency credit, refunds."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.engine import Connection

from .. import ledger
from ..ledger import RefundResult, RequestError, TopUpResult, format_fen
from ..prepay import commands as cmds
from ..prepay.account_rows import load_account_row
from ..prepay.effects import Effects, audit
from ..prepay.feecontrol import Cause, FeeState
from ..prepay.local_money import LOCAL_MONEY
from ..prepay.policy import MeterContext, grant_emergency_credit, reconnect_allowed
from .door import Door


class MoneyDoor(Door):
    def check_topup(
        self,
        conn: Connection,
        account_id: str,
        amount_fen: int,
        reference: str,
        *,
        channel: str = "cash",
        meter_id: str | None = None,
    ) -> ledger.TopUpCheck:
        """What `topup` would do (balance after, LOCAL meter recharged, replay), or the
        `RequestError` it would refuse with. Reads only (a dry run): the checks are the
        ones the ledger's top-up runs before it posts (`ledger.check_topup`)."""
        return ledger.check_topup(
            conn, account_id, amount_fen, reference, channel=channel, meter_id=meter_id
        )

    def topup(
        self,
        account_id: str,
        amount_fen: int,
        reference: str,
        *,
        channel: str = "cash",
        actor: str,
        meter_id: str | None = None,
    ) -> TopUpResult:
        """Credit `amount_fen` to the account's energy wallet. `reference` (payment id,
        receipt) makes it idempotent: the same reference again returns the first result.
        A LOCAL meter gets a RECHARGE with its next purchase count; a REMOTE account that
        leaves arrears gets its supply restored."""

        def work(conn: Connection, effects: Effects, now: datetime) -> TopUpResult:
            return self._topup_in(
                conn, effects, now, account_id, amount_fen, reference, channel, actor, meter_id
            )

        return self._call(
            "topup",
            account_id,
            actor,
            work,
            lambda r: (
                f"{format_fen(r.amount_fen)} via {r.channel}, reference {r.reference}"
                + (" (replay: nothing changed)" if r.replayed else "")
                + f"; energy balance {format_fen(r.balance_fen)}"
                + (
                    f"; RECHARGE #{r.command_id} to {r.meter_id} (purchase {r.buy_count})"
                    if r.command_id is not None
                    else ""
                )
            ),
            idempotent=True,  # the reference: a replay returns the first
        )

    def _topup_in(
        self,
        conn: Connection,
        effects: Effects,
        now: datetime,
        account_id: str,
        amount_fen: int,
        reference: str,
        channel: str,
        actor: str,
        meter_id: str | None = None,
    ) -> TopUpResult:
        """The top-up inside the caller's transaction (the CLI's, OPC UA's and a paid
        online order's alike): the ledger's top-up, the LOCAL meter's RECHARGE, fee
        control."""
        result = ledger.topup(
            conn,
            account_id,
            amount_fen,
            reference,
            channel=channel,
            meter_id=meter_id,
            requested_by=actor,
            now=now,
            local=LOCAL_MONEY,
        )
        if not result.replayed:
            if result.command_id is not None:
                effects.commands.append(cmds.get_command(conn, result.command_id))
            if self._reconnection_withheld(conn, account_id, result, actor, effects, now):
                effects.accounts.add(account_id)
            else:
                self._fee_control(
                    conn, account_id, Cause.RECHARGE, actor, effects, now, result.balance_fen
                )
        return result

    def _reconnection_withheld(
        self,
        conn: Connection,
        account_id: str,
        result: TopUpResult,
        actor: str,
        effects: Effects,
        now: datetime,
    ) -> bool:
        """After emergency credit, a top-up reconnects only when it covers the credit plus
        `reconnect_min` (domain.md §3): otherwise the account stays in arrears, cut."""
        if not result.emergency_repaid_fen:
            return False
        row = load_account_row(conn, account_id)
        if row is None or row.fee_state is not FeeState.OVERDRAFT:
            return False
        outstanding = ledger.balances(conn, account_id).emergency_outstanding_fen
        verdict = reconnect_allowed(
            result.balance_fen,
            row.thresholds,
            self.settings.policy,
            emergency_repaid_fen=result.emergency_repaid_fen,
            emergency_outstanding_fen=outstanding,
        )
        if verdict.allowed:
            return False
        audit(
            conn,
            effects,
            actor,
            "reconnect",
            account_id,
            f"withheld: {verdict.reason}",
            False,
            now=now,
        )
        return True

    def emergency_credit(self, account_id: str, *, actor: str) -> ledger.Posted:
        """Grant emergency credit on the tenant's request (policy `emergency_credit`, one
        grant at a time, for an account at or near its trip level; not for LOCAL meters,
        which grant their own). The ledger advances it into the energy wallet and the next
        top-up repays it; fee control re-evaluates as after a recharge (supply returns)."""

        def work(conn: Connection, effects: Effects, now: datetime) -> ledger.Posted:
            row = load_account_row(conn, account_id)
            if row is None:
                raise RequestError("account", f"unknown account {account_id!r}")
            b = ledger.balances(conn, account_id)
            grant = grant_emergency_credit(
                MeterContext(
                    meter_id=account_id,
                    energy_balance_fen=b.energy_fen,
                    fee_state=row.fee_state,
                    thresholds=row.thresholds,
                    emergency_outstanding_fen=b.emergency_outstanding_fen,
                ),
                self.settings.policy,
            )
            if not grant.granted:
                raise RequestError("account", grant.reason)
            posted = ledger.grant_emergency_credit(
                conn,
                account_id,
                grant.amount_fen,
                f"emergency:{account_id}:{now.isoformat()}",
                requested_by=actor,
                now=now,
            )
            self._fee_control(conn, account_id, Cause.RECHARGE, actor, effects, now)
            return posted

        return self._call(
            "emergency_credit",
            account_id,
            actor,
            work,
            lambda p: (
                f"emergency credit {format_fen(int(p.journal.request['amount_fen']))} granted"
            ),
        )

    def refund(
        self,
        account_id: str,
        amount_fen: int,
        reference: str,
        *,
        actor: str,
        settle: bool = True,
        meter_id: str | None = None,
    ) -> RefundResult:
        """Refund from the energy wallet (at most what is refundable); `reference` is the
        refund number. `settle=False` leaves it REQUESTED for the payment channel. For a
        LOCAL meter (`meter_id` when the account has several) the meter is debited first:
        the refund waits (AWAITING_METER) for its REFUND command to be confirmed."""

        def work(conn: Connection, effects: Effects, now: datetime) -> RefundResult:
            result = ledger.refund(
                conn,
                account_id,
                amount_fen,
                reference,
                settle=settle,
                meter_id=meter_id,
                requested_by=actor,
                now=now,
                local=LOCAL_MONEY,
            )
            if not result.replayed:
                self._fee_control(
                    conn, account_id, Cause.REFUND, actor, effects, now, result.balance_fen
                )
            return result

        return self._call(
            "refund",
            account_id,
            actor,
            work,
            lambda r: (
                f"{format_fen(r.amount_fen)}, refund {r.reference}, {r.state}"
                + (" (replay: nothing changed)" if r.replayed else "")
                + f"; energy balance {format_fen(r.balance_fen)}"
            ),
        )
