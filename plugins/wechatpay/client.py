"""Signed calls to the WeChat Pay v3 API over aiohttp, with the answers' signatures checked.

Every request carries our `Authorization` (signed with the merchant key over method, path
and query as sent, timestamp, nonce and body). Every 2xx answer must carry WeChat's
signature over its raw body, made with a configured key and fresh within the notification
window; one that does not is an error, its content not believed. The bill download is the
exception WeChat makes: its answer is unsigned, and the SHA-1 from the signed bill answer
checks it instead (see `bill.py`).

A session per call: calls are rare (an order, a query a minute, a daily bill) and the
contract has no close, so nothing is left open between them.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from yarl import URL

from openprepay.core.contracts import NotificationRefused

from . import signing
from .errors import WechatPayError
from .notices import check_fresh
from .settings import WechatSettings

USER_AGENT = "OpenPrepay-wechatpay/1"


class ApiClient:
    def __init__(self, settings: WechatSettings) -> None:
        self.settings = settings

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """The JSON answer of a signed call (None for 204), or `WechatPayError`."""
        raw = b"" if body is None else json.dumps(body, ensure_ascii=False).encode()
        status, headers, answer = await self._send(method, self.settings.base_url + path, raw)
        if not 200 <= status < 300:
            raise _api_error(status, answer)
        self._check_signature(headers, answer)
        if status == 204 or not answer:
            return None
        try:
            return json.loads(answer)
        except ValueError:
            raise WechatPayError("ANSWER", "the answer is not JSON", status) from None

    async def download(self, url: str) -> bytes:
        """A signed GET of a download URL the API gave (the bill file); unsigned answer."""
        ours, theirs = urlsplit(self.settings.base_url), urlsplit(url)
        if (theirs.scheme, theirs.netloc) != (ours.scheme, ours.netloc):
            # Our Authorization goes only to the API's own host.
            raise WechatPayError("DOWNLOAD_URL", f"not on {self.settings.base_url}: {url[:120]}")
        status, _, answer = await self._send("GET", url, b"")
        if status != 200:
            raise _api_error(status, answer)
        return answer

    async def _send(self, method: str, url: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(url)
        signed_url = parts.path + (f"?{parts.query}" if parts.query else "")
        headers = {
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
            "Authorization": signing.authorization(
                self.settings.merchant_key,
                self.settings.mchid,
                self.settings.merchant_serial,
                method,
                signed_url,
                body,
                str(int(time.time())),
                signing.nonce_str(),
            ),
        }
        if body:
            headers["Content-Type"] = "application/json"
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                # encoded=True: the bytes sent are the bytes signed.
                session.request(
                    method, URL(url, encoded=True), data=body or None, headers=headers
                ) as response,
            ):
                answer = await response.read()
                return response.status, dict(response.headers), answer
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise WechatPayError("NETWORK", f"{method} {signed_url}: {exc!r}") from None

    def _check_signature(self, headers: dict[str, str], body: bytes) -> None:
        fields = {k.lower(): v for k, v in headers.items()}
        timestamp = fields.get("wechatpay-timestamp", "")
        nonce = fields.get("wechatpay-nonce", "")
        signature = fields.get("wechatpay-signature", "")
        serial = fields.get("wechatpay-serial", "")
        if not (timestamp and nonce and signature and serial):
            raise WechatPayError("RESPONSE_SIGNATURE", "the answer is not signed")
        try:
            check_fresh(timestamp, time.time(), self.settings.notify_window_s)
        except NotificationRefused as exc:
            raise WechatPayError("RESPONSE_SIGNATURE", exc.reason) from None
        key = signing.key_for(self.settings.verification_keys, serial)
        if key is None:
            raise WechatPayError(
                "RESPONSE_SIGNATURE", f"the answer is signed by an unknown key {serial[:80]!r}"
            )
        if not signing.check(key, signing.wechat_message(timestamp, nonce, body), signature):
            raise WechatPayError("RESPONSE_SIGNATURE", "the answer's signature does not verify")


def _api_error(status: int, answer: bytes) -> WechatPayError:
    """WeChat's error body is {"code": ..., "message": ...}; only used to say what failed."""
    try:
        data = json.loads(answer)
        code, message = str(data.get("code", "ERROR")), str(data.get("message", ""))
    except (ValueError, AttributeError):
        code, message = "ERROR", answer[:200].decode("utf-8", "replace")
    return WechatPayError(code[:64], message[:300], status)
