"""Fixtures for the WeChat Pay plugin: a merchant, the emulator on loopback, the site
section that points the plugin at it, and a callback receiver.

Keys are generated once per module (RSA 2048 takes a moment); the emulator is per test.
`receiver` is the smallest stand-in for the web service's POST /pay/notify/wechat: it reads
the raw body, calls the provider's `verify` and answers with the provider's `answer` — the
plugin's own code, over real HTTP from the emulator.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from openprepay.core.app.plugins import Plugins
from openprepay.core.config.site import Site, parse_site
from openprepay.core.contracts import NotificationRefused, PaymentNotice, PaymentProvider
from tests.plugins.wechatpay.emulator import (
    Merchant,
    WechatPayEmulator,
    new_key,
    pem_private,
)

SITE_DATA: dict[str, Any] = {
    "site": {"id": "pay-site", "timezone": "Asia/Shanghai"},
    "links": {"gw1": {"type": "rtu_over_tcp", "host": "127.0.0.1", "port": 15999}},
}


@dataclasses.dataclass
class Keys:
    merchant: rsa.RSAPrivateKey
    platform: rsa.RSAPrivateKey
    public: rsa.RSAPrivateKey


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(new_key(), new_key(), new_key())


@pytest.fixture
def merchant(keys: Keys) -> Merchant:
    return Merchant(key=keys.merchant)


@pytest.fixture
async def emulator(merchant: Merchant, keys: Keys) -> AsyncIterator[WechatPayEmulator]:
    emu = WechatPayEmulator(merchant, platform_key=keys.platform, public_key=keys.public)
    await emu.start()
    yield emu
    await emu.stop()


def bare_site() -> Site:
    """A valid site; `[payments]` is added to its sections as the core will read it."""
    return parse_site(SITE_DATA)


def with_payments(site: Site, wechat: dict[str, Any], path: Path) -> Site:
    return dataclasses.replace(
        site, sections={**site.sections, "payments": {"wechat": wechat}}, path=path
    )


@pytest.fixture
def section(tmp_path: Path, merchant: Merchant, emulator: WechatPayEmulator) -> dict[str, Any]:
    """A complete `[payments.wechat]` with both key modes, files relative to the site."""
    folder = tmp_path / "wechat"
    files = emulator.write_keys(folder)
    (folder / "apiclient_key.pem").write_bytes(pem_private(merchant.key))
    (folder / "apiv3.key").write_bytes(merchant.apiv3_key + b"\n")
    return {
        "mchid": merchant.mchid,
        "appid": merchant.appid,
        "private_key_file": "wechat/apiclient_key.pem",
        "merchant_serial": merchant.serial,
        "apiv3_key_file": "wechat/apiv3.key",
        "public_key_file": "wechat/" + files["public_key"].name,
        "public_key_id": emulator.public_key_id,
        "platform_certificates": {emulator.platform_serial: "wechat/" + files["certificate"].name},
        "base_url": emulator.base_url,
    }


@pytest.fixture
def make_provider(tmp_path: Path) -> Callable[[dict[str, Any]], PaymentProvider]:
    """The provider the installed plugin returns for a site with this section."""

    def make(wechat: dict[str, Any]) -> PaymentProvider:
        site = with_payments(bare_site(), wechat, tmp_path / "site.toml")
        plugins = Plugins.load()
        assert "wechatpay" in plugins.infos, plugins.failures
        plugins.validate_site(site)
        providers = [p for p in plugins.payment_providers(site) if p.channel == "wechat"]
        assert len(providers) == 1
        return providers[0]

    return make


@pytest.fixture
def provider(
    section: dict[str, Any], make_provider: Callable[[dict[str, Any]], PaymentProvider]
) -> PaymentProvider:
    return make_provider(section)


@dataclasses.dataclass
class Receiver:
    url: str
    notices: list[PaymentNotice] = dataclasses.field(default_factory=list)
    refused: list[str] = dataclasses.field(default_factory=list)


@pytest.fixture
async def receiver(provider: PaymentProvider) -> AsyncIterator[Receiver]:
    async def notify(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            notice = provider.verify(request.headers, body, datetime.now(UTC))
        except NotificationRefused as refused:
            got.refused.append(refused.reason)
            answer = provider.answer(False)
        else:
            got.notices.append(notice)
            answer = provider.answer(True)
        return web.Response(
            status=answer.status,
            body=answer.body or None,
            headers={"Content-Type": answer.content_type} if answer.body else None,
        )

    app = web.Application()
    app.router.add_post("/pay/notify/wechat", notify)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    got = Receiver(f"http://127.0.0.1:{runner.addresses[0][1]}/pay/notify/wechat")
    yield got
    await runner.cleanup()
