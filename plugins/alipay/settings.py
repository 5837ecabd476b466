"""The `[payments.alipay]` section: read, checked field by field, keys loaded.

Every problem is a `FieldError` naming `payments.alipay.<key>` and what was expected, so
`openprepay check` shows all of them at once; nothing is built from a section with errors.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from openprepay.core.config.reader import TableReader
from openprepay.core.errors import FieldError

SECTION = "payments.alipay"
DEFAULT_GATEWAY = "https://openapi.alipay.com/gateway.do"
#: Alipay app ids are 16 digits; a PID (the seller's partner id) is 16 digits starting 2088.
APP_ID = re.compile(r"^\d{16}$")
SELLER_ID = re.compile(r"^2088\d{12}$")
#: RSA keys shorter than this are refused: Alipay's RSA2 uses 2048-bit keys.
MIN_KEY_BITS = 2048


@dataclass(frozen=True, slots=True)
class AlipaySettings:
    app_id: str
    seller_id: str
    app_private_key: rsa.RSAPrivateKey
    alipay_public_key: rsa.RSAPublicKey
    gateway: str = DEFAULT_GATEWAY
    charset: str = "utf-8"
    sign_type: str = "RSA2"
    timeout_s: float = 10.0
    #: Notifications whose notify_time is further in the future than this are refused.
    clock_skew_s: float = 600.0
    #: ... and older than this (Alipay's own resends end after about 25 h).
    notify_max_age_s: float = 48 * 3600.0


def alipay_table(site: Any) -> Any | None:
    """The raw `[payments.alipay]` table, or None when the site has no such section."""
    payments = (getattr(site, "sections", None) or {}).get("payments")
    if not isinstance(payments, dict) or "alipay" not in payments:
        return None
    return payments["alipay"]


def parse_alipay(data: Any, errors: list[FieldError], base: Path | None) -> AlipaySettings | None:
    """The section as settings, or None with every problem appended to `errors`."""
    r = TableReader(data, SECTION, errors)
    app_id = r.str("app_id", pattern=APP_ID, hint="expected the app's APPID (16 digits)")
    seller_id = r.str(
        "seller_id",
        pattern=SELLER_ID,
        hint="expected the merchant's PID (16 digits starting 2088, 账户中心 → 合作伙伴身份)",
    )
    private_file = r.str("app_private_key_file")
    public_file = r.str("alipay_public_key_file")
    gateway = r.str("gateway", DEFAULT_GATEWAY)
    charset = r.str("charset", "utf-8", choices=("utf-8",))
    sign_type = r.str("sign_type", "RSA2", choices=("RSA2",))
    timeout_s = r.number("timeout_s", 10.0, low=0.5, high=120)
    r.finish()
    if gateway is not None:
        parts = urlsplit(gateway)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            r.error(f"expected an https:// URL of the gateway, got {gateway!r}", "gateway")
            gateway = None
        elif parts.scheme == "http" and parts.hostname not in ("127.0.0.1", "localhost", "::1"):
            r.error("plain http is only for a local emulator; use https://", "gateway")
            gateway = None
    private_key = _load(r, "app_private_key_file", private_file, base, private=True)
    public_key = _load(r, "alipay_public_key_file", public_file, base, private=False)
    if None in (app_id, seller_id, private_key, public_key, gateway, charset, sign_type, timeout_s):
        return None
    assert isinstance(private_key, rsa.RSAPrivateKey)
    assert isinstance(public_key, rsa.RSAPublicKey)
    if public_key.public_numbers() == private_key.public_key().public_numbers():
        # The commonest mistake: the app's own public key where Alipay's belongs.
        r.error(
            "this is the app's own public key; give Alipay's public key (支付宝公钥)",
            "alipay_public_key_file",
        )
        return None
    return AlipaySettings(
        app_id, seller_id, private_key, public_key, gateway, charset, sign_type, timeout_s
    )


def _load(
    r: TableReader, key: str, name: str | None, base: Path | None, *, private: bool
) -> rsa.RSAPrivateKey | rsa.RSAPublicKey | None:
    """An RSA key from a PEM file, or Alipay's bare base64 form (what its key tool shows:
    the PEM body without the BEGIN/END lines)."""
    if name is None:
        return None
    path = Path(name)
    if not path.is_absolute() and base is not None:
        path = base / path
    try:
        raw = path.read_bytes()
    except OSError as exc:
        r.error(f"cannot read {path}: {exc.strerror or exc}", key)
        return None
    text = raw.strip()
    what = "the app private key (PKCS#8 or PKCS#1 PEM)" if private else "Alipay's public key"
    try:
        key_obj: Any
        if b"-----BEGIN" in text:
            key_obj = (
                serialization.load_pem_private_key(text, password=None)
                if private
                else serialization.load_pem_public_key(text)
            )
        else:
            der = base64.b64decode(b"".join(text.split()), validate=True)
            key_obj = (
                serialization.load_der_private_key(der, password=None)
                if private
                else serialization.load_der_public_key(der)
            )
    except (ValueError, TypeError, binascii.Error) as exc:
        hint = "" if private else " (支付宝公钥, not the app public key)"
        r.error(f"{path} is not {what}{hint}: {exc}", key)
        return None
    expected = rsa.RSAPrivateKey if private else rsa.RSAPublicKey
    if not isinstance(key_obj, expected):
        r.error(f"{path}: expected an RSA key for RSA2, got {type(key_obj).__name__}", key)
        return None
    if key_obj.key_size < MIN_KEY_BITS:
        r.error(f"{path}: a {key_obj.key_size}-bit key; RSA2 needs {MIN_KEY_BITS} bits", key)
        return None
    return key_obj
