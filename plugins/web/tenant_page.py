"""The tenant page's routes (served when `[web]` has a tenant secret).

- `GET /r/<token>`: a room's signed link (the QR code); sets the session, inside WeChat
  goes on to OAuth;
- `GET /t/oauth`: WeChat's OAuth answer: the openid, bound to the session's room;
- `GET /t`: the room (balance, fee state, supply, use and cost, price, bills, history,
  recharge);
- `POST /t/pay`: open a payment (WeChat JSAPI inside WeChat, else a Native QR; Alipay QR);
- `GET /t/order/<out_trade_no>`: the order: its QR or JSAPI button, then paid — credited
  — supply restored;
- `GET /t/static/tenant.css`, `tenant.js`: the page's own style and its one script.

Every request is authorised by its session cookie alone (signed, expiring, of the current
key version); a session built on a WeChat openid also needs the payer binding to be
active (revoked → the session ends). The room comes from the session, never from the
URL; an order is shown only to a session of the room whose account it credits.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict
from typing import Any

from aiohttp import web

from openprepay.core.contracts import PaymentPrepared, PaymentProviderError
from openprepay.core.errors import RequestError
from openprepay.core.events import utcnow
from openprepay.core.money import format_fen
from openprepay.core.operations import RoomView

from . import room_links as rl
from . import tenant_html as th
from .limits import RateLimiter
from .tenant_settings import TenantSettings
from .tenant_view import in_wechat, pay_options, progress, read_amount
from .tenant_words import LANGUAGES, words
from .wechat_oauth import OAuthFailed, authorize_url, fetch_openid

log = logging.getLogger("openprepay.web.tenant")

ACTOR = "web:tenant"
LANG_COOKIE = "op_lang"
#: Own origin only: no external script, style, image or frame; forms post to us.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)
#: The QR contents / JSAPI parameters of recent orders (the order page shows them again).
KEEP_PREPARED = 2000


class TenantRoutes:
    def __init__(self, service: Any, settings: TenantSettings) -> None:
        self.service = service
        self.settings = settings
        self.runtime = service.runtime
        self.public = service.settings.public_base_url
        self.secure = self.public.startswith("https://")
        #: Links and payments: a tighter rate per client than the pages.
        self.strict = RateLimiter(min(30, service.settings.rate_per_min))
        self._prepared: OrderedDict[str, tuple[str, PaymentPrepared]] = OrderedDict()

    def add(self, app: web.Application) -> None:
        app.router.add_get("/r/{token}", self.open_link)
        app.router.add_get("/t/oauth", self.oauth_return)
        app.router.add_get("/t", self.page)
        app.router.add_post("/t/pay", self.pay)
        app.router.add_get("/t/order/{no}", self.order)
        app.router.add_get("/t/static/{name}", self.static)

    # -- helpers --------------------------------------------------------------------------

    @property
    def site_id(self) -> str:
        return str(self.runtime.site.id)

    @property
    def ops(self) -> Any:
        return self.runtime.operations

    def lang(self, request: web.Request) -> str:
        asked = request.query.get("lang")
        if asked in LANGUAGES:
            return asked
        kept = request.cookies.get(LANG_COOKIE)
        return kept if kept in LANGUAGES else "zh"

    def html(self, request: web.Request, text: str, status: int = 200) -> web.Response:
        response = web.Response(text=text, status=status, content_type="text/html")
        _protect(response)
        if request.query.get("lang") in LANGUAGES:
            response.set_cookie(
                LANG_COOKIE, request.query["lang"], max_age=365 * 86400, samesite="Lax",
                secure=self.secure, path="/",
            )  # fmt: skip
        return response

    def refuse(self, request: web.Request, key: str, status: int) -> web.Response:
        self.service.counters.tenant_refused += 1
        response = self.html(
            request, th.message_page(words(self.lang(request)), self.lang(request), key), status
        )
        if status in (401, 403):
            response.del_cookie(rl.SESSION_COOKIE, path="/")
        return response

    def set_session(self, response: web.StreamResponse, session: rl.TenantSession) -> str:
        sealed = rl.seal_session(self.settings, session)
        response.set_cookie(
            rl.SESSION_COOKIE, sealed, max_age=self.settings.session_hours * 3600,
            httponly=True, samesite="Lax", secure=self.secure, path="/",
        )  # fmt: skip
        return sealed

    def oauth_ready(self) -> str | None:
        """The official account's appid when OAuth can run (WeChat Pay configured with
        an appid and `[web] wechat_app_secret_file` given), else None."""
        payments = self.runtime.payments
        provider = payments.providers.get("wechat") if payments is not None else None
        if provider is None or not self.settings.wechat_app_secret or not self.public:
            return None
        return str(provider.app_id)

    async def session(self, request: web.Request) -> rl.TenantSession:
        """The request's valid session, its binding checked (`LinkRefused` otherwise)."""
        session = rl.open_session(
            self.settings, self.site_id, request.cookies.get(rl.SESSION_COOKIE), utcnow()
        )
        if not session.room or session.room not in self.runtime.site.rooms:
            raise rl.LinkRefused("no room")
        if session.openid is not None:
            bound = await asyncio.to_thread(
                self.ops.payer_bound, "wechat", session.openid, session.room
            )
            if not bound:
                raise rl.LinkRefused("payer binding revoked")
        return session

    async def room(self, request: web.Request) -> tuple[rl.TenantSession, str] | web.Response:
        try:
            session = await self.session(request)
        except rl.LinkRefused as refused:
            # Inside WeChat, a payer without a (valid) session may be bound already: ask.
            again = refused.reason in ("no session", "no room", "session expired")
            if again and in_wechat(request.headers.get("User-Agent", "")):
                redirect = self.to_oauth_without_room(request)
                if redirect is not None:
                    return redirect
            log.info("tenant page refused to %s: %s", self.service.client(request), refused.reason)
            return self.refuse(request, "no_session", 401)
        account = await asyncio.to_thread(self.ops.room_account, session.room)
        if account is None:
            return self.refuse(request, "no_account", 404)
        return session, account

    def to_oauth_without_room(self, request: web.Request) -> web.StreamResponse | None:
        """Inside WeChat without a session (the official account's menu): ask WeChat who
        this is; a payer bound to a room before gets that room back."""
        appid = self.oauth_ready()
        if appid is None:
            return None
        response = _redirect("/")
        session = rl.new_session(self.settings, self.site_id, "", utcnow())
        sealed = self.set_session(response, session)
        state = rl.oauth_state(self.settings, sealed)
        response.headers["Location"] = authorize_url(
            self.settings.wechat_oauth_url, appid, f"{self.public}/t/oauth", state
        )
        _protect(response)
        return response

    # -- routes ---------------------------------------------------------------------------

    async def open_link(self, request: web.Request) -> web.StreamResponse:
        if not self.strict.allow(self.service.client(request)):
            return self.refuse(request, "busy", 429)
        now = utcnow()
        try:
            room = rl.read_room_link(self.settings, self.site_id, request.match_info["token"], now)
        except rl.LinkRefused as refused:
            log.info("room link refused to %s: %s", self.service.client(request), refused.reason)
            return self.refuse(request, "link_invalid", 403)
        if room not in self.runtime.site.rooms:
            return self.refuse(request, "link_invalid", 403)
        self.service.counters.tenant_links += 1
        session = rl.new_session(self.settings, self.site_id, room, now)
        appid = self.oauth_ready()
        response = _redirect(f"/t?lang={self.lang(request)}")
        sealed = self.set_session(response, session)
        if appid is not None and in_wechat(request.headers.get("User-Agent", "")):
            state = rl.oauth_state(self.settings, sealed)
            response.headers["Location"] = authorize_url(
                self.settings.wechat_oauth_url, appid, f"{self.public}/t/oauth", state
            )
        _protect(response)
        return response

    async def oauth_return(self, request: web.Request) -> web.StreamResponse:
        sealed = request.cookies.get(rl.SESSION_COOKIE, "")
        try:
            session = rl.open_session(self.settings, self.site_id, sealed, utcnow())
        except rl.LinkRefused:
            return self.refuse(request, "no_session", 401)
        state = request.query.get("state", "")
        appid = self.oauth_ready()
        if appid is None or not rl.same(state, rl.oauth_state(self.settings, sealed)):
            log.warning("WeChat OAuth answer refused to %s: state", self.service.client(request))
            return self.refuse(request, "no_session", 403)
        assert self.settings.wechat_app_secret is not None
        try:
            openid = await fetch_openid(
                self.settings.wechat_api_url,
                appid,
                self.settings.wechat_app_secret,
                request.query.get("code", ""),
            )
        except OAuthFailed as failed:
            log.warning("WeChat OAuth failed: %s", failed)
            if session.room:  # the signed link stands: the page without JSAPI
                return _redirect("/t")
            return self.refuse(request, "no_session", 401)
        room = session.room
        if room:
            await asyncio.to_thread(self.ops.bind_payer, "wechat", openid, room, actor=ACTOR)
        else:
            rooms = await asyncio.to_thread(self.ops.payer_rooms, "wechat", openid)
            if not rooms:
                return self.refuse(request, "no_session", 401)
            room = rooms[0]
        response = _redirect("/t")
        self.set_session(
            response, rl.new_session(self.settings, self.site_id, room, utcnow(), openid)
        )
        _protect(response)
        return response

    async def page(self, request: web.Request) -> web.StreamResponse:
        found = await self.room(request)
        if isinstance(found, web.StreamResponse):
            return found
        session, account = found
        return await self.show_room(request, session, account)

    async def show_room(
        self,
        request: web.Request,
        session: rl.TenantSession,
        account: str,
        *,
        error: str | None = None,
        amount_text: str = "",
        status: int = 200,
    ) -> web.Response:
        lang = self.lang(request)
        view: RoomView = await asyncio.to_thread(self.ops.room_view, session.room, account)
        self.service.counters.tenant_pages += 1
        payments = self.runtime.payments
        options = pay_options(
            payments.providers if payments is not None else {},
            inside_wechat=in_wechat(request.headers.get("User-Agent", "")),
            openid=session.openid,
        )
        text = th.room_page(
            words(lang),
            lang,
            view,
            options=options,
            presets=self.settings.presets,
            minimum_fen=self.ops.payment_settings.minimum_fen,
            form_token=rl.form_token(self.settings, request.cookies.get(rl.SESSION_COOKIE, "")),
            tz=self.runtime.site.info.tz,
            error=error,
            amount_text=amount_text,
        )
        return self.html(request, text, status)

    async def pay(self, request: web.Request) -> web.StreamResponse:
        if not self.strict.allow(self.service.client(request)):
            return self.refuse(request, "busy", 429)
        found = await self.room(request)
        if isinstance(found, web.StreamResponse):
            return found
        session, account = found
        form = await request.post()
        sealed = request.cookies.get(rl.SESSION_COOKIE, "")
        if not rl.same(str(form.get("form", "")), rl.form_token(self.settings, sealed)):
            return self.refuse(request, "no_session", 403)
        w = words(self.lang(request))
        other = str(form.get("other", ""))[:32]
        payments = self.runtime.payments
        options = pay_options(
            payments.providers if payments is not None else {},
            inside_wechat=in_wechat(request.headers.get("User-Agent", "")),
            openid=session.openid,
        )
        chosen = next((o for o in options if f"{o.channel}:{o.method}" == form.get("pay")), None)
        if chosen is None or payments is None:
            return await self.show_room(
                request, session, account, error=w("unavailable"), status=400
            )
        minimum = self.ops.payment_settings.minimum_fen
        try:
            amount_fen = read_amount(str(form.get("preset", "")), other)
        except RequestError:
            return await self.show_room(
                request, session, account, error=w("bad_amount"), amount_text=other, status=400
            )
        if amount_fen < minimum:
            error = w("below_minimum", minimum=format_fen(minimum))
            return await self.show_room(
                request, session, account, error=error, amount_text=other, status=400
            )
        try:
            order, prepared = await payments.start_payment(
                account,
                amount_fen,
                chosen.channel,
                chosen.method,
                actor=ACTOR,
                description=f"Prepaid {session.room}",
                payer_id=session.openid if chosen.method == "jsapi" else None,
            )
        except RequestError as refused:
            # The hoarding limit in the page's words; the capacity, a closed account: the
            # door's words.
            limit = re.search(r"hoarding limit (\d+\.\d\d)", refused.message)
            if limit is not None:
                error = w("above_limit", limit=limit.group(1))
            else:
                error = f"{w('refused')}: {refused.message}"
            return await self.show_room(
                request, session, account, error=error, amount_text=other, status=400
            )
        except PaymentProviderError as failed:
            log.warning("payment for room %s not opened: %s", session.room, failed)
            return self.refuse(request, "unavailable", 502)
        self.service.counters.tenant_orders += 1
        self._prepared[order.out_trade_no] = (session.room, prepared)
        while len(self._prepared) > KEEP_PREPARED:
            self._prepared.popitem(last=False)
        response = _redirect_see_other(f"/t/order/{order.out_trade_no}?lang={self.lang(request)}")
        _protect(response)
        return response

    async def order(self, request: web.Request) -> web.StreamResponse:
        found = await self.room(request)
        if isinstance(found, web.StreamResponse):
            return found
        session, account = found
        no = request.match_info["no"]
        try:
            order = await asyncio.to_thread(self.ops.payment_order, no)
        except RequestError:
            order = None
        if order is None or order.account_id != account:
            # Unknown and not yours look alike: nothing to learn by guessing numbers.
            return self.refuse(request, "no_session", 404)
        view = await asyncio.to_thread(self.ops.room_view, session.room, account)
        kept = self._prepared.get(no)
        prepared = kept[1] if kept is not None and kept[0] == session.room else None
        lang = self.lang(request)
        text = th.order_page(
            words(lang),
            lang,
            out_trade_no=no,
            amount_fen=order.amount_fen,
            channel=order.channel,
            steps=progress(order.state, view),
            code_url=prepared.code_url if prepared is not None else None,
            jsapi=dict(prepared.jsapi) if prepared is not None and prepared.jsapi else None,
            follow=request.query.get("follow") == "1",
            balance_fen=view.snapshot.balance_fen,
        )
        return self.html(request, text)

    async def static(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name == "tenant.css":
            response = web.Response(text=th.CSS, content_type="text/css")
        elif name == "tenant.js":
            response = web.Response(text=th.JS, content_type="application/javascript")
        else:
            raise web.HTTPNotFound()
        _protect(response)
        response.headers["Cache-Control"] = "public, max-age=3600"
        return response


def _protect(response: web.StreamResponse) -> None:
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    # A room link's token must not leak to another site through the Referer header.
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"


def _redirect(location: str) -> web.Response:
    return web.Response(status=302, headers={"Location": location})


def _redirect_see_other(location: str) -> web.Response:
    """After a POST: the browser follows with a GET."""
    return web.Response(status=303, headers={"Location": location})
