"""Tables out: CSV and XLSX (openpyxl, with a chart where one says more than the numbers).

A `Table` is what every report and export produces: a title, column names, rows of plain
values (text, integers, `Decimal` yuan — money is shown exactly as the ledger holds it,
fen / 100, never rounded here) and an optional total row and chart. `write_csv` and
`write_xlsx` turn one or several tables into files. Printable pages for tenants (bills,
arrears notices) are `printed`'s.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

Value = str | int | Decimal | None


def yuan(fen: int) -> Decimal:
    """Fen as exact yuan (12345 → Decimal('123.45')): display only, nothing is rounded."""
    return Decimal(int(fen)).scaleb(-2)


@dataclass(frozen=True, slots=True)
class Chart:
    """A chart of a table: `kind` bar, stacked (bar), or line; categories from column
    `category`, one series per column in `series`."""

    kind: str
    category: int
    series: tuple[int, ...]
    title: str = ""
    y_title: str = ""


@dataclass(slots=True)
class Table:
    title: str
    columns: list[str]
    rows: list[list[Value]] = field(default_factory=list)
    total: list[Value] | None = None
    chart: Chart | None = None
    notes: list[str] = field(default_factory=list)
    #: Sheet name in a workbook (≤ 31 characters).
    sheet: str = ""


#: A text cell starting with one of these is run by spreadsheet programs: a formula (`=`,
#: `+`, `-`, `@`, and their full-width forms) or, after a tab or line break, whatever comes
#: next ("CSV injection": `=cmd|' /C calc'!A0` in a tenant name starts a program).
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\n", "＝", "＋", "－", "＠")
#: Text that is a plain number is left alone, so "-12.50" stays a number in a spreadsheet.
_NUMBER_TEXT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


def runs_as_formula(value: Value) -> bool:
    """Whether a spreadsheet program would execute this text cell."""
    return (
        isinstance(value, str)
        and value.startswith(FORMULA_TRIGGERS)
        and not _NUMBER_TEXT.fullmatch(value)
    )


def _csv_cell(v: Value) -> str:
    """A CSV cell: formula-like text gets a leading apostrophe (shown as text, never run);
    numbers, and text that is a plain number, are written as they are."""
    return "'" + str(v) if runs_as_formula(v) else _text(v)


def _text(v: Value) -> str:
    if v is None:
        return ""
    if isinstance(v, Decimal):
        return f"{v:f}"
    return str(v)


def csv_text(table: Table) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow([_csv_cell(v) for v in table.columns])
    for row in table.rows:
        w.writerow([_csv_cell(v) for v in row])
    if table.total is not None:
        w.writerow([_csv_cell(v) for v in table.total])
    return out.getvalue()


def write_csv(table: Table, path: Path) -> Path:
    """UTF-8 with a byte-order mark, so that spreadsheet programs read Chinese text right."""
    path.write_text("\ufeff" + csv_text(table), encoding="utf-8")
    return path


def write_xlsx(tables: Sequence[Table], path: Path) -> Path:
    """One sheet per table, header in bold, money as numbers with two decimals, and the
    table's chart next to it."""
    from openpyxl import Workbook
    from openpyxl.chart import BarChart, LineChart, Reference
    from openpyxl.styles import Font
    from openpyxl.utils import get_column_letter

    wb = Workbook()
    wb.remove(wb.active)
    used: set[str] = set()
    for n, table in enumerate(tables):
        name = (table.sheet or table.title or f"Sheet{n + 1}")[:31]
        for bad in "[]:*?/\\":
            name = name.replace(bad, " ")
        base, k = name, 2
        while name in used:
            name = f"{base[:28]} {k}"
            k += 1
        used.add(name)
        ws = wb.create_sheet(name)
        _append(ws, [table.title])
        ws["A1"].font = Font(bold=True, size=12)
        for note in table.notes:
            _append(ws, [note])
        header_row = ws.max_row + 1
        _append(ws, table.columns)
        for cell in ws[header_row]:
            cell.font = Font(bold=True)
        decimals = set()
        for row in table.rows:
            _append(ws, row)
            decimals |= {i for i, v in enumerate(row) if isinstance(v, Decimal)}
        first, last = header_row + 1, ws.max_row
        if table.total is not None:
            _append(ws, table.total)
            for cell in ws[ws.max_row]:
                cell.font = Font(bold=True)
        for i in decimals:
            for row in ws.iter_rows(
                min_row=first, max_row=ws.max_row, min_col=i + 1, max_col=i + 1
            ):
                for cell in row:
                    cell.number_format = "#,##0.00"
        for i, title in enumerate(table.columns, start=1):
            width = max([len(str(title))] + [len(_text(r[i - 1])) for r in table.rows[:200]])
            ws.column_dimensions[get_column_letter(i)].width = min(max(10, width + 2), 60)
        chart = table.chart
        if chart is not None and table.rows:
            if chart.kind == "line":
                c: Any = LineChart()
            else:
                c = BarChart()
                c.type = "col"
                if chart.kind == "stacked":
                    c.grouping = "stacked"
                    c.overlap = 100
            c.title = chart.title or table.title
            c.y_axis.title = chart.y_title
            c.height, c.width = 9, 22
            for s in chart.series:
                data = Reference(ws, min_col=s + 1, min_row=header_row, max_row=last)
                c.add_data(data, titles_from_data=True)
            cats = Reference(ws, min_col=chart.category + 1, min_row=first, max_row=last)
            c.set_categories(cats)
            ws.add_chart(c, f"{get_column_letter(len(table.columns) + 2)}{header_row}")
    wb.save(path)
    return path


def _append(ws: Any, values: Sequence[Value]) -> None:
    """Append a row; formula-like text becomes a string cell with the quote prefix (shown
    as typed, not run, and still text when someone edits it). Numbers stay numeric cells."""
    ws.append(list(values))
    for cell, value in zip(ws[ws.max_row], values, strict=False):
        if runs_as_formula(value):
            cell.data_type = "s"
            cell.quotePrefix = True
