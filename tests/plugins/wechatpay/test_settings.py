"""`[payments.wechat]`: every field checked with an error that names it, the provider only
for a site that configures it, the APIv3 key never shown."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from openprepay.core.app.plugins import Plugins
from openprepay.core.errors import ConfigError
from openprepay.plugins.wechatpay import plugin
from tests.plugins.wechatpay.conftest import bare_site, with_payments
from tests.plugins.wechatpay.emulator import Merchant, WechatPayEmulator, pem_public


def errors(section: dict[str, Any], tmp_path: Path) -> list[str]:
    site = with_payments(bare_site(), section, tmp_path / "site.toml")
    return [str(e) for e in plugin.openprepay_validate_site(site)]


def test_a_site_without_the_section_has_no_provider_and_no_error() -> None:
    plugins = Plugins.load()
    site = bare_site()
    plugins.validate_site(site)
    assert [p for p in plugins.payment_providers(site) if p.channel == "wechat"] == []
    alipay_only = dataclasses.replace(site, sections={"payments": {"alipay": {}}})
    assert plugin.openprepay_payment_providers(alipay_only) == []
    assert plugin.openprepay_validate_site(alipay_only) == []


def test_the_complete_section_is_valid(section: dict[str, Any], tmp_path: Path) -> None:
    assert errors(section, tmp_path) == []


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"mchid": None}, "payments.wechat.mchid: missing (required)"),
        ({"mchid": "19000x"}, "payments.wechat.mchid: expected the merchant id"),
        ({"appid": "wx 12"}, "payments.wechat.appid: expected the app id"),
        ({"merchant_serial": "not-hex"}, "payments.wechat.merchant_serial: expected the serial"),
        ({"private_key_file": "wechat/none.pem"}, "payments.wechat.private_key_file: cannot read"),
        (
            {"private_key_file": "wechat/apiv3.key"},
            "payments.wechat.private_key_file: wechat/apiv3.key is not",
        ),
        (
            {"public_key_file": None},
            "payments.wechat.public_key_file: public_key_file and public_key_id go together",
        ),
        (
            {"public_key_id": None},
            "payments.wechat.public_key_id: public_key_file and public_key_id go together",
        ),
        ({"public_key_id": "KEY_1"}, "payments.wechat.public_key_id: expected the id shown"),
        (
            {"base_url": "http://api.mch.weixin.qq.com"},
            "payments.wechat.base_url: expected https://",
        ),
        (
            {"base_url": "https://api.mch.weixin.qq.com/v3"},
            "payments.wechat.base_url: expected https://",
        ),
        ({"notify_window_s": 0}, "payments.wechat.notify_window_s: expected 10..3600"),
        (
            {"refund_notify_url": "https://x.example/n?a=1"},
            "payments.wechat.refund_notify_url: expected",
        ),
        ({"apiv3_key_file": None}, "payments.wechat.apiv3_key_file: give exactly one of"),
        ({"apiv3_key_env": "X"}, "payments.wechat.apiv3_key_file: give exactly one of"),
        (
            {"apiv3_key": "0123456789abcdefABCDEF0123456789"},
            "payments.wechat.apiv3_key: the APIv3 key is not kept in the site file",
        ),
        ({"colour": "green"}, "payments.wechat.colour: unknown key"),
    ],
)
def test_each_bad_field_is_named(
    section: dict[str, Any], tmp_path: Path, change: dict[str, Any], expected: str
) -> None:
    bad = {k: v for k, v in {**section, **change}.items() if v is not None}
    found = errors(bad, tmp_path)
    assert any(e.startswith(expected) for e in found), found


def test_no_verification_key_at_all_is_an_error(section: dict[str, Any], tmp_path: Path) -> None:
    bare = {
        k: v
        for k, v in section.items()
        if k not in ("public_key_file", "public_key_id", "platform_certificates")
    }
    [error] = errors(bare, tmp_path)
    assert error.startswith(
        "payments.wechat.public_key_file: no key to verify WeChat Pay's signatures"
    )


def test_a_certificate_filed_under_another_serial_is_an_error(
    section: dict[str, Any], tmp_path: Path, emulator: WechatPayEmulator
) -> None:
    [(serial, name)] = section["platform_certificates"].items()
    wrong = {**section, "platform_certificates": {"ABCDEF0123": name}}
    [error] = errors(wrong, tmp_path)
    assert error.startswith("payments.wechat.platform_certificates.ABCDEF0123: ")
    assert f"has serial {serial}" in error
    not_a_cert = {**section, "platform_certificates": {serial: section["public_key_file"]}}
    [error] = errors(not_a_cert, tmp_path)
    assert error.startswith(f"payments.wechat.platform_certificates.{serial}: ")
    assert "not a PEM certificate" in error


def test_a_short_rsa_key_is_refused(section: dict[str, Any], tmp_path: Path) -> None:
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    (tmp_path / "wechat" / "small.pem").write_bytes(pem_public(small.public_key()))
    [error] = errors({**section, "public_key_file": "wechat/small.pem"}, tmp_path)
    assert error.startswith("payments.wechat.public_key_file: wechat/small.pem is not an RSA key")
    assert error.endswith("of at least 2048 bits")


def test_the_apiv3_key_from_the_environment(
    section: dict[str, Any], tmp_path: Path, merchant: Merchant, monkeypatch: pytest.MonkeyPatch
) -> None:
    from_env = {k: v for k, v in section.items() if k != "apiv3_key_file"}
    from_env["apiv3_key_env"] = "TEST_WECHAT_APIV3"
    monkeypatch.delenv("TEST_WECHAT_APIV3", raising=False)
    assert errors(from_env, tmp_path) == [
        "payments.wechat.apiv3_key_env: the environment variable TEST_WECHAT_APIV3 is not set"
    ]
    monkeypatch.setenv("TEST_WECHAT_APIV3", merchant.apiv3_key.decode())
    assert errors(from_env, tmp_path) == []


def test_the_apiv3_key_is_never_shown(
    section: dict[str, Any], tmp_path: Path, merchant: Merchant, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "S3cr3t-APIv3-key-that-is-too-long-by-far"
    (tmp_path / "wechat" / "long.key").write_text(secret)
    [error] = errors({**section, "apiv3_key_file": "wechat/long.key"}, tmp_path)
    assert error == (
        "payments.wechat.apiv3_key_file: the APIv3 key must be 32 characters "
        "(商户平台 → API安全 → APIv3密钥), got 40"
    )
    (tmp_path / "wechat" / "wide.key").write_text("０" * 32, encoding="utf-8")
    [error] = errors({**section, "apiv3_key_file": "wechat/wide.key"}, tmp_path)
    assert error.startswith("payments.wechat.apiv3_key_file: cannot read the APIv3 key file")
    monkeypatch.setenv("TEST_WIDE_KEY", "０" * 32)
    from_env = {k: v for k, v in section.items() if k != "apiv3_key_file"}
    [error] = errors({**from_env, "apiv3_key_env": "TEST_WIDE_KEY"}, tmp_path)
    assert error == "payments.wechat.apiv3_key_env: the APIv3 key must be ASCII letters and digits"
    site = with_payments(bare_site(), section, tmp_path / "site.toml")
    [provider] = plugin.openprepay_payment_providers(site)
    shown = repr(provider) + repr(provider.settings)  # type: ignore[attr-defined]
    assert merchant.apiv3_key.decode() not in shown and "PRIVATE" not in shown


def test_the_runtime_check_raises_every_problem_at_once(
    section: dict[str, Any], tmp_path: Path
) -> None:
    bad = {**section, "mchid": "x", "appid": "", "notify_window_s": 99999}
    site = with_payments(bare_site(), bad, tmp_path / "site.toml")
    with pytest.raises(ConfigError) as caught:
        Plugins.load().validate_site(site)
    paths = {e.path for e in caught.value.errors}
    assert {
        "payments.wechat.mchid",
        "payments.wechat.appid",
        "payments.wechat.notify_window_s",
    } <= paths
