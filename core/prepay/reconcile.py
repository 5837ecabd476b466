"""Reconciliation of LOCAL meters (domain.md §5.6): the meter's purchase count and
remaining amount against the platform's."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

import sqlalchemy as sa

from ..config.site import ControlMode, Site
from ..db import Database
from ..db import schema as t
from ..events import ReconciliationBreak
from ..model import DeviceModel, Quality, Sample
from . import commands as cmds
from .engine_settings import EngineSettings

log = logging.getLogger("openprepay.engine")


class Reconciler:
    """Compares LOCAL meters with the platform (domain.md §5.6), at most every
    `every_s` per meter, and raises `ReconciliationBreak` when they disagree. A meter is
    LOCAL by its account's attachment (the site file's mode, or `account open --meter
    E3:LOCAL`): the meters attached LOCAL now are read from the database at every check,
    and the listener keeps the samples of those among the meters that report a balance
    and a purchase count."""

    def __init__(
        self, site: Site, models: Mapping[str, DeviceModel], db: Database, settings: EngineSettings
    ) -> None:
        self.db = db
        self.tolerance_fen = settings.reconcile_tolerance_fen
        self.every_s = settings.reconcile_every_s
        self.meters = {
            d.id
            for d in site.devices.values()
            if (m := models.get(d.model)) is not None
            and {"remaining_amount", "buy_count"} <= {p.name for p in m.points}
        }
        #: The meters attached LOCAL now (refreshed by `check`; replaced, never mutated).
        self.local: frozenset[str] = frozenset()
        self._last: dict[str, float] = {}
        self._pending: dict[str, Sample] = {}
        self._flagged: dict[str, tuple[int, int]] = {}

    def on_sample(self, sample: Sample) -> None:
        if sample.source not in self.local or sample.quality is not Quality.GOOD:
            return
        if any(
            p not in sample.values or not sample.quality_of(p).is_good
            for p in ("remaining_amount", "buy_count")
        ):
            return
        at = sample.read_at.timestamp()
        if at - self._last.get(sample.source, -1e18) < self.every_s:
            return
        self._last[sample.source] = at
        self._pending[sample.source] = sample

    def take(self) -> dict[str, Sample]:
        batch, self._pending = self._pending, {}
        return batch

    def check(self, batch: Mapping[str, Sample]) -> list[ReconciliationBreak]:
        out = []
        with self.db.read() as conn:
            attached = conn.execute(
                sa.select(t.account_meter.c.meter_id).where(
                    t.account_meter.c.control_mode == ControlMode.LOCAL.value,
                    t.account_meter.c.detached_at.is_(None),
                )
            ).scalars()
            self.local = frozenset(m for m in attached if m in self.meters)
            for meter_id, sample in batch.items():
                event = self._check_one(conn, meter_id, sample)
                if event is not None:
                    out.append(event)
        return out

    def _check_one(self, conn: Any, meter_id: str, sample: Sample) -> ReconciliationBreak | None:
        row = conn.execute(
            sa.select(
                t.account_meter.c.account_id,
                t.meter.c.buy_count,
                t.meter.c.confirmed_buy_count,
                t.meter.c.count_offset,
                t.meter.c.align_requested_at,
            )
            .join(t.meter, t.meter.c.id == t.account_meter.c.meter_id)
            .where(
                t.account_meter.c.meter_id == meter_id,
                t.account_meter.c.detached_at.is_(None),
                t.account_meter.c.control_mode == ControlMode.LOCAL.value,
            )
        ).first()
        if row is None or row.align_requested_at is not None:
            return None  # not LOCAL, or its count is about to be read and aligned
        mc = t.meter_command
        unfinished = mc.c.state.in_([s.value for s in cmds.UNFINISHED])
        in_flight, last_finished = conn.execute(
            sa.select(
                sa.func.coalesce(sa.func.sum(sa.case((unfinished, 1), else_=0)), 0),
                sa.func.max(mc.c.finished_at),
            ).where(
                mc.c.meter_id == meter_id,
                mc.c.kind.in_([cmds.CommandKind.RECHARGE.value, cmds.CommandKind.REFUND.value]),
            )
        ).one()
        if in_flight:
            return None  # a delivery is on its way: compare once it is confirmed
        if last_finished is not None and sample.read_at <= last_finished:
            # Read before the last delivery was recorded (a loaded service checks it
            # later): it may show the count before that delivery. The next sample tells.
            return None
        wallet = int(
            conn.execute(
                sa.select(t.wallet.c.balance_fen).where(
                    t.wallet.c.account_id == row.account_id, t.wallet.c.kind == "energy"
                )
            ).scalar()
            or 0
        )
        try:
            meter_fen = int(Decimal(repr(float(sample.values["remaining_amount"]))).scaleb(2))
            meter_count = int(sample.values["buy_count"])
        except (InvalidOperation, ValueError, TypeError):
            return None
        problems = []
        # The platform's counts in the meter's numbering (the offset of an alignment).
        offset = int(row.count_offset)
        platform, confirmed = int(row.buy_count) - offset, int(row.confirmed_buy_count) - offset
        if meter_count != confirmed or meter_count != platform:
            problems.append(
                f"purchase count: meter {meter_count}, platform {platform} (confirmed {confirmed})"
            )
        if abs(meter_fen - wallet) > self.tolerance_fen:
            problems.append(
                f"balance: meter {meter_fen / 100:.2f}, platform {wallet / 100:.2f} "
                f"(tolerance {self.tolerance_fen / 100:.2f})"
            )
        if not problems:
            self._flagged.pop(meter_id, None)
            return None
        key = (meter_count, meter_fen // max(self.tolerance_fen, 1))
        if self._flagged.get(meter_id) == key:
            return None
        self._flagged[meter_id] = key
        detail = "; ".join(problems) + "; the meter's balance wins for fee control"
        log.warning("meter %s does not reconcile: %s", meter_id, detail)
        return ReconciliationBreak(
            meter_id,
            row.account_id,
            meter_fen,
            wallet,
            meter_count,
            platform,
            detail,
        )
