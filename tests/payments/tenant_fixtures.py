"""The tenant page's site: the full runtime on simulated meters, the web service with a
tenant secret, WeChat Pay and Alipay pointed at their emulators, WeChat OAuth at its
emulator; accounts A-101 (E-101, W-101) and A-102 (E-102) open. Import the fixtures
(`keys`, `tenant`) into a test module."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from openprepay.core import ledger
from openprepay.core.events import utcnow
from openprepay.core.payments import get_order
from openprepay.plugins.web import room_links as rl
from tests.conftest import free_port

from .conftest import PAYMENTS
from .oauth_emulator import OAuthEmulator
from .test_providers_e2e import Alipay, Keys, Wechat
from .test_providers_e2e import keys as keys

OPENID = "oWx_tenant_0123456789abcdef"
APP_SECRET = "tenant-page-app-secret-0123456789"
SECRET = "tenant-secret-for-tests-0123456789abcdef"


@dataclass
class TenantSite:
    r: Any
    url: str
    wechat: Wechat
    alipay: Alipay
    oauth: OAuthEmulator

    @property
    def web(self) -> Any:
        return next(s for s in self.r.runtime.services if s.name == "web")

    def link(self, room: str) -> str:
        settings = self.web.settings.tenant
        token = rl.sign_room_link(settings, self.r.runtime.site.id, room, utcnow())
        return f"{self.url}/r/{token}"

    def balance(self, account: str = "A-101") -> int:
        with self.r.db.read() as conn:
            return ledger.balances(conn, account).energy_fen

    def order(self, no: str) -> Any:
        with self.r.db.read() as conn:
            return get_order(conn, no)


@pytest.fixture
async def start_tenant(
    running: Any, keys: Keys, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[TenantSite]]]:
    """`await start_tenant(speedup=..., balance_fen=...)` → the tenant site (once a test)."""
    started: list[TenantSite] = []

    async def start(speedup: float = 0.0, balance_fen: int = 0) -> TenantSite:
        wechat, alipay = Wechat(keys), Alipay(keys)
        (tmp_path / "wechat").mkdir()
        (tmp_path / "alipay").mkdir()
        wechat_section = await wechat.start(tmp_path / "wechat")
        alipay_section = await alipay.start(tmp_path / "alipay")
        oauth = OAuthEmulator(wechat.merchant.appid, APP_SECRET, OPENID)
        await oauth.start()
        (tmp_path / "app.secret").write_text(APP_SECRET + "\n")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        web = {
            "bind": "127.0.0.1",
            "port": port,
            "public_base_url": url,
            "tenant_secret": SECRET,
            "wechat_app_secret_file": str(tmp_path / "app.secret"),
            "wechat_oauth_url": oauth.base_url,
            "wechat_api_url": oauth.base_url,
        }
        payments = {**PAYMENTS, "poll_s": 0.1, "wechat": wechat_section, "alipay": alipay_section}
        r = await running(speedup=speedup, payments=payments, web=web)
        r.open_account("A-101", ("E-101", "W-101"), room="A-101", balance_fen=balance_fen)
        r.open_account("A-102", ("E-102",), room="A-102", balance_fen=777_00)
        site = TenantSite(r, url, wechat, alipay, oauth)
        started.append(site)
        return site

    yield start
    for site in started:
        with site.r.db.read() as conn:
            report = ledger.verify(conn)
        assert report.ok, report.breaks
        await site.oauth.stop()
        await site.wechat.stop()
        await site.alipay.stop()


@pytest.fixture
async def tenant(start_tenant: Callable[..., Awaitable[TenantSite]]) -> TenantSite:
    return await start_tenant()
