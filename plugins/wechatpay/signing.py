"""WeChat Pay v3 signatures: ours on requests and JSAPI parameters, theirs on responses and
notifications. All RSA-SHA256 with PKCS#1 v1.5, base64.

We sign `METHOD\\nURL\\nTIMESTAMP\\nNONCE\\nBODY\\n` (URL = path and query as sent) and name
our merchant certificate's serial in the Authorization header. WeChat signs
`TIMESTAMP\\nNONCE\\nBODY\\n` over the raw body bytes and names its key in `Wechatpay-Serial`:
a public key id (`PUB_KEY_ID_…`) or a platform certificate serial. Keys are only ever looked
up among the configured ones — never fetched — because the header is the sender's to choose.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import string
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey

SCHEMA = "WECHATPAY2-SHA256-RSA2048"
_NONCE_ALPHABET = string.ascii_uppercase + string.digits


def nonce_str(length: int = 32) -> str:
    return "".join(secrets.choice(_NONCE_ALPHABET) for _ in range(length))


def sign(key: RSAPrivateKey, message: bytes) -> str:
    return base64.b64encode(key.sign(message, padding.PKCS1v15(), hashes.SHA256())).decode()


def check(key: RSAPublicKey, message: bytes, signature: str) -> bool:
    try:
        raw = base64.b64decode(signature, validate=True)
        key.verify(raw, message, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, binascii.Error, ValueError):
        return False
    return True


def request_message(method: str, url: str, timestamp: str, nonce: str, body: bytes) -> bytes:
    """What our Authorization signs; `url` is the path with its query, as sent."""
    return f"{method}\n{url}\n{timestamp}\n{nonce}\n".encode() + body + b"\n"


def authorization(
    key: RSAPrivateKey,
    mchid: str,
    serial: str,
    method: str,
    url: str,
    body: bytes,
    timestamp: str,
    nonce: str,
) -> str:
    signature = sign(key, request_message(method, url, timestamp, nonce, body))
    return (
        f'{SCHEMA} mchid="{mchid}",nonce_str="{nonce}",signature="{signature}",'
        f'timestamp="{timestamp}",serial_no="{serial}"'
    )


def wechat_message(timestamp: str, nonce: str, body: bytes) -> bytes:
    """What WeChat's `Wechatpay-Signature` signs (responses and notifications)."""
    return f"{timestamp}\n{nonce}\n".encode() + body + b"\n"


def jsapi_message(appid: str, timestamp: str, nonce: str, package: str) -> bytes:
    """What `paySign` of the JSAPI parameters signs (WeixinJSBridge getBrandWCPayRequest)."""
    return f"{appid}\n{timestamp}\n{nonce}\n{package}\n".encode()


def key_for(keys: Mapping[str, RSAPublicKey], serial: str) -> RSAPublicKey | None:
    """The configured key named by a `Wechatpay-Serial` (certificate serials compare
    without regard to case), or None: the caller refuses, it never fetches."""
    return keys.get(serial) or keys.get(serial.upper())
