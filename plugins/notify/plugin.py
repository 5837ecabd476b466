"""Hooks of the built-in notification plugin: email and webhook channels, configured in
the site file's `[notify.email]` and `[notify.webhook]` tables. SMS, app push and WeChat
are left to plugins that implement `openprepay_notifiers` the same way."""

from __future__ import annotations

from typing import Any

from openprepay.core.contracts import Notifier
from openprepay.core.errors import FieldError
from openprepay.core.hookspecs import hookimpl

from .mail import EmailNotifier, parse_email
from .webhook import WebhookNotifier, parse_webhook


def _tables(site: Any) -> dict[str, Any]:
    notify = site.sections.get("notify", {}) or {}
    return notify if isinstance(notify, dict) else {}


@hookimpl
def openprepay_validate_site(site: Any) -> list[FieldError]:
    errors: list[FieldError] = []
    tables = _tables(site)
    if "email" in tables:
        parse_email(tables["email"], errors)
    if "webhook" in tables:
        parse_webhook(tables["webhook"], errors)
    return errors


@hookimpl
def openprepay_notifiers(site: Any) -> list[Notifier]:
    tables = _tables(site)
    out: list[Notifier] = []
    errors: list[FieldError] = []
    if "email" in tables:
        settings = parse_email(tables["email"], errors)
        if settings is not None:
            out.append(EmailNotifier(settings))
    if "webhook" in tables:
        hook = parse_webhook(tables["webhook"], errors)
        if hook is not None:
            out.append(WebhookNotifier(hook))
    return out
