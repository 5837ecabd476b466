"""Options and parsing shared by the billing commands: site-local times, tables on the
screen or written as CSV/XLSX, NAME=VALUE pairs, day spans."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.table import Table as RichTable

from ...billing.export import Table, csv_text, write_csv, write_xlsx
from ...billing.reports.common import parse_day
from ...config.site import Site
from ...ledger import RequestError

console = Console()


def parse_time(site: Site, text: str, field: str = "at") -> dt.datetime:
    """`2025-03-01 08:00` (site-local), `2025-03-01` (midnight) or ISO with an offset."""
    try:
        value = dt.datetime.fromisoformat(text.strip().replace("T", " "))
    except ValueError:
        raise RequestError(
            field, f"expected a time such as 2025-03-01 08:00, got {text!r}"
        ) from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=site.info.tz)
    return value.astimezone(dt.UTC)


def echo_table(table: Table, limit: int | None = None) -> None:
    t = RichTable(title=table.title, title_justify="left", show_lines=False)
    numeric = (
        {i for i, v in enumerate(table.rows[0]) if not isinstance(v, str)} if table.rows else set()
    )
    for i, c in enumerate(table.columns):
        t.add_column(c, justify="right" if i in numeric else "left")
    rows = table.rows if limit is None else table.rows[:limit]
    for row in rows:
        t.add_row(*["" if v is None else f"{v}" for v in row])
    if limit is not None and len(table.rows) > limit:
        t.add_row(f"... {len(table.rows) - limit} more", *["" for _ in table.columns[1:]])
    if table.total is not None:
        t.add_row(*["" if v is None else f"{v}" for v in table.total], style="bold")
    # Never cut a value to fit the terminal: a wide table is printed wide.
    widths = [len(c) for c in table.columns]
    for row in [*rows, *([table.total] if table.total else [])]:
        for i, v in enumerate(row[: len(widths)]):
            widths[i] = max(widths[i], len("" if v is None else f"{v}"))
    needed = sum(widths) + 3 * len(widths) + 1
    out = Console(width=max(console.width, needed)) if needed > console.width else console
    out.print(t)
    for note in table.notes:
        out.print(note, style="dim")


def output(tables: Sequence[Table], out: str | None) -> None:
    """Print the tables, or write them: .csv (the first table), .xlsx (one sheet each)."""
    if out is None:
        for table in tables:
            echo_table(table)
        return
    path = Path(out)
    if path.suffix.lower() == ".xlsx":
        write_xlsx(tables, path)
    elif path.suffix.lower() == ".csv":
        write_csv(tables[0], path)
    elif out == "-":
        click.echo(csv_text(tables[0]), nl=False)
        return
    else:
        raise RequestError("out", f"expected a .csv or .xlsx file name (or - for CSV), got {out!r}")
    click.echo(f"wrote {path}")


def pair(text: str, field: str) -> tuple[str, str]:
    """`NAME=VALUE` as (name, value); errors name `field`."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise RequestError(field, f"expected NAME=VALUE, got {text!r}")
    return key.strip(), value.strip()


def formats(text: str) -> list[str]:
    """`csv,xlsx,html` as a list of document formats."""
    formats = [f.strip().lower() for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in ("csv", "xlsx", "html")]
    if bad or not formats:
        raise RequestError("format", f"expected csv, xlsx and/or html, got {text!r}")
    return formats


def span(from_text: str, to_text: str) -> tuple[dt.date, dt.date]:
    """--from and --to (both included) as the span [start, end)."""
    start = parse_day(from_text, "from")
    last = parse_day(to_text, "to")
    if last < start:
        raise RequestError("to", f"{last} is before {start}")
    return start, last + dt.timedelta(days=1)


OUT = click.option(
    "--out",
    help="Write FILE.csv or FILE.xlsx (with charts) instead of printing; - for CSV on stdout.",
)
FROM = click.option("--from", "from_text", required=True, help="First day, e.g. 2025-01-01.")
TO = click.option("--to", "to_text", required=True, help="Last day (included).")


OVERRIDE_HELP = (
    "Close the period although it has not ended or its freeze readings are missing or stale: "
    "the reason is written to the audit log."
)


def override_option(f: Any) -> Any:
    """`--override REASON` of the steps that close a period (core/billing/closing.py)."""
    return click.option("--override", metavar="REASON", help=OVERRIDE_HELP)(f)
