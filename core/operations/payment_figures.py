"""The payment figures operators watch (core/payments/figures.py), read through the door:
today is site-local, and every configured channel is listed even before its first payment."""

from __future__ import annotations

from datetime import datetime

from ..payments.figures import PaymentFigures, read_figures
from .door import Door


class PaymentFigureReads(Door):
    def payment_figures(self, *, now: datetime | None = None) -> PaymentFigures:
        """Orders by state, credited today by channel, conflicts, the last notification
        and the latest reconciliation (not audited: a read)."""
        now = now or self.clock()
        tz = self.site.info.tz
        local = now.astimezone(tz)
        midnight = datetime.combine(local.date(), datetime.min.time(), tzinfo=tz)
        channels = tuple(sorted(getattr(self, "payment_providers", None) or ()))
        with self.db.read() as conn:
            return read_figures(conn, now, midnight.astimezone(now.tzinfo), channels)
