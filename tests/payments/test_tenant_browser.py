"""The tenant page in a real browser: Debian's Chromium driven by Playwright (async, on the
test's own event loop, beside the running service), with a phone-sized viewport.

Open a room's QR link → see the room (cut: it ran out) → choose an amount and WeChat Pay →
the Native QR code → the emulator's payer pays and the emulator notifies the service →
the page, following the order by itself, shows paid — credited — supply restored, and the
simulated meter's relay is closed again.

Robust under load: every wait is on the page's state or the meter's, with generous
limits, never a fixed sleep. Without Chromium the test is skipped with a message, except
in CI (`CI=true`). `OPENPREPAY_TENANT_SCREENSHOTS=docs/img` writes the documentation's
screenshots (`tenant-room-zh.png`, `tenant-room-en.png`, `tenant-order-qr.png`,
`tenant-restored.png`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from openprepay.core.payments.states import OrderState
from tests.conftest import until

from .tenant_fixtures import TenantSite
from .tenant_fixtures import keys as keys
from .tenant_fixtures import start_tenant as start_tenant

CHROMIUM = "/usr/bin/chromium"
EXECUTABLE = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
#: Generous: the machine may be shared by many test runs at once.
WAIT_MS = 180_000
PHONE = {"width": 390, "height": 844}


def _missing(message: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    executable = EXECUTABLE
    if executable is None:
        _missing("chromium is not installed (apt-get install chromium; ./dev.sh setup does)")
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[test]')")
    async with async_playwright() as p:
        chromium = await p.chromium.launch(executable_path=executable)
        try:
            yield chromium
        finally:
            await chromium.close()


def _shot(name: str) -> str | None:
    folder = os.environ.get("OPENPREPAY_TENANT_SCREENSHOTS")
    return str(Path(folder) / name) if folder else None


async def _screenshot(page: Any, name: str) -> None:
    path = _shot(name)
    if path is not None:
        await page.screenshot(path=path, full_page=True)


async def test_scan_pay_and_see_the_supply_restored(
    browser: Any, start_tenant: Callable[..., Awaitable[TenantSite]]
) -> None:
    # 1 kW at 3600× speed: the 1.50 yuan the room starts with run out within seconds.
    site = await start_tenant(speedup=3600, balance_fen=150)
    meter = site.r.sim("E-101")
    await until(lambda: meter.snapshot()["supply_on"] == 0, timeout=WAIT_MS / 1000)
    await until(
        lambda: site.r.ops.account_snapshot("A-101").meters[0].supply_on is False,
        timeout=WAIT_MS / 1000,
    )

    context = await browser.new_context(viewport=PHONE, device_scale_factor=2, is_mobile=True)
    context.set_default_timeout(WAIT_MS)
    page = await context.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        await page.goto(site.link("A-101"))
        await page.wait_for_selector("#balance")
        assert "剩余金额" in await page.inner_text("#balance")
        assert "A-101" in await page.inner_text("#balance")
        assert await page.inner_text("#supply") == "已断开"
        await _screenshot(page, "tenant-room-zh.png")
        await page.click("a.lang")
        await page.wait_for_selector("text=Balance")
        await _screenshot(page, "tenant-room-en.png")

        # A free amount that lasts while the test runs on a loaded machine (500 yuan at
        # 0.50 yuan a second of simulated load), then WeChat Pay: a Native QR in a browser.
        await page.fill("input[name=other]", "500")
        await page.click("button[value='wechat:native']")
        await page.wait_for_selector("#pay-qr svg")
        await _screenshot(page, "tenant-order-qr.png")
        no = page.url.split("/t/order/", 1)[1].split("?", 1)[0]
        assert site.order(no).state is OrderState.CREATED and site.order(no).amount_fen == 500_00

        # The payer pays; the emulator notifies the service's /pay/notify/wechat.
        await site.wechat.pay(no)
        # The page follows the order by itself (it reloads while the order is open).
        await page.wait_for_selector("#step-restored.done")
        text = await page.inner_text("#progress")
        assert "Paid" in text and "Credited" in text and "Supply restored" in text
        await _screenshot(page, "tenant-restored.png")
        assert site.order(no).state is OrderState.CREDITED
        assert meter.snapshot()["supply_on"] == 1  # the simulated relay is closed again
        assert errors == []  # no CSP violation, no script error
    finally:
        await context.close()
