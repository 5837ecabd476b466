"""Refunds of online payments through the door.

`request_refund` takes the money out of the account's energy wallet (the ledger's refund:
Dr wallet / Cr liab:refund_payable, allocated to the order's own top-up) and writes the
`payment_refund` row in the same transaction; the payment service then asks the provider
(`PaymentService.send_refund`). The provider's word (`apply_refund_notice`: the answer to
the refund call, a refund notification, a query) moves the refund on: SUCCESS settles the
ledger refund (Dr refund_payable / Cr psp_clearing:<channel>) and adds to the order's
`refunded_fen` (the order becomes REFUNDED when all of it is); CLOSED (`refund_refused`
too) reverses the ledger refund: the money is back in the wallet; ABNORMAL keeps the money
out (the provider holds it: a person finishes it at the merchant platform).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Connection

from .. import ledger
from ..contracts import PaymentNotice
from ..events import PaymentDiscrepancy
from ..ledger import RequestError, format_fen
from ..payments import orders as po
from ..payments import refunds as pr
from ..payments.refunds import RefundState
from ..payments.states import OrderState
from ..prepay.effects import Effects
from ..prepay.feecontrol import Cause
from ..prepay.local_money import LOCAL_MONEY
from .door import check_reason, check_state_filter, found
from .payments import PaymentDoor


@dataclass(frozen=True, slots=True)
class RefundOutcome:
    """What a refund call did: the refund after it, and why."""

    refund: pr.PaymentRefund
    reason: str
    #: The same refund number again: nothing changed.
    replayed: bool = False
    #: The account's energy wallet after it.
    balance_fen: int | None = None


class PaymentRefundDoor(PaymentDoor):
    def request_refund(
        self,
        out_trade_no: str,
        amount_fen: int,
        reason: str,
        *,
        actor: str,
        force: bool = False,
        out_refund_no: str | None = None,
    ) -> RefundOutcome:
        """Refund `amount_fen` of a CREDITED order to its payer: the wallet is debited now
        (in this transaction, with the refund row), the provider is asked by the payment
        service. Refused: an order not CREDITED; more than it was paid less its earlier
        refunds (all but CLOSED ones); more than the energy wallet holds (the tenant used
        the money) unless `force` (the account then goes into arrears). `out_refund_no`
        (the refund's number, ours) makes it idempotent: the same number again changes
        nothing; without it one is made up."""
        check_reason(reason)
        if isinstance(amount_fen, bool) or not isinstance(amount_fen, int) or amount_fen <= 0:
            raise RequestError("amount", f"expected a positive number of fen, got {amount_fen!r}")
        if out_refund_no is not None and (
            not isinstance(out_refund_no, str)
            or not 1 <= len(out_refund_no) <= 64
            or not all(c.isascii() and (c.isalnum() or c in "_-|*@") for c in out_refund_no)
        ):
            raise RequestError(
                "out_refund_no", "expected 1-64 of 0-9 A-Z a-z _ - | * @ (e.g. OP123R1)"
            )

        # Made up before the transaction: a run again after a commit of unknown outcome
        # (`idempotent`) looks for the same number and finds the refund if it was stored.
        number = out_refund_no or pr.new_out_refund_no(out_trade_no)

        def work(conn: Connection, effects: Effects, now: datetime) -> RefundOutcome:
            order = self._locked(conn, out_trade_no)
            known = pr.get_refund(conn, number)
            if known is not None:
                if (known.out_trade_no, known.amount_fen) != (order.out_trade_no, amount_fen):
                    raise RequestError(
                        "out_refund_no",
                        f"refund {number} is {format_fen(known.amount_fen)} of order "
                        f"{known.out_trade_no}: use a new refund number",
                    )
                return RefundOutcome(known, "replay: nothing changed", True)
            if order.state is not OrderState.CREDITED:
                raise RequestError(
                    "out_trade_no",
                    f"order {out_trade_no} is {order.state}: only a CREDITED order is refunded",
                )
            left = order.amount_fen - pr.outstanding_fen(conn, order.id)
            if amount_fen > left:
                raise RequestError(
                    "amount",
                    f"at most {format_fen(left)} of order {out_trade_no} can be refunded "
                    f"(paid {format_fen(order.amount_fen)} less earlier refunds)",
                )
            assert order.transaction_id is not None
            if not force:
                available = ledger.refundable(conn, order.account_id, now=now)
                if amount_fen > available:
                    raise RequestError(
                        "amount",
                        f"the wallet of {order.account_id} can give back at most "
                        f"{format_fen(available)} now (the tenant used the rest): refund less, "
                        "or force it (--force) and the account goes into arrears",
                    )
            result = ledger.refund(
                conn,
                order.account_id,
                amount_fen,
                number,
                settle=False,
                requested_by=actor,
                now=now,
                local=LOCAL_MONEY,
                topup_reference=order.transaction_id,
                force=force,
            )
            refund = pr.insert_refund(
                conn,
                {
                    "out_refund_no": number,
                    "order_id": order.id,
                    "out_trade_no": order.out_trade_no,
                    "channel": order.channel,
                    "account_id": order.account_id,
                    "amount_fen": amount_fen,
                    "state": RefundState.REQUESTED.value,
                    "reason": reason,
                    "forced": force,
                    "created_at": now,
                    "requested_by": actor,
                },
            )
            self._fee_control(
                conn, order.account_id, Cause.REFUND, actor, effects, now, result.balance_fen
            )
            return RefundOutcome(refund, "requested", False, result.balance_fen)

        return self._call("payment_refund", out_trade_no, actor, work, _describe, idempotent=True)

    def apply_refund_notice(
        self,
        notice: PaymentNotice,
        *,
        actor: str,
        queried: bool = False,
        refund_id: str | None = None,
    ) -> RefundOutcome:
        """The provider's word on one of our refunds (the refund call's answer, a REFUND.*
        notification, a query): REFUND_PROCESSING, REFUNDED, REFUND_ABNORMAL or
        REFUND_FAILED. Terminal refunds never move; a notice that does not fit the refund
        (another order or amount) leaves it and is reported (`PaymentDiscrepancy`)."""
        if not isinstance(notice, PaymentNotice) or notice.out_refund_no is None:
            raise RequestError("notice", "expected a refund notice (with out_refund_no)")
        to = pr.NOTICE_STATES.get(notice.state)
        if to is None:
            raise RequestError(
                "notice.state",
                f"expected one of {', '.join(pr.NOTICE_STATES)} for a refund, got {notice.state!r}",
            )
        number = notice.out_refund_no
        raw = notice.raw or {}
        provider_id = refund_id or _text(raw.get("refund_id"))

        def work(conn: Connection, effects: Effects, now: datetime) -> RefundOutcome:
            refund = self._locked_refund(conn, number)
            record: dict[str, object] = {"last_notice": po.notice_record(notice, now)}
            if queried:
                record["last_query_at"] = now
            if provider_id and refund.refund_id is None:
                record["refund_id"] = provider_id[:64]
            if refund.state is to or not pr.can_move(refund.state, to):
                pr.update_refund(conn, refund.id, **record)
                why = f"{refund.state}: {notice.state} changes nothing"
                return RefundOutcome(self._reload_refund(conn, number), why, True)
            wrong = _mismatch(refund, notice)
            if wrong is not None:
                pr.update_refund(conn, refund.id, **record)
                effects.events.append(
                    PaymentDiscrepancy(
                        refund.channel,
                        "refund_mismatch",
                        refund.out_trade_no,
                        refund.amount_fen,
                        f"refund {number}: {wrong}",
                        at=now,
                    )
                )
                return RefundOutcome(self._reload_refund(conn, number), f"kept: {wrong}")
            return self._move(conn, effects, now, refund, to, actor, record, _failure(notice))

        return self._call("payment_refund_notice", number, actor, work, _describe, idempotent=True)

    def refund_refused(self, out_refund_no: str, reason: str, *, actor: str) -> RefundOutcome:
        """The provider refused the refund for good (or it was closed there): CLOSED, the
        money back in the wallet. Only a refund not yet finished."""
        check_reason(reason)

        def work(conn: Connection, effects: Effects, now: datetime) -> RefundOutcome:
            refund = self._locked_refund(conn, out_refund_no)
            if refund.state is RefundState.CLOSED:
                return RefundOutcome(refund, "replay: already closed", True)
            if not pr.can_move(refund.state, RefundState.CLOSED):
                raise RequestError(
                    "out_refund_no", f"refund {out_refund_no} is {refund.state}: it cannot close"
                )
            return self._move(conn, effects, now, refund, RefundState.CLOSED, actor, {}, reason)

        return self._call(
            "payment_refund_refused", out_refund_no, actor, work, _describe, idempotent=True
        )

    def refund_attempted(self, out_refund_no: str, error: str, *, actor: str) -> None:
        """A refund call that got no usable answer (network, a retryable error): counted,
        the error kept; the service sends it again (same number: refunds once)."""

        def work(conn: Connection, effects: Effects, now: datetime) -> None:
            refund = self._locked_refund(conn, out_refund_no)
            pr.update_refund(
                conn, refund.id, attempts=refund.attempts + 1, failure=error[:500], sent_at=now
            )

        self._call("payment_refund_attempt", out_refund_no, actor, work, lambda _: error[:200])

    # -- reads -----------------------------------------------------------------------------

    def payment_refunds(
        self, *, state: str | None = None, out_trade_no: str | None = None, limit: int = 200
    ) -> list[pr.PaymentRefund]:
        check_state_filter(state, RefundState)
        with self.db.read() as conn:
            return pr.list_refunds(conn, state=state, out_trade_no=out_trade_no, limit=limit)

    def payment_refund(self, out_refund_no: str) -> pr.PaymentRefund:
        with self.db.read() as conn:
            refund = pr.get_refund(conn, out_refund_no)
        return found(refund, "out_refund_no", "refund", out_refund_no)

    # -- the parts -----------------------------------------------------------------------

    def _move(
        self,
        conn: Connection,
        effects: Effects,
        now: datetime,
        refund: pr.PaymentRefund,
        to: RefundState,
        actor: str,
        record: dict[str, object],
        failure: str,
    ) -> RefundOutcome:
        """The refund to `to` (allowed), with the ledger and the order following."""
        balance: int | None = None
        if to is RefundState.SUCCESS:
            ledger.settle_refund(conn, refund.out_refund_no, requested_by=actor, now=now)
            order = po.get_order(conn, refund.out_trade_no, lock=True)
            assert order is not None
            refunded = order.refunded_fen + refund.amount_fen
            values: dict[str, object] = {"refunded_fen": refunded}
            if refunded >= order.amount_fen:
                values["state"] = OrderState.REFUNDED.value
            po.update_order(conn, order.id, **values)
            record.update(finished_at=now, failure=None)
        elif to is RefundState.CLOSED:
            if _ledger_state(conn, refund.out_refund_no) == "REQUESTED":
                result = ledger.fail_refund(
                    conn,
                    refund.out_refund_no,
                    f"refund {refund.out_refund_no} closed by {refund.channel}: {failure}"[:500],
                    requested_by=actor,
                    now=now,
                )
                balance = result.balance_fen
                self._fee_control(
                    conn, refund.account_id, Cause.RECHARGE, actor, effects, now, balance
                )
            record.update(finished_at=now, failure=failure[:500])
        elif to is RefundState.ABNORMAL:
            record.update(finished_at=now, failure=failure[:500])
            effects.events.append(
                PaymentDiscrepancy(
                    refund.channel,
                    "refund_abnormal",
                    refund.out_trade_no,
                    refund.amount_fen,
                    f"refund {refund.out_refund_no} ABNORMAL at {refund.channel}: {failure}; "
                    "finish it at the merchant platform",
                    at=now,
                )
            )
        elif to is RefundState.PROCESSING:
            record.update(sent_at=now, failure=None)
        pr.update_refund(conn, refund.id, state=to.value, **record)
        return RefundOutcome(
            self._reload_refund(conn, refund.out_refund_no), str(to), False, balance
        )

    def _locked_refund(self, conn: Connection, out_refund_no: str) -> pr.PaymentRefund:
        refund = (
            pr.get_refund(conn, out_refund_no, lock=True)
            if isinstance(out_refund_no, str)
            else None
        )
        return found(refund, "out_refund_no", "refund", out_refund_no)

    def _reload_refund(self, conn: Connection, out_refund_no: str) -> pr.PaymentRefund:
        refund = pr.get_refund(conn, out_refund_no)
        assert refund is not None
        return refund


def _ledger_state(conn: Connection, reference: str) -> str:
    return ledger.refund_result(conn, reference, replayed=True).state


def _mismatch(refund: pr.PaymentRefund, notice: PaymentNotice) -> str | None:
    problems = []
    if notice.channel != refund.channel:
        problems.append(f"channel {notice.channel!r}, refund {refund.channel!r}")
    if notice.out_trade_no != refund.out_trade_no:
        problems.append(f"order {notice.out_trade_no!r}, refund of {refund.out_trade_no!r}")
    if notice.refund_fen != refund.amount_fen:
        problems.append(f"amount {notice.refund_fen} fen, refund {refund.amount_fen} fen")
    return "; ".join(problems) or None


def _failure(notice: PaymentNotice) -> str:
    raw = notice.raw or {}
    for key in ("message", "sub_msg", "refund_status", "status"):
        text = _text(raw.get(key))
        if text:
            return f"{notice.state} ({key} {text})"
    return notice.state


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _describe(o: RefundOutcome | None) -> str:
    if o is None:
        return ""
    r = o.refund
    text = f"refund {r.out_refund_no} of order {r.out_trade_no}: {format_fen(r.amount_fen)}"
    text += f", {r.state}: {o.reason}"
    if o.balance_fen is not None:
        text += f"; energy balance {format_fen(o.balance_fen)}"
    return text
