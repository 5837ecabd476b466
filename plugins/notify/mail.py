"""Email notices over SMTP (`email:tenant@example.com` in an account's notify settings).

```toml
[notify.email]
host = "smtp.example.com"
port = 587
security = "starttls"                 # none | starttls | tls
username = "openprepay"               # optional; the password comes from the environment
password_env = "OPENPREPAY_SMTP_PASSWORD"
sender = "OpenPrepay <noreply@example.com>"
timeout_s = 10
```

The message is plain UTF-8 text: the notice's subject and body. Sending runs in a worker
thread (the standard library's `smtplib`), so a slow server never holds up the engine; a
failure raises and the dispatcher retries with back-off.
"""

from __future__ import annotations

import asyncio
import os
import smtplib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import make_msgid
from typing import Any

from openprepay.core.config.reader import TableReader
from openprepay.core.errors import FieldError

SECURITY = ("none", "starttls", "tls")


@dataclass(frozen=True, slots=True)
class EmailSettings:
    host: str
    port: int = 25
    security: str = "none"
    username: str | None = None
    password_env: str | None = None
    sender: str = "OpenPrepay <openprepay@localhost>"
    timeout_s: float = 10.0


def parse_email(data: Any, errors: list[FieldError]) -> EmailSettings | None:
    r = TableReader(data, "notify.email", errors)
    host = r.str("host")
    port = r.int("port", 25, low=1, high=65535)
    security = r.str("security", "none", choices=list(SECURITY))
    username = r.str("username", None)
    password_env = r.str("password_env", None)
    sender = r.str("sender", "OpenPrepay <openprepay@localhost>")
    timeout = r.number("timeout_s", 10.0, low=0.1, high=600)
    r.finish()
    if sender is not None and "@" not in sender:
        r.error(
            f"expected an address such as OpenPrepay <noreply@example.com>, got {sender!r}",
            "sender",
        )
    if username and not password_env:
        r.error("give the environment variable that holds the password", "password_env")
    if host is None or port is None or security is None or timeout is None or sender is None:
        return None
    return EmailSettings(host, port, security, username, password_env, sender, timeout)


class EmailNotifier:
    channel = "email"

    def __init__(self, settings: EmailSettings) -> None:
        self.settings = settings

    async def send(
        self, recipient: str, subject: str, body: str, data: Mapping[str, object]
    ) -> None:
        await asyncio.to_thread(self._send, recipient, subject, body)

    def _send(self, recipient: str, subject: str, body: str) -> None:
        s = self.settings
        message = EmailMessage()
        message["From"] = s.sender
        message["To"] = recipient
        message["Subject"] = subject
        message["Message-ID"] = make_msgid(domain="openprepay")
        message.set_content(body)
        if s.security == "tls":
            client: smtplib.SMTP = smtplib.SMTP_SSL(
                s.host, s.port, timeout=s.timeout_s, context=ssl.create_default_context()
            )
        else:
            client = smtplib.SMTP(s.host, s.port, timeout=s.timeout_s)
        with client:
            if s.security == "starttls":
                client.starttls(context=ssl.create_default_context())
            if s.username:
                password = os.environ.get(s.password_env or "", "")
                client.login(s.username, password)
            client.send_message(message)
