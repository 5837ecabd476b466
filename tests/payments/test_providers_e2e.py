"""The real providers end to end through the web route: WeChat Pay (Native) and Alipay (QR),
each on SQLite and PostgreSQL.

The site file has `[payments.<channel>]` pointing at the provider's emulator (its keys in
files), `[web]` on loopback whose `public_base_url` is the web service's own address; the
full runtime runs. The payment service opens the order at the emulator, the emulator "pays"
and POSTs the signed notification to the real /pay/notify/<channel> route, and the order
goes CREATED → CREDITED once, the account's balance rising by exactly the amount; `ledger
verify` after every test.

The web service listens on a port picked free beforehand, not port 0: the notify URL the
provider is given is built from `public_base_url`, which is fixed in the site file before
the service binds (in production it is the reverse proxy's address, not the service's).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from openprepay.core import ledger
from openprepay.core.contracts import PaymentProviderError
from openprepay.core.errors import RequestError
from openprepay.core.events import utcnow
from openprepay.core.payments import get_order, list_orders
from openprepay.core.payments.states import OrderState
from tests.conftest import free_port, until
from tests.plugins.alipay.emulator import AlipayEmulator
from tests.plugins.alipay.emulator import private_pem as alipay_private_pem
from tests.plugins.wechatpay.emulator import Merchant, WechatPayEmulator, new_key, pem_private

from .conftest import PAYMENTS

ALIPAY_APP_ID = "2021000123456789"
ALIPAY_SELLER_ID = "2088102177846880"
AMOUNT_FEN = 5000


@dataclass(frozen=True)
class Keys:
    wechat_merchant: rsa.RSAPrivateKey
    wechat_platform: rsa.RSAPrivateKey
    wechat_public: rsa.RSAPrivateKey
    alipay_app: rsa.RSAPrivateKey


@pytest.fixture(scope="module")
def keys() -> Keys:
    """RSA 2048 takes a moment: once for the module; each test has its own emulator."""
    return Keys(new_key(), new_key(), new_key(), new_key())


class Channel:
    """One provider's emulator as these tests drive it: the site section pointing at it, the
    payer paying (its notifications sent, or lost, or forged), the answers it expects."""

    name: str
    method: str
    accepted: tuple[int, bytes]
    refused: int

    async def start(self, folder: Path) -> dict[str, Any]:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def pay(
        self, no: str, *, copies: int = 1, lost: bool = False, amount_fen: int | None = None
    ) -> list[tuple[int, bytes]]:
        """The payer pays; the notification is sent `copies` times at once (none when
        `lost`), claiming `amount_fen` when given."""
        raise NotImplementedError

    async def pay_forged(self, no: str) -> tuple[int, bytes]:
        raise NotImplementedError

    def closed_there(self, no: str) -> bool:
        raise NotImplementedError


class Wechat(Channel):
    name, method, accepted, refused = "wechat", "native", (204, b""), 500

    def __init__(self, keys: Keys) -> None:
        self.merchant = Merchant(key=keys.wechat_merchant)
        self.emu = WechatPayEmulator(
            self.merchant, platform_key=keys.wechat_platform, public_key=keys.wechat_public
        )

    async def start(self, folder: Path) -> dict[str, Any]:
        await self.emu.start()
        files = self.emu.write_keys(folder)
        (folder / "apiclient_key.pem").write_bytes(pem_private(self.merchant.key))
        (folder / "apiv3.key").write_bytes(self.merchant.apiv3_key + b"\n")
        return {
            "mchid": self.merchant.mchid,
            "appid": self.merchant.appid,
            "private_key_file": str(folder / "apiclient_key.pem"),
            "merchant_serial": self.merchant.serial,
            "apiv3_key_file": str(folder / "apiv3.key"),
            "public_key_file": str(files["public_key"]),
            "public_key_id": self.emu.public_key_id,
            "platform_certificates": {self.emu.platform_serial: str(files["certificate"])},
            "base_url": self.emu.base_url,
        }

    async def stop(self) -> None:
        await self.emu.stop()
        self.emu._runner = None  # stopped: a second stop is nothing

    async def pay(
        self, no: str, *, copies: int = 1, lost: bool = False, amount_fen: int | None = None
    ) -> list[tuple[int, bytes]]:
        self.emu.pay(no)
        return await self.emu.notify_paid(no, copies=copies, lost=lost, amount_fen=amount_fen)

    async def pay_forged(self, no: str) -> tuple[int, bytes]:
        order = self.emu.orders[no]
        note = self.emu.notification(self.emu.pay(no), tamper=True)  # signed, then altered
        return await self.emu.deliver(order["notify_url"], note)

    def closed_there(self, no: str) -> bool:
        return self.emu.orders[no]["trade_state"] == "CLOSED"


class Alipay(Channel):
    name, method, accepted, refused = "alipay", "qr", (200, b"success"), 400

    def __init__(self, keys: Keys) -> None:
        self.app_key = keys.alipay_app
        self.emu = AlipayEmulator(ALIPAY_APP_ID, ALIPAY_SELLER_ID, self.app_key.public_key())

    async def start(self, folder: Path) -> dict[str, Any]:
        await self.emu.start()
        (folder / "alipay_app_private.pem").write_bytes(alipay_private_pem(self.app_key))
        (folder / "alipay_public.pem").write_bytes(self.emu.public_key_pem)
        return {
            "app_id": ALIPAY_APP_ID,
            "seller_id": ALIPAY_SELLER_ID,
            "app_private_key_file": str(folder / "alipay_app_private.pem"),
            "alipay_public_key_file": str(folder / "alipay_public.pem"),
            "gateway": self.emu.gateway,
        }

    async def stop(self) -> None:
        await self.emu.stop()
        self.emu._runner = None  # stopped: a second stop is nothing

    async def pay(
        self, no: str, *, copies: int = 1, lost: bool = False, amount_fen: int | None = None
    ) -> list[tuple[int, bytes]]:
        sent = await self.emu.pay(no, copies=copies, lost=lost, amount_fen=amount_fen)
        return [(d.status, d.body.encode()) for d in sent]

    async def pay_forged(self, no: str) -> tuple[int, bytes]:
        (sent,) = await self.emu.pay(no, bad_signature=True)
        return sent.status, sent.body.encode()

    def closed_there(self, no: str) -> bool:
        return self.emu.trades[no].status == "TRADE_CLOSED"


@dataclass
class Site:
    r: Any
    channel: Channel
    url: str

    def balance(self) -> int:
        with self.r.db.read() as conn:
            return ledger.balances(conn, "A-101").energy_fen

    def order(self, no: str) -> Any:
        with self.r.db.read() as conn:
            return get_order(conn, no)

    def orders(self) -> list[Any]:
        with self.r.db.read() as conn:
            return list(list_orders(conn))

    def web(self) -> Any:
        return next(s for s in self.r.runtime.services if s.name == "web")

    async def start_payment(self, amount_fen: int = AMOUNT_FEN) -> str:
        order, prepared = await self.r.runtime.payments.start_payment(
            "A-101",
            amount_fen,
            self.channel.name,
            self.channel.method,
            actor="test:payer",
            description="Electricity A-101",
        )
        assert prepared.code_url  # the QR code's content, from the emulator
        assert self.order(order.out_trade_no).state is OrderState.CREATED
        return order.out_trade_no

    async def credited_once(self, no: str, amount_fen: int = AMOUNT_FEN) -> None:
        await until(lambda: self.order(no).state is OrderState.CREDITED)
        await until(lambda: not self.r.runtime.payments._credits)
        assert self.balance() == amount_fen


StartSite = Callable[..., Awaitable[Site]]


@pytest.fixture(params=["wechat", "alipay"])
async def start_site(
    request: pytest.FixtureRequest, db_url: str, running: Any, keys: Keys, tmp_path: Path
) -> AsyncIterator[StartSite]:
    """`await start_site(query_after_s=...)` → the runtime with the channel's provider
    pointed at its emulator, the web service, account A-101 open; on SQLite and PostgreSQL."""
    channel: Channel = Wechat(keys) if request.param == "wechat" else Alipay(keys)
    folder = tmp_path / channel.name
    folder.mkdir()
    section = await channel.start(folder)
    started: list[Site] = []

    async def start(query_after_s: float = 60, poll_s: float = 0.1, web: bool = True) -> Site:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        channel_section = dict(section)
        if channel.name == "wechat" and web:  # refunds are notified on the same route
            channel_section["refund_notify_url"] = f"{url}/pay/notify/wechat"
        payments = {
            **PAYMENTS,
            "query_after_s": query_after_s,
            "poll_s": poll_s,
            channel.name: channel_section,
        }
        sections: dict[str, Any] = {"payments": payments, "database": {"url": db_url}}
        if web:
            sections["web"] = {"bind": "127.0.0.1", "port": port, "public_base_url": url}
        r = await running(**sections)
        assert r.db.dialect == db_url.split(":")[0].split("+")[0]
        assert sorted(r.runtime.payments.providers) == [channel.name]
        r.open_account("A-101", ("E-101", "W-101"))
        site = Site(r, channel, url)
        assert not web or site.web().port == port
        started.append(site)
        return site

    yield start
    for site in started:
        with site.r.db.read() as conn:
            report = ledger.verify(conn)
        assert report.ok, report.breaks
    await channel.stop()


async def test_paid_at_the_emulator_is_credited_once_through_the_web_route(
    start_site: StartSite,
) -> None:
    site = await start_site()
    no = await site.start_payment()
    # The provider was given the notify URL built from [web] public_base_url.
    answers = await site.channel.pay(no)
    assert answers == [site.channel.accepted]
    await site.credited_once(no)
    order = site.order(no)
    assert order.transaction_id and order.notices == 1 and order.conflict is None
    assert site.web().counters.notify_accepted == 1


async def test_two_copies_within_a_second_credit_once(start_site: StartSite) -> None:
    site = await start_site()
    no = await site.start_payment()
    answers = await site.channel.pay(no, copies=2)
    assert answers == [site.channel.accepted] * 2
    await site.credited_once(no)
    assert site.order(no).notices == 2
    # And a late resend after the credit: answered, nothing changes.
    assert await site.channel.pay(no) == [site.channel.accepted]
    await site.credited_once(no)
    assert site.order(no).notices == 3


async def test_a_bad_signature_is_answered_the_failure_and_changes_nothing(
    start_site: StartSite,
) -> None:
    site = await start_site()
    no = await site.start_payment()
    status, _ = await site.channel.pay_forged(no)
    assert status == site.channel.refused
    order = site.order(no)
    assert order.state is OrderState.CREATED and order.notices == 0
    assert site.balance() == 0
    assert site.web().counters.notify_refused == 1


async def test_a_signed_notification_with_another_amount_is_a_conflict(
    start_site: StartSite,
) -> None:
    """Signed by the provider, but not our order's amount: stored for a person (the provider
    is answered, it need not resend), nothing credited."""
    site = await start_site()
    no = await site.start_payment()
    assert await site.channel.pay(no, amount_fen=1) == [site.channel.accepted]
    order = site.order(no)
    assert order.state is OrderState.CONFLICT and "amount" in (order.conflict or "")
    assert site.balance() == 0


async def test_a_lost_notification_is_found_by_the_active_query(start_site: StartSite) -> None:
    site = await start_site(query_after_s=1)
    no = await site.start_payment()
    assert await site.channel.pay(no, lost=True) == []
    await site.credited_once(no)
    assert site.r.runtime.payments.counters.queries >= 1
    assert site.web().counters.notify_accepted == 0


async def _past_expiry(site: Site) -> None:
    """Move the payment service's clock past every open order's expiry and sweep."""
    service = site.r.runtime.payments
    later = utcnow() + timedelta(minutes=PAYMENTS["order_minutes"] + 1)
    service.clock = lambda: later
    await service.sweep()


async def test_an_unpaid_order_is_closed_at_expiry_here_and_at_the_provider(
    start_site: StartSite,
) -> None:
    site = await start_site()
    no = await site.start_payment()
    await _past_expiry(site)
    assert site.order(no).state is OrderState.CLOSED and site.balance() == 0
    assert site.r.runtime.payments.counters.query_errors == 0
    assert site.channel.closed_there(no)


async def test_an_order_the_provider_never_saw_is_not_paid_and_closes(
    start_site: StartSite,
) -> None:
    """A crash between our order (committed) and the provider's: the provider does not know
    the order. Its query must answer NOTPAY (not an error, asked again every minute for
    ever) and the order close at expiry."""
    site = await start_site(query_after_s=1)
    order = await asyncio.to_thread(
        site.r.ops.open_payment,
        "A-101",
        AMOUNT_FEN,
        site.channel.name,
        site.channel.method,
        actor="test:payer",
    )
    no = order.out_trade_no
    service = site.r.runtime.payments
    await until(lambda: site.order(no).last_query_at is not None)
    assert site.order(no).state is OrderState.CREATED and service.counters.query_errors == 0
    await _past_expiry(site)
    assert site.order(no).state is OrderState.CLOSED and site.balance() == 0
    assert service.counters.query_errors == 0


async def test_an_unreachable_provider_closes_our_order_and_raises_its_error(
    start_site: StartSite,
) -> None:
    site = await start_site()
    await site.channel.stop()  # the provider's API is down
    with pytest.raises(PaymentProviderError):
        await site.start_payment()
    (order,) = site.orders()
    assert order.state is OrderState.CLOSED and site.balance() == 0


async def test_without_a_public_base_url_no_payment_is_opened(start_site: StartSite) -> None:
    """No [web] section: nothing could call back. Refused, naming the field, before any
    order is made here or at the provider."""
    site = await start_site(web=False)
    with pytest.raises(RequestError) as refused:
        await site.start_payment()
    assert refused.value.field == "web.public_base_url"
    assert site.orders() == []
