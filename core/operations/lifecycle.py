"""Accounts through the door: open (new or pre-registered), close, import from CSV."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.engine import Connection

from ..ledger import RequestError
from ..prepay import accounts as acc
from ..prepay.account_import import ImportReport, import_accounts
from ..prepay.effects import Effects
from .door import Door

#: An import that opens this many accounts refreshes the planner's statistics after it
#: (`Database.analyze`): a few seconds' work at most, against queries planned for empty
#: tables until autovacuum comes by.
ANALYZE_AFTER_ACCOUNTS = 500


@dataclass(frozen=True, slots=True)
class NewAccount:
    """What a face asks for when it opens an account (amounts already parsed to fen).

    For an account that exists (pre-registered) only `account_id` may be given."""

    account_id: str
    name: str | None = None
    room: str | None = None
    #: Meter ids, each optionally with a control-mode override (`E-A-101`, `W-A-101:LOCAL`).
    meters: tuple[str, ...] = ()
    tariff: str | None = None
    alarm1_fen: int | None = None
    alarm2_fen: int | None = None
    overdraft_limit_fen: int | None = None
    close_limit_fen: int | None = None
    hoard_limit_fen: int | None = None
    protected: bool = False
    notify: tuple[str, ...] = ()
    preregister: bool = False

    def options_given(self) -> bool:
        amounts = (
            self.alarm1_fen,
            self.alarm2_fen,
            self.overdraft_limit_fen,
            self.close_limit_fen,
            self.hoard_limit_fen,
        )
        return (
            any(v is not None for v in (self.name, self.room, self.tariff, *amounts))
            or bool(self.meters)
            or self.protected
            or bool(self.notify)
        )


@dataclass(frozen=True, slots=True)
class Opened:
    account: acc.Account
    #: opened / already open / pre-registered.
    verb: str


class AccountLifecycleDoor(Door):
    def open_account(
        self, request: NewAccount, *, actor: str, labels: Mapping[str, str] | None = None
    ) -> Opened:
        """Create an account with its wallets and meters (OPEN, or PREREGISTERED with
        `preregister`), or open a pre-registered one. `labels` says how the asking face
        names each field in its errors (the CLI: `{"room": "--room", ...}`)."""
        label = dict(labels or {}).get

        def work(conn: Connection, effects: Effects, now: datetime) -> Opened:
            existing = acc.find_account(conn, request.account_id)
            if existing is not None:
                return self._open_existing(conn, existing, request, label, now)
            opened = self._create(conn, request, label, now)
            effects.accounts.add(request.account_id)
            return opened

        return self._call(
            "account_open",
            request.account_id,
            actor,
            work,
            lambda o: (
                f"{o.verb}: {len(o.account.meters)} meter(s), tariff "
                f"{o.account.tariff_id or 'default'}"
            ),
        )

    def _open_existing(
        self,
        conn: Connection,
        existing: acc.Account,
        request: NewAccount,
        label: Callable[[str, str], str],
        now: datetime,
    ) -> Opened:
        if request.options_given():
            raise RequestError(
                "account",
                f"account {request.account_id!r} exists ({existing.state}); "
                "options only apply to a new account",
            )
        if request.preregister:
            raise RequestError(
                label("preregister", "preregister"), f"account {request.account_id!r} exists"
            )
        account = acc.open_account(conn, request.account_id, now=now)
        verb = "already open" if existing.state is acc.AccountState.OPEN else "opened"
        return Opened(account, verb)

    def _create(
        self, conn: Connection, request: NewAccount, label: Callable[[str, str], str], now: datetime
    ) -> Opened:
        if not request.name:
            raise RequestError(label("name", "name"), "required for a new account")
        if request.room is not None and request.room not in self.site.rooms:
            raise RequestError(
                label("room", "room"), f"unknown room {request.room!r} in {self.site.path}"
            )
        assigned = tuple(
            acc.resolve_meter(self.site, self.models, meter, mode, label("meters", "meters"))
            for text in request.meters
            for meter, mode in acc.parse_meter_list(text)
        )
        d = self.settings.thresholds

        def given(value: int | None, default: int) -> int:
            return default if value is None else value

        thresholds = acc.Thresholds(
            given(request.alarm1_fen, d.alarm1_fen),
            given(request.alarm2_fen, d.alarm2_fen),
            given(request.overdraft_limit_fen, d.overdraft_limit_fen),
            given(request.close_limit_fen, d.close_limit_fen),
            given(request.hoard_limit_fen, d.hoard_limit_fen),
        )
        self.binding.check_account(
            request.tariff, [m.meter_id for m in assigned], label("tariff", "tariff")
        )
        spec = acc.AccountSpec(
            request.account_id,
            request.name,
            assigned,
            request.room,
            request.tariff,
            thresholds,
            request.protected,
            request.notify,
        )
        account = acc.create_account(conn, spec, open_now=not request.preregister, now=now)
        return Opened(account, "pre-registered" if request.preregister else "opened")

    def close_account(self, account_id: str, *, actor: str) -> acc.Account:
        """Close an account (its wallets at 0.00, no money command unfinished); its meters
        are freed for the next tenant."""

        def work(conn: Connection, effects: Effects, now: datetime) -> acc.Account:
            account = acc.close_account(conn, account_id, now=now)
            effects.accounts.add(account_id)
            return account

        return self._call(
            "account_close",
            account_id,
            actor,
            work,
            lambda a: (
                "closed; meters freed: " + (", ".join(m.meter_id for m in a.meters) or "none")
            ),
        )

    def import_accounts(
        self,
        text: str,
        *,
        actor: str,
        all_or_nothing: bool = False,
        dry_run: bool = False,
        progress: Callable[[str, int], None] | None = None,
    ) -> ImportReport:
        """Open accounts in bulk from CSV text (`core.prepay.account_import.import_accounts`):
        good rows are created, bad rows reported and change nothing. `dry_run` checks every
        row and writes nothing (not audited: nothing changed)."""

        def run(conn: Connection, now: datetime) -> ImportReport:
            return import_accounts(
                conn,
                self.site,
                self.models,
                text,
                all_or_nothing=all_or_nothing,
                defaults=self.settings.thresholds,
                progress=progress,
                requested_by=actor,
                binding=self.binding,
                now=now,
            )

        if dry_run:
            return self._dry_run(run)

        def work(conn: Connection, effects: Effects, now: datetime) -> ImportReport:
            report = run(conn, now)
            effects.accounts.update(report.created)
            return report

        report = self._call(
            "account_import",
            "accounts",
            actor,
            work,
            lambda r: (
                f"{r.rows} row(s): {len(r.created)} created, {len(r.unchanged)} "
                f"unchanged, {len(r.problems)} bad"
                + (" (nothing written)" if r.rolled_back else "")
            ),
        )
        if len(report.created) >= ANALYZE_AFTER_ACCOUNTS:
            self.db.analyze()  # the planner's statistics of the tables just filled
        return report

    def _dry_run(self, run: Callable[[Connection, datetime], ImportReport]) -> ImportReport:
        try:
            with self.db.begin() as conn:
                raise _RolledBack(run(conn, self.clock()))
        except _RolledBack as done:
            return done.report


class _RolledBack(Exception):
    """Leaves a dry run's transaction: what it wrote is rolled back."""

    def __init__(self, report: ImportReport) -> None:
        self.report = report
