"""Purchase-count alignment of LOCAL meters before any RECHARGE or REFUND is sent."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from ..config.site import Site
from ..db import Database
from ..db import schema as t
from ..errors import DeviceIOError, LinkNotOwned
from ..events import utcnow
from ..ledger import RequestError
from ..model import DeviceModel
from .accounts import account_for_meter
from .effects import Effects, audit
from .purchase_count import align_buy_count

log = logging.getLogger("openprepay.engine")


class CountAligner:
    """Reads the purchase count of LOCAL meters whose alignment was requested (attached,
    replaced, or `openprepay meter align`) ahead of routine polls and aligns the platform's
    numbering with it (`purchase_count.align_buy_count`), audited. Until then their RECHARGE and
    REFUND commands wait; a delivery whose count is already fixed is let finish first."""

    ACTOR = "prepay-engine"

    def __init__(
        self,
        site: Site,
        models: Mapping[str, DeviceModel],
        db: Database,
        arbiter: Any,
        *,
        timeout_s: float,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.arbiter = arbiter
        self.timeout_s = timeout_s
        self.clock = clock
        #: This instance's meters that report a purchase count, and those that do not.
        self.meters: set[str] = set()
        self.uncounted: set[str] = set()
        for d in site.devices.values():
            model = models.get(d.model)
            points = {p.name for p in model.points} if model is not None else set()
            (self.meters if "buy_count" in points else self.uncounted).add(d.id)

    def requested(self) -> list[str]:
        """This instance's meters whose count is to be read. A request for a meter whose
        model reports no purchase count is dropped (nothing to align; its deliveries go
        ahead and fail visibly if the meter cannot take them)."""
        with self.db.read() as conn:
            rows = set(
                conn.execute(
                    sa.select(t.meter.c.id).where(t.meter.c.align_requested_at.is_not(None))
                ).scalars()
            )
        dropped = sorted(rows & self.uncounted)
        if dropped:
            with self.db.begin() as conn:
                conn.execute(
                    t.meter.update()
                    .where(t.meter.c.id.in_(dropped))
                    .values(align_requested_at=None)
                )
            for meter_id in dropped:
                log.info(
                    "meter %s reports no purchase count: nothing to align",
                    meter_id,
                    extra={"meter": meter_id},
                )
        return sorted(rows & self.meters)

    async def align(self, meter_id: str) -> Effects:
        """Read the meter now and align; nothing happens when it cannot be read (the next
        round tries again)."""
        effects = Effects()
        try:
            sample = await asyncio.wait_for(self.arbiter.read_now(meter_id), self.timeout_s)
        except LinkNotOwned:
            return effects  # [cluster]: the link's owner aligns it
        except (DeviceIOError, TimeoutError) as exc:
            log.info(
                "meter %s: purchase count not read yet: %s",
                meter_id,
                exc,
                extra={"meter": meter_id},
            )
            return effects
        count = sample.values.get("buy_count")
        if count is None or not sample.quality_of("buy_count").is_good:
            return effects
        await asyncio.to_thread(self._align, meter_id, int(count), effects)
        return effects

    def _align(self, meter_id: str, count: int, effects: Effects) -> None:
        now = self.clock()
        try:
            with self.db.begin() as conn:
                done = align_buy_count(conn, meter_id, count, now=now)
                account = account_for_meter(conn, meter_id)
                audit(conn, effects, self.ACTOR, "align", meter_id, done.describe(), now=now)
        except RequestError as exc:
            log.info("meter %s: %s", meter_id, exc.message, extra={"meter": meter_id})
            return
        log.info(
            "meter %s: %s",
            meter_id,
            done.describe(),
            extra={"meter": meter_id, "account": account or "-"},
        )
        if account:
            effects.accounts.add(account)
