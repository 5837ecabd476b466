"""Fixtures of the Alipay plugin's tests: key files, the emulator, the provider pointed at
it, and a receiver for its notifications.

`receiver` is the callback route as the web service runs it (raw body in, the provider's
`verify` then `answer` out) on a real aiohttp server on loopback; the notices it accepted
and the reasons it refused are kept for the test to look at.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from openprepay.core.contracts import NotificationRefused, PaymentNotice
from openprepay.core.errors import FieldError
from openprepay.plugins.alipay.provider import AlipayProvider
from openprepay.plugins.alipay.settings import AlipaySettings, parse_alipay
from tests.plugins.alipay.emulator import AlipayEmulator, new_key, private_pem, public_pem

APP_ID = "2021000123456789"
SELLER_ID = "2088102177846880"


@pytest.fixture(scope="session")
def app_key() -> rsa.RSAPrivateKey:
    return new_key()


@pytest.fixture
async def emulator(app_key: rsa.RSAPrivateKey) -> AsyncIterator[AlipayEmulator]:
    emu = AlipayEmulator(APP_ID, SELLER_ID, app_key.public_key())
    await emu.start()
    yield emu
    await emu.stop()


def section(folder: Path, app_key: rsa.RSAPrivateKey, alipay_pem: bytes, **extra: object) -> dict:
    """A `[payments.alipay]` table with its key files written to `folder`."""
    (folder / "alipay_app_private.pem").write_bytes(private_pem(app_key))
    (folder / "alipay_public.pem").write_bytes(alipay_pem)
    return {
        "app_id": APP_ID,
        "seller_id": SELLER_ID,
        "app_private_key_file": "alipay_app_private.pem",
        "alipay_public_key_file": "alipay_public.pem",
        **extra,
    }


@pytest.fixture
def settings(
    tmp_path: Path, app_key: rsa.RSAPrivateKey, emulator: AlipayEmulator
) -> AlipaySettings:
    errors: list[FieldError] = []
    data = section(tmp_path, app_key, emulator.public_key_pem, gateway=emulator.gateway)
    parsed = parse_alipay(data, errors, tmp_path)
    assert errors == [] and parsed is not None
    return parsed


@pytest.fixture
def provider(settings: AlipaySettings) -> AlipayProvider:
    return AlipayProvider(settings)


@dataclass
class Receiver:
    url: str
    notices: list[PaymentNotice] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


@pytest.fixture
async def receiver(provider: AlipayProvider) -> AsyncIterator[Receiver]:
    holder: list[Receiver] = []

    async def notify(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            notice = provider.verify(request.headers, body, datetime.now(UTC))
        except NotificationRefused as refused:
            holder[0].refused.append(refused.reason)
            answer = provider.answer(False)
        else:
            holder[0].notices.append(notice)
            answer = provider.answer(True)
        return web.Response(
            status=answer.status, body=answer.body, content_type=answer.content_type
        )

    app = web.Application()
    app.router.add_post("/pay/notify/alipay", notify)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    holder.append(Receiver(f"http://127.0.0.1:{port}/pay/notify/alipay"))
    yield holder[0]
    await runner.cleanup()


__all__ = ["APP_ID", "SELLER_ID", "public_pem", "section"]
