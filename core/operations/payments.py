"""Online payments through the door: open an order, apply a provider's notice (store it,
credit it exactly once), close an order, mark one for a person.

Crediting is the same top-up the CLI and OPC UA use (`MoneyDoor._topup_in`), with the
provider's transaction id as its reference (the ledger's idempotency key) and the provider's
channel, in the transaction that moves the order PAID → CREDITED. The order row is locked
first (SELECT … FOR UPDATE on PostgreSQL; SQLite's write transactions hold the writer lock),
so concurrent copies of one notification and the active query see one another's outcome.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy.engine import Connection

from .. import ledger
from ..contracts import PaymentNotice, PaymentProvider
from ..events import PaymentConflict
from ..ledger import RequestError, TopUpResult, format_fen
from ..payments import orders as po
from ..payments.settings import PaymentSettings, load_payments
from ..payments.states import Action, Decision, OrderState, decide
from ..prepay.accounts import AccountState, get_account
from ..prepay.effects import Effects
from .door import PendingCall, check_reason, check_state_filter, found
from .money import MoneyDoor

#: How a payer pays (core/contracts.py PaymentRequest.method).
METHODS = ("native", "jsapi", "qr")


@dataclass(frozen=True, slots=True)
class NoticeOutcome:
    """What a notice did: the order's state after it, the action taken and why."""

    out_trade_no: str
    state: OrderState
    action: Action
    reason: str
    #: The top-up, when this call credited the order.
    topup: TopUpResult | None = None

    @property
    def credited(self) -> bool:
        return self.topup is not None and not self.topup.replayed


class PaymentDoor(MoneyDoor):
    #: The site's online payment providers by channel (set by the runtime and the CLI).
    _providers: Mapping[str, PaymentProvider] = {}
    _payment_settings: PaymentSettings | None = None

    def use_providers(self, providers: Iterable[PaymentProvider]) -> None:
        self._providers = {p.channel: p for p in providers}

    @property
    def payment_providers(self) -> Mapping[str, PaymentProvider]:
        return self._providers

    @property
    def payment_settings(self) -> PaymentSettings:
        if self._payment_settings is None:
            self._payment_settings = load_payments(self.site)
        return self._payment_settings

    def open_payment(
        self, account_id: str, amount_fen: int, channel: str, method: str, *, actor: str
    ) -> po.PaymentOrder:
        """A new CREATED order for `amount_fen` onto the account's energy wallet, refused
        as a top-up would be (account not open, above the hoarding limit or the capacity)
        and below the site's minimum. The provider's order is opened by the caller
        (`PaymentService.start_payment`) once this is committed."""
        settings = self.payment_settings
        provider = self._providers.get(channel)
        if provider is None:
            configured = ", ".join(sorted(self._providers)) or "none"
            raise RequestError(
                "channel",
                f"no payment provider {channel!r} on this site (configured: {configured})",
            )
        if method not in METHODS:
            raise RequestError("method", f"expected one of {', '.join(METHODS)}; got {method!r}")
        whole = isinstance(amount_fen, int) and not isinstance(amount_fen, bool)
        if whole and amount_fen < settings.minimum_fen:  # other bad amounts: the ledger's check
            raise RequestError(
                "amount",
                f"{format_fen(amount_fen)} is below the site's minimum payment "
                f"{format_fen(settings.minimum_fen)}",
            )

        def work(conn: Connection, effects: Effects, now: datetime) -> po.PaymentOrder:
            account = get_account(conn, account_id)
            if account.state is not AccountState.OPEN:
                raise RequestError(
                    "account", f"account {account_id!r} is {account.state}, not OPEN: open it first"
                )
            out_trade_no = po.new_out_trade_no(settings.prefix, now)
            ledger.check_topup(
                conn, account_id, amount_fen, f"check:{out_trade_no}", channel=channel
            )
            return po.insert_order(
                conn,
                {
                    "out_trade_no": out_trade_no,
                    "channel": channel,
                    "method": method,
                    "account_id": account_id,
                    "room": account.room,
                    "amount_fen": amount_fen,
                    "currency": settings.currency,
                    "state": OrderState.CREATED.value,
                    "merchant_id": provider.merchant_id,
                    "app_id": provider.app_id,
                    "created_at": now,
                    "expires_at": now + timedelta(minutes=settings.order_minutes),
                    "requested_by": actor,
                },
            )

        return self._call(
            "open_payment",
            account_id,
            actor,
            work,
            lambda o: f"order {o.out_trade_no}: {format_fen(o.amount_fen)} via {channel}/{method}",
        )

    def store_notice(self, notice: PaymentNotice, *, actor: str) -> NoticeOutcome:
        """Keep a verified notice with its order (CREATED → PAID for a payment) without
        crediting: what the web route does before it answers the provider. Crediting
        follows (`apply_notice`, or the service at start for what a crash left PAID)."""
        return self._notice(notice, actor, credit=False)

    def apply_notice(
        self, notice: PaymentNotice, *, actor: str, queried: bool = False
    ) -> NoticeOutcome:
        """Apply a verified notice or query answer in one transaction: the order locked,
        checked against the notice (a mismatch → CONFLICT, nothing credited), PAID →
        CREDITED through the top-up. Replays and late notices change nothing.
        `queried`: it is the answer of an active query (recorded as such)."""
        return self._notice(notice, actor, credit=True, queried=queried)

    def apply_notices(
        self, notices: Sequence[PaymentNotice], *, actor: str
    ) -> list[NoticeOutcome | Exception]:
        """`apply_notice` of each notice, all handed to the group commit at once (from
        one thread: the web service's batch of callbacks) — each its own transaction part,
        audit row and idempotency key, as if called alone; each answered with its outcome
        or what it raised."""
        calls: list[PendingCall[NoticeOutcome]] = []
        refused: dict[int, Exception] = {}  # not a notice at all: never reaches the door
        for i, notice in enumerate(notices):
            try:
                calls.append(self._notice_call(notice, actor, credit=True))
            except RequestError as exc:
                refused[i] = exc
        answers = iter(self._call_many(calls))
        return [refused[i] if i in refused else next(answers) for i in range(len(notices))]

    def credit_order(self, out_trade_no: str, *, actor: str) -> NoticeOutcome:
        """Credit an order already PAID (its notice stored, the credit not done: a crash
        between the two). Any other state: nothing changes — so the group commit runs it
        again after a commit of unknown outcome (`idempotent`), as it does notices: the
        order's state and the top-up's reference make a second run change nothing."""

        def work(conn: Connection, effects: Effects, now: datetime) -> NoticeOutcome:
            order = self._locked(conn, out_trade_no)
            if order.state is not OrderState.PAID:
                return NoticeOutcome(out_trade_no, order.state, Action.KEEP, f"{order.state}")
            return self._credit(conn, effects, now, order, actor)

        return self._call("credit_payment", out_trade_no, actor, work, _describe, idempotent=True)

    def close_payment(self, out_trade_no: str, reason: str, *, actor: str) -> po.PaymentOrder:
        """CREATED → CLOSED (expired, cancelled, closed at the provider); refused for an
        order in any other state."""
        check_reason(reason)

        def work(conn: Connection, effects: Effects, now: datetime) -> po.PaymentOrder:
            order = self._locked(conn, out_trade_no)
            if order.state is not OrderState.CREATED:
                raise RequestError(
                    "out_trade_no",
                    f"order {out_trade_no} is {order.state}: only a CREATED order can be closed",
                )
            po.update_order(conn, order.id, state=OrderState.CLOSED.value, closed_at=now)
            return self._reload(conn, out_trade_no)

        return self._call("close_payment", out_trade_no, actor, work, lambda o: f"closed: {reason}")

    def mark_conflict(self, out_trade_no: str, reason: str, *, actor: str) -> po.PaymentOrder:
        """Any → CONFLICT: a person must look at the order (nothing is credited)."""
        check_reason(reason)

        def work(conn: Connection, effects: Effects, now: datetime) -> po.PaymentOrder:
            order = self._locked(conn, out_trade_no)
            _conflict(conn, effects, order, reason, actor)
            return self._reload(conn, out_trade_no)

        return self._call(
            "payment_conflict", out_trade_no, actor, work, lambda o: f"conflict: {reason}"
        )

    # -- reads (not audited) ---------------------------------------------------------------

    def payment_orders(
        self, *, state: str | None = None, account_id: str | None = None, limit: int = 200
    ) -> list[po.PaymentOrder]:
        """Orders, newest first; `state` one of `OrderState`."""
        check_state_filter(state, OrderState)
        with self.db.read() as conn:
            return po.list_orders(conn, state=state, account_id=account_id, limit=limit)

    def payment_order(self, out_trade_no: str) -> po.PaymentOrder:
        with self.db.read() as conn:
            order = po.get_order(conn, out_trade_no)
        return found(order, "out_trade_no", "payment order", out_trade_no)

    # -- the parts ----------------------------------------------------------------------

    def _notice(
        self, notice: PaymentNotice, actor: str, *, credit: bool, queried: bool = False
    ) -> NoticeOutcome:
        pending = self._notice_call(notice, actor, credit=credit, queried=queried)
        result, effects = self._settle(pending)
        self.publish_committed(effects, pending.now)
        return result

    def _notice_call(
        self, notice: PaymentNotice, actor: str, *, credit: bool, queried: bool = False
    ) -> PendingCall[NoticeOutcome]:
        if not isinstance(notice, PaymentNotice):
            raise RequestError("notice", f"expected a PaymentNotice, got {type(notice).__name__}")

        def work(conn: Connection, effects: Effects, now: datetime) -> NoticeOutcome:
            order = self._locked(conn, notice.out_trade_no)
            decision = decide(order.facts, notice, credit=credit)
            if decision.action in (Action.PAY, Action.PAY_AND_CREDIT):
                other = po.order_paid_by(conn, notice.transaction_id)
                if other is not None and other != order.out_trade_no:
                    why = f"transaction {notice.transaction_id!r} already paid order {other}"
                    decision = Decision(Action.CONFLICT, why, why)
            record: dict[str, object] = {
                "notices": order.notices + 1,
                "last_notice": po.notice_record(notice, now),
            }
            if queried:
                record["last_query_at"] = now
            if decision.action is Action.CONFLICT:
                po.update_order(conn, order.id, **record)
                _conflict(conn, effects, order, decision.conflict or decision.reason, actor)
                record = {"state": OrderState.CONFLICT.value}
            elif decision.action is Action.CLOSE:
                record.update(state=OrderState.CLOSED.value, closed_at=now)
            elif decision.action in (Action.PAY, Action.PAY_AND_CREDIT):
                record.update(
                    state=OrderState.PAID.value,
                    transaction_id=notice.transaction_id,
                    paid_at=notice.paid_at or now,
                )
            if decision.credits:
                # PAID and CREDITED in one UPDATE once the top-up is done.
                paid = order
                if decision.action is Action.PAY_AND_CREDIT:
                    paid = replace(
                        order,
                        state=OrderState.PAID,
                        transaction_id=notice.transaction_id,
                        paid_at=record["paid_at"],  # type: ignore[arg-type]
                    )
                return self._credit(conn, effects, now, paid, actor, pending=record)
            if decision.action is not Action.CONFLICT:
                po.update_order(conn, order.id, **record)
            after = OrderState(record.get("state", order.state))
            return NoticeOutcome(order.out_trade_no, after, decision.action, decision.reason)

        return self._submit(
            "payment_notice", notice.out_trade_no, actor, work, _describe, idempotent=True
        )

    def _credit(
        self,
        conn: Connection,
        effects: Effects,
        now: datetime,
        order: po.PaymentOrder,
        actor: str,
        *,
        pending: dict[str, object] | None = None,
    ) -> NoticeOutcome:
        """PAID → CREDITED: the top-up under the provider's transaction id. A top-up the
        ledger refuses now (account closed since, hoarding limit reached by a cash top-up
        meanwhile) leaves the money paid and uncredited: CONFLICT, for a person.
        `pending`: the order's changes not written yet (the notice that paid it), written
        in the same UPDATE as CREDITED."""
        assert order.transaction_id is not None
        _on_driver(conn, "SAVEPOINT payment_credit")
        try:
            result = self._topup_in(
                conn,
                effects,
                now,
                order.account_id,
                order.amount_fen,
                order.transaction_id,
                order.channel,
                actor,
            )
        except RequestError as refused:
            _on_driver(conn, "ROLLBACK TO SAVEPOINT payment_credit")
            why = f"paid but the top-up was refused: {refused}"
            if pending:
                po.update_order(conn, order.id, **pending)
            _conflict(conn, effects, order, why, actor)
            return NoticeOutcome(order.out_trade_no, OrderState.CONFLICT, Action.CONFLICT, why)
        _on_driver(conn, "RELEASE SAVEPOINT payment_credit")
        done = {**(pending or {}), "state": OrderState.CREDITED.value, "credited_at": now}
        po.update_order(conn, order.id, **done)
        return NoticeOutcome(
            order.out_trade_no, OrderState.CREDITED, Action.CREDIT, "credited", result
        )

    def _locked(self, conn: Connection, out_trade_no: str) -> po.PaymentOrder:
        order = (
            po.get_order(conn, out_trade_no, lock=True) if isinstance(out_trade_no, str) else None
        )
        return found(order, "out_trade_no", "payment order", out_trade_no)

    def _reload(self, conn: Connection, out_trade_no: str) -> po.PaymentOrder:
        order = po.get_order(conn, out_trade_no)
        assert order is not None
        return order


def _on_driver(conn: Connection, statement: str) -> None:
    """A savepoint statement on the driver's cursor, as the group commit runs its own:
    through SQLAlchemy (`exec_driver_sql`) the two of them took about a tenth of a
    notice's work on the group-commit thread (28 of 255 py-spy samples, issue 11)."""
    cursor = conn.connection.driver_connection.cursor()
    try:
        cursor.execute(statement)
    finally:
        cursor.close()


def _conflict(
    conn: Connection, effects: Effects, order: po.PaymentOrder, reason: str, actor: str
) -> None:
    """Mark `order` in CONFLICT for a person (nothing credited) and raise `PaymentConflict`
    once the transaction commits (an order already in CONFLICT takes the new reason but
    raises nothing again)."""
    po.update_order(conn, order.id, state=OrderState.CONFLICT.value, conflict=reason)
    if order.state is OrderState.CONFLICT:
        return
    effects.events.append(
        PaymentConflict(
            order.out_trade_no, order.channel, order.account_id, order.amount_fen, reason, actor
        )
    )


def _describe(o: NoticeOutcome) -> str:
    text = f"{o.action}: {o.reason}; order {o.state}"
    if o.topup is not None:
        text += f"; top-up {o.topup.reference} {format_fen(o.topup.amount_fen)}"
        text += " (replay)" if o.topup.replayed else ""
    return text
