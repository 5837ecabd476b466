"""Manual meter readings through the door: one reading typed by an operator
(`billing reading`), or a file of them (`billing readings-import`: opening readings, meters
that could not be read).

Each is recorded with `core.billing.readings.record_reading` (the meter must be a site
meter; values are checked against its model's register ranges) and replaces what was
captured for that instant. A file is **one transaction**: all its lines or none. Every
line is checked, and a file with any bad line is refused with all of them listed
(`RowsRefused`: line, column, value, what to write) and writes nothing but the audit record
of the refusal. A recorded file writes one audit row (who, how many readings, which file,
the lines' notes) and one outbox entry."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sqlalchemy.engine import Connection

from ..billing.reading_file import ReadingRow, parse_readings
from ..billing.readings import Reading, meter_model, record_reading
from ..errors import RequestError
from ..prepay.csv_problems import RowProblem, RowsRefused
from ..prepay.effects import Effects
from .bills import BillDoor


@dataclass(frozen=True, slots=True)
class ReadingsImported:
    """What a file of readings recorded (or, in a dry run, would record)."""

    file_name: str
    readings: tuple[Reading, ...]
    #: (line, meter, note) of the lines with a note.
    notes: tuple[tuple[int, str, str], ...]
    dry_run: bool = False


class ReadingDoor(BillDoor):
    def record_reading(
        self,
        meter_id: str,
        at: datetime,
        energy: Decimal | str | int,
        *,
        registers: Mapping[str, Decimal | str | int] | None = None,
        read_at: datetime | None = None,
        actor: str,
    ) -> Reading:
        """Record `meter_id`'s registers for capture instant `at` by hand (kWh or m³);
        replaces what was captured for that instant."""

        def work(conn: Connection, effects: Effects, now: datetime) -> Reading:
            return self._record(conn, meter_id, at, energy, registers, read_at, actor, now)

        return self._call(
            "billing_reading",
            meter_id,
            actor,
            work,
            lambda r: f"{r.energy / 1000:.3f} at {r.at:%Y-%m-%d %H:%M} UTC (manual)",
        )

    def record_readings(
        self, text: str, *, file_name: str, actor: str, dry_run: bool = False
    ) -> ReadingsImported:
        """Record every reading of a CSV file (`core.billing.reading_file`), all or none.
        Any bad line: `RowsRefused` listing every problem, nothing recorded. `dry_run`
        checks everything and writes nothing (not audited: nothing changed)."""

        def work(conn: Connection, effects: Effects, now: datetime) -> ReadingsImported:
            rows, problems, _ = parse_readings(text, self.billing.calendar)
            readings = self._record_rows(conn, rows, problems, actor, now)
            if problems:
                raise RowsRefused("file", sorted(problems, key=lambda p: p.line))
            if not readings:
                raise RequestError("file", "no reading in it: one line per meter after the header")
            notes = tuple((r.line, r.meter, r.note) for r in rows if r.note)
            return ReadingsImported(file_name, tuple(readings), notes, dry_run)

        if dry_run:
            return self._checked_only(work)
        return self._call("billing_readings_import", file_name, actor, work, _describe)

    def _record_rows(
        self,
        conn: Connection,
        rows: Sequence[ReadingRow],
        problems: list[RowProblem],
        actor: str,
        now: datetime,
    ) -> list[Reading]:
        """Record each line; a line refused is added to `problems` (the caller rolls the
        whole file back then). The same meter and instant twice is refused too."""
        seen: dict[tuple[str, datetime], int] = {}
        readings = []
        for row in rows:
            key = (row.meter, row.at)
            if key in seen:
                problems.append(
                    RowProblem(
                        row.line,
                        "at",
                        f"{row.meter} has a reading for this instant on line {seen[key]} "
                        "already: keep one of the two lines",
                        row.cells["at"],
                    )
                )
                continue
            seen[key] = row.line
            try:
                readings.append(
                    self._record(
                        conn, row.meter, row.at, row.energy, row.registers, row.read_at, actor, now
                    )
                )
            except RequestError as exc:
                column = exc.field.removeprefix("registers.")
                problems.append(
                    RowProblem(row.line, column, exc.message, row.cells.get(column, ""))
                )
        return readings

    def _record(
        self,
        conn: Connection,
        meter_id: str,
        at: datetime,
        energy: Decimal | str | int,
        registers: Mapping[str, Decimal | str | int] | None,
        read_at: datetime | None,
        actor: str,
        now: datetime,
    ) -> Reading:
        return record_reading(
            conn,
            meter_id,
            at,
            energy,
            registers=registers,
            read_at=read_at,
            recorded_by=actor,
            known_meters=self.site.devices,
            model=meter_model(self.site, self.models, meter_id),
            now=now,
        )

    def _checked_only(
        self, work: Callable[[Connection, Effects, datetime], ReadingsImported]
    ) -> ReadingsImported:
        """Run `work` in a transaction that is always rolled back (a dry run)."""
        try:
            with self.db.begin() as conn:
                raise _RolledBack(work(conn, Effects(), self.clock()))
        except _RolledBack as done:
            return done.result


class _RolledBack(Exception):
    """Leaves a dry run's transaction: what it wrote is rolled back."""

    def __init__(self, result: ReadingsImported) -> None:
        self.result = result


def _describe(r: ReadingsImported) -> str:
    """The audit detail: how many, from which file, and the lines' notes (as many as fit)."""
    meters = len({x.meter_id for x in r.readings})
    text = f"{len(r.readings)} reading(s) of {meters} meter(s) from {r.file_name}"
    if r.notes:
        text += "; notes: " + "; ".join(f"line {n} {m}: {note}" for n, m, note in r.notes)
    return text[:1000]
