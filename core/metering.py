"""Metering: Good samples of billing meters → rating → ledger postings → fee control.

The bus listener only files each Good sample of a billing meter under its meter (a dict
append, nothing more), so polling never waits on billing. Every `post_interval_s` the
collected samples are billed in **one database transaction off the event loop**
(`asyncio.to_thread`), each meter in a savepoint of its own so that one meter's problem
cannot hold back the others:

1. the meter's account and its tariff (the account's, when it prices the meter's commodity;
   otherwise `[prepay.engine] default_tariffs`);
2. the rating engine (`core.rating`) rates the readings of the meter's own cumulative
   registers (total and T1..T4) from the meter's saved baseline (`MeterState`, kept in
   `prepay_meter`); the first reading after a meter joins an account is its baseline;
3. the drift-free `Accrual` of the meter's billing month turns the exact cost into whole
   fen, and `ledger.post_usage` deducts them from the energy wallet together with the
   accrual and the new baseline (REMOTE: the platform's wallet is authoritative; LOCAL:
   the wallet is the platform's mirror of the meter's own balance, reconciled separately);
   POSTPAID meters are rated for consumption only — nothing is posted;
4. fee control runs after the deduction (`PrepayControl.after_change`) in the same
   transaction: a trip it decides is a durable command committed with the posting;
5. the day's consumption per meter (and per rate) is kept in `meter_usage_day`.

After commit the events (alarm level changes, audit records, account samples) are
published on the loop and the command executor is woken.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from . import ledger
from .db import Database
from .db import schema as t
from .events import utcnow
from .feecontrol import Cause
from .model import DeviceModel, MeterKind, Quality, Sample
from .prepayment import FEE_CONTROL, Effects, PrepayControl
from .rating import Accrual, MeterState, RatingEngine, RatingError, RegisterLayout
from .site import ControlMode, Site
from .tariffs import Commodity, TariffCatalogue

log = logging.getLogger("openprepay.metering")

#: Who usage postings are requested by (audit).
METERING = "metering"


@dataclass(slots=True)
class FlushReport:
    """What one flush did (for tests and statistics)."""

    meters: int = 0
    postings: int = 0
    posted_fen: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    effects: Effects = field(default_factory=Effects)
    samples: list[Sample] = field(default_factory=list)


class Metering:
    """Bills the samples of one site's meters (see the module docstring)."""

    def __init__(
        self,
        site: Site,
        models: Mapping[str, DeviceModel],
        db: Database,
        control: PrepayControl,
        catalogue: TariffCatalogue,
        default_tariffs: Mapping[str, str],
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.site = site
        self.models = models
        self.db = db
        self.control = control
        self.settings = control.settings
        self.catalogue = catalogue
        self.default_tariffs = dict(default_tariffs)
        self.clock = clock
        self.tz = site.info.tz
        #: Billing meters: site devices of an electric or water model with registers.
        self.layouts: dict[str, RegisterLayout] = {}
        self.kinds: dict[str, MeterKind] = {}
        for device in site.devices.values():
            model = models.get(device.model)
            if model is None or model.kind not in (MeterKind.ELECTRIC, MeterKind.WATER):
                continue
            if not model.total_point and not model.tariff_points:
                continue
            try:
                self.layouts[device.id] = _layout(model)
            except RatingError as exc:
                log.warning("meter %s cannot be billed: %s", device.id, exc)
                continue
            self.kinds[device.id] = model.kind
        self._engines: dict[tuple[str, str], RatingEngine] = {}
        self._pending: dict[str, list[Sample]] = {}
        self._warned: set[tuple[str, str]] = set()
        #: Last supply state seen in a sample, per meter (to store changes only).
        self._supply_seen: dict[str, bool] = {}

    # -- the listener (on the poll path: cheap) ---------------------------------------------
    def on_sample(self, sample: Sample) -> None:
        if sample.quality is not Quality.GOOD or sample.source not in self.layouts:
            return
        self._pending.setdefault(sample.source, []).append(sample)

    @property
    def pending(self) -> int:
        return sum(len(v) for v in self._pending.values())

    def take(self) -> dict[str, list[Sample]]:
        batch, self._pending = self._pending, {}
        return batch

    # -- billing (in a worker thread) ------------------------------------------------------
    def flush(self, batch: Mapping[str, Sequence[Sample]]) -> FlushReport:
        """Bill `batch` (meter → samples) in one transaction; returns what happened."""
        report = FlushReport()
        if not batch:
            return report
        now = self.clock()
        with self.db.begin() as conn:
            info = self._meter_info(conn, list(batch))
            for meter_id, samples in batch.items():
                report.meters += 1
                try:
                    with conn.begin_nested():
                        self._bill_meter(conn, meter_id, samples, info.get(meter_id), now, report)
                except ledger.RequestError as exc:
                    report.skipped[meter_id] = str(exc)
                    self._warn(meter_id, str(exc))
                except RatingError as exc:
                    report.skipped[meter_id] = str(exc)
                    self._warn(meter_id, str(exc))
            for account_id in report.effects.accounts:
                sample = self.control.account_sample(conn, account_id, now)
                if sample is not None:
                    report.samples.append(sample)
        return report

    def _meter_info(self, conn: Connection, meters: list[str]) -> dict[str, Any]:
        am, a, pm = t.account_meter, t.account, t.prepay_meter
        rows = conn.execute(
            sa.select(
                am.c.meter_id,
                am.c.account_id,
                am.c.control_mode,
                a.c.state,
                a.c.tariff_id,
                a.c.opened_at,
                pm.c.account_id.label("state_account"),
                pm.c.rating_state,
                pm.c.supply_on,
            )
            .join(a, a.c.id == am.c.account_id)
            .outerjoin(pm, pm.c.meter_id == am.c.meter_id)
            .where(am.c.meter_id.in_(meters), am.c.detached_at.is_(None))
        ).all()
        return {r.meter_id: r for r in rows}

    def _tariff_for(self, meter_id: str, tariff_id: str | None) -> str | None:
        kind = self.kinds[meter_id]
        commodity = Commodity.WATER if kind is MeterKind.WATER else Commodity.ELECTRICITY
        if (
            tariff_id
            and tariff_id in self.catalogue
            and self.catalogue.get(tariff_id).commodity is commodity
        ):
            return tariff_id
        default = self.default_tariffs.get(kind.value)
        if default and default in self.catalogue:
            return default
        return None

    def _engine(self, tariff_id: str, meter_id: str) -> RatingEngine:
        model = self.site.devices[meter_id].model
        key = (tariff_id, model)
        engine = self._engines.get(key)
        if engine is None:
            engine = RatingEngine(
                self.catalogue.get(tariff_id),
                self.layouts[meter_id],
                self.tz,
                register_rates=self.settings.rates_for(model),
                options=self.settings.rating,
            )
            self._engines[key] = engine
        return engine

    def _bill_meter(
        self,
        conn: Connection,
        meter_id: str,
        samples: Sequence[Sample],
        info: Any,
        now: datetime,
        report: FlushReport,
    ) -> None:
        self._note_supply(conn, meter_id, samples, now)
        if info is None or info.state != "OPEN":
            return  # no open account: nothing to bill, no baseline kept
        account_id = info.account_id
        tariff_id = self._tariff_for(meter_id, info.tariff_id)
        if tariff_id is None:
            self._warn(
                meter_id,
                f"no tariff prices it (account {account_id} tariff {info.tariff_id or '-'}; "
                "set one with SetTariff or [prepay.engine] default_tariffs)",
            )
            return
        if info.rating_state is not None and info.state_account == account_id:
            state = MeterState.from_record(info.rating_state)
        else:
            state = MeterState.opening(info.opened_at)
        engine = self._engine(tariff_id, meter_id)
        readings = engine.layout.from_samples(samples)
        if not len(readings):
            return
        rated = engine.rate(readings, state)
        self.control.upsert_meter(
            conn,
            meter_id,
            now,
            account_id=account_id,
            rating_state=rated.state.to_record(),
        )
        self._record_usage(conn, meter_id, account_id, engine, rated, now)
        if info.control_mode == ControlMode.POSTPAID.value:
            return
        last = datetime.fromtimestamp(int(rated.t.max()), UTC)
        cycle = last.astimezone(self.tz).strftime("%Y-%m")
        saved = ledger.load_accrual(conn, meter_id, cycle)
        accrual = (
            Accrual.from_record(saved)
            if saved is not None
            else Accrual(rounding=self.settings.rounding)
        )
        fen = accrual.add(rated.cost_fen)
        result = ledger.post_usage(
            conn,
            account_id,
            meter_id,
            fen,
            f"{int(rated.t.max())}",
            accrual=accrual.to_record(),
            cycle=cycle,
            requested_by=METERING,
            now=now,
        )
        if result.replayed or fen == 0:
            return
        report.postings += 1
        report.posted_fen += fen
        self.control.after_change(
            conn,
            account_id,
            Cause.DEDUCTION,
            actor=FEE_CONTROL,
            effects=report.effects,
            balance_fen=result.balance_fen,
            now=now,
        )
        report.effects.accounts.add(account_id)

    def _record_usage(
        self,
        conn: Connection,
        meter_id: str,
        account_id: str,
        engine: RatingEngine,
        rated: Any,
        now: datetime,
    ) -> None:
        energy = np.asarray(rated.energy, np.int64)
        if not energy.any():
            return
        days = [
            datetime.fromtimestamp(int(x), UTC).astimezone(self.tz).date().isoformat()
            for x in rated.t
        ]
        names = engine.compiled.rate_names
        for day in sorted(set(days)):
            rows = np.asarray([d == day for d in days])
            units = int(energy[rows].sum())
            if not units:
                continue
            by_rate: dict[str, int] = {}
            for vi, rate_names in enumerate(names):
                sel = rows & (rated.version == vi)
                if not sel.any():
                    continue
                sums = rated.rate_energy[sel].sum(axis=0, dtype=np.int64)
                for c, name in enumerate(rate_names):
                    if int(sums[c]):
                        key = name or "total"
                        by_rate[key] = by_rate.get(key, 0) + int(sums[c])
            self._add_day(conn, meter_id, account_id, day, units, by_rate, now)

    def _add_day(
        self,
        conn: Connection,
        meter_id: str,
        account_id: str,
        day: str,
        units: int,
        by_rate: Mapping[str, int],
        now: datetime,
    ) -> None:
        u = t.meter_usage_day
        row = conn.execute(
            sa.select(u.c.energy, u.c.by_rate).where(u.c.meter_id == meter_id, u.c.day == day)
        ).first()
        if row is None:
            conn.execute(
                u.insert(),
                {
                    "meter_id": meter_id,
                    "day": day,
                    "account_id": account_id,
                    "energy": units,
                    "by_rate": dict(by_rate),
                    "updated_at": now,
                },
            )
            return
        merged = dict(row.by_rate or {})
        for k, v in by_rate.items():
            merged[k] = int(merged.get(k, 0)) + v
        conn.execute(
            u.update()
            .where(u.c.meter_id == meter_id, u.c.day == day)
            .values(energy=int(row.energy) + units, by_rate=merged, updated_at=now)
        )

    def _note_supply(
        self, conn: Connection, meter_id: str, samples: Sequence[Sample], now: datetime
    ) -> None:
        """Keep the meter's supply state as its readings show it (relay/valve point)."""
        supply = self.control.supply_of(meter_id)
        if supply is None:
            return
        last = samples[-1]
        if supply.state_point not in last.values or not last.quality_of(supply.state_point).is_good:
            return
        on = bool(last.values[supply.state_point])
        if self._supply_seen.get(meter_id) is on:
            return
        self._supply_seen[meter_id] = on
        self.control.upsert_meter(conn, meter_id, now, supply_on=on, supply_at=last.read_at)

    def _warn(self, meter_id: str, message: str) -> None:
        if (meter_id, message) not in self._warned:
            self._warned.add((meter_id, message))
            log.warning("meter %s not billed: %s", meter_id, message)


def _layout(model: DeviceModel) -> RegisterLayout:
    return RegisterLayout.from_model(model)


async def run_flushes(
    metering: Metering,
    interval_s: float,
    publish: Callable[[FlushReport], None],
    stop: asyncio.Event,
) -> None:
    """Flush every `interval_s` until `stop`, then flush what is left."""
    while True:
        try:
            await asyncio.wait_for(stop.wait(), interval_s)
        except TimeoutError:
            pass
        batch = metering.take()
        if batch:
            try:
                report = await asyncio.to_thread(metering.flush, batch)
            except Exception:
                log.exception("billing %d meter(s) failed; their samples are kept", len(batch))
                for meter_id, samples in batch.items():
                    metering._pending.setdefault(meter_id, [])[:0] = samples
            else:
                publish(report)
        if stop.is_set():
            return
