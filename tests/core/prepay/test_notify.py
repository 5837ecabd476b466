"""Notices delivered by email (a real SMTP server: aiosmtpd) and by signed webhook (a real
local HTTP server that checks the HMAC-SHA256 signature), retried when the receiver
fails, and the [notify] configuration validated field by field."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from aiosmtpd.controller import Controller

from openprepay.core.config.site import parse_site
from openprepay.core.errors import ConfigError
from openprepay.core.prepay.feecontrol import FeeThresholds
from openprepay.plugins.notify.mail import EmailNotifier, EmailSettings
from openprepay.plugins.notify.webhook import WebhookNotifier, WebhookSettings, verify
from tests.conftest import until

from .conftest import site_data

SECRET = "a-shared-secret-of-32-characters"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.content)))
        return "250 OK"


@pytest.fixture
def smtp() -> Iterator[tuple[int, Inbox]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    yield port, inbox
    controller.stop()


class Hooks:
    """What the webhook receiver got: only requests whose signature verified."""

    def __init__(self) -> None:
        self.accepted: list[dict[str, Any]] = []
        self.rejected = 0
        #: Answer 503 to this many requests first (a receiver that is down for a while).
        self.fail_first = 0


@pytest.fixture
def webhook() -> Iterator[tuple[str, Hooks]]:
    hooks = Hooks()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            if hooks.fail_first > 0:
                hooks.fail_first -= 1
                self.send_response(503)
                self.end_headers()
                return
            if not verify(SECRET.encode(), raw, self.headers.get("X-OpenPrepay-Signature", "")):
                hooks.rejected += 1
                self.send_response(401)
                self.end_headers()
                return
            hooks.accepted.append(json.loads(raw))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", hooks
    server.shutdown()
    server.server_close()


async def test_email_notifier_delivers_over_smtp(smtp) -> None:
    port, inbox = smtp
    notifier = EmailNotifier(EmailSettings("127.0.0.1", port, sender="OpenPrepay <op@test>"))
    await notifier.send("tenant@example.com", "Low balance", "Balance 18.00 CNY.", {})
    ((rcpt, message),) = inbox.messages
    assert rcpt == ["tenant@example.com"]
    assert message["Subject"] == "Low balance"
    assert "Balance 18.00 CNY." in message.get_payload()


async def test_webhook_is_signed_and_a_wrong_secret_is_refused(webhook) -> None:
    url, hooks = webhook
    await WebhookNotifier(WebhookSettings(SECRET.encode())).send(
        url, "s", "b", {"account": "A-101", "level": "ALARM1"}
    )
    assert hooks.accepted[0]["account"] == "A-101"
    assert hooks.accepted[0]["subject"] == "s"
    with pytest.raises(RuntimeError, match="401"):
        await WebhookNotifier(WebhookSettings(b"another-secret-of-some-length")).send(
            url, "s", "b", {}
        )
    assert hooks.rejected == 1


async def test_alarm_and_disconnection_notices_reach_email_and_webhook(
    running, smtp, webhook
) -> None:
    port, inbox = smtp
    url, hooks = webhook
    hooks.fail_first = 1  # the first delivery fails: retried with back-off, delivered once
    notify = {
        "retry_initial_s": 0.1,
        "retry_max_s": 0.5,
        "poll_s": 0.1,
        "email": {"host": "127.0.0.1", "port": port, "sender": "OpenPrepay <op@test>"},
        "webhook": {"secret": SECRET},
    }
    run = await running(speedup=3600, notify=notify)
    run.open_account(
        "A-101",
        ("E-101",),
        balance_fen=400,
        notify=("email:t@example.com", f"webhook:{url}"),
        thresholds=FeeThresholds(alarm1_fen=300, alarm2_fen=100),
    )
    # 4.00 → ALARM1 (≤ 3) → ALARM2 (≤ 1, disconnection notice) → OVERDRAFT (≤ 0).
    await until(lambda: any(h.get("level") == "OVERDRAFT" for h in hooks.accepted), 30)
    await until(lambda: any("OVERDRAFT" in m["Subject"] for _, m in inbox.messages), 30)
    levels = [h["level"] for h in hooks.accepted]
    assert levels[:3] == ["ALARM1", "ALARM2", "OVERDRAFT"]
    assert len(levels) == len(set(levels))  # each delivered once despite the retry
    notice = next(h for h in hooks.accepted if h["level"] == "ALARM2")
    assert notice["disconnection_notice"] is True
    assert notice["account"] == "A-101" and isinstance(notice["balance_fen"], int)
    subjects = [m["Subject"] for _, m in inbox.messages]
    assert any("ALARM1" in s for s in subjects)


def test_notify_section_is_validated_field_by_field(plugins) -> None:
    from openprepay.core.prepay.site_check import check_prepayment_sections

    site = parse_site(
        site_data(
            notify={
                "max_attempts": 0,
                "levels": ["ALARM9"],
                "email": {"host": "smtp", "port": 70000, "security": "ssl", "sender": "nobody"},
                "webhook": {"secret": "short"},
            }
        )
    )
    core = {str(e) for e in check_prepayment_sections(site)}
    assert any(e.startswith("notify.max_attempts") for e in core)
    assert any(e.startswith("notify.levels") and "ALARM9" in e for e in core)
    with pytest.raises(ConfigError) as raised:
        plugins.validate_site(site)
    text = str(raised.value)
    for field in (
        "notify.email.port",
        "notify.email.security",
        "notify.email.sender",
        "notify.webhook.secret",
    ):
        assert field in text
