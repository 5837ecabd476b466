"""The `[payments.wechat]` section of a site file, read and checked field by field.

Key files are read here, once, so a wrong path or a key that is not what it claims to be
is a `FieldError` naming the field before anything starts. The APIv3 key (a shared secret
that decrypts every notification) comes from a file or an environment variable, never
from the site file itself, and never appears in a repr, a log line or an error message.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.serialization import load_pem_private_key, load_pem_public_key

from openprepay.core.config.reader import TableReader
from openprepay.core.errors import FieldError

SECTION = "payments.wechat"
DEFAULT_BASE_URL = "https://api.mch.weixin.qq.com"
DEFAULT_NOTIFY_WINDOW_S = 300
APIV3_KEY_BYTES = 32
#: WeChat's keys are RSA 2048; anything shorter is not a key WeChat issued.
MIN_RSA_BITS = 2048

MCHID = re.compile(r"^[0-9]{1,32}$")
APPID = re.compile(r"^[A-Za-z0-9_]{1,32}$")
#: A certificate serial as WeChat writes it: hex, upper or lower case.
SERIAL = re.compile(r"^[0-9A-Fa-f]{1,64}$")
PUBLIC_KEY_ID = re.compile(r"^PUB_KEY_ID_[0-9A-Za-z]{1,64}$")


@dataclass(frozen=True, slots=True)
class WechatSettings:
    mchid: str
    appid: str
    #: The merchant's API certificate serial (upper-case hex), named in our Authorization.
    merchant_serial: str
    merchant_key: RSAPrivateKey = field(repr=False)
    apiv3_key: bytes = field(repr=False)
    #: Keys that may sign what WeChat sends us, by the `Wechatpay-Serial` that names them:
    #: the public key's `PUB_KEY_ID_…` and/or platform certificate serials (upper-case hex).
    verification_keys: Mapping[str, RSAPublicKey] = field(repr=False)
    base_url: str = DEFAULT_BASE_URL
    notify_window_s: int = DEFAULT_NOTIFY_WINDOW_S
    timeout_s: float = 10.0
    #: Where WeChat sends refund notifications (the refund call carries it); None: none sent.
    refund_notify_url: str | None = None


def site_table(site: Any) -> Any | None:
    """The raw `[payments.wechat]` table, or None when the site has none."""
    payments = (getattr(site, "sections", None) or {}).get("payments")
    if not isinstance(payments, dict) or "wechat" not in payments:
        return None
    return payments["wechat"]


def parse_wechat(data: Any, base: Path, errors: list[FieldError]) -> WechatSettings | None:
    """The settings, or None with every problem appended to `errors`. Relative file paths
    are relative to `base` (the site file's folder)."""
    start = len(errors)
    r = TableReader(data, SECTION, errors)
    mchid = r.str("mchid", pattern=MCHID, hint="expected the merchant id (商户号), digits")
    appid = r.str("appid", pattern=APPID, hint="expected the app id bound to mchid (wx…)")
    key_file = r.str("private_key_file")
    serial = r.str(
        "merchant_serial",
        pattern=SERIAL,
        hint="expected the serial of the merchant API certificate (hex, 商户API证书序列号)",
    )
    apiv3 = _apiv3_key(r, base)
    public_key_file = r.str("public_key_file", None)
    public_key_id = r.str(
        "public_key_id",
        None,
        pattern=PUBLIC_KEY_ID,
        hint="expected the id shown with the WeChat Pay public key, PUB_KEY_ID_…",
    )
    certificates = r.table("platform_certificates")
    base_url = r.str("base_url", DEFAULT_BASE_URL)
    window = r.int("notify_window_s", DEFAULT_NOTIFY_WINDOW_S, low=10, high=3600)
    timeout = r.number("timeout_s", 10.0, low=0.5, high=120)
    refund_url = r.str("refund_notify_url", None)
    r.finish()

    merchant_key = _private_key(r, base, key_file) if key_file is not None else None
    keys: dict[str, RSAPublicKey] = {}
    if r.has("public_key_file") != r.has("public_key_id"):
        missing = "public_key_file" if r.has("public_key_id") else "public_key_id"
        r.error("public_key_file and public_key_id go together: give both or neither", missing)
    elif public_key_file is not None and public_key_id is not None:
        key = _public_key(r, base, public_key_file)
        if key is not None:
            keys[public_key_id] = key
    for cert_serial, cert_file in certificates.data.items():
        cert_key = _certificate(certificates, base, cert_serial, cert_file)
        if cert_key is not None:
            keys[cert_serial.upper()] = cert_key
    if not keys and len(errors) == start:
        r.error(
            "no key to verify WeChat Pay's signatures: give public_key_file + public_key_id "
            "(WeChat Pay public key) and/or [payments.wechat.platform_certificates] "
            '("<serial>" = "<file>")',
            "public_key_file",
        )
    if base_url is not None:
        base_url = _base_url(r, "base_url", base_url)
    if refund_url is not None:
        refund_url = _notify_url(r, "refund_notify_url", refund_url)
    if len(errors) > start:
        return None
    assert mchid and appid and serial and merchant_key and apiv3 and window and timeout
    assert base_url is not None
    return WechatSettings(
        mchid=mchid,
        appid=appid,
        merchant_serial=serial.upper(),
        merchant_key=merchant_key,
        apiv3_key=apiv3,
        verification_keys=keys,
        base_url=base_url,
        notify_window_s=window,
        timeout_s=timeout,
        refund_notify_url=refund_url,
    )


def _apiv3_key(r: TableReader, base: Path) -> bytes | None:
    key_file = r.str("apiv3_key_file", None)
    key_env = r.str("apiv3_key_env", None)
    if r.has("apiv3_key"):
        r.raw("apiv3_key")
        r.error(
            "the APIv3 key is not kept in the site file: put it in a file (apiv3_key_file) "
            "or an environment variable (apiv3_key_env)",
            "apiv3_key",
        )
        return None
    if (key_file is None) == (key_env is None):
        r.error("give exactly one of apiv3_key_file or apiv3_key_env", "apiv3_key_file")
        return None
    if key_file is not None:
        try:
            text = _resolve(base, key_file).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError) as exc:
            r.error(f"cannot read the APIv3 key file: {_why(exc)}", "apiv3_key_file")
            return None
        where = "apiv3_key_file"
    else:
        assert key_env is not None
        text = os.environ.get(key_env, "").strip()
        if not text:
            r.error(f"the environment variable {key_env} is not set", "apiv3_key_env")
            return None
        where = "apiv3_key_env"
    # Only the length and the charset are ever reported: the key itself is never shown.
    if not text.isascii():
        r.error("the APIv3 key must be ASCII letters and digits", where)
        return None
    value = text.encode("ascii")
    if len(value) != APIV3_KEY_BYTES:
        r.error(
            f"the APIv3 key must be {APIV3_KEY_BYTES} characters (商户平台 → API安全 → "
            f"APIv3密钥), got {len(value)}",
            where,
        )
        return None
    return value


def _resolve(base: Path, name: str) -> Path:
    path = Path(name).expanduser()
    return path if path.is_absolute() else base / path


def _why(exc: Exception) -> str:
    if isinstance(exc, FileNotFoundError):
        return f"no such file {exc.filename}"
    if isinstance(exc, PermissionError):
        return f"permission denied: {exc.filename}"
    if isinstance(exc, UnicodeDecodeError):
        return "not ASCII text"
    return str(exc)


def _read(r: TableReader, base: Path, key: str, name: str) -> bytes | None:
    try:
        return _resolve(base, name).read_bytes()
    except OSError as exc:
        r.error(f"cannot read {name}: {_why(exc)}", key)
        return None


def _private_key(r: TableReader, base: Path, name: str) -> RSAPrivateKey | None:
    pem = _read(r, base, "private_key_file", name)
    if pem is None:
        return None
    try:
        key = load_pem_private_key(pem, password=None)
    except (ValueError, TypeError):
        r.error(
            f"{name} is not an unencrypted PEM private key (apiclient_key.pem)", "private_key_file"
        )
        return None
    if not isinstance(key, RSAPrivateKey) or key.key_size < MIN_RSA_BITS:
        r.error(f"{name} is not an RSA key of at least {MIN_RSA_BITS} bits", "private_key_file")
        return None
    return key


def _public_key(r: TableReader, base: Path, name: str) -> RSAPublicKey | None:
    pem = _read(r, base, "public_key_file", name)
    if pem is None:
        return None
    try:
        key = load_pem_public_key(pem)
    except (ValueError, TypeError):
        r.error(f"{name} is not a PEM public key (pub_key.pem)", "public_key_file")
        return None
    if not isinstance(key, RSAPublicKey) or key.key_size < MIN_RSA_BITS:
        r.error(f"{name} is not an RSA key of at least {MIN_RSA_BITS} bits", "public_key_file")
        return None
    return key


def _certificate(r: TableReader, base: Path, serial: str, name: Any) -> RSAPublicKey | None:
    if not SERIAL.match(serial):
        r.error("expected a platform certificate serial (hex) as the key", serial)
        return None
    if not isinstance(name, str):
        r.error("expected the path of the certificate's PEM file", serial)
        return None
    pem = _read(r, base, serial, name)
    if pem is None:
        return None
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        r.error(f"{name} is not a PEM certificate (wechatpay_<serial>.pem)", serial)
        return None
    if cert.serial_number != int(serial, 16):
        r.error(
            f"{name} has serial {cert.serial_number:X}, not {serial.upper()}: "
            "name each certificate by its own serial",
            serial,
        )
        return None
    key = cert.public_key()
    if not isinstance(key, RSAPublicKey) or key.key_size < MIN_RSA_BITS:
        r.error(f"{name} does not hold an RSA key of at least {MIN_RSA_BITS} bits", serial)
        return None
    return key


def _loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _base_url(r: TableReader, key: str, value: str) -> str | None:
    parts = urlsplit(value)
    secure = parts.scheme == "https" or (parts.scheme == "http" and _loopback(parts.hostname))
    if not secure or not parts.hostname or parts.query or parts.path not in ("", "/"):
        r.error(
            f"expected https://host[:port] (http only on loopback, for a test emulator), "
            f"got {value!r}",
            key,
        )
        return None
    return value.rstrip("/")


def _notify_url(r: TableReader, key: str, value: str) -> str | None:
    parts = urlsplit(value)
    secure = parts.scheme == "https" or (parts.scheme == "http" and _loopback(parts.hostname))
    if not secure or not parts.hostname or parts.query or parts.fragment or len(value) > 255:
        r.error(
            f"expected an https URL of at most 255 characters without a query string, "
            f"got {value!r}",
            key,
        )
        return None
    return value
