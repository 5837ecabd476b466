"""Commands for the database and the ledger: `db upgrade|status`, `ledger verify|reverse`."""

from __future__ import annotations

import getpass

import click

from ..db import Database
from ..errors import OpenPrepayError
from ..ledger import format_fen, reverse, verify
from . import EXIT_FAILED
from .common import load_checked_site, site_argument
from .params import ROW_ID


def operator() -> str:
    """Who is at the keyboard, for the audit trail (`cli:alice`)."""
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:
        return "cli"


def site_database(site_file: str) -> Database:
    """The site's database, refusing to work on a schema other than the code's."""
    db = Database.for_site(load_checked_site(site_file))
    current, head = db.current_revision(), db.head_revision()
    if current != head:
        db.dispose()
        state = "empty" if current is None else f"at revision {current}"
        raise OpenPrepayError(
            f"the database {db.describe()} is {state}; this version needs {head}: "
            f"run `openprepay db upgrade {site_file}`"
        )
    return db


@click.group("db")
def db_group() -> None:
    """The database (SQLite by default, PostgreSQL via [database] url)."""


@db_group.command("upgrade")
@site_argument
def db_upgrade(site_file: str) -> None:
    """Create or migrate the database of SITE to this version's schema."""
    db = Database.for_site(load_checked_site(site_file))
    try:
        before = db.current_revision()
        after = db.upgrade()
        if before == after:
            click.echo(f"{db.describe()}: already at {after}")
        else:
            click.echo(f"{db.describe()}: migrated {before or 'empty'} -> {after}")
    finally:
        db.dispose()


@db_group.command("status")
@site_argument
def db_status(site_file: str) -> None:
    """Show the database URL and its schema revision."""
    db = Database.for_site(load_checked_site(site_file))
    try:
        current, head = db.current_revision(), db.head_revision()
        mark = "up to date" if current == head else f"needs `openprepay db upgrade` to {head}"
        click.echo(f"{db.describe()}: revision {current or 'none (empty)'} ({mark})")
    finally:
        db.dispose()


@click.group("ledger")
def ledger_group() -> None:
    """The double-entry ledger."""


@ledger_group.command("verify")
@site_argument
def ledger_verify(site_file: str) -> None:
    """Check every ledger invariant; exit status 1 when one is broken."""
    db = site_database(site_file)
    try:
        with db.read() as conn:
            report = verify(conn)
    finally:
        db.dispose()
    broken = {b.invariant for b in report.breaks}
    for name in report.checks:
        click.echo(f"{'BROKEN' if name in broken else 'ok':>6}  {name}")
    for b in report.breaks:
        click.echo(f"  {b}", err=True)
    click.echo(
        f"{report.journals} journals, {report.postings} postings, {report.wallets} wallets: "
        + ("all invariants hold" if report.ok else f"{len(report.breaks)} break(s)")
    )
    if not report.ok:
        raise SystemExit(EXIT_FAILED)


@ledger_group.command("reverse")
@site_argument
@click.argument("journal_id", type=ROW_ID)
@click.option("--reason", required=True, help="Why the entry is corrected (audit).")
def ledger_reverse(site_file: str, journal_id: int, reason: str) -> None:
    """Correct journal JOURNAL_ID by posting its exact opposite (never an edit)."""
    db = site_database(site_file)
    try:
        with db.begin() as conn:
            posted = reverse(conn, journal_id, reason=reason, requested_by=operator())
    finally:
        db.dispose()
    j = posted.journal
    lines = ", ".join(f"{p.ledger_account} {format_fen(p.amount_fen)}" for p in j.postings)
    click.echo(
        f"journal {j.id} reverses {journal_id}"
        + (" (already done)" if posted.replayed else "")
        + f": {lines}"
    )


def register(cli: click.Group) -> None:
    cli.add_command(db_group)
    cli.add_command(ledger_group)
