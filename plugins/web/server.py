"""The web service: aiohttp on the running service's own event loop (AppRunner/TCPSite, no
signal handling of its own: the runtime stops it), with its request figures published as
points of a HEALTH pseudo-model.

The tenant page's routes (`/r/<token>`, `/t...`) are in tenant_page.py, served when
`[web]` has a tenant secret.

`POST /pay/notify/<channel>`: the provider's callback. Verify over the raw body (the
provider plugin's `verify`: CPU only), then store the notice and credit it in one door
call (`apply_notice`: one transaction, the order locked, PAID → CREDITED through the
top-up, a ledger refusal a CONFLICT in the same transaction), and answer the provider once
that is committed. Nothing is answered before it is stored; a crash before the commit
leaves nothing, and the provider sends again.

Should the credit part fail unexpectedly (a fault, not a refusal), the notice is stored
alone (`store_notice`) and credited after in a task of the payment service ("verify and
store first, credit after"; a crash after the answer leaves a stored PAID order that the
service credits at its next start).

Door calls block on the database: they run on the web service's own threads (`DOOR_THREADS`,
not asyncio's default pool of a few), so every concurrent callback waits in the door's
group commit at once and shares one durable commit with the others (core/db/group.py).
Payment callbacks verified in the same turn of the event loop go to the door together:
one thread hands them all to the group commit (`apply_notices`: each still its own part
of the transaction, audit row and idempotency key) and their answers come back to the
loop in one hop — not a thread wake-up and a loop wake-up per callback, which under 64
concurrent callbacks cost the process more than the callbacks' own work.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from typing import Any

from aiohttp import web

from openprepay.core.contracts import NotificationRefused, NotifyAnswer, PaymentNotice
from openprepay.core.errors import RequestError
from openprepay.core.events import utcnow
from openprepay.core.field.diagnostics import diagnostic
from openprepay.core.model import DeviceModel, MeterKind, Sample, ValueType
from openprepay.core.payments.refunds import NOTICE_STATES as REFUND_NOTICE_STATES
from openprepay.core.payments.states import OrderState
from openprepay.core.tasks import stop_task

from .limits import RateLimiter
from .settings import WebSettings
from .tenant_page import TenantRoutes

log = logging.getLogger("openprepay.web")

#: Threads that wait on the door for callbacks: each only waits for its group commit, so
#: as many callbacks as arrive together are stored and credited in one transaction.
DOOR_THREADS = 64

WEB_SOURCE = "web"
WEB_MODEL = DeviceModel(
    name="openprepay.web",
    vendor="OpenPrepay",
    product="Web service statistics",
    kind=MeterKind.HEALTH,
    description="Requests and payment callbacks of the web service",
    points=(
        diagnostic("up", "", "1 while the web service listens", ValueType.BOOL),
        diagnostic("requests", "", "Requests received, since start"),
        diagnostic("notify_accepted", "", "Callbacks verified and stored, since start"),
        diagnostic(
            "notify_refused", "", "Callbacks refused (signature, timestamp...), since start"
        ),
        diagnostic(
            "notify_failed", "", "Callbacks verified but not stored (unknown order, database)"
        ),
        diagnostic("rate_limited", "", "Requests refused by the per-client rate, since start"),
        diagnostic("too_large", "", "Requests refused for their body size, since start"),
        diagnostic("tenant_links", "", "Signed room links opened (tenant page), since start"),
        diagnostic("tenant_pages", "", "Room pages shown to tenants, since start"),
        diagnostic("tenant_orders", "", "Payments opened from the tenant page, since start"),
        diagnostic(
            "tenant_refused", "", "Tenant requests refused (link, session, binding), since start"
        ),
    ),
    plugin="web",
)


@dataclass
class WebCounters:
    up: bool = False
    requests: int = 0
    notify_accepted: int = 0
    notify_refused: int = 0
    notify_failed: int = 0
    rate_limited: int = 0
    too_large: int = 0
    tenant_links: int = 0
    tenant_pages: int = 0
    tenant_orders: int = 0
    tenant_refused: int = 0

    def values(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class WebService:
    name = "web"

    def __init__(
        self, runtime: Any, settings: WebSettings, *, stats_interval_s: float = 60.0
    ) -> None:
        self.runtime = runtime
        self.settings = settings
        self.stats_interval_s = stats_interval_s
        self.counters = WebCounters()
        self.limiter = RateLimiter(settings.rate_per_min)
        self.port: int | None = None
        self._runner: web.AppRunner | None = None
        self._stats: asyncio.Task[None] | None = None
        self._pool: ThreadPoolExecutor | None = None
        #: Verified callbacks waiting for their batch's door call, by actor.
        self._notices: dict[str, list[tuple[PaymentNotice, asyncio.Future[Any]]]] = {}

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.settings.max_body_bytes, middlewares=[self._gate]
        )
        app.router.add_post("/pay/notify/{channel}", self.notify)
        app.router.add_get("/health", self.health)
        if self.settings.tenant is not None:
            TenantRoutes(self, self.settings.tenant).add(app)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app(), handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.bind, self.settings.port)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or ()
        self.port = sockets[0].getsockname()[1] if sockets else self.settings.port
        self.counters.up = True
        self.runtime.announcements.append(
            f"web: http://{self.settings.bind}:{self.port} (providers call "
            f"{self.settings.public_base_url or '(no public_base_url)'}/pay/notify/<channel>)"
        )
        self._stats = asyncio.create_task(self._publish_forever(), name="web stats")

    async def stop(self) -> None:
        self.counters.up = False
        await stop_task(self._stats)
        self._stats = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self._publish()

    # -- requests -------------------------------------------------------------------------

    @web.middleware
    async def _gate(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.counters.requests += 1
        # Providers call from a few addresses (or all through the proxy): a per-client rate
        # would refuse real payments at a busy hour. Their callbacks are bounded by the body
        # size and refused cheaply by the signature check instead.
        limited = not request.path.startswith("/pay/notify/")
        if limited and not self.limiter.allow(self.client(request)):
            self.counters.rate_limited += 1
            return web.Response(status=429, text="too many requests\n")
        if (request.content_length or 0) > self.settings.max_body_bytes:
            self.counters.too_large += 1
            return web.Response(status=413, text="request body too large\n")
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            self.counters.too_large += 1
            raise

    def client(self, request: web.Request) -> str:
        """The client address; behind a trusted local proxy, the address it saw."""
        if self.settings.trust_forwarded:
            forwarded = request.headers.get("X-Forwarded-For", "")
            if forwarded:
                return forwarded.rsplit(",", 1)[-1].strip()
        return request.remote or "?"

    async def notify(self, request: web.Request) -> web.StreamResponse:
        channel = request.match_info["channel"]
        payments = self.runtime.payments
        provider = payments.providers.get(channel) if payments is not None else None
        if provider is None:
            return web.Response(status=404, text="no such payment channel\n")
        body = await request.read()  # the raw bytes: the signature covers them exactly
        try:
            notice = provider.verify(request.headers, body, utcnow())
            if notice.channel != channel:
                raise NotificationRefused(f"notice of channel {notice.channel!r} on {channel!r}")
        except NotificationRefused as refused:
            self.counters.notify_refused += 1
            log.warning(
                "%s callback from %s refused: %s", channel, self.client(request), refused.reason
            )
            return _response(provider.answer(False))
        actor = f"web:{channel}"
        if notice.out_refund_no is not None:
            try:
                applied = await self._refund_notice(notice, actor)
            except Exception:
                self.counters.notify_failed += 1  # the provider retries
                log.exception("%s refund notice %s not stored", channel, notice.out_refund_no)
                return _response(provider.answer(False))
            if applied:
                self.counters.notify_accepted += 1
                return _response(provider.answer(True))
        ops = self.runtime.operations
        try:
            try:
                outcome = await self._batched_notice(notice, actor)
            except RequestError:
                raise
            except Exception:
                # The credit part failed (a fault): keep the notice, credit it after.
                log.exception("%s callback for %s: crediting failed", channel, notice.out_trade_no)
                outcome = await self._door(ops.store_notice, notice, actor=actor)
        except RequestError as refused:
            self.counters.notify_failed += 1
            log.warning("%s callback for %s not stored: %s", channel, notice.out_trade_no, refused)
            return _response(provider.answer(False))
        except Exception:
            self.counters.notify_failed += 1  # the provider retries
            log.exception("%s callback for %s not stored", channel, notice.out_trade_no)
            return _response(provider.answer(False))
        self.counters.notify_accepted += 1
        if outcome.state is OrderState.PAID:
            payments.credit_later(notice.out_trade_no, actor)
        else:
            payments.count(outcome)
        return _response(provider.answer(True))

    async def _refund_notice(self, notice: PaymentNotice, actor: str) -> bool:
        """A verified notice about one of our refunds (REFUND.* from WeChat, a trade
        notification naming the refund from Alipay) applied to it; False when it names no
        refund of ours (it is then a notice about the order, stored as one)."""
        ops = self.runtime.operations
        try:
            await self._door(ops.payment_refund, notice.out_refund_no)
        except RequestError:
            return False
        if notice.state not in REFUND_NOTICE_STATES:
            return False
        await self._door(ops.apply_refund_notice, notice, actor=actor)
        return True

    async def _batched_notice(self, notice: PaymentNotice, actor: str) -> Any:
        """`apply_notice` through a batch: the callbacks that arrived in the same turn of
        the event loop go to the door in one call on one thread (`apply_notices`), whose
        answers come back in one hop (see the module docstring)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        waiting = self._notices.setdefault(actor, [])
        waiting.append((notice, waiter))
        if len(waiting) == 1:
            loop.call_soon(self._send_notices, actor)
        return await waiter

    def _send_notices(self, actor: str) -> None:
        batch = self._notices.pop(actor, [])
        if not batch:
            return
        ops = self.runtime.operations
        call = self._door_future(ops.apply_notices, [notice for notice, _ in batch], actor=actor)

        def answer(done: asyncio.Future[Any]) -> None:
            try:
                outcomes = done.result()
            except Exception as exc:  # the whole call failed: each callback sees it
                outcomes = [exc] * len(batch)
            for (_, waiter), outcome in zip(batch, outcomes, strict=True):
                if waiter.done():  # the callback was cancelled meanwhile
                    continue
                if isinstance(outcome, Exception):
                    waiter.set_exception(outcome)
                else:
                    waiter.set_result(outcome)

        call.add_done_callback(answer)

    async def _door(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A door call on the web service's threads (see the module docstring)."""
        return await self._door_future(call, *args, **kwargs)

    def _door_future(
        self, call: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> asyncio.Future[Any]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(DOOR_THREADS, thread_name_prefix="web-door")
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._pool, functools.partial(call, *args, **kwargs))

    async def health(self, request: web.Request) -> web.StreamResponse:
        payments = self.runtime.payments
        return web.json_response(
            {
                "status": "ok",
                "site": self.runtime.site.id,
                "database": self.runtime.db is not None,
                "payment_channels": sorted(payments.providers) if payments is not None else [],
                **self.counters.values(),
            }
        )

    # -- figures --------------------------------------------------------------------------

    def _publish(self) -> None:
        self.runtime.bus.publish(Sample(WEB_SOURCE, WEB_MODEL, utcnow(), self.counters.values()))

    async def _publish_forever(self) -> None:
        while True:
            self._publish()
            await asyncio.sleep(self.stats_interval_s)


def _response(answer: NotifyAnswer) -> web.Response:
    return web.Response(status=answer.status, body=answer.body, content_type=answer.content_type)
