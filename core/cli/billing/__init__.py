"""Commands for billing operations: `billing`, `bill`, `batch` and `report`.

- `openprepay billing ...` — meter readings at the freeze instants, common-area
  apportionment, custom charges, the month-end, the itemised statement of an account;
- `openprepay bill ...` — post-paid bills: draft, list, show, confirm, issue, pay, arrears,
  export (CSV, XLSX, one printable HTML page per bill);
- `openprepay batch ...` — batch and scheduled operations (dry run, progress bar);
- `openprepay report ...` — finance and energy reports, on screen, as CSV or as XLSX.

Amounts are yuan with two decimals; dates are site-local (`2025-03-01`, `2025-03-01 08:00`).
Every command is one or a few database transactions against the site's database; a bad
request names the field, changes nothing and exits with status 1.
"

One module per command group (`billing`, `bill`, `batch`, `report`); `common` holds the
shared options and parsing, `services` builds the billing services from the site file.
"""

from __future__ import annotations

import click

from .batch import batch_group
from .bill import bill_group
from .billing import billing_group
from .report import report_group


def register(cli: click.Group) -> None:
    cli.add_command(billing_group)
    cli.add_command(bill_group)
    cli.add_command(batch_group)
    cli.add_command(report_group)
