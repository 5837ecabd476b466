"""Start-up warnings about how providers reach us: each names the setting and the fix;
a proper public https address gives none."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from openprepay.core.payments.callbacks import callback_warnings

WECHAT = SimpleNamespace(channel="wechat", merchant_id="1900000109", app_id="wx8888")
ALIPAY = SimpleNamespace(channel="alipay", merchant_id="2088102177846880", app_id="2021000")


def web(url: str) -> dict[str, Any]:
    return {"bind": "127.0.0.1", "port": 8080, "public_base_url": url}


def test_a_public_https_address_gives_no_warning() -> None:
    assert callback_warnings(web("https://pay.example.com"), [WECHAT, ALIPAY]) == []
    assert callback_warnings(None, []) == []


@pytest.mark.parametrize(
    "url,expected",
    [
        ("http://pay.example.com", "is not https"),
        ("https://127.0.0.1:8443", "loopback address"),
        ("https://192.168.1.20", "private address"),
        ("https://localhost", "local name"),
        ("https://paybox", "not a public DNS name"),
        ("https://pay.example.com/?x=1", "query or fragment"),
        ("https://pay.example.com/" + "a" * 260, "more than WeChat Pay's 255"),
    ],
)
def test_an_address_the_providers_cannot_use_is_named(url: str, expected: str) -> None:
    warnings = callback_warnings(web(url), [WECHAT])
    assert any(expected in w and "public_base_url" in w for w in warnings), warnings


def test_missing_web_url_or_ids_and_web_without_providers() -> None:
    (no_web,) = callback_warnings(None, [WECHAT])
    assert "no [web] section" in no_web and "wechat" in no_web
    (no_url,) = callback_warnings({"bind": "127.0.0.1"}, [WECHAT])
    assert "public_base_url is not set" in no_url
    bare = SimpleNamespace(channel="wechat", merchant_id="", app_id="wx8888")
    (no_id,) = callback_warnings(web("https://pay.example.com"), [bare])
    assert "no merchant id" in no_id and "[payments.wechat]" in no_id
    (idle,) = callback_warnings(web("https://pay.example.com"), [])
    assert "no payment provider" in idle


async def test_the_service_logs_them_at_start(
    ops: Any, provider: Any, caplog: pytest.LogCaptureFixture
) -> None:
    from openprepay.core.payments.service import PaymentService

    service = PaymentService(ops, {"test": provider})
    with caplog.at_level("WARNING", logger="openprepay.payments"):
        await service.start()
        await service.stop()
    # The test site's public_base_url is https://pay.example.com: nothing to say.
    assert service.warnings == []
    assert not [r for r in caplog.records if r.getMessage().startswith("payments: ")]
