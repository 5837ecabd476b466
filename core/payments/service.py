"""The payment service: the running service's part of online payment.

- at start, credits every order a crash left PAID but not CREDITED (its notice was
  verified and stored, the provider answered, the credit not done);
- every `poll_s`, asks the provider about CREATED orders no notice came for within
  `query_after_s` (notifications get lost: the provider's own advice), and closes expired
  orders at the provider and here (after one last query: a payment at the last second
  is credited, not closed);
- credits what the web route stored (`credit_later`: "verify and store first, credit
  after"), in tasks it waits for at stop;
- opens orders for the tenant page (`start_payment`): ours through the door, then the
  provider's;
- sends REQUESTED refunds to the provider (`send_refund`; again after `query_after_s` while
  its answer is retryable, CLOSED when it refuses for good), asks about PROCESSING refunds
  no notification came for;
- once a day after `[payments] reconcile_at` (site time), reconciles yesterday's trade bill
  of every provider (`reconcile`), again an hour later when the bill could not be had.

With [cluster] the sweeps (queries, closing expired orders, sending and asking about
refunds) and the reconciliation run on the jobs leader only (`leader`, `tick`); crediting
what the web route stored and the start-up recovery run wherever the notice arrived (a
credit is once per order in the database whoever does it).

Door calls block on the database: they run in threads (`asyncio.to_thread`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import date, datetime, timedelta
from typing import Any, Protocol

from ..contracts import (
    PaymentNotice,
    PaymentPrepared,
    PaymentProvider,
    PaymentProviderError,
    PaymentRequest,
    TradeRecord,
)
from ..errors import RequestError
from ..events import utcnow
from ..field.diagnostics import diagnostic
from ..ledger import refund_result
from ..model import DeviceModel, MeterKind, Sample
from ..tasks import stop_task
from . import orders as po
from . import refunds as pr
from .callbacks import callback_warnings
from .refunds import RefundState
from .settings import PaymentSettings
from .states import OrderState

log = logging.getLogger("openprepay.payments")

#: Who the service's own door calls are audited as.
ACTOR = "payments:service"
#: A PAID order its credit task has not credited by then is credited by the sweep.
STRAGGLER = timedelta(seconds=30)
#: A day whose trade bill could not be had is tried again after this.
RECONCILE_RETRY = timedelta(hours=1)


PAYMENTS_SOURCE = "payments"
#: The service's figures, published every `[poll] stats_interval_s` like the historian's.
PAYMENTS_MODEL = DeviceModel(
    name="openprepay.payments",
    vendor="OpenPrepay",
    product="Payment service statistics",
    kind=MeterKind.HEALTH,
    description="Online payment orders credited, queried and closed by the payment service",
    points=(
        diagnostic("recovered", "", "PAID orders credited at start (stored before a stop)"),
        diagnostic("queries", "", "Active queries of orders no notice came for, since start"),
        diagnostic("query_errors", "", "Queries or their application that failed, since start"),
        diagnostic("credited", "", "Orders credited by the service, since start"),
        diagnostic("closed", "", "Expired orders closed, since start"),
        diagnostic("conflicts", "", "Orders the service saw go to CONFLICT, since start"),
        diagnostic("refunds_sent", "", "Refund calls to the providers, since start"),
        diagnostic("refund_errors", "", "Refund calls or queries that failed, since start"),
        diagnostic("reconciliations", "", "Trade bills reconciled, since start"),
        diagnostic("discrepancies", "", "Reconciliation findings, since start"),
    ),
    plugin="core",
)


@dataclass
class PaymentCounters:
    """What the service did since start (diagnostics)."""

    recovered: int = 0
    queries: int = 0
    query_errors: int = 0
    credited: int = 0
    closed: int = 0
    conflicts: int = 0
    refunds_sent: int = 0
    refund_errors: int = 0
    reconciliations: int = 0
    discrepancies: int = 0

    def values(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class PaymentDoorCalls(Protocol):
    """The door's calls the service makes (`core.operations.Operations`, a box above this
    one, hands itself in)."""

    site: Any
    db: Any
    bus: Any

    @property
    def payment_settings(self) -> PaymentSettings: ...

    def open_payment(
        self, account_id: str, amount_fen: int, channel: str, method: str, *, actor: str
    ) -> po.PaymentOrder: ...

    def apply_notice(self, notice: PaymentNotice, *, actor: str, queried: bool = False) -> Any: ...

    def credit_order(self, out_trade_no: str, *, actor: str) -> Any: ...

    def close_payment(self, out_trade_no: str, reason: str, *, actor: str) -> po.PaymentOrder: ...

    def apply_refund_notice(
        self, notice: PaymentNotice, *, actor: str, queried: bool = False
    ) -> Any: ...

    def refund_refused(self, out_refund_no: str, reason: str, *, actor: str) -> Any: ...

    def refund_attempted(self, out_refund_no: str, error: str, *, actor: str) -> None: ...

    def reconcile_payments(
        self, channel: str, day: date, rows: Sequence[TradeRecord], *, actor: str
    ) -> Any: ...

    def reconciliation_failed(self, channel: str, day: date, error: str, *, actor: str) -> Any: ...

    def reconciliation(self, channel: str, day: date) -> Any: ...


class PaymentService:
    name = "payments"

    def __init__(
        self,
        ops: PaymentDoorCalls,
        providers: Mapping[str, PaymentProvider],
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.ops = ops
        self.providers = dict(providers)
        self.settings = ops.payment_settings
        self.clock = clock
        self.counters = PaymentCounters()
        #: The site's public base URL the providers call back (the web section's).
        web = ops.site.sections.get("web") or {}
        self.public_base_url = str(web.get("public_base_url", "")).rstrip("/")
        self._task: asyncio.Task[None] | None = None
        self._stats: asyncio.Task[None] | None = None
        self._credits: set[asyncio.Task[Any]] = set()
        #: When each open order was last asked about (a failed query is not recorded in
        #: the database): order id → instant.
        self._tried: dict[int, datetime] = {}
        self._wake = asyncio.Event()
        #: (channel, day) → when its reconciliation was last tried by the schedule.
        self._reconciled: dict[tuple[str, date], datetime] = {}
        #: What the start-up check found about how providers reach us (callbacks.py).
        self.warnings: list[str] = []
        #: With [cluster]: the jobs leader's fence while this instance holds it, else None
        #: (`LinkLeases.leader_fence`); the sweeps and the reconciliation run only then.
        self.leader: Callable[[], object | None] | None = None

    async def start(self) -> None:
        web = self.ops.site.sections.get("web")
        self.warnings = callback_warnings(
            web if isinstance(web, dict) else None, self.providers.values()
        )
        for warning in self.warnings:
            log.warning("payments: %s", warning)
        await self.recover()
        self._task = asyncio.create_task(self._run(), name="payments")
        self._stats = asyncio.create_task(self._publish_forever(), name="payments stats")

    async def stop(self) -> None:
        await stop_task(self._task)
        await stop_task(self._stats)
        self._task = self._stats = None
        if self._credits:
            await asyncio.gather(*self._credits, return_exceptions=True)

    # -- crediting ------------------------------------------------------------------------

    async def recover(self) -> int:
        """Credit every PAID order (stored, not credited: a crash came between)."""
        with self.ops.db.read() as conn:
            paid = po.orders_in(conn, OrderState.PAID)
        for order in paid:
            outcome = await asyncio.to_thread(
                self.ops.credit_order, order.out_trade_no, actor=ACTOR
            )
            log.info("payment %s stored before a stop: %s", order.out_trade_no, outcome.reason)
            self.counters.recovered += 1
            self._count(outcome)
        return len(paid)

    def credit_later(self, out_trade_no: str, actor: str) -> asyncio.Task[Any]:
        """Credit an order whose notice was stored (PAID) in a task: the provider has been
        answered already."""
        task = asyncio.create_task(self._credit(out_trade_no, actor), name=f"credit {out_trade_no}")
        self._credits.add(task)
        task.add_done_callback(self._credits.discard)
        return task

    async def _credit(self, out_trade_no: str, actor: str) -> Any:
        try:
            outcome = await asyncio.to_thread(self.ops.credit_order, out_trade_no, actor=actor)
        except Exception:
            # Stored as PAID: the next start credits it.
            log.exception("crediting payment %s failed", out_trade_no)
            return None
        self._count(outcome)
        return outcome

    def count(self, outcome: Any) -> None:
        """Count a door outcome someone else brought about (the web route credits in the
        call that stores)."""
        self._count(outcome)

    def _count(self, outcome: Any) -> None:
        if outcome.credited:
            self.counters.credited += 1
        if outcome.state is OrderState.CONFLICT:
            self.counters.conflicts += 1
            log.warning("payment %s in conflict: %s", outcome.out_trade_no, outcome.reason)

    # -- opening --------------------------------------------------------------------------

    async def start_payment(
        self,
        account_id: str,
        amount_fen: int,
        channel: str,
        method: str,
        *,
        actor: str,
        description: str,
        payer_id: str | None = None,
    ) -> tuple[po.PaymentOrder, PaymentPrepared]:
        """Open our order (the door's checks), then the provider's; closed here again when
        the provider refuses (its `PaymentProviderError`, or `RequestError` for input it
        cannot take, raised on to the caller)."""
        if not self.public_base_url:
            # Without it no provider can call back: every payment would wait for the query.
            raise RequestError(
                "web.public_base_url",
                "no URL for the providers' callbacks: configure [web] with public_base_url "
                '(e.g. "https://pay.example.com")',
            )
        order = await asyncio.to_thread(
            self.ops.open_payment, account_id, amount_fen, channel, method, actor=actor
        )
        provider = self.providers[channel]
        request = PaymentRequest(
            order.out_trade_no,
            order.amount_fen,
            order.currency,
            description,
            order.expires_at,
            method,
            f"{self.public_base_url}/pay/notify/{channel}",
            payer_id,
        )
        try:
            prepared = await provider.create(request)
        except Exception as exc:
            # Any failure, not only the provider's own: the payer got no code to pay with.
            await asyncio.to_thread(
                self.ops.close_payment, order.out_trade_no, _reason(exc), actor=ACTOR
            )
            raise
        return order, prepared

    # -- figures ------------------------------------------------------------------------

    def publish(self) -> None:
        sample = Sample(PAYMENTS_SOURCE, PAYMENTS_MODEL, utcnow(), self.counters.values())
        self.ops.bus.publish(sample)

    async def _publish_forever(self) -> None:
        interval = self.ops.site.poll.stats_interval_s
        while True:
            self.publish()
            await asyncio.sleep(interval)

    # -- the loop -------------------------------------------------------------------------

    def leading(self) -> bool:
        """Whether this instance runs the sweeps and the reconciliation: always without
        [cluster], only while it holds the jobs leader's lease with it."""
        return self.leader is None or self.leader() is not None

    async def tick(self) -> bool:
        """One pass of the loop: the sweeps, then the reconciliation when due; on the jobs
        leader only (False, nothing done, elsewhere). An order or refund left half-way by a
        leader that lost its lease is in the database: the next leader's sweep finds it."""
        if not self.leading():
            return False
        try:
            await self.sweep()
            await self.sweep_refunds()
        except Exception:
            log.exception("payment sweep failed")
        if not self.leading():
            return True
        try:
            await self.reconcile_due()
        except Exception:
            log.exception("scheduled payment reconciliation failed")
        return True

    async def _run(self) -> None:
        while True:
            await self.tick()
            await asyncio.sleep(self.settings.poll_s)

    async def sweep(self) -> None:
        """One pass: credit PAID stragglers, query silent CREATED orders, close expired
        ones."""
        now = self.clock()
        # In a thread: hundreds of open orders at a busy hour are a read the event loop
        # (which also answers the providers' callbacks) should not wait for.
        created, paid = await asyncio.to_thread(self._open_orders)
        open_ids = {o.id for o in created}
        self._tried = {k: v for k, v in self._tried.items() if k in open_ids}
        for order in paid:  # stored, its credit task failed (database down a moment)
            if order.paid_at is None or order.paid_at + STRAGGLER <= now:
                await self._credit(order.out_trade_no, ACTOR)
        wait = timedelta(seconds=self.settings.query_after_s)
        for order in created:
            provider = self.providers.get(order.channel)
            if provider is None:
                continue
            # Still CREATED: no payment heard of. Ask `query_after_s` after creation, then
            # every `query_after_s` (also after a failed query) until it expires.
            tried = max(
                filter(None, (order.last_query_at, self._tried.get(order.id))), default=None
            )
            if order.created_at + wait > now or (tried is not None and tried + wait > now):
                continue
            expired = order.expires_at <= now
            self._tried[order.id] = now
            notice = await self._query(provider, order)
            if notice is None:
                continue
            if expired and notice.state in ("NOTPAY", "CLOSED"):
                await self._close(provider, order)

    def _open_orders(self) -> tuple[list[po.PaymentOrder], list[po.PaymentOrder]]:
        with self.ops.db.read() as conn:
            return po.orders_in(conn, OrderState.CREATED), po.orders_in(conn, OrderState.PAID)

    async def _query(
        self, provider: PaymentProvider, order: po.PaymentOrder
    ) -> PaymentNotice | None:
        self.counters.queries += 1
        try:
            notice = await provider.query(order.out_trade_no)
            outcome = await asyncio.to_thread(
                self.ops.apply_notice, notice, actor=ACTOR, queried=True
            )
        except (PaymentProviderError, RequestError) as exc:
            self.counters.query_errors += 1
            log.warning("query of payment %s failed: %s", order.out_trade_no, exc)
            return None
        except Exception:
            # Not the provider's word nor a refusal: a fault, logged with its trace; the
            # order stays CREATED and is asked again.
            self.counters.query_errors += 1
            log.exception("query of payment %s failed", order.out_trade_no)
            return None
        self._count(outcome)
        return notice

    async def _close(self, provider: PaymentProvider, order: po.PaymentOrder) -> None:
        try:
            await provider.close(order.out_trade_no)
        except (PaymentProviderError, RequestError) as exc:
            log.warning(
                "closing payment %s at %s failed: %s", order.out_trade_no, provider.channel, exc
            )
            return
        except Exception:
            log.exception("closing payment %s at %s failed", order.out_trade_no, provider.channel)
            return
        try:
            await asyncio.to_thread(
                self.ops.close_payment, order.out_trade_no, "expired", actor=ACTOR
            )
        except RequestError:
            return  # a notice moved it meanwhile
        self.counters.closed += 1

    # -- refunds --------------------------------------------------------------------------

    async def send_refund(self, out_refund_no: str) -> Any:
        """Ask the provider for a REQUESTED refund (the wallet was debited when it was
        requested); its answer applied (PROCESSING, or SUCCESS at once for Alipay). A final
        refusal closes it (money back to the wallet); a retryable failure leaves it
        REQUESTED for the next sweep. None when there was nothing to send."""
        with self.ops.db.read() as conn:
            refund = pr.get_refund(conn, out_refund_no)
            order = po.get_order(conn, refund.out_trade_no) if refund is not None else None
            ledger_state = _ledger_refund_state(conn, out_refund_no) if refund else None
        if refund is None or order is None or refund.state is not RefundState.REQUESTED:
            return None
        if ledger_state == "AWAITING_METER":
            return None  # a LOCAL meter is debited first (its REFUND command)
        if ledger_state == "FAILED":
            return await asyncio.to_thread(
                self.ops.refund_refused,
                out_refund_no,
                "the meter did not give the money back (its REFUND command failed)",
                actor=ACTOR,
            )
        provider = self.providers.get(refund.channel)
        if provider is None:
            log.warning("refund %s: no provider %r configured", out_refund_no, refund.channel)
            return None
        self.counters.refunds_sent += 1
        try:
            answer = await provider.refund(
                order.out_trade_no,
                out_refund_no,
                refund.amount_fen,
                order.amount_fen,
                refund.reason,
            )
        except PaymentProviderError as exc:
            self.counters.refund_errors += 1
            if exc.final:
                log.warning("refund %s refused for good: %s", out_refund_no, exc)
                return await asyncio.to_thread(
                    self.ops.refund_refused, out_refund_no, _reason(exc), actor=ACTOR
                )
            log.warning("refund %s not sent (sent again later): %s", out_refund_no, exc)
            await asyncio.to_thread(
                self.ops.refund_attempted, out_refund_no, _reason(exc), actor=ACTOR
            )
            return None
        except Exception as exc:
            # Our input or configuration (RequestError naming the field) or a fault: kept
            # REQUESTED, sent again once it is fixed.
            self.counters.refund_errors += 1
            log.warning("refund %s not sent: %s", out_refund_no, exc)
            await asyncio.to_thread(
                self.ops.refund_attempted, out_refund_no, _reason(exc), actor=ACTOR
            )
            return None
        return await asyncio.to_thread(self.ops.apply_refund_notice, answer, actor=ACTOR)

    async def query_refund(self, out_refund_no: str) -> Any:
        """Ask the provider about a PROCESSING refund and apply its answer."""
        with self.ops.db.read() as conn:
            refund = pr.get_refund(conn, out_refund_no)
        if refund is None or refund.state is not RefundState.PROCESSING:
            return None
        provider = self.providers.get(refund.channel)
        if provider is None:
            return None
        try:
            answer = await provider.query_refund(refund.out_trade_no, out_refund_no)
            return await asyncio.to_thread(
                self.ops.apply_refund_notice, answer, actor=ACTOR, queried=True
            )
        except (PaymentProviderError, RequestError) as exc:
            self.counters.refund_errors += 1
            log.warning("query of refund %s failed: %s", out_refund_no, exc)
            return None

    async def sweep_refunds(self) -> None:
        """Send REQUESTED refunds (again `query_after_s` after a failed call), query
        PROCESSING ones no notification finished within `query_after_s`."""
        now = self.clock()
        wait = timedelta(seconds=self.settings.query_after_s)
        with self.ops.db.read() as conn:
            requested = pr.refunds_in(conn, RefundState.REQUESTED)
            processing = pr.refunds_in(conn, RefundState.PROCESSING)
        for refund in requested:
            if refund.sent_at is None or refund.sent_at + wait <= now:
                await self.send_refund(refund.out_refund_no)
        for refund in processing:
            last = max(filter(None, (refund.sent_at, refund.last_query_at)), default=None)
            if last is None or last + wait <= now:
                await self.query_refund(refund.out_refund_no)

    # -- reconciliation -------------------------------------------------------------------

    async def reconcile(self, channel: str, day: date, *, actor: str = ACTOR) -> Any:
        """Download `channel`'s trade bill of `day` and reconcile it (the door's
        `reconcile_payments`); a bill that cannot be had is recorded FAILED."""
        provider = self.providers[channel]
        try:
            rows = await provider.trade_bill(day)
        except Exception as exc:
            log.warning("trade bill of %s for %s not had: %s", channel, day, exc)
            return await asyncio.to_thread(
                self.ops.reconciliation_failed, channel, day, _reason(exc), actor=actor
            )
        result = await asyncio.to_thread(
            self.ops.reconcile_payments, channel, day, rows, actor=actor
        )
        self.counters.reconciliations += 1
        self.counters.discrepancies += result.differences
        if result.differences:
            log.warning(
                "reconciliation of %s %s: %d difference(s), %d credited",
                channel,
                day,
                result.differences,
                result.credited,
            )
        return result

    async def reconcile_due(self) -> int:
        """Reconcile yesterday (site time) for every provider once `reconcile_at` has
        passed today, unless done (not FAILED) already; a FAILED day again after an hour.
        Returns how many were run."""
        at = self.settings.reconcile_at
        if at is None:
            return 0
        now = self.clock()
        local = now.astimezone(self.ops.site.info.tz)
        if local.time() < at:
            return 0
        day = local.date() - timedelta(days=1)
        ran = 0
        for channel in sorted(self.providers):
            tried = self._reconciled.get((channel, day))
            if tried is not None and tried + RECONCILE_RETRY > now:
                continue
            done = await asyncio.to_thread(self.ops.reconciliation, channel, day)
            self._reconciled[(channel, day)] = now
            if done is not None and done.state != "FAILED":
                continue
            await self.reconcile(channel, day)
            ran += 1
        self._reconciled = {k: v for k, v in self._reconciled.items() if k[1] >= day}
        return ran


def _reason(exc: BaseException) -> str:
    """Why an order was closed at creation, within the door's reason limit (a provider's
    error can carry a long URL or message: the close must not fail on it)."""
    reason = f"provider refused: {exc}".replace("\n", " ")
    limit = 400  # the door's (core.operations.door.check_reason)
    return reason if len(reason) <= limit else reason[: limit - 1] + "…"


def _ledger_refund_state(conn: Any, reference: str) -> str:
    return refund_result(conn, reference, replayed=True).state
