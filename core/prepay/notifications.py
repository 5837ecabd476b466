"""Notices to tenants and operators: a durable outbox and its delivery.

A notice (alarm level reached, disconnection notice, supply cut or restored) is written to
the `notification` table **in the transaction that caused it**, one row per channel the
account's settings name (`account.notify`: `email:a@example.com`, `webhook:https://...`,
`sms:+86...`). The running service's `NotificationDispatcher` delivers due rows through the
notifier plugins (`openprepay_notifiers` hook; the built-in `plugins/notify` provides email
over SMTP and signed webhooks), each send a task of its own so a slow mail server never
holds up metering; failures are retried with back-off and end FAILED (with a
`NotificationFailed` event) after `max_attempts`. A channel no notifier provides (SMS, app
push, WeChat until a plugin adds them) is kept PENDING and retried: installing the plugin
delivers the backlog.

`[notify]` in the site file (the channel sub-tables belong to the plugins)::

    [notify]
    enabled = true               # false: notices are recorded, never sent
    retry_initial_s = 30         # back-off after a failed send, doubled per attempt ...
    retry_max_s = 3600           # ... up to this
    max_attempts = 10            # then FAILED, with a NotificationFailed event
    poll_s = 1.0                 # how often the outbox is read
    levels = ["ALARM1", "ALARM2", "OVER_ZERO", "OVERDRAFT", "NORMAL"]   # which states notify
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..config.reader import TableReader
from ..contracts import Notifier
from ..db import schema as t
from ..errors import ConfigError, FieldError
from ..events import NotificationFailed, utcnow
from ..tasks import wait_event

log = logging.getLogger("openprepay.notify")

LEVELS = ("NORMAL", "ALARM1", "ALARM2", "OVER_ZERO", "OVERDRAFT")
#: Keys of [notify] read here; sub-tables ([notify.email], [notify.webhook]...) are the
#: notifier plugins'.
KEYS = ("enabled", "retry_initial_s", "retry_max_s", "max_attempts", "poll_s", "levels")


@dataclass(frozen=True, slots=True)
class NotifySettings:
    enabled: bool = True
    retry_initial_s: float = 30.0
    retry_max_s: float = 3600.0
    max_attempts: int = 10
    poll_s: float = 1.0
    levels: frozenset[str] = field(default_factory=lambda: frozenset(LEVELS))

    def retry_delay(self, attempts: int) -> timedelta:
        return timedelta(
            seconds=min(self.retry_max_s, self.retry_initial_s * 2 ** max(0, attempts - 1))
        )


def parse_notify(data: Any, errors: list[FieldError]) -> NotifySettings:
    raw = dict(data or {})
    # Channel tables belong to the notifier plugins (they validate them).
    channels = {k for k, v in raw.items() if isinstance(v, dict)}
    r = TableReader({k: v for k, v in raw.items() if k not in channels}, "notify", errors)
    d = NotifySettings()
    enabled = r.bool("enabled", d.enabled)
    initial = r.number("retry_initial_s", d.retry_initial_s, low=0.01, high=86400)
    maximum = r.number("retry_max_s", d.retry_max_s, low=0.01, high=7 * 86400)
    attempts = r.int("max_attempts", d.max_attempts, low=1, high=1000)
    poll = r.number("poll_s", d.poll_s, low=0.05, high=3600)
    levels = r.str_list("levels", sorted(d.levels))
    r.finish()
    for level in levels or ():
        if level not in LEVELS:
            r.error(f"unknown level {level!r} (levels: {', '.join(LEVELS)})", "levels")
    if initial is not None and maximum is not None and maximum < initial:
        r.error(f"must be at least retry_initial_s ({initial})", "retry_max_s")
    return NotifySettings(
        enabled if enabled is not None else d.enabled,
        initial if initial is not None else d.retry_initial_s,
        maximum if maximum is not None else d.retry_max_s,
        attempts if attempts is not None else d.max_attempts,
        poll if poll is not None else d.poll_s,
        frozenset(levels) if levels is not None else d.levels,
    )


def check_notify(site: Any) -> list[FieldError]:
    errors: list[FieldError] = []
    parse_notify(site.sections.get("notify", {}), errors)
    return errors


def load_notify(site: Any) -> NotifySettings:
    errors: list[FieldError] = []
    settings = parse_notify(site.sections.get("notify", {}), errors)
    if errors:
        raise ConfigError(str(site.path or "site"), errors)
    return settings


# -- the outbox -------------------------------------------------------------------------------


def enqueue_notice(
    conn: Connection,
    account_id: str | None,
    channels: Iterable[str],
    *,
    kind: str,
    subject: str,
    body: str,
    data: Mapping[str, Any],
    key: str,
    now: datetime | None = None,
) -> int:
    """Queue one notice per `channel:recipient` (the account's settings), in the caller's
    transaction. `key` makes it idempotent per channel. Returns how many rows were queued."""
    now = now or utcnow()
    queued = 0
    for entry in channels:
        channel, _, recipient = str(entry).partition(":")
        if not channel or not recipient:
            continue
        row_key = f"{key}:{channel}:{recipient}"[:200]
        exists = conn.execute(
            sa.select(t.notification.c.id).where(t.notification.c.idempotency_key == row_key)
        ).first()
        if exists is not None:
            continue
        conn.execute(
            t.notification.insert(),
            {
                "account_id": account_id,
                "channel": channel[:32],
                "recipient": recipient[:200],
                "subject": subject[:200],
                "body": body[:4000],
                "data": {"kind": kind, **dict(data)},
                "state": "PENDING",
                "attempts": 0,
                "next_attempt_at": now,
                "idempotency_key": row_key,
                "created_at": now,
            },
        )
        queued += 1
    return queued


@dataclass(frozen=True, slots=True)
class Notice:
    id: int
    account_id: str | None
    channel: str
    recipient: str
    subject: str
    body: str
    data: Mapping[str, Any]
    attempts: int


#: While a notice is being sent, other dispatchers leave it alone this long.
LEASE_S = 120.0


def claim_notices(
    conn: Connection, channels: Sequence[str], limit: int, now: datetime
) -> list[Notice]:
    """Claim due PENDING notices of `channels` (the lease pushes `next_attempt_at`)."""
    if not channels:
        return []
    n = t.notification
    ids = list(
        conn.execute(
            sa.select(n.c.id)
            .where(
                n.c.state == "PENDING",
                n.c.next_attempt_at <= now,
                n.c.channel.in_(list(channels)),
            )
            .order_by(n.c.next_attempt_at, n.c.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).scalars()
    )
    if not ids:
        return []
    conn.execute(
        n.update()
        .where(n.c.id.in_(ids))
        .values(attempts=n.c.attempts + 1, next_attempt_at=now + timedelta(seconds=LEASE_S))
    )
    rows = conn.execute(sa.select(n).where(n.c.id.in_(ids)).order_by(n.c.id)).all()
    return [
        Notice(
            r.id,
            r.account_id,
            r.channel,
            r.recipient,
            r.subject,
            r.body,
            dict(r.data or {}),
            int(r.attempts),
        )
        for r in rows
    ]


def notice_states(conn: Connection, account_id: str | None = None) -> list[dict[str, Any]]:
    """Notices (newest first) with their state, for tests and `account show`."""
    n = t.notification
    q = sa.select(n).order_by(n.c.id.desc())
    if account_id is not None:
        q = q.where(n.c.account_id == account_id)
    return [dict(r._mapping) for r in conn.execute(q).all()]


class NotificationDispatcher:
    """Delivers the outbox through the notifiers; one task per send, never blocking."""

    name = "notifications"

    def __init__(
        self,
        db: Any,
        notifiers: Sequence[Notifier],
        settings: NotifySettings,
        publish: Callable[[object], None],
        *,
        concurrency: int = 8,
    ) -> None:
        self.db = db
        self.notifiers: dict[str, Notifier] = {}
        for notifier in notifiers:
            self.notifiers.setdefault(notifier.channel, notifier)
        self.settings = settings
        self.publish = publish
        self._concurrency = concurrency
        self._task: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self.sent = 0
        self.failed = 0
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self.settings.enabled and self.notifiers:
            self._task = asyncio.create_task(self._run(), name="notifications")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._sending:
            await asyncio.wait(self._sending, timeout=5)
            for task in self._sending:
                task.cancel()

    def wake(self) -> None:
        """New notices were queued by this process: look at once."""
        self._wake.set()

    async def _run(self) -> None:
        channels = sorted(self.notifiers)
        while True:
            try:
                free = self._concurrency - len(self._sending)
                if free > 0:
                    batch = await asyncio.to_thread(self._claim, channels, free)
                    for notice in batch:
                        task = asyncio.create_task(self._send(notice))
                        self._sending.add(task)
                        task.add_done_callback(self._sending.discard)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reading the notification outbox failed")
            await wait_event(self._wake, self.settings.poll_s)
            self._wake.clear()

    def _claim(self, channels: Sequence[str], limit: int) -> list[Notice]:
        with self.db.begin() as conn:
            return claim_notices(conn, channels, limit, utcnow())

    async def _send(self, notice: Notice) -> None:
        notifier = self.notifiers[notice.channel]
        try:
            result = notifier.send(notice.recipient, notice.subject, notice.body, notice.data)
            if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
                await result
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await asyncio.to_thread(self._failed, notice, f"{type(exc).__name__}: {exc}")
            return
        await asyncio.to_thread(self._done, notice)

    def _done(self, notice: Notice) -> None:
        now = utcnow()
        with self.db.begin() as conn:
            conn.execute(
                t.notification.update()
                .where(t.notification.c.id == notice.id)
                .values(state="SENT", sent_at=now, last_error=None)
            )
        self.sent += 1
        log.info("notice %d sent by %s to %s", notice.id, notice.channel, notice.recipient)

    def _failed(self, notice: Notice, error: str) -> None:
        now = utcnow()
        final = notice.attempts >= self.settings.max_attempts
        values: dict[str, Any] = {"last_error": error[:1000]}
        if final:
            values["state"] = "FAILED"
        else:
            values["next_attempt_at"] = now + self.settings.retry_delay(notice.attempts)
        with self.db.begin() as conn:
            conn.execute(
                t.notification.update().where(t.notification.c.id == notice.id).values(**values)
            )
        log.warning(
            "notice %d by %s to %s failed (attempt %d%s): %s",
            notice.id,
            notice.channel,
            notice.recipient,
            notice.attempts,
            ", giving up" if final else "",
            error,
        )
        if final:
            self.failed += 1
            publish = self.publish
            loop = self._loop
            if loop is not None and not loop.is_closed():
                publish = lambda event: loop.call_soon_threadsafe(self.publish, event)  # noqa: E731
            publish(
                NotificationFailed(
                    notice.id, notice.account_id, notice.channel, notice.recipient, error
                )
            )
