"""Metering: Good samples of billing meters → rating → ledger postings → fee control.

The bus listener only files each Good sample of a billing meter under its meter (a dict
append, nothing more), so polling never waits on billing. Every `post_interval_s` the
collected samples are billed off the event loop (`asyncio.to_thread`):

1. one query finds each meter's account, control mode and tariff (the account's, when it
   prices the meter's commodity; otherwise `[prepay.engine] default_tariffs`);
2. the rating engine (`core.rating.engine`) rates the readings of the meter's own cumulative
   registers (total and T1..T4) from the meter's baseline (`MeterState`), in memory; the
   first reading after a meter joins an account is its baseline;
3. the drift-free `Accrual` of the meter's billing month turns the exact cost into whole
   fen. Only when there are whole fen to post — or the meter's unsaved state is
   `persist_s` old, or the service stops — is the database written, in **one
   transaction** for the batch: `ledger.post_usage` deducts the fen from the energy wallet
   together with the accrual, the baseline is saved with it (`prepay_meter`) and the day's
   consumption is added (`meter_usage_day`). REMOTE: the platform's wallet is
   authoritative; LOCAL: the wallet is the platform's mirror of the meter's own balance
   (reconciled separately); POSTPAID meters are rated for consumption only, nothing is
   posted;
4. fee control runs after each deduction (`PrepayControl.after_change`) in the same
   transaction: a trip it decides is a durable command committed with the posting.

Only Good samples are billed: the link arbiter has already made a sample with an
implausible cumulative register Uncertain (core/field/plausibility.py). Rating holds what still
gets here to the same physical bound against the baseline it saves — `max_per_hour` is
derived from the meter's plausibility limits unless `[prepay.rating]` sets it — so a
reading that rises faster than the meter can meter (SPIKE) or runs backwards (DECREASE) is
not billed, does not move the baseline, and is said once as an `ImplausibleReading`; the
next consistent reading bills from the last good baseline.

Writing lazily is safe: the baseline and the accrual are always saved together with the
posting they produced, so a crash only forgets readings whose energy the meter's cumulative
registers still hold — the first reading after a restart bills it (tier energy included),
and nothing is billed twice. It keeps the database work proportional to the money that
moves: at 2,000 meters polled every 10 s most polls rate a fraction of a fen.

A meter of an open account that cannot be billed — no tariff prices it, its tariff does
not fit its registers, the ledger refuses its usage — is an alarm, not a log line: the
reason is stored on the meter (`prepay_meter.billing_problem`, shown by `account show`,
OPC UA and the reports) and `BillingAlarm` is raised when it starts and when billing
resumes.

A recorded meter replacement (`meter_replacement`, `Operations.replace_meter`) is applied
with the meter's next batch: the old device is billed from the baseline up to its final
reading, the new one from its initial reading on (`core.rating.layout.Replacement`), and the
replacement is marked applied in the transaction that saves the new baseline.

After commit the events (alarm level changes, billing alarms, audit records, account
samples) are published on the loop and the command executor is woken.

Each meter's in-memory state is a `MeterBook` (`core/prepay/meter_book.py`); the batch's
reads and writes are `core/prepay/metering_store.py`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import zlib
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from fractions import Fraction
from typing import Any

from sqlalchemy.engine import Connection

from .. import ledger
from ..config.site import ControlMode, Site
from ..db import Database
from ..db import schema as t
from ..db.bounded import METERING_METERS, between_parts, chunks
from ..db.retry import is_busy
from ..events import BillingAlarm, ImplausibleReading, utcnow
from ..field.plausibility import DeviceLimits, device_limits
from ..model import DeviceModel, MeterKind, Quality, Sample
from ..rating.checks import Flag
from ..rating.engine import RatingEngine
from ..rating.errors import RatingError
from ..rating.layout import MeterState, RegisterLayout, Replacement
from ..rating.rated import RatedRows
from ..rating.rounding import Accrual
from ..rating.tariffs import TariffCatalogue
from ..tasks import wait_event
from .account_rows import AccountRow, load_account_row, load_account_rows
from .binding import TariffBinding
from .control import FEE_CONTROL, PrepayControl
from .effects import Effects
from .feecontrol import Cause
from .meter_book import MeterBook, add_usage
from .metering_store import MeterInfo, add_days, meter_info, pending_replacements, save_states

log = logging.getLogger("openprepay.metering")

#: Who usage postings are requested by (audit).
METERING = "metering"
#: Rows whose reading billing holds (the baseline stays), and rows that bill nothing.
_HELD = int(Flag.SPIKE | Flag.DECREASE)
_DECREASE = int(Flag.DECREASE)
_NOT_BILLED = int(Flag.BASELINE | Flag.STALE | Flag.SPIKE | Flag.DECREASE)


@dataclass(slots=True)
class FlushReport:
    """What one flush did (for tests and statistics)."""

    meters: int = 0
    postings: int = 0
    posted_fen: int = 0
    skipped: dict[str, str] = field(default_factory=dict)
    effects: Effects = field(default_factory=Effects)
    samples: list[Sample] = field(default_factory=list)
    #: Replacements applied (meter_replacement ids) and the meters they concern.
    replacements: list[int] = field(default_factory=list)
    replaced_meters: set[str] = field(default_factory=set)
    #: Meters whose part of the flush found the database busy: billed with the next one.
    unwritten: set[str] = field(default_factory=set)
    #: How many of `replacements` are marked applied (written part by part).
    applied: int = 0


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
        persist_s: float = 60.0,
        limits: Mapping[str, DeviceLimits] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.site = site
        #: A meter's unsaved baseline and consumption are written at least this often.
        self.persist = timedelta(seconds=persist_s)
        self._books: dict[str, MeterBook] = {}
        self.models = models
        self.db = db
        self.control = control
        self.settings = control.settings
        self.catalogue = catalogue
        self.binding = TariffBinding(site, models, catalogue, control.settings, default_tariffs)
        self.clock = clock
        self.tz = site.info.tz
        #: Billing meters: site devices of an electric or water model with registers.
        self.layouts: dict[str, RegisterLayout] = {}
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
        #: Per billing meter: the most its rated registers may rise per hour of meter time
        #: (rating holds a reading above it as SPIKE, unbilled): `[prepay.rating]
        #: max_per_hour` when the site sets it, else the meter's plausibility limit.
        self.max_per_hour = {m: self._rating_bound(m, limits or {}) for m in self.layouts}
        #: Meters whose readings billing refuses at the moment (one event per episode).
        self._refused: set[str] = set()
        self._engines: dict[tuple[str, str, Decimal | None], RatingEngine] = {}
        self._pending: dict[str, list[Sample]] = {}
        #: Read time of the oldest sample of the batch being flushed (None: no flush).
        self._flushing_since: datetime | None = None
        self._warned: set[tuple[str, str]] = set()
        #: With [cluster]: called in each flush's transaction with the meters it writes;
        #: raises `CommandFenced` when this instance no longer owns one of their links, so
        #: a paused instance cannot bill from a baseline another has moved on from.
        self.guard: Callable[[Connection, list[str]], None] | None = None

    def forget(self, meters: Collection[str]) -> None:
        """Drop what is held in memory for `meters` (their link went to another instance:
        its baselines in the database move on; they are loaded again if it comes back)."""
        for meter_id in meters:
            self._books.pop(meter_id, None)
            self._pending.pop(meter_id, None)

    # -- the listener (on the poll path: cheap) ---------------------------------------------
    def on_sample(self, sample: Sample) -> None:
        if sample.quality is not Quality.GOOD or sample.source not in self.layouts:
            return
        self._pending.setdefault(sample.source, []).append(sample)

    @property
    def pending(self) -> int:
        return sum(len(v) for v in self._pending.values())

    def unsaved_energy(self, meter_id: str, day: str) -> int:
        """Energy (0.001 kWh or m³) rated for `day` and not yet in `meter_usage_day`."""
        book = self._books.get(meter_id)
        entry = book.days.get(day) if book is not None else None
        return entry[0] if entry else 0

    def take(self) -> dict[str, list[Sample]]:
        batch, self._pending = self._pending, {}
        if batch:
            self._flushing_since = min(samples[0].read_at for samples in batch.values())
        return batch

    def oldest_unbilled(self) -> datetime | None:
        """Read time of the oldest Good sample not billed yet — waiting, or in the flush
        under way (None: nothing waits): how far billing is behind the meters."""
        waiting = [samples[0].read_at for samples in self._pending.values() if samples]
        if self._flushing_since is not None:
            waiting.append(self._flushing_since)
        return min(waiting, default=None)

    # -- billing (in a worker thread) ------------------------------------------------------
    def flush(
        self, batch: Mapping[str, Sequence[Sample]], *, persist_all: bool = False
    ) -> FlushReport:
        """Rate `batch` (meter → samples) and write what is due in one transaction.

        Rating is in memory; the database is written for a meter when its accrual yields
        whole fen to post, when its unsaved state is `persist_s` old, or with
        `persist_all` (shutdown). The baseline and the accrual are saved together with the
        posting, so a crash only forgets readings whose energy the meter's cumulative
        registers still hold: the next reading after a restart bills it.
        """
        report = FlushReport()
        now = self.clock()
        with self.db.read() as conn:
            replacements = pending_replacements(conn, self.layouts)
            meters = list(batch)
            meters.extend(m for m in replacements if m not in batch)
            if persist_all:
                meters.extend(m for m, b in self._books.items() if b.dirty and m not in batch)
            if not meters:
                return report
            info = meter_info(conn, meters, self._holds)
        due: list[tuple[str, MeterBook, int]] = []
        problems: dict[str, str | None] = {}
        for meter_id in meters:
            report.meters += 1
            samples = batch.get(meter_id, ())
            row = info.get(meter_id)
            reps = replacements.get(meter_id, [])
            try:
                book, fen = self._rate(meter_id, samples, row, now, report, reps)
            except RatingError as exc:
                report.skipped[meter_id] = str(exc)
                problems[meter_id] = str(exc)
                self._warn(meter_id, str(exc))
                self._books.pop(meter_id, None)
                continue
            if book is None:
                report.replacements.extend(r.id for r in reps)  # no tenant: nothing to bill
                if reps:
                    report.replaced_meters.add(meter_id)
                continue
            problems[meter_id] = None
            if (
                fen
                or book.replaced
                or (book.dirty and (persist_all or now - book.saved_at >= book.persist))
            ):
                due.append((meter_id, book, fen))
        if not due and not report.replacements and not self._alarms_changed(problems, info):
            return report
        # Bounded transactions (core/db/bounded.py): no flush holds the write lock long.
        parts = list(chunks(due, METERING_METERS)) or [[]]
        for n, part in enumerate(parts):
            if n:
                between_parts(self.db)
            try:
                with self.db.begin() as conn:
                    if self.guard is not None:  # [cluster]: only under the links' leases
                        self.guard(conn, [meter_id for meter_id, _, _ in part])
                    self._write(conn, list(part), info, now, report, problems)
            except Exception as exc:
                rest = [m for p in parts[n:] for m, _, _ in p]
                for meter_id in rest:
                    self._books.pop(meter_id, None)  # reload from the database next time
                if not is_busy(exc) or n == 0:
                    raise
                # The parts before are committed (their events are published); the rest
                # is billed again from the saved baselines with the next flush.
                report.unwritten.update(rest)
                log.warning(
                    "billing: the database is busy; %d meter(s) are billed with the next flush",
                    len(rest),
                )
                break
        if report.effects.accounts:
            with self.db.read() as conn:
                report.samples.extend(
                    self.control.account_samples(conn, report.effects.accounts, now)
                )
        return report

    def _holds(self, meter_id: str, account_id: str) -> bool:
        """Whether the meter's baseline for this account is in memory."""
        book = self._books.get(meter_id)
        return book is not None and book.account_id == account_id

    @staticmethod
    def _alarms_changed(problems: Mapping[str, str | None], info: Mapping[str, MeterInfo]) -> bool:
        return any(
            (row := info.get(m)) is not None and row.billing_problem != problem
            for m, problem in problems.items()
        )

    def _rating_bound(self, meter_id: str, limits: Mapping[str, DeviceLimits]) -> Decimal | None:
        device = self.site.devices[meter_id]
        per_hour = self.settings.rating.max_per_hour
        if per_hour is None:
            own = limits.get(meter_id) or device_limits(self.models[device.model], device)
            caps = [own.per_hour[p] for p in self.layouts[meter_id].points if p in own.per_hour]
            if not caps:
                return None
            per_hour = Decimal(repr(max(caps)))
        scaled = per_hour * Decimal(repr(self.site.poll.time_scale))
        return scaled.quantize(Decimal("0.001"), rounding=ROUND_CEILING)

    def _engine(self, tariff_id: str, meter_id: str) -> RatingEngine:
        model = self.site.devices[meter_id].model
        bound = self.max_per_hour[meter_id]
        key = (tariff_id, model, bound)
        engine = self._engines.get(key)
        if engine is None:
            engine = RatingEngine(
                self.catalogue.get(tariff_id),
                self.layouts[meter_id],
                self.tz,
                register_rates=self.settings.rates_for(model),
                options=dataclasses.replace(self.settings.rating, max_per_hour=bound),
            )
            self._engines[key] = engine
        return engine

    def _watch(
        self,
        meter_id: str,
        engine: RatingEngine,
        readings: list[tuple[int, list[int]]],
        rated: RatedRows,
        before: MeterState,
        report: FlushReport,
    ) -> None:
        """Say once per episode that billing refuses a meter's readings: a register below
        its billed baseline (DECREASE) or above what the meter can meter since (SPIKE).
        The arbiter flags such readings before they get here; this catches what it could
        not know (the first reading after a restart, against the saved baseline)."""
        flags = rated.flags
        held = [i for i, f in enumerate(flags) if f & _HELD]
        if not held:
            if any(not f & _NOT_BILLED for f in flags):
                self._refused.discard(meter_id)
            return
        last_held = held[-1]
        if any(not f & _NOT_BILLED for f in flags[last_held:]):
            self._refused.discard(meter_id)
            return
        if meter_id in self._refused:
            return
        self._refused.add(meter_id)
        layout = engine.layout
        point, step = layout.points[0], layout.resolution[0]
        unit = self.models[self.site.devices[meter_id].model].point(point).unit
        counts = [c for t, c in readings if t == rated.t[last_held]][-1]
        value = float(Decimal(counts[0]) * step)
        base = "none" if before.last_counts is None else f"{Decimal(before.last_counts[0]) * step}"
        if flags[last_held] & _DECREASE:
            limit = f"not below the last billed reading {base} {unit}"
        else:
            bound = self.max_per_hour[meter_id]
            limit = f"at most {bound} {unit} per hour of meter time since the last billed {base}"
        link = self.site.devices[meter_id].link
        log.warning(
            "meter %s: reading %s = %s %s not billed: expected %s",
            meter_id,
            point,
            value,
            unit,
            limit,
            extra={"meter": meter_id, "link": link},
        )
        report.effects.events.append(
            ImplausibleReading(meter_id, link, point, value, limit, source="billing")
        )

    def _rate(
        self,
        meter_id: str,
        samples: Sequence[Sample],
        info: MeterInfo | None,
        now: datetime,
        report: FlushReport,
        replacements: Sequence[Any] = (),
    ) -> tuple[MeterBook | None, int]:
        """Rate the meter's new readings (and recorded replacements) in memory; returns its
        book and the fen due. RatingError: the meter cannot be billed (the reason)."""
        if info is None or info.state != "OPEN":
            self._books.pop(meter_id, None)
            return None, 0  # no open account: nothing to bill, no baseline kept
        account_id = info.account_id
        tariff_id = self.binding.effective(meter_id, info.tariff_id)
        if tariff_id is None:
            raise RatingError(
                f"no tariff prices it (account {account_id} tariff {info.tariff_id or '-'}); "
                "give the account a tariff of the meter's commodity (SetTariff) or set "
                "[prepay.engine] default_tariffs"
            )
        book = self._books.get(meter_id)
        if book is None or book.account_id != account_id:
            if info.rating_state is not None and info.state_account == account_id:
                state = MeterState.from_record(info.rating_state)
            else:
                state = MeterState.opening(info.opened_at)
            # Spread the meters' periodic saves over +0..25 % of persist_s, so that meters
            # that started together do not all write in the same second.
            spread = 1 + (zlib.crc32(meter_id.encode()) % 1000) / 4000
            book = MeterBook.opened(
                account_id, info.control_mode, state, now, self.persist * spread
            )
            self._books[meter_id] = book
        book.mode = info.control_mode
        if not samples and not replacements:
            return book, 0
        engine = self._engine(tariff_id, meter_id)
        readings = engine.layout.rows_from_samples(samples)
        if not readings and not replacements:
            return book, 0
        state = book.state
        swaps = _replacements(engine.layout, replacements, state)
        rated = engine.rate_rows(readings, state, swaps)
        book.replaced += tuple(r.id for r in replacements)
        self._watch(meter_id, engine, readings, rated, state, report)
        if rated.state == state:
            return book, 0  # stale readings only
        book.state = rated.state
        book.dirty = True
        last_t = max(rated.t)
        book.period = f"{last_t}"
        add_usage(book, engine, rated, self.tz)
        if book.mode == ControlMode.POSTPAID.value:
            return book, 0
        cycle = datetime.fromtimestamp(last_t, UTC).astimezone(self.tz).strftime("%Y-%m")
        if book.cycle != cycle or book.accrual is None:
            book.cycle = cycle
            book.accrual = None  # loaded in the write transaction when due
            book.pending_cost += rated.cost_fen
            return book, -1  # unknown until the saved accrual is read: write now
        fen = book.accrual.add(rated.cost_fen)
        return book, fen

    def _write(
        self,
        conn: Connection,
        due: list[tuple[str, MeterBook, int]],
        info: Mapping[str, MeterInfo],
        now: datetime,
        report: FlushReport,
        problems: dict[str, str | None],
    ) -> None:
        accounts = load_account_rows(
            conn, {b.account_id for _, b, fen in due if fen and b.mode != ControlMode.POSTPAID}
        )
        billed = [
            (meter_id, book, fen)
            for meter_id, book, fen in due
            if book.mode != ControlMode.POSTPAID.value and book.cycle is not None
        ]
        outcomes = self._post_all(conn, billed, now)
        states: list[dict[str, Any]] = []
        days: dict[tuple[str, str], tuple[str, int, dict[str, int]]] = {}
        for meter_id, book, _ in due:
            outcome = outcomes.get(meter_id)
            if outcome is not None and not self._after_post(
                conn, meter_id, book, outcome, accounts, now, report, problems
            ):
                continue
            states.append(
                {
                    "meter_id": meter_id,
                    "account_id": book.account_id,
                    "rating_state": book.state.to_record(),
                    "updated_at": now,
                }
            )
            for day, (units, by_rate) in book.days.items():
                days[(meter_id, day)] = (book.account_id, units, by_rate)
            book.days.clear()  # the book's own dict, frozen with it: not a new one per save
            book.dirty = False
            book.saved_at = now
            if book.replaced:
                report.replacements.extend(book.replaced)
                report.replaced_meters.add(meter_id)
            book.replaced = ()
        save_states(conn, states)
        add_days(conn, days, now)
        # The replacements not marked yet (the first part: also those of meters without a
        # tenant).
        fresh = report.replacements[report.applied :]
        if fresh:
            conn.execute(
                t.meter_replacement.update()
                .where(t.meter_replacement.c.id.in_(fresh))
                .values(applied_at=now)
            )
        report.applied = len(report.replacements)
        self._store_alarms(conn, problems, info, now, report)
        problems.clear()  # stored: a later part stores only its own refusals

    def _store_alarms(
        self,
        conn: Connection,
        problems: Mapping[str, str | None],
        info: Mapping[str, MeterInfo],
        now: datetime,
        report: FlushReport,
    ) -> None:
        """Store on the meter why it is not billed (or that it is billed again) when that
        changed, and raise `BillingAlarm`."""
        for meter_id, problem in problems.items():
            row = info.get(meter_id)
            if row is None or row.billing_problem == problem:
                continue
            self.control.upsert_meter(
                conn,
                meter_id,
                now,
                billing_problem=problem[:500] if problem else None,
                billing_problem_at=now if problem else None,
            )
            report.effects.events.append(
                BillingAlarm(
                    meter_id,
                    row.account_id,
                    problem is not None,
                    problem or "billed again",
                    at=now,
                )
            )
            report.effects.accounts.add(row.account_id)

    def _post_all(
        self, conn: Connection, billed: Sequence[tuple[str, MeterBook, int]], now: datetime
    ) -> dict[str, ledger.UsageResult | ledger.RequestError]:
        """Post the fen of every billed meter with its accrual, in bulk
        (`ledger.post_usages`); a meter whose accrual is not in memory yet has it loaded
        (one query for all) and its pending cost added."""
        missing = {(m, b.cycle) for m, b, _ in billed if b.accrual is None and b.cycle}
        saved = ledger.load_accruals(conn, missing) if missing else {}
        requests = []
        for meter_id, book, fen in billed:
            assert book.cycle is not None
            if book.accrual is None:
                record = saved.get((meter_id, book.cycle))
                book.accrual = (
                    Accrual.from_record(record)
                    if record is not None
                    else Accrual(rounding=self.settings.rounding)
                )
                fen = book.accrual.add(book.pending_cost)
                book.pending_cost = Fraction(0)
            requests.append(
                ledger.UsageRequest(
                    book.account_id,
                    meter_id,
                    fen,
                    book.period,
                    accrual=book.accrual.to_record(),
                    cycle=book.cycle,
                )
            )
        outcomes = ledger.post_usages(conn, requests, requested_by=METERING, now=now)
        return {r.meter_id: o for r, o in zip(requests, outcomes, strict=True)}

    def _after_post(
        self,
        conn: Connection,
        meter_id: str,
        book: MeterBook,
        result: ledger.UsageResult | ledger.RequestError,
        accounts: dict[str, AccountRow],
        now: datetime,
        report: FlushReport,
        problems: dict[str, str | None],
    ) -> bool:
        """Fee control after a meter's posting; False if the ledger refused it."""
        if isinstance(result, ledger.RequestError):  # refused before anything was written
            report.skipped[meter_id] = str(result)
            problems[meter_id] = f"the ledger refused its usage: {result}"
            self._warn(meter_id, str(result))
            self._books.pop(meter_id, None)
            return False
        fen = result.amount_fen
        if fen and not result.replayed:
            report.postings += 1
            report.posted_fen += fen
            account = accounts.get(book.account_id) or load_account_row(conn, book.account_id)
            decision = self.control.after_change(
                conn,
                book.account_id,
                Cause.DEDUCTION,
                actor=FEE_CONTROL,
                effects=report.effects,
                balance_fen=result.balance_fen,
                account=account,
                now=now,
            )
            if account is not None and decision is not None:
                # Another meter of the account may follow in this batch: it must see the
                # state this deduction left, not the one read before.
                accounts[book.account_id] = dataclasses.replace(account, fee_state=decision.state)
            report.effects.accounts.add(book.account_id)
        return True

    def _warn(self, meter_id: str, message: str) -> None:
        if (meter_id, message) not in self._warned:
            self._warned.add((meter_id, message))
            log.warning("meter %s not billed: %s", meter_id, message)


def _layout(model: DeviceModel) -> RegisterLayout:
    return RegisterLayout.from_model(model)


def _replacements(
    layout: RegisterLayout, rows: Sequence[Any], state: MeterState
) -> list[Replacement]:
    """Recorded replacements as the rating engine takes them. One recorded before a
    reading that was already rated (the service saw the new meter before the swap was
    recorded) is placed just after that reading: the old meter's final and the new one's
    initial reading still bound exactly what each device measured."""
    out = []
    after = state.last_t
    for row in rows:
        at = int(row.at.timestamp())
        if after is not None and at <= after:
            at = after + 1
        out.append(Replacement.from_values(layout, at, row.final_reading, row.initial_reading))
        after = at
    return out


async def run_flushes(
    metering: Metering,
    interval_s: float,
    publish: Callable[[FlushReport], None],
    stop: asyncio.Event,
) -> None:
    """Flush every `interval_s` until `stop`, then flush what is left."""
    while True:
        await wait_event(stop, interval_s)
        batch = metering.take()
        final = stop.is_set()
        if batch or final:
            try:
                report = await asyncio.to_thread(metering.flush, batch, persist_all=final)
            except Exception:
                log.exception("billing %d meter(s) failed; their samples are kept", len(batch))
                for meter_id, samples in batch.items():
                    metering._pending.setdefault(meter_id, [])[:0] = samples
            else:
                for meter_id in report.unwritten:  # the database was busy: next flush
                    metering._pending.setdefault(meter_id, [])[:0] = batch.get(meter_id, [])
                publish(report)
            finally:
                metering._flushing_since = None  # billed, or waiting again
        if stop.is_set():
            return
