"""An account's settings through the door: tariff, thresholds, protected supply (保电)."""

from __future__ import annotations

import dataclasses
from datetime import datetime

from sqlalchemy.engine import Connection

from .. import ledger
from ..ledger import RequestError, format_fen
from ..model import MeterKind
from ..prepay import accounts as acc
from ..prepay.account_rows import load_account_row
from ..prepay.effects import Effects
from ..prepay.feecontrol import Cause
from ..rating.tariffs import Commodity
from .door import Door


class AccountSettingsDoor(Door):
    def check_tariff(self, conn: Connection, account_id: str, tariff_id: str) -> acc.Account:
        """The account `set_tariff` would change, or the `RequestError` it would refuse
        with. Reads only (a dry run); `set_tariff` runs it first."""
        if not isinstance(tariff_id, str):
            raise RequestError("tariff", f"expected a tariff id, got {tariff_id!r}")
        self.binding.check_known(tariff_id)
        account = acc.get_account(conn, account_id)
        acc.check_settable(account)
        commodity = self.catalogue.get(tariff_id).commodity
        wanted = MeterKind.WATER if commodity is Commodity.WATER else MeterKind.ELECTRIC
        if account.meters and not any(m.kind == wanted.value for m in account.meters):
            raise RequestError(
                "tariff",
                f"tariff {tariff_id!r} prices {commodity.value}, but account "
                f"{account_id!r} has no {wanted.value} meter",
            )
        self.binding.check_account(tariff_id, [m.meter_id for m in account.meters])
        return account

    def set_tariff(self, account_id: str, tariff_id: str, *, actor: str) -> acc.Account:
        """Price the account's meters with `tariff_id` from the site's [tariffs] (for
        meters of the tariff's commodity; the others keep [prepay.engine] defaults).
        Refused when the tariff cannot bill a meter's registers (core.prepay.binding)."""

        def work(conn: Connection, effects: Effects, now: datetime) -> acc.Account:
            self.check_tariff(conn, account_id, tariff_id)
            updated = acc.update_account(conn, account_id, tariff_id=tariff_id, now=now)
            effects.accounts.add(account_id)
            return updated

        return self._call("set_tariff", account_id, actor, work, lambda a: f"tariff {a.tariff_id}")

    def check_thresholds(
        self,
        conn: Connection,
        account_id: str,
        *,
        alarm1_fen: int,
        alarm2_fen: int,
        overdraft_limit_fen: int | None = None,
        close_limit_fen: int | None = None,
    ) -> tuple[acc.Account, acc.Thresholds]:
        """(the account, its thresholds after) `set_thresholds` would store, or the
        `RequestError` it would refuse with. Reads only; `set_thresholds` runs it first."""
        for name, value in (
            ("alarm1", alarm1_fen),
            ("alarm2", alarm2_fen),
            ("overdraft_limit", overdraft_limit_fen),
            ("close_limit", close_limit_fen),
        ):
            if value is None and name in ("overdraft_limit", "close_limit"):
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise RequestError(name, f"expected whole fen (an integer), got {value!r}")
            if value < 0 or value > ledger.CAPACITY_FEN:
                raise RequestError(
                    name,
                    f"expected 0.00 to {format_fen(ledger.CAPACITY_FEN)}, got {format_fen(value)}",
                )
        account = acc.get_account(conn, account_id)
        acc.check_settable(account)
        old = account.thresholds
        new = dataclasses.replace(
            old,
            alarm1_fen=alarm1_fen,
            alarm2_fen=alarm2_fen,
            overdraft_limit_fen=(
                old.overdraft_limit_fen if overdraft_limit_fen is None else overdraft_limit_fen
            ),
            close_limit_fen=old.close_limit_fen if close_limit_fen is None else close_limit_fen,
        )
        for name, message in acc.threshold_problems(new):
            raise RequestError(name, message)
        return account, new

    def set_thresholds(
        self,
        account_id: str,
        *,
        alarm1_fen: int,
        alarm2_fen: int,
        overdraft_limit_fen: int | None = None,
        close_limit_fen: int | None = None,
        actor: str,
    ) -> acc.Account:
        """Change the alarm amounts (and optionally the overdraft and close limits), then
        re-evaluate fee control with them."""

        def work(conn: Connection, effects: Effects, now: datetime) -> acc.Account:
            account, new = self.check_thresholds(
                conn,
                account_id,
                alarm1_fen=alarm1_fen,
                alarm2_fen=alarm2_fen,
                overdraft_limit_fen=overdraft_limit_fen,
                close_limit_fen=close_limit_fen,
            )
            old = account.thresholds
            acc.update_account(conn, account_id, thresholds=new, now=now)
            cause = (
                Cause.OVERDRAFT_LIMIT_CHANGE
                if new.overdraft_limit_fen != old.overdraft_limit_fen
                else Cause.ALARM_THRESHOLD_CHANGE
            )
            self._fee_control(conn, account_id, cause, actor, effects, now)
            return acc.get_account(conn, account_id)  # with the fee state just evaluated

        def describe(a: acc.Account) -> str:
            th = a.thresholds
            return (
                f"alarm1 {format_fen(th.alarm1_fen)}, alarm2 {format_fen(th.alarm2_fen)}, "
                f"overdraft {format_fen(th.overdraft_limit_fen)}, "
                f"close {format_fen(th.close_limit_fen)}; fee state {a.fee_state}"
            )

        return self._call("set_thresholds", account_id, actor, work, describe)

    def protect(self, account_id: str, on: bool, *, actor: str) -> acc.Account:
        """保电 on or off. On: fee control never cuts the account, and meters it cut are
        closed again. Off: nothing switches at once; an account still in arrears is
        evaluated again (and may be tripped through the policy gate)."""
        if not isinstance(on, bool):
            raise RequestError("on", f"expected true or false, got {on!r}")

        def work(conn: Connection, effects: Effects, now: datetime) -> acc.Account:
            acc.get_account(conn, account_id)
            updated = acc.update_account(conn, account_id, protected=on, now=now)
            row = load_account_row(conn, account_id)
            if on and row is not None:
                self.control.restore_cut(
                    conn,
                    row,
                    f"protected supply (保电) set by {actor}",
                    actor=actor,
                    effects=effects,
                    now=now,
                )
            elif not on:
                self._fee_control(conn, account_id, Cause.DEDUCTION, actor, effects, now)
            effects.accounts.add(account_id)
            return updated

        return self._call(
            "protect" if on else "unprotect",
            account_id,
            actor,
            work,
            lambda a: f"protected supply (保电) {'on' if a.protected else 'off'}",
        )
