"""Bulk opening of accounts from CSV: `import_accounts` and the report it returns.

The file is read in four steps — the header, then every row parsed and checked against
the site file and the rest of the file, then the rows checked against the database (two
look-ups for the whole file), then the good rows created — so that a bad row is reported
with its line number and field and never half-written. Every bad cell of a row is reported
(`RowProblem`: line, column, the value, what to write), not only the first; the command
line imports all rows or none (`all_or_nothing`).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from ..config.site import ControlMode, Site
from ..db import schema as t
from ..events import utcnow
from ..ledger import RequestError, format_fen, parse_yuan, post_opening_balance
from ..model import DeviceModel
from ..text import first_control
from .accounts import (
    Account,
    AccountMeter,
    AccountSpec,
    find_account,
    insert_account,
    parse_meter_list,
    resolve_meter,
    validate_spec,
)
from .csv_problems import RowProblem
from .feecontrol import FeeThresholds

if TYPE_CHECKING:
    from .binding import TariffBinding

IMPORT_COLUMNS = (
    "id",
    "name",
    "room",
    "meters",
    "tariff",
    "alarm1",
    "alarm2",
    "overdraft_limit",
    "close_limit",
    "hoard_limit",
    "protected",
    "notify",
    "state",
    "opening_balance",
)
_REQUIRED_COLUMNS = ("id", "name")
_YES = {"yes", "true", "1", "y"}
_NO = {"no", "false", "0", "n", ""}

T = TypeVar("T")

#: `progress(phase, n)`: rows "checked" and "created" so far.
Progress = Callable[[str, int], None]


class _CsvReader(Protocol):
    """What is used of `csv.reader`: its rows and the line it has read up to."""

    line_num: int

    def __next__(self) -> list[str]: ...


@dataclass(slots=True)
class ImportReport:
    rows: int = 0
    created: list[str] = field(default_factory=list)
    #: Rows whose account already exists with the same settings (a re-run of the file).
    unchanged: list[str] = field(default_factory=list)
    problems: list[RowProblem] = field(default_factory=list)
    #: True when nothing was written because of `all_or_nothing` and a bad row.
    rolled_back: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class _Row:
    """A row that parsed: the account it asks for, from line `line` of the file."""

    line: int
    spec: AccountSpec
    open_now: bool
    opening_fen: int


def import_accounts(
    conn: Connection,
    site: Site,
    models: Mapping[str, DeviceModel],
    text: str | Iterable[str],
    *,
    all_or_nothing: bool = False,
    defaults: FeeThresholds | None = None,
    progress: Progress | None = None,
    requested_by: str = "import",
    binding: TariffBinding | None = None,
    now: datetime | None = None,
) -> ImportReport:
    """Open accounts in bulk from CSV text (UTF-8, header row, comma-separated).

    Columns (header names; only `id` and `name` required, unknown columns are an error):
    `id, name, room, meters, tariff, alarm1, alarm2, overdraft_limit, close_limit,
    hoard_limit, protected, notify, state, opening_balance`. Amounts in yuan with at most 2
    decimals; empty = default. `meters` is a `;`-separated list of site device ids, each
    optionally `:MODE` (`E-A-101;W-A-101:LOCAL`). `protected` is yes/no/true/false/1/0.
    `notify` is `;`-separated `channel:recipient`. `state` is OPEN (default) or
    PREREGISTERED. `opening_balance` (≥ 0) is carried over into the energy wallet. Empty
    thresholds take `defaults` (the site's `[prepay.thresholds]`). With `binding` (the
    site's tariffs), an unknown `tariff`, or one that cannot bill a row's meters, makes the
    row bad. `progress(phase, n)` is called as rows are checked (`"checked"`) and created
    (`"created"`).

    Semantics — **per row**: every row is checked first (syntax, room and meters against
    the site file, duplicates within the file and against the database). A bad row is
    reported with its line number and field and writes nothing; the good rows are created.
    A row whose account already exists with identical settings counts as `unchanged`, so
    a corrected file can simply be imported again. With `all_or_nothing=True`, any bad
    row means nothing at all is written. The caller's transaction holds the writes; the
    report says what happened.
    """
    report = ImportReport()
    lines = text.splitlines(keepends=True) if isinstance(text, str) else list(text)
    reader = csv.reader(lines, strict=True)
    header = _read_header(reader, report)
    if header is None:
        return report
    defaults = defaults or FeeThresholds()
    parsed = _parse_rows(reader, header, site, models, defaults, binding, report)
    good = _check_against_database(conn, parsed, report, progress)
    report.problems.sort(key=lambda p: p.line)
    if all_or_nothing and report.problems:
        report.rolled_back = True
        report.unchanged.clear()
        return report
    _create(conn, good, requested_by, now or utcnow(), report, progress)
    return report


def _read_header(reader: _CsvReader, report: ImportReport) -> list[str] | None:
    """The header's column names, or None (the problems reported) when it is unusable."""
    try:
        header = next(reader)
    except StopIteration:
        report.problems.append(RowProblem(1, "header", "the file is empty"))
        return None
    except csv.Error as exc:
        report.problems.append(RowProblem(1, "header", f"malformed CSV: {exc}"))
        return None
    header = [h.strip().lower().lstrip("\ufeff") for h in header]
    problems = len(report.problems)
    for i, name in enumerate(header):
        if name not in IMPORT_COLUMNS:
            report.problems.append(
                RowProblem(
                    1,
                    name or f"column {i + 1}",
                    f"unknown column (expected: {', '.join(IMPORT_COLUMNS)})",
                )
            )
        elif header.index(name) != i:
            report.problems.append(RowProblem(1, name, "column given twice"))
    for name in _REQUIRED_COLUMNS:
        if name not in header:
            report.problems.append(RowProblem(1, name, "required column missing"))
    return header if len(report.problems) == problems else None


def _parse_rows(
    reader: _CsvReader,
    header: Sequence[str],
    site: Site,
    models: Mapping[str, DeviceModel],
    defaults: FeeThresholds,
    binding: TariffBinding | None,
    report: ImportReport,
) -> list[_Row]:
    """Every data row parsed and checked against the site file, the tariffs and the rows
    above it; a bad row is reported and left out."""
    parsed: list[_Row] = []
    seen_ids: dict[str, int] = {}
    seen_meters: dict[str, int] = {}
    while True:
        line = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            report.rows += 1
            report.problems.append(RowProblem(line, "row", f"malformed CSV: {exc}"))
            break  # the reader cannot resynchronise after a broken quote
        line = reader.line_num
        if not values or all(not v.strip() for v in values):
            continue
        report.rows += 1
        if len(values) != len(header):
            report.problems.append(
                RowProblem(line, "row", f"expected {len(header)} fields, got {len(values)}")
            )
            continue
        record = {k: v.strip() for k, v in zip(header, values, strict=True)}
        cells = _Cells(line, record)
        row = _parse_row(cells, site, models, defaults)
        if row is not None:
            if binding is not None:
                cells.check(
                    binding.check_account, row.spec.tariff_id, [m.meter_id for m in row.spec.meters]
                )
            cells.check(_check_row_unique, row, seen_ids, seen_meters)
        report.problems.extend(cells.problems)
        if row is not None and not cells.problems:
            parsed.append(row)
    return parsed


def _check_against_database(
    conn: Connection, parsed: Sequence[_Row], report: ImportReport, progress: Progress | None
) -> list[_Row]:
    """The rows whose account and meters are free in the database, with two look-ups for
    the whole file instead of per row. An account that exists with the same settings is
    `unchanged`; with other settings, or a meter another account holds, the row is bad."""
    existing_ids: set[str] = set()
    for chunk in _chunks([r.spec.id for r in parsed]):
        existing_ids.update(
            conn.execute(sa.select(t.account.c.id).where(t.account.c.id.in_(chunk))).scalars()
        )
    taken: dict[str, str] = {}
    for chunk in _chunks([m.meter_id for r in parsed for m in r.spec.meters]):
        taken.update(
            conn.execute(
                sa.select(t.account_meter.c.meter_id, t.account_meter.c.account_id).where(
                    t.account_meter.c.meter_id.in_(chunk), t.account_meter.c.detached_at.is_(None)
                )
            ).all()
        )
    good = []
    for checked, row in enumerate(parsed, 1):
        try:
            if row.spec.id in existing_ids:
                existing = find_account(conn, row.spec.id)
                if existing is None or not _same(existing, row):
                    raise RequestError(
                        "id",
                        f"account {row.spec.id!r} already exists with other settings: use "
                        "another id, or make the line match it (account show)",
                    )
                report.unchanged.append(row.spec.id)
                continue
            for m in row.spec.meters:
                if m.meter_id in taken:
                    raise RequestError(
                        "meters",
                        f"meter {m.meter_id!r} already belongs to account "
                        f"{taken[m.meter_id]!r}: close that account first, or leave it out",
                    )
        except RequestError as exc:
            value = row.spec.id if exc.field == "id" else ""
            report.problems.append(RowProblem(row.line, exc.field, exc.message, value))
            continue
        good.append(row)
        if progress is not None:
            progress("checked", checked)
    return good


def _create(
    conn: Connection,
    rows: Sequence[_Row],
    requested_by: str,
    at: datetime,
    report: ImportReport,
    progress: Progress | None,
) -> None:
    """Write the good rows' accounts, with their opening balances."""
    for done, row in enumerate(rows, 1):
        insert_account(conn, row.spec, row.open_now, at)
        if row.opening_fen:
            post_opening_balance(
                conn, row.spec.id, row.opening_fen, requested_by=requested_by, now=at
            )
        report.created.append(row.spec.id)
        if progress is not None:
            progress("created", done)


def _chunks(items: Sequence[str], size: int = 500) -> Iterable[list[str]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


def _same(account: Account, row: _Row) -> bool:
    spec = row.spec
    return (
        account.name == spec.name
        and account.room == spec.room
        and account.tariff_id == spec.tariff_id
        and account.thresholds == spec.thresholds
        and account.protected == spec.protected
        and account.notify == spec.notify
        and [(m.meter_id, m.control_mode) for m in account.meters]
        == [(m.meter_id, ControlMode(m.control_mode).value) for m in spec.meters]
    )


def _check_row_unique(row: _Row, ids: dict[str, int], meters: dict[str, int]) -> None:
    if row.spec.id in ids:
        raise RequestError(
            "id", f"account {row.spec.id!r} is already on line {ids[row.spec.id]}: keep one"
        )
    for m in row.spec.meters:
        if m.meter_id in meters:
            raise RequestError(
                "meters",
                f"meter {m.meter_id!r} is already on line {meters[m.meter_id]}: a meter "
                "belongs to one account",
            )
    ids[row.spec.id] = row.line
    for m in row.spec.meters:
        meters[m.meter_id] = row.line


class _Cells:
    """One data line's cells, and every problem found in them (not only the first)."""

    def __init__(self, line: int, record: Mapping[str, str]) -> None:
        self.line = line
        self.record = record
        self.problems: list[RowProblem] = []

    def check(self, check: Callable[..., T], *args: Any) -> T | None:
        """`check(*args)`, or None with its problem noted (named by the column it blames,
        with the value the cell holds)."""
        try:
            return check(*args)
        except RequestError as exc:
            field = exc.field.removeprefix("--")
            self.problems.append(
                RowProblem(self.line, field, exc.message, self.record.get(field, ""))
            )
            return None


def _parse_row(
    cells: _Cells,
    site: Site,
    models: Mapping[str, DeviceModel],
    d: FeeThresholds,
) -> _Row | None:
    """One data line as the account it asks for (None: a problem, noted in `cells`); `d`
    gives the thresholds left empty. Every column is checked, so a line with three bad
    cells gets three problems."""
    r = cells.record

    def amount(name: str, default: int) -> int | None:
        text = r.get(name, "")
        return cells.check(lambda: parse_yuan(text, name, low_fen=0)) if text else default

    for name in r:
        cells.check(_check_printable, name, r[name])
    room = cells.check(_parse_room, r.get("room") or None, site)
    meters = cells.check(_parse_meters, r.get("meters", ""), site, models)
    defaults = (
        ("alarm1", d.alarm1_fen),
        ("alarm2", d.alarm2_fen),
        ("overdraft_limit", d.overdraft_limit_fen),
        ("close_limit", d.close_limit_fen),
        ("hoard_limit", d.hoard_limit_fen),
    )
    limits = [amount(name, default) for name, default in defaults]
    protected = cells.check(_parse_protected, r.get("protected", ""))
    state = cells.check(_parse_state, r.get("state", ""))
    opening = amount("opening_balance", 0)
    if opening and state == "PREREGISTERED":
        cells.check(_refuse, "opening_balance", "only an OPEN account can carry a balance")
    # The rest of the row (id, name, tariff, notify, thresholds together) is checked even
    # when a cell above was bad, with the defaults standing in for the bad cells.
    spec = AccountSpec(
        id=r.get("id", ""),
        name=r.get("name", ""),
        meters=meters or (),
        room=room,
        tariff_id=r.get("tariff") or None,
        thresholds=FeeThresholds(
            *[x if x is not None else dflt for x, (_, dflt) in zip(limits, defaults, strict=True)]
        ),
        protected=bool(protected),
        notify=tuple(n for n in re.split(r"[;\s]+", r.get("notify", "")) if n),
    )
    cells.check(validate_spec, spec)
    opening = opening or 0
    hoard = spec.thresholds.hoard_limit_fen
    if opening and hoard and opening > hoard:
        cells.check(
            _refuse,
            "opening_balance",
            f"{format_fen(opening)} is above the hoarding limit {format_fen(hoard)}: "
            "raise hoard_limit or lower the balance",
        )
    return None if cells.problems else _Row(cells.line, spec, state == "OPEN", opening)


def _refuse(field: str, message: str) -> None:
    raise RequestError(field, message)


def _parse_meters(
    text: str, site: Site, models: Mapping[str, DeviceModel]
) -> tuple[AccountMeter, ...]:
    return tuple(resolve_meter(site, models, meter, mode) for meter, mode in parse_meter_list(text))


def _parse_protected(text: str) -> bool:
    if text.lower() not in _YES | _NO:
        raise RequestError("protected", "expected yes or no (or empty: no)")
    return text.lower() in _YES


def _parse_state(text: str) -> str:
    state = (text or "OPEN").upper()
    if state not in ("OPEN", "PREREGISTERED"):
        raise RequestError("state", "expected OPEN or PREREGISTERED (or empty: OPEN)")
    return state


def _check_printable(name: str, text: str) -> None:
    control = first_control(text)
    if control is not None:
        raise RequestError(
            name,
            f"control character {control[1]} at position {control[0]}; names and "
            "references are printable text (remove it and import again)",
        )


def _parse_room(room: str | None, site: Site) -> str | None:
    if room is not None and room not in site.rooms:
        known = sorted(site.rooms)
        raise RequestError(
            "room",
            f"unknown room {room!r} (site rooms: "
            f"{', '.join(known[:8]) + (', ...' if len(known) > 8 else '')})",
        )
    return room
