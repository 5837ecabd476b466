"""RSA2 as Alipay uses it: SHA256withRSA (PKCS#1 v1.5), base64, over a sorted `k=v&…` string
(requests and notifications) or over a response object's exact JSON text.

Written on `cryptography` rather than taken from python-alipay-sdk (see README.md).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa


def request_content(params: Mapping[str, str]) -> str:
    """What a request's `sign` covers: every parameter but `sign`, empty values dropped,
    sorted by name, joined `k=v&…` with the raw (not URL-encoded) values."""
    return "&".join(f"{k}={params[k]}" for k in sorted(params) if k != "sign" and params[k] != "")


def notification_content(params: Mapping[str, str]) -> str:
    """What a notification's `sign` covers: every parameter but `sign` and `sign_type`,
    sorted, joined `k=v&…` with the URL-decoded values (empty ones kept: Alipay signs what
    it sends)."""
    return "&".join(f"{k}={params[k]}" for k in sorted(params) if k not in ("sign", "sign_type"))


def sign(key: rsa.RSAPrivateKey, content: str, charset: str = "utf-8") -> str:
    signature = key.sign(content.encode(charset), padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(signature).decode("ascii")


def verify(key: rsa.RSAPublicKey, content: str, signature: str, charset: str = "utf-8") -> bool:
    try:
        raw = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return False
    try:
        key.verify(raw, content.encode(charset), padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def response_node(text: str, node: str) -> tuple[str, str | None] | None:
    """(the exact JSON text of the `node` object as sent, the top-level `sign`) from an API
    response, or None when the node is not there.

    The signature covers the object's bytes as Alipay wrote them, not a re-serialisation,
    so the text is cut out of the body: the object starts after `"node":` and ends where a
    JSON decoder stops reading it."""
    try:
        top = json.loads(text)
    except ValueError:
        return None
    if not isinstance(top, dict) or not isinstance(top.get(node), dict):
        return None
    decoder = json.JSONDecoder()
    key = json.dumps(node)
    at = 0
    # Find the top-level key: the first occurrence whose value decodes to the same object.
    while (at := text.find(key, at)) >= 0:
        colon = at + len(key)
        while colon < len(text) and text[colon] in " \t\r\n":
            colon += 1
        if colon < len(text) and text[colon] == ":":
            start = colon + 1
            while start < len(text) and text[start] in " \t\r\n":
                start += 1
            try:
                value, end = decoder.raw_decode(text, start)
            except ValueError:
                value, end = None, start
            if value == top[node]:
                signature = top.get("sign")
                return text[start:end], signature if isinstance(signature, str) else None
        at += len(key)
    return None
