"""`[payments.alipay]`: every mistake names its field and the fix; the provider is offered
only to a site that configures the section."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from openprepay.core.app.plugins import Plugins
from openprepay.core.config.site import PollPolicy, Site, SiteInfo
from openprepay.core.errors import ConfigError, FieldError
from openprepay.plugins.alipay.settings import DEFAULT_GATEWAY, parse_alipay
from tests.plugins.alipay.conftest import APP_ID, SELLER_ID, section
from tests.plugins.alipay.emulator import new_key, public_pem


def errors_of(data: object, folder: Path) -> dict[str, str]:
    errors: list[FieldError] = []
    assert parse_alipay(data, errors, folder) is None
    return {e.path: e.message for e in errors}


def test_a_good_section_gives_settings_with_defaults(
    tmp_path: Path, app_key: rsa.RSAPrivateKey
) -> None:
    errors: list[FieldError] = []
    settings = parse_alipay(section(tmp_path, app_key, public_pem(new_key())), errors, tmp_path)
    assert errors == []
    assert settings is not None
    assert (settings.app_id, settings.seller_id) == (APP_ID, SELLER_ID)
    assert settings.gateway == DEFAULT_GATEWAY == "https://openapi.alipay.com/gateway.do"
    assert (settings.charset, settings.sign_type) == ("utf-8", "RSA2")


def test_every_bad_field_is_named(tmp_path: Path, app_key: rsa.RSAPrivateKey) -> None:
    data = section(
        tmp_path,
        app_key,
        public_pem(new_key()),
        app_id="12345",
        seller_id="1088102177846880",
        gateway="ftp://openapi.alipay.com/gateway.do",
        charset="gbk",
        sign_type="RSA",
        colour="blue",
    )
    data["app_private_key_file"] = "missing.pem"
    found = errors_of(data, tmp_path)
    assert set(found) == {
        "payments.alipay.app_id",
        "payments.alipay.seller_id",
        "payments.alipay.gateway",
        "payments.alipay.charset",
        "payments.alipay.sign_type",
        "payments.alipay.colour",
        "payments.alipay.app_private_key_file",
    }
    assert "16 digits" in found["payments.alipay.app_id"]
    assert "2088" in found["payments.alipay.seller_id"]
    assert "RSA2" in found["payments.alipay.sign_type"]
    assert "utf-8" in found["payments.alipay.charset"]
    assert "missing.pem" in found["payments.alipay.app_private_key_file"]


def test_required_fields_are_named(tmp_path: Path) -> None:
    found = errors_of({}, tmp_path)
    assert {
        "payments.alipay.app_id",
        "payments.alipay.seller_id",
        "payments.alipay.app_private_key_file",
        "payments.alipay.alipay_public_key_file",
    } <= set(found)
    assert all("required" in message for message in found.values())


def test_the_apps_own_public_key_in_place_of_alipays_is_refused(
    tmp_path: Path, app_key: rsa.RSAPrivateKey
) -> None:
    found = errors_of(section(tmp_path, app_key, public_pem(app_key)), tmp_path)
    assert list(found) == ["payments.alipay.alipay_public_key_file"]
    assert "Alipay's public key" in found["payments.alipay.alipay_public_key_file"]


def test_a_key_that_is_not_a_key_or_too_short_is_refused(
    tmp_path: Path, app_key: rsa.RSAPrivateKey
) -> None:
    data = section(tmp_path, app_key, b"not a key")
    found = errors_of(data, tmp_path)
    assert list(found) == ["payments.alipay.alipay_public_key_file"]
    short = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    (tmp_path / "alipay_public.pem").write_bytes(public_pem(short))
    found = errors_of(data, tmp_path)
    assert "2048" in found["payments.alipay.alipay_public_key_file"]


def test_keys_in_alipays_bare_base64_form_are_read(
    tmp_path: Path, app_key: rsa.RSAPrivateKey
) -> None:
    """Alipay's key tool shows keys as one base64 line, without BEGIN/END."""
    other = new_key()
    bare_public = b"".join(public_pem(other).splitlines()[1:-1])
    bare_private = b"".join(
        app_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,  # PKCS#1
            serialization.NoEncryption(),
        ).splitlines()[1:-1]
    )
    data = section(tmp_path, app_key, bare_public)
    (tmp_path / "alipay_app_private.pem").write_bytes(bare_private)
    errors: list[FieldError] = []
    settings = parse_alipay(data, errors, tmp_path)
    assert errors == [] and settings is not None
    assert settings.alipay_public_key.public_numbers() == other.public_key().public_numbers()


def test_plain_http_only_for_a_local_emulator(tmp_path: Path, app_key: rsa.RSAPrivateKey) -> None:
    data = section(tmp_path, app_key, public_pem(new_key()), gateway="http://example.com/gw")
    assert "https" in errors_of(data, tmp_path)["payments.alipay.gateway"]
    data["gateway"] = "http://127.0.0.1:8080/gateway.do"
    errors: list[FieldError] = []
    assert parse_alipay(data, errors, tmp_path) is not None and errors == []


def test_hooks_offer_alipay_only_when_configured(
    tmp_path: Path, app_key: rsa.RSAPrivateKey
) -> None:
    plugins = Plugins.load()
    assert "alipay" in plugins.infos
    info = SiteInfo("S", "Site", "Asia/Shanghai")
    bare = Site(info, PollPolicy(), {}, {}, {}, {}, {}, tmp_path / "site.toml")
    assert [p for p in plugins.payment_providers(bare) if p.channel == "alipay"] == []
    payments = {"alipay": section(tmp_path, app_key, public_pem(new_key()))}
    site = dataclasses.replace(bare, sections={"payments": payments})
    plugins.validate_site(site)  # no error
    (provider,) = [p for p in plugins.payment_providers(site) if p.channel == "alipay"]
    assert (provider.merchant_id, provider.app_id) == (SELLER_ID, APP_ID)
    broken = dataclasses.replace(bare, sections={"payments": {"alipay": {"app_id": "x"}}})
    with pytest.raises(ConfigError) as refused:
        plugins.validate_site(broken)
    assert "payments.alipay.app_id" in str(refused.value)
    assert "payments.alipay.seller_id" in str(refused.value)
    assert [p for p in plugins.payment_providers(broken) if p.channel == "alipay"] == []
