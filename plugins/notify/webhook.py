"""Webhook notices: an HTTP POST of the notice as JSON, signed with HMAC-SHA256.

An account's notify settings name the URL: `webhook:https://crm.example.com/openprepay`.

```toml
[notify.webhook]
secret_env = "OPENPREPAY_WEBHOOK_SECRET"   # or secret = "..." (keep site files private)
header = "X-OpenPrepay-Signature"          # the signature header
timeout_s = 5
```

The body is the UTF-8 JSON object `{"subject", "body", "recipient", "sent_at", ...}` plus
the notice's data (event, account, level, balance_fen...). The header carries
`sha256=<hex>`: HMAC-SHA256 of the exact body bytes with the shared secret. A receiver
recomputes it over the raw body and compares in constant time
(`hmac.compare_digest`) before trusting anything. Any status other than 2xx is a failure
(retried with back-off).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from openprepay.core.config.reader import TableReader
from openprepay.core.errors import FieldError

DEFAULT_HEADER = "X-OpenPrepay-Signature"


@dataclass(frozen=True, slots=True)
class WebhookSettings:
    secret: bytes
    header: str = DEFAULT_HEADER
    timeout_s: float = 5.0


def parse_webhook(data: Any, errors: list[FieldError]) -> WebhookSettings | None:
    r = TableReader(data, "notify.webhook", errors)
    secret = r.str("secret", None)
    secret_env = r.str("secret_env", None)
    header = r.str("header", DEFAULT_HEADER)
    timeout = r.number("timeout_s", 5.0, low=0.1, high=600)
    r.finish()
    if secret is not None and secret_env is not None:
        r.error("give secret or secret_env, not both", "secret")
        return None
    if secret is None and secret_env is None:
        r.error(
            "required: secret_env (the environment variable holding the signing secret) or secret",
            "secret_env",
        )
        return None
    if secret_env is not None:
        secret = os.environ.get(secret_env)
        if not secret:
            r.error(f"the environment variable {secret_env} is not set", "secret_env")
            return None
    if secret is not None and len(secret) < 16:
        r.error("the signing secret must be at least 16 characters", "secret")
        return None
    if header is not None and not header.replace("-", "").isalnum():
        r.error(f"expected an HTTP header name, got {header!r}", "header")
        return None
    if secret is None or header is None or timeout is None:
        return None
    return WebhookSettings(secret.encode(), header, timeout)


def sign(secret: bytes, body: bytes) -> str:
    """The signature header value for `body`: `sha256=<hex HMAC-SHA256>`."""
    return "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()


def verify(secret: bytes, body: bytes, header_value: str) -> bool:
    """What a receiver does: recompute over the raw body, compare in constant time."""
    return hmac.compare_digest(sign(secret, body), header_value or "")


class WebhookNotifier:
    channel = "webhook"

    def __init__(self, settings: WebhookSettings) -> None:
        self.settings = settings

    async def send(
        self, recipient: str, subject: str, body: str, data: Mapping[str, object]
    ) -> None:
        if not recipient.startswith(("http://", "https://")):
            raise ValueError(f"webhook recipient must be an http(s) URL, got {recipient!r}")
        payload = {
            **{k: v for k, v in data.items()},
            "subject": subject,
            "body": body,
            "recipient": recipient,
            "sent_at": datetime.now(UTC).isoformat(),
        }
        raw = json.dumps(payload, ensure_ascii=False, sort_keys=True, default=str).encode()
        await asyncio.to_thread(self._post, recipient, raw)

    def _post(self, url: str, raw: bytes) -> None:
        request = urllib.request.Request(
            url,
            data=raw,
            method="POST",
            headers={
                "Content-Type": "application/json; charset=utf-8",
                "User-Agent": "OpenPrepay-webhook/1",
                self.settings.header: sign(self.settings.secret, raw),
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=self.settings.timeout_s) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"{url} answered HTTP {exc.code}") from None
        if not 200 <= status < 300:
            raise RuntimeError(f"{url} answered HTTP {status}")
