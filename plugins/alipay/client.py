"""Calls of Alipay's open API over aiohttp: one signed form POST to the gateway, one signed
JSON answer back.

A request carries the common parameters (app_id, method, format, charset, sign_type,
timestamp in Beijing time, version, notify_url when given, biz_content) and their RSA2
signature with the app private key. The answer's `<method>_response` object is believed
only when its exact text verifies with Alipay's public key; an `error_response` (a call
Alipay refused before reaching the business: bad signature, unknown app) is an error
whether signed or not, and never a result.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import aiohttp

from openprepay.core.contracts import PaymentProviderError

from .amounts import beijing_text
from .settings import AlipaySettings
from .signing import request_content, response_node, sign, verify

SUCCESS = "10000"


#: Sub-codes of a business refusal that are worth the same call later.
RETRYABLE = frozenset({"ACQ.SYSTEM_ERROR", "aop.ACQ.SYSTEM_ERROR", "ACQ.SELLER_BALANCE_NOT_ENOUGH"})


class AlipayError(PaymentProviderError):
    """Alipay answered a call with an error (or could not be reached, or its answer could
    not be believed). `code`/`sub_code` are Alipay's (e.g. 40004 / ACQ.TRADE_NOT_EXIST)."""

    def __init__(self, method: str, message: str, code: str = "", sub_code: str = "") -> None:
        self.method = method
        self.code = code
        self.sub_code = sub_code
        # A business refusal (40004) or bad parameters (40002) answer the same next time;
        # "service unavailable" (20000), the network and the "later" codes do not.
        self.final = code in ("40002", "40004") and sub_code not in RETRYABLE
        detail = f" ({code} {sub_code})".replace(" )", ")") if code else ""
        super().__init__(f"{method}: {message}{detail}")


class AlipayClient:
    def __init__(
        self, settings: AlipaySettings, clock: Callable[[], datetime] | None = None
    ) -> None:
        self.settings = settings
        self.clock = clock or (lambda: datetime.now(UTC))

    def signed_params(
        self, method: str, biz: Mapping[str, Any], notify_url: str | None = None
    ) -> dict[str, str]:
        s = self.settings
        params = {
            "app_id": s.app_id,
            "method": method,
            "format": "JSON",
            "charset": s.charset,
            "sign_type": s.sign_type,
            "timestamp": beijing_text(self.clock()),
            "version": "1.0",
            # Compact, non-ASCII kept as is: the text signed is the text sent.
            "biz_content": json.dumps(biz, ensure_ascii=False, separators=(",", ":")),
        }
        if notify_url:
            params["notify_url"] = notify_url
        params["sign"] = sign(s.app_private_key, request_content(params), s.charset)
        return params

    async def call(
        self, method: str, biz: Mapping[str, Any], notify_url: str | None = None
    ) -> dict[str, Any]:
        """The verified response object of a successful call (code 10000); an `AlipayError`
        with Alipay's code and sub_code otherwise."""
        params = self.signed_params(method, biz, notify_url)
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s)
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.post(
                    self.settings.gateway,
                    data=params,
                    headers={"Accept": "application/json"},
                ) as response,
            ):
                raw = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AlipayError(method, f"gateway unreachable: {exc!r}") from None
        if status != 200:
            raise AlipayError(method, f"gateway answered HTTP {status}")
        return self.believe(method, raw)

    def believe(self, method: str, raw: bytes) -> dict[str, Any]:
        """The response object of `raw`, its signature checked; errors raised."""
        try:
            text = raw.decode(self.settings.charset)
        except UnicodeDecodeError:
            raise AlipayError(method, "answer is not UTF-8") from None
        node = method.replace(".", "_") + "_response"
        found = response_node(text, node)
        if found is None:
            error = response_node(text, "error_response")
            if error is not None:
                body = json.loads(error[0])
                raise AlipayError(
                    method,
                    str(body.get("sub_msg") or body.get("msg") or "refused"),
                    str(body.get("code", "")),
                    str(body.get("sub_code", "")),
                )
            raise AlipayError(method, f"answer has no {node}: {text[:200]!r}")
        content, signature = found
        if not signature or not verify(
            self.settings.alipay_public_key, content, signature, self.settings.charset
        ):
            raise AlipayError(method, "the answer's signature does not verify with Alipay's key")
        body = json.loads(content)
        code = str(body.get("code", ""))
        if code != SUCCESS:
            raise AlipayError(
                method,
                str(body.get("sub_msg") or body.get("msg") or "failed"),
                code,
                str(body.get("sub_code", "")),
            )
        return body

    async def download(self, url: str) -> bytes:
        """A bill file (a short-lived URL from bill.downloadurl.query; no signature: the
        URL itself is the secret, and the rows are reconciled, not credited blindly)."""
        timeout = aiohttp.ClientTimeout(total=max(self.settings.timeout_s, 60.0))
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(url) as response,
            ):
                if response.status != 200:
                    raise AlipayError("bill download", f"HTTP {response.status}")
                return await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise AlipayError("bill download", f"unreachable: {exc!r}") from None
