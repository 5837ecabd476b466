"""The tenant page over a real socket: the runtime with the web service, WeChat Pay and
Alipay at their emulators, WeChat OAuth at its emulator; an aiohttp client as the phone.

Security: tampered, expired and old-key links refused; another room's data and orders
unreachable with a valid session for this one; an openid or room in the URL ignored; a
revoked payer binding ends its session; a form without its token refused. Pages in zh and
en; paying from the page (Native QR) credits once and the page follows the order.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiohttp
import pytest

from openprepay.core.events import utcnow
from openprepay.core.payments.states import OrderState
from openprepay.plugins.web import room_links as rl
from tests.conftest import until

from .conftest import PAYMENTS
from .conftest import WEB as WEB_HTTPS
from .tenant_fixtures import OPENID, TenantSite
from .tenant_fixtures import keys as keys
from .tenant_fixtures import start_tenant as start_tenant
from .tenant_fixtures import tenant as tenant

WECHAT_UA = (
    "Mozilla/5.0 (Linux; Android 14) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Mobile Safari/537.36 MicroMessenger/8.0.50.2701 NetType/WIFI Language/zh_CN"
)


@pytest.fixture
async def phone() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        yield s


async def _open(phone: aiohttp.ClientSession, url: str, **kw: object) -> tuple[int, str]:
    async with phone.get(url, **kw) as answer:  # type: ignore[arg-type]
        return answer.status, await answer.text()


def _form_token(page: str) -> str:
    found = re.search(r'name="form" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


async def test_a_signed_link_opens_the_room_in_chinese_then_english(
    tenant: TenantSite, phone: aiohttp.ClientSession
) -> None:
    tenant.r.ops.topup("A-101", 123_45, "counter-1", actor="test")
    async with phone.get(tenant.link("A-101")) as answer:
        assert answer.status == 200 and answer.url.path == "/t"
        page = await answer.text()
        csp = answer.headers["Content-Security-Policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp
        assert answer.headers["Referrer-Policy"] == "no-referrer"
    cookie = next(c for c in phone.cookie_jar if c.key == rl.SESSION_COOKIE)
    assert cookie["httponly"] and cookie["samesite"] == "Lax"
    assert "剩余金额" in page and "123.45" in page and "A-101" in page
    assert "充值记录" in page and "微信支付" in page and "支付宝" in page
    assert "<script" not in page  # outside WeChat: no script at all
    assert not re.search(r"(src|href)=\"https?://", page)  # nothing external
    status, english = await _open(phone, f"{tenant.url}/t?lang=en")
    assert status == 200 and "Balance" in english and "Recharges" in english
    status, kept = await _open(phone, f"{tenant.url}/t")
    assert "Balance" in kept  # the language is remembered
    assert tenant.web.counters.tenant_links == 1


async def test_tampered_expired_and_old_key_links_are_refused(
    tenant: TenantSite, phone: aiohttp.ClientSession
) -> None:
    link = tenant.link("A-101")
    token = link.rsplit("/", 1)[1]
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    settings = tenant.web.settings.tenant
    site = tenant.r.runtime.site.id
    expired = rl.sign_room_link(
        dataclasses.replace(settings, link_days=1), site, "A-101", utcnow() - timedelta(days=2)
    )
    old = rl.sign_room_link(
        dataclasses.replace(settings, key_version=settings.key_version + 1), site, "A-101", utcnow()
    )
    for bad in (tampered, expired, old, "A-101", "nothing"):
        status, page = await _open(phone, f"{tenant.url}/r/{bad}")
        assert status == 403 and "二维码无效" in page
        assert not any(c.key == rl.SESSION_COOKIE for c in phone.cookie_jar)
    status, _ = await _open(phone, f"{tenant.url}/t")
    assert status == 401


async def test_no_session_no_data_whatever_the_url_says(
    tenant: TenantSite, phone: aiohttp.ClientSession
) -> None:
    for path in ("/t", "/t?room=A-101", f"/t?openid={OPENID}", "/t?account=A-101"):
        status, page = await _open(phone, tenant.url + path)
        assert status == 401 and "A-101" not in page
    phone.cookie_jar.update_cookies({rl.SESSION_COOKIE: "forged.value"})
    status, _ = await _open(phone, f"{tenant.url}/t")
    assert status == 401


async def test_another_rooms_data_and_orders_are_unreachable(
    tenant: TenantSite, phone: aiohttp.ClientSession
) -> None:
    # An order of room A-102, opened by its tenant.
    theirs, _ = await tenant.r.runtime.payments.start_payment(
        "A-102", 50_00, "alipay", "qr", actor="test:payer", description="Prepaid A-102"
    )
    status, page = await _open(phone, tenant.link("A-101"))
    assert status == 200 and "777.00" not in page and "A-102" not in page
    status, page = await _open(phone, f"{tenant.url}/t/order/{theirs.out_trade_no}")
    assert status == 404 and theirs.out_trade_no not in page
    status, page = await _open(phone, f"{tenant.url}/t/order/OP0000000000000000")
    assert status == 404
    # The room in the URL is never what is shown: the session's room is.
    status, page = await _open(phone, f"{tenant.url}/t?room=A-102")
    assert status == 200 and "A-101" in page and "777.00" not in page


async def test_pay_from_the_page_with_a_native_qr_and_follow_the_order(
    tenant: TenantSite, phone: aiohttp.ClientSession
) -> None:
    status, page = await _open(phone, tenant.link("A-101") + "?lang=en")
    form = {"form": _form_token(page), "preset": "20", "other": "", "pay": "wechat:native"}
    async with phone.post(f"{tenant.url}/t/pay", data=form) as answer:
        assert answer.status == 200
        path = answer.url.path
        order_page = await answer.text()
    no = path.rsplit("/", 1)[1]
    assert path.startswith("/t/order/") and tenant.order(no).amount_fen == 20_00
    assert "<svg" in order_page and "Scan with WeChat Pay" in order_page
    assert 'http-equiv="refresh"' in order_page  # follows the order without a script
    assert tenant.wechat.emu.orders[no]["notify_url"] == f"{tenant.url}/pay/notify/wechat"
    await tenant.wechat.pay(no)
    await until(lambda: tenant.order(no).state is OrderState.CREDITED)
    assert tenant.balance() == 20_00
    status, followed = await _open(phone, f"{tenant.url}/t/order/{no}")
    assert status == 200 and 'id="step-credited" class="done"' in followed
    status, zh = await _open(phone, f"{tenant.url}/t/order/{no}?lang=zh")
    assert status == 200 and "已支付" in zh and "已到账" in zh and "剩余金额" in zh
    status, room = await _open(phone, f"{tenant.url}/t")
    assert "20.00" in room and "充值记录" in room


@pytest.mark.parametrize(
    ("other", "words"),
    [("0.50", "Below the minimum of 1.00 yuan"), ("abc", "Enter an amount"), ("-5", "Enter")],
)
async def test_amounts_below_the_minimum_or_unreadable_are_refused_clearly(
    tenant: TenantSite, phone: aiohttp.ClientSession, other: str, words: str
) -> None:
    _, page = await _open(phone, tenant.link("A-101") + "?lang=en")
    form = {"form": _form_token(page), "preset": "20", "other": other, "pay": "alipay:qr"}
    async with phone.post(f"{tenant.url}/t/pay", data=form) as answer:
        assert answer.status == 400
        assert words in await answer.text()
    assert tenant.r.ops.payment_orders() == []


async def test_above_the_hoarding_limit_is_refused_with_the_doors_words(
    tenant: TenantSite, phone: aiohttp.ClientSession
) -> None:
    _, page = await _open(phone, tenant.link("A-101") + "?lang=en")
    form = {"form": _form_token(page), "other": "99999", "pay": "alipay:qr"}
    async with phone.post(f"{tenant.url}/t/pay", data=form) as answer:
        assert answer.status == 400
        assert "Above the hoarding limit" in await answer.text()
    assert tenant.r.ops.payment_orders() == []


async def test_a_post_without_the_pages_form_token_is_refused(
    tenant: TenantSite, phone: aiohttp.ClientSession
) -> None:
    await _open(phone, tenant.link("A-101"))
    form = {"form": "guess", "preset": "20", "pay": "alipay:qr"}
    async with phone.post(f"{tenant.url}/t/pay", data=form) as answer:
        assert answer.status == 403
    assert tenant.r.ops.payment_orders() == []


async def test_inside_wechat_oauth_binds_the_openid_and_pays_with_jsapi(
    tenant: TenantSite, phone: aiohttp.ClientSession
) -> None:
    headers = {"User-Agent": WECHAT_UA}
    status, page = await _open(phone, tenant.link("A-101"), headers=headers)
    assert status == 200
    assert tenant.oauth.authorized and tenant.oauth.exchanged == 1
    (binding,) = tenant.r.ops.payer_bindings()
    assert binding.payer_id == OPENID and binding.room == "A-101"
    form = {"form": _form_token(page), "preset": "50", "pay": "wechat:jsapi"}
    async with phone.post(f"{tenant.url}/t/pay", data=form, headers=headers) as answer:
        assert answer.status == 200
        order_page = await answer.text()
        no = answer.url.path.rsplit("/", 1)[1]
    assert 'id="jsapi"' in order_page and 'src="/t/static/tenant.js"' in order_page
    assert "paySign" in order_page and tenant.wechat.emu.orders[no]["payer"]["openid"] == OPENID
    # Back later from the official account's menu, without the link: the binding.
    phone.cookie_jar.clear()
    status, page = await _open(phone, f"{tenant.url}/t", headers=headers)
    assert status == 200 and "A-101" in page
    # Revoked by an operator: the session built on it ends at its next request.
    tenant.r.ops.revoke_payer(binding.id, actor="test:operator")
    status, _ = await _open(phone, f"{tenant.url}/t", headers=headers)
    assert status == 401


async def test_the_page_and_its_static_files(
    tenant: TenantSite, phone: aiohttp.ClientSession
) -> None:
    async with phone.get(f"{tenant.url}/t/static/tenant.css") as answer:
        assert answer.status == 200 and answer.content_type == "text/css"
    async with phone.get(f"{tenant.url}/t/static/tenant.js") as answer:
        assert answer.status == 200 and "WeixinJSBridge" in await answer.text()
    async with phone.get(f"{tenant.url}/t/static/../../health") as answer:
        assert answer.status in (404, 200)  # normalised by the router, never a file read


async def test_behind_https_the_cookie_is_secure_and_links_are_rate_limited(
    running: Any, phone: aiohttp.ClientSession
) -> None:
    """`public_base_url` https (the reverse proxy's): the session cookie is Secure. Opening
    links is limited per client (30 a minute) well below the pages' rate."""
    web = {**WEB_HTTPS, "tenant_secret": "https-tenant-secret-0123456789abcdef"}
    r = await running(payments=dict(PAYMENTS), web=web)
    r.open_account("A-101", ("E-101", "W-101"), room="A-101")
    service = next(s for s in r.runtime.services if s.name == "web")
    token = rl.sign_room_link(service.settings.tenant, r.runtime.site.id, "A-101", utcnow())
    url = f"http://127.0.0.1:{service.port}/r/{token}"
    async with phone.get(url, allow_redirects=False) as answer:
        assert answer.status == 302
        cookie = answer.headers["Set-Cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    statuses = []
    for _ in range(40):
        async with phone.get(url, allow_redirects=False) as answer:
            statuses.append(answer.status)
    assert 429 in statuses and statuses[0] == 302


async def test_oauth_answers_that_are_forged_or_replayed_bind_nobody(
    tenant: TenantSite, phone: aiohttp.ClientSession
) -> None:
    # Outside WeChat first: a session for A-101 without an openid.
    status, _ = await _open(phone, tenant.link("A-101"))
    assert status == 200
    # A code WeChat does not know (replayed, expired): no binding; the signed link still
    # holds, so the page opens without WeChat's JSAPI.
    sealed = next(c.value for c in phone.cookie_jar if c.key == rl.SESSION_COOKIE)
    state = rl.oauth_state(tenant.web.settings.tenant, sealed)
    status, page = await _open(phone, f"{tenant.url}/t/oauth?code=used&state={state}")
    assert status == 200 and "A-101" in page
    assert tenant.r.ops.payer_bindings() == [] and tenant.oauth.exchanged == 1
    # A forged answer (a state not derived from this session) is refused, and ends it.
    status, _ = await _open(phone, f"{tenant.url}/t/oauth?code=abc&state=forged")
    assert status == 403 and tenant.r.ops.payer_bindings() == []
    assert tenant.oauth.exchanged == 1  # never asked WeChat
    # Inside WeChat, an unknown payer coming without a link sees no room.
    tenant.oauth.openid = "oStranger_0123456789abcdef"
    phone.cookie_jar.clear()
    status, page = await _open(phone, f"{tenant.url}/t", headers={"User-Agent": WECHAT_UA})
    assert status == 401 and "A-101" not in page
