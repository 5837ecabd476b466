"""A file of meter readings typed by a clerk (opening readings, meters that could not be
read), as CSV: `meter, at, energy` and optionally `read_at`, `note` and one column per rate
register (`energy_sharp`, `energy_peak`...; an empty cell leaves that register out).

`at` is the capture instant the reading is for — a site-local time (`2025-03-01 00:00`,
`2025-03-01`), a time with its offset, or a period (`2025-03`: its freeze instant, where
the period starts). `read_at` (default: `at`) is when it was read.

`parse_readings` only reads the cells: every bad cell of every line is reported at once
(`RowProblem`: line, column, value, what to write); the values are checked against the
meter and its model when they are recorded (`readings.record_reading`)."""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from ..errors import RequestError
from ..prepay.csv_problems import RowProblem
from .periods import Calendar, parse_period

#: Columns every file has; `read_at` and `note` may be left out; any other column is a
#: rate register of the meters' model.
REQUIRED = ("meter", "at", "energy")
OPTIONAL = ("read_at", "note")


@dataclass(frozen=True, slots=True)
class ReadingRow:
    """One line of the file that parsed (its values not checked against the meter yet)."""

    line: int
    meter: str
    at: dt.datetime
    energy: str
    registers: Mapping[str, str] = field(default_factory=dict)
    read_at: dt.datetime | None = None
    note: str = ""
    #: The cells as written, by column (to quote them in a problem).
    cells: Mapping[str, str] = field(default_factory=dict)


def instant_of(calendar: Calendar, text: str, column: str = "at") -> dt.datetime:
    """`2025-03` (the period's freeze instant), a site-local time, or a time with its
    offset, as UTC."""
    text = (text or "").strip()
    if len(text) == 7 and text[4] == "-":
        parse_period(text, column)
        return calendar.bounds(text)[0]
    return local_time(calendar.tz, text, column)


def local_time(tz: ZoneInfo, text: str, column: str) -> dt.datetime:
    """`2025-03-01 08:00` (site-local), `2025-03-01` (midnight) or ISO with an offset."""
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("T", " "))
    except ValueError:
        periods = " or a period (2025-03)" if column == "at" else ""
        raise RequestError(
            column, f"expected a time such as 2025-03-01 00:00 (site time){periods}"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return value.astimezone(dt.UTC)


def parse_readings(
    text: str, calendar: Calendar
) -> tuple[list[ReadingRow], list[RowProblem], tuple[str, ...]]:
    """(the lines that parsed, every problem found, the register columns)."""
    reader = csv.reader(text.splitlines(keepends=True), strict=True)
    try:
        header = [h.strip().lstrip("\ufeff").strip() for h in next(reader)]
    except StopIteration:
        return [], [RowProblem(1, "header", "the file is empty: write meter,at,energy first")], ()
    except csv.Error as exc:
        return [], [RowProblem(1, "header", f"malformed CSV: {exc}")], ()
    problems = _header_problems(header)
    if problems:
        return [], problems, ()
    registers = tuple(h for h in header if h not in REQUIRED + OPTIONAL)
    rows: list[ReadingRow] = []
    while True:
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            problems.append(
                RowProblem(reader.line_num, "row", f"malformed CSV ({exc}): close the quote")
            )
            break  # the reader cannot find the next line after a broken quote
        if not values or all(not v.strip() for v in values):
            continue
        line = reader.line_num
        if len(values) != len(header):
            problems.append(
                RowProblem(
                    line,
                    "row",
                    f"expected {len(header)} cells ({','.join(header)}), got {len(values)}",
                )
            )
            continue
        cells = {k: v.strip() for k, v in zip(header, values, strict=True)}
        row = _parse_row(line, cells, registers, calendar, problems)
        if row is not None:
            rows.append(row)
    return rows, problems, registers


def _header_problems(header: list[str]) -> list[RowProblem]:
    problems = []
    for i, name in enumerate(header):
        if not name:
            problems.append(RowProblem(1, f"column {i + 1}", "a column without a name"))
        elif header.index(name) != i:
            problems.append(RowProblem(1, name, "column given twice: keep one"))
    problems.extend(
        RowProblem(
            1,
            name,
            "required column missing (columns: meter,at,energy[,read_at,note,energy_sharp,...])",
        )
        for name in REQUIRED
        if name not in header
    )
    return problems


def _parse_row(
    line: int,
    cells: Mapping[str, str],
    registers: tuple[str, ...],
    calendar: Calendar,
    problems: list[RowProblem],
) -> ReadingRow | None:
    """The line's values; each bad cell is added to `problems` (None when there is one)."""
    found = len(problems)
    for column in REQUIRED:
        if not cells[column]:
            problems.append(RowProblem(line, column, "required: fill it in"))
    at = read_at = None
    if cells["at"]:
        at = _time(line, cells, "at", problems, lambda t: instant_of(calendar, t))
    if cells.get("read_at"):
        read_at = _time(
            line, cells, "read_at", problems, lambda t: local_time(calendar.tz, t, "read_at")
        )
    if len(problems) > found or at is None:
        return None
    return ReadingRow(
        line,
        cells["meter"],
        at,
        cells["energy"],
        {name: cells[name] for name in registers if cells[name]},
        read_at,
        cells.get("note", ""),
        dict(cells),
    )


def _time(
    line: int,
    cells: Mapping[str, str],
    column: str,
    problems: list[RowProblem],
    parse: Callable[[str], dt.datetime],
) -> dt.datetime | None:
    try:
        return parse(cells[column])
    except RequestError as exc:
        problems.append(RowProblem(line, column, exc.message, cells[column]))
        return None
