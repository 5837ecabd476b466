"""The database schema (SQLAlchemy Core): accounts, wallets, journal, commands.

This module is the schema the code queries; the migrations under `migrations/versions`
create it. `tests/core/db/test_migrations.py` checks that a database migrated from empty
matches this metadata exactly, so the two cannot drift apart.
It is one module, not one per subject, on purpose: a table catalogue is read by table name,
and keeping every table in one metadata is the single place the migrations are checked
against.

Money columns are integer fen (`*_fen`, BIGINT). Timestamps are UTC (`UtcDateTime`).
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator

#: An autoincrementing 64-bit key (SQLite only autoincrements INTEGER PRIMARY KEY).
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class UtcDateTime(TypeDecorator):
    """A timestamp stored as UTC and always returned timezone-aware (UTC).

    PostgreSQL stores `timestamptz`; SQLite stores the naive UTC text that SQLAlchemy
    writes, which sorts and compares correctly because every value is UTC.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: timestamps must be timezone-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# -- accounts and meters ---------------------------------------------------------------------

account = sa.Table(
    "account",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("room", sa.String(64), nullable=True),
    #: PREREGISTERED, OPEN, CLOSED (core.prepay.accounts.AccountState).
    sa.Column("state", sa.String(16), nullable=False),
    #: Id of a tariff in the site file's [tariffs] section (checked by the rating engine).
    sa.Column("tariff_id", sa.String(64), nullable=True),
    #: 保电: fee control never cuts this account's supply.
    sa.Column("protected", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("alarm1_fen", sa.BigInteger(), nullable=False),
    sa.Column("alarm2_fen", sa.BigInteger(), nullable=False),
    sa.Column("overdraft_limit_fen", sa.BigInteger(), nullable=False),
    sa.Column("close_limit_fen", sa.BigInteger(), nullable=False),
    #: 0 = no hoarding limit.
    sa.Column("hoard_limit_fen", sa.BigInteger(), nullable=False),
    #: Notification channels, e.g. ["email:a@example.com", "sms:+8613800000000"].
    sa.Column("notify", sa.JSON(), nullable=False),
    #: Fee control's last state (core.prepay.feecontrol.FeeState): OVERDRAFT is sticky, so the
    #: previous state must survive a restart. Revision 0002.
    sa.Column("fee_state", sa.String(16), nullable=False, server_default="NORMAL"),
    sa.Column("fee_state_at", UtcDateTime(), nullable=True),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("opened_at", UtcDateTime(), nullable=True),
    sa.Column("closed_at", UtcDateTime(), nullable=True),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.CheckConstraint("state IN ('PREREGISTERED', 'OPEN', 'CLOSED')", name="state"),
    sa.CheckConstraint("alarm1_fen >= alarm2_fen AND alarm2_fen >= 0", name="alarms"),
    sa.CheckConstraint(
        "overdraft_limit_fen >= 0 AND close_limit_fen >= 0 AND hoard_limit_fen >= 0",
        name="limits",
    ),
)
sa.Index("ix_account_room", account.c.room)

#: The platform's durable state of one physical meter (site-file device id), kept across
#: tenants: the purchase counter (购电次数) belongs to the meter, not to the account.
meter = sa.Table(
    "meter",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    #: Last purchase count allocated by the platform (the next RECHARGE carries +1).
    sa.Column("buy_count", sa.Integer(), nullable=False, server_default="0"),
    #: Last purchase count the meter confirmed (read back), for reconciliation.
    sa.Column("confirmed_buy_count", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    #: Set while the platform must read the meter's own purchase count before it sends a
    #: RECHARGE or REFUND (a LOCAL meter attached, replaced, or an operator's request);
    #: the running service reads the meter, aligns both counters and clears it. Rev. 0007.
    sa.Column("align_requested_at", UtcDateTime(), nullable=True),
    #: When the meter's own purchase count was last read and aligned with. Revision 0007.
    sa.Column("aligned_at", UtcDateTime(), nullable=True),
    #: The meter numbers purchases as the platform's count minus this (a meter that came
    #: with purchases of its own, a replaced meter restarting at 0). Revision 0007.
    sa.Column("count_offset", sa.Integer(), nullable=False, server_default="0"),
    #: The serial number of the device now installed (set by a meter replacement).
    sa.Column("serial", sa.String(64), nullable=True),
)

#: Which meters an account has. A meter belongs to at most one account that is not closed.
account_meter = sa.Table(
    "account_meter",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("account_id", sa.String(64), sa.ForeignKey("account.id"), nullable=False),
    sa.Column("meter_id", sa.String(64), sa.ForeignKey("meter.id"), nullable=False),
    #: electric / water (core.model.MeterKind).
    sa.Column("kind", sa.String(16), nullable=False),
    #: REMOTE / LOCAL / POSTPAID: copied from the site file when attached, or overridden.
    sa.Column("control_mode", sa.String(16), nullable=False),
    sa.Column("attached_at", UtcDateTime(), nullable=False),
    #: Set when the account is closed; frees the meter for the next tenant.
    sa.Column("detached_at", UtcDateTime(), nullable=True),
    sa.CheckConstraint("control_mode IN ('REMOTE', 'LOCAL', 'POSTPAID')", name="control_mode"),
)
sa.Index("ix_account_meter_account_id", account_meter.c.account_id)
sa.Index(
    "uq_account_meter_active",
    account_meter.c.meter_id,
    unique=True,
    sqlite_where=account_meter.c.detached_at.is_(None),
    postgresql_where=account_meter.c.detached_at.is_(None),
)

# -- the ledger --------------------------------------------------------------------------------

#: The chart of accounts: `asset:psp_clearing:cash`, `liab:wallet:A-101:energy`, ...
ledger_account = sa.Table(
    "ledger_account",
    metadata,
    sa.Column("code", sa.String(160), primary_key=True),
    #: asset, liab, equity, rev, exp (the code's prefix).
    sa.Column("type", sa.String(8), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
)

#: The balance of each customer wallet, cached with a version; `ledger verify` checks it
#: against the sum of the wallet's postings. Balance = money owed to the customer (fen).
wallet = sa.Table(
    "wallet",
    metadata,
    sa.Column("account_id", sa.String(64), sa.ForeignKey("account.id"), primary_key=True),
    #: energy (what fee control reads) or general (property fee, rent, services).
    sa.Column("kind", sa.String(8), primary_key=True),
    sa.Column(
        "ledger_account",
        sa.String(160),
        sa.ForeignKey("ledger_account.code"),
        nullable=False,
        unique=True,
    ),
    sa.Column("balance_fen", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("version", sa.BigInteger(), nullable=False, server_default="0"),
    sa.CheckConstraint("kind IN ('energy', 'general')", name="kind"),
)

journal = sa.Table(
    "journal",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    #: topup, usage, refund_request, refund_settle, emergency_credit, reversal, ...
    sa.Column("kind", sa.String(32), nullable=False),
    #: Unique per money-moving event: `topup:<reference>`, `usage:<meter>:<period>`...
    #: A replay finds the row and returns the original result.
    sa.Column("idempotency_key", sa.String(200), nullable=False, unique=True),
    sa.Column("account_id", sa.String(64), sa.ForeignKey("account.id"), nullable=True),
    sa.Column("meter_id", sa.String(64), nullable=True),
    #: The journal this one reverses (corrections are reversals, never edits).
    sa.Column("reverses_id", BigId, sa.ForeignKey("journal.id"), nullable=True, unique=True),
    #: The request that created the entry, compared on replay (same key, other request
    #: = an error, never a silent second meaning).
    sa.Column("request", sa.JSON(), nullable=False),
    sa.Column("memo", sa.String(500), nullable=False, server_default=""),
    sa.Column("requested_by", sa.String(100), nullable=False, server_default=""),
    sa.Column("created_at", UtcDateTime(), nullable=False),
)

#: Usage journals since a time (today's cost, the month's): migration 0014.
sa.Index("ix_journal_kind_created_at", journal.c.kind, journal.c.created_at)

#: One line of a journal. Positive = debit, negative = credit; a journal's lines sum to 0.
posting = sa.Table(
    "posting",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("journal_id", BigId, sa.ForeignKey("journal.id"), nullable=False),
    sa.Column(
        "ledger_account", sa.String(160), sa.ForeignKey("ledger_account.code"), nullable=False
    ),
    sa.Column("amount_fen", sa.BigInteger(), nullable=False),
    sa.CheckConstraint("amount_fen <> 0", name="nonzero"),
)
sa.Index("ix_posting_journal_id", posting.c.journal_id)
sa.Index("ix_posting_ledger_account", posting.c.ledger_account)

#: Drift-free deduction state per meter and billing cycle (core.rating.rounding.Accrual record),
#: written in the same transaction as the usage posting it produced. Revision 0002.
usage_accrual = sa.Table(
    "usage_accrual",
    metadata,
    sa.Column("meter_id", sa.String(64), primary_key=True),
    #: The billing cycle the accrual belongs to ("2025", "2025-03"...): a new cycle starts
    #: a new row.
    sa.Column("cycle", sa.String(32), primary_key=True),
    sa.Column("account_id", sa.String(64), sa.ForeignKey("account.id"), nullable=False),
    #: Exact cost accrued, a Fraction of a fen as text ("70699/10").
    sa.Column("cum_exact_fen", sa.String(100), nullable=False),
    #: Whole fen posted so far for the cycle.
    sa.Column("posted_fen", sa.BigInteger(), nullable=False),
    sa.Column("rounding", sa.String(16), nullable=False),
    #: The last period applied (a repeat of it is a replay).
    sa.Column("period_key", sa.String(100), nullable=False),
    #: The usage journal that last advanced it.
    sa.Column("journal_id", BigId, sa.ForeignKey("journal.id"), nullable=True),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
)

# -- payments and refunds ----------------------------------------------------------------------

#: A top-up order: what refunds are allocated against (newest first, < 365 days).
topup = sa.Table(
    "topup",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("account_id", sa.String(64), sa.ForeignKey("account.id"), nullable=False),
    #: The payment id / order number / counter receipt: unique.
    sa.Column("reference", sa.String(160), nullable=False, unique=True),
    sa.Column("channel", sa.String(32), nullable=False),
    sa.Column("amount_fen", sa.BigInteger(), nullable=False),
    #: Allocated to refunds that have not failed.
    sa.Column("refunded_fen", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("journal_id", BigId, sa.ForeignKey("journal.id"), nullable=False),
    #: For a LOCAL meter: the meter, the purchase count allocated and the RECHARGE command.
    sa.Column("meter_id", sa.String(64), nullable=True),
    sa.Column("buy_count", sa.Integer(), nullable=True),
    sa.Column("command_id", BigId, nullable=True),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.CheckConstraint("amount_fen > 0", name="positive"),
    sa.CheckConstraint("refunded_fen >= 0 AND refunded_fen <= amount_fen", name="refunded"),
)
sa.Index("ix_topup_account_id", topup.c.account_id)
sa.Index(
    "uq_topup_meter_buy_count",
    topup.c.meter_id,
    topup.c.buy_count,
    unique=True,
    sqlite_where=topup.c.buy_count.is_not(None),
    postgresql_where=topup.c.buy_count.is_not(None),
)

refund = sa.Table(
    "refund",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("account_id", sa.String(64), sa.ForeignKey("account.id"), nullable=False),
    #: The refund number (out_refund_no): one number refunds once.
    sa.Column("reference", sa.String(160), nullable=False, unique=True),
    sa.Column("amount_fen", sa.BigInteger(), nullable=False),
    #: AWAITING_METER (a LOCAL meter must be debited first; nothing posted yet),
    #: REQUESTED (wallet debited, money owed back), SETTLED (paid out), FAILED (reversed,
    #: or refused by the meter before anything was posted). AWAITING_METER: revision 0003.
    sa.Column("state", sa.String(16), nullable=False),
    #: Null while AWAITING_METER (revision 0003).
    sa.Column("request_journal_id", BigId, sa.ForeignKey("journal.id"), nullable=True),
    sa.Column("settle_journal_id", BigId, sa.ForeignKey("journal.id"), nullable=True),
    sa.Column("reversal_journal_id", BigId, sa.ForeignKey("journal.id"), nullable=True),
    sa.Column("reason", sa.String(500), nullable=False, server_default=""),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    #: LOCAL meters: the meter debited by the equal-count REFUND command, the command, and
    #: whether the pay-out is recorded as soon as the meter confirms (revision 0003).
    sa.Column("meter_id", sa.String(64), nullable=True),
    sa.Column("command_id", BigId, nullable=True),
    sa.Column("settle_on_confirm", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.CheckConstraint("amount_fen > 0", name="positive"),
    sa.CheckConstraint(
        "state IN ('AWAITING_METER', 'REQUESTED', 'SETTLED', 'FAILED')", name="state"
    ),
)
sa.Index("ix_refund_account_id", refund.c.account_id)

#: Which top-ups a refund pays back (newest first), and through which channel.
refund_allocation = sa.Table(
    "refund_allocation",
    metadata,
    sa.Column("refund_id", BigId, sa.ForeignKey("refund.id"), primary_key=True),
    sa.Column("topup_id", BigId, sa.ForeignKey("topup.id"), primary_key=True),
    sa.Column("amount_fen", sa.BigInteger(), nullable=False),
    sa.CheckConstraint("amount_fen > 0", name="positive"),
)

# -- durable meter commands --------------------------------------------------------------------

meter_command = sa.Table(
    "meter_command",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("meter_id", sa.String(64), nullable=False),
    #: TRIP, CLOSE, ALLOW_CLOSE, ... (core.prepay.commands.CommandKind).
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("params", sa.JSON(), nullable=False),
    #: Why (audit): "balance -0.30 <= 0 (journal 812)", "operator request", ...
    sa.Column("reason", sa.String(500), nullable=False),
    #: Who asked (audit): "cli:alice", "fee-control", "opcua:operator1", ...
    sa.Column("requested_by", sa.String(100), nullable=False),
    #: PENDING, CLAIMED, SENT, CONFIRMED, FAILED, SUPERSEDED (core.prepay.commands.CommandState).
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("next_attempt_at", UtcDateTime(), nullable=False),
    #: Who holds the claim and until when; an expired lease is claimable again.
    sa.Column("claimed_by", sa.String(100), nullable=True),
    sa.Column("lease_until", UtcDateTime(), nullable=True),
    sa.Column("last_error", sa.String(1000), nullable=True),
    #: What the device read back when confirming (audit).
    sa.Column("readback", sa.JSON(), nullable=True),
    sa.Column("superseded_by", BigId, sa.ForeignKey("meter_command.id"), nullable=True),
    #: The ledger entry and account that caused it, when money caused it.
    sa.Column("journal_id", BigId, sa.ForeignKey("journal.id"), nullable=True),
    sa.Column("account_id", sa.String(64), nullable=True),
    #: Optional caller key so a decision is enqueued once (`fee:<meter>:<journal>`).
    sa.Column("idempotency_key", sa.String(200), nullable=True, unique=True),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.Column("sent_at", UtcDateTime(), nullable=True),
    sa.Column("finished_at", UtcDateTime(), nullable=True),
    #: The FAILED command this one retries (`openprepay command retry`). Revision 0007.
    sa.Column("retry_of", BigId, nullable=True),
    #: How an operator dealt with a FAILED command ("retried as #12", "refunded: top-up
    #: reversed by journal 40"), who and when; a FAILED money command without one is an
    #: open alarm. Revision 0007.
    sa.Column("resolution", sa.String(300), nullable=True),
    sa.Column("resolved_by", sa.String(100), nullable=True),
    sa.Column("resolved_at", UtcDateTime(), nullable=True),
    #: The meter's command sequence number (per meter, increasing; revision 0012).
    sa.Column("seq", sa.BigInteger(), nullable=True),
    #: With [cluster]: the link and lease epoch the command was claimed under; completing it
    #: requires that epoch to be still current (fencing, core/cluster). Revision 0012.
    sa.Column("claimed_link", sa.String(64), nullable=True),
    sa.Column("claimed_epoch", sa.BigInteger(), nullable=True),
    sa.CheckConstraint(
        "state IN ('PENDING', 'CLAIMED', 'SENT', 'CONFIRMED', 'FAILED', 'SUPERSEDED')",
        name="state",
    ),
)
sa.Index("ix_meter_command_meter_id_state", meter_command.c.meter_id, meter_command.c.state)
#: A FAILED command is retried at most once (revision 0007).
sa.Index("uq_meter_command_retry_of", meter_command.c.retry_of, unique=True)
sa.Index(
    "ix_meter_command_state_next_attempt_at", meter_command.c.state, meter_command.c.next_attempt_at
)

# -- the prepayment engine (revision 0004) -----------------------------------------------------

#: What the prepayment engine remembers per meter: the rating baseline (core.rating.layout
#: MeterState record), the supply state last confirmed by read-back, and a trip the policy
#: gate deferred (re-evaluated at `trip_due_at`, with the gate's reason).
prepay_meter = sa.Table(
    "prepay_meter",
    metadata,
    sa.Column("meter_id", sa.String(64), primary_key=True),
    sa.Column("account_id", sa.String(64), nullable=True),
    sa.Column("rating_state", sa.JSON(), nullable=True),
    #: True/False once a supply command was confirmed (or a reading showed it); None unknown.
    sa.Column("supply_on", sa.Boolean(), nullable=True),
    sa.Column("supply_at", UtcDateTime(), nullable=True),
    sa.Column("trip_due_at", UtcDateTime(), nullable=True),
    sa.Column("gate_reason", sa.String(500), nullable=True),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    # -- supply re-assertion (revision 0007, core/prepay/supply_watch.py) --
    #: What the platform wants: True on, False cut, None no decision yet; the supply
    #: command that decided it (its kind, or a re-assertion of it).
    sa.Column("desired_on", sa.Boolean(), nullable=True),
    sa.Column("desired_command_id", BigId, nullable=True),
    #: Re-assertions ever made for the meter (the meter disobeyed the platform) and those
    #: since it last obeyed; the next one is not sent before `reassert_due_at` (back-off).
    sa.Column("mismatch_count", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("reasserts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("mismatch_since", UtcDateTime(), nullable=True),
    sa.Column("reassert_due_at", UtcDateTime(), nullable=True),
    # -- billing alarm (revision 0007, core/prepay/metering.py) --
    #: Why the meter's consumption is not billed now (no tariff prices it, the tariff does
    #: not fit its registers...); None while it is billed.
    sa.Column("billing_problem", sa.String(500), nullable=True),
    sa.Column("billing_problem_at", UtcDateTime(), nullable=True),
)
sa.Index("ix_prepay_meter_trip_due_at", prepay_meter.c.trip_due_at)

#: A meter exchange (`openprepay meter replace`): the old device is billed up to its final
#: reading and the new one from its initial reading, both at `at`. Metering applies it once
#: (`applied_at`) in the transaction that saves the meter's baseline. Revision 0007.
meter_replacement = sa.Table(
    "meter_replacement",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("meter_id", sa.String(64), nullable=False),
    sa.Column("at", UtcDateTime(), nullable=False),
    sa.Column("old_serial", sa.String(64), nullable=True),
    sa.Column("new_serial", sa.String(64), nullable=False),
    #: Register point name → value as text ("1234.56"), every rated register.
    sa.Column("final_reading", sa.JSON(), nullable=False),
    sa.Column("initial_reading", sa.JSON(), nullable=False),
    #: The account the meter belonged to when it was swapped (None: no tenant).
    sa.Column("account_id", sa.String(64), nullable=True),
    sa.Column("reason", sa.String(500), nullable=False),
    sa.Column("recorded_by", sa.String(100), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("applied_at", UtcDateTime(), nullable=True),
)
sa.Index("ix_meter_replacement_meter_id", meter_replacement.c.meter_id)

#: Per account: the disconnection notice of the current arrears episode, an operator's hold
#: (supply kept on despite arrears) and an exemption from disconnection.
prepay_account = sa.Table(
    "prepay_account",
    metadata,
    sa.Column("account_id", sa.String(64), sa.ForeignKey("account.id"), primary_key=True),
    sa.Column("notice_served_at", UtcDateTime(), nullable=True),
    sa.Column("hold_by", sa.String(100), nullable=True),
    sa.Column("hold_reason", sa.String(500), nullable=True),
    #: Set: the account is exempt from disconnection (vulnerable customer), with why.
    sa.Column("exempt_reason", sa.String(500), nullable=True),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
)

#: Consumption per meter and site-local day (energy in 0.001 kWh or m³, and per rate name):
#: today's figures for the room view and OPC UA, and post-paid consumption for bills.
meter_usage_day = sa.Table(
    "meter_usage_day",
    metadata,
    sa.Column("meter_id", sa.String(64), primary_key=True),
    #: Site-local date, YYYY-MM-DD.
    sa.Column("day", sa.String(10), primary_key=True),
    sa.Column("account_id", sa.String(64), nullable=True),
    sa.Column("energy", sa.BigInteger(), nullable=False),
    sa.Column("by_rate", sa.JSON(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
)

#: Every operator and engine action with who, what, on which target and whether it was done.
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("at", UtcDateTime(), nullable=False),
    sa.Column("actor", sa.String(100), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("target", sa.String(100), nullable=False),
    sa.Column("detail", sa.String(1000), nullable=False),
    sa.Column("ok", sa.Boolean(), nullable=False),
)
sa.Index("ix_audit_log_target", audit_log.c.target)

#: The notification outbox: written in the transaction that caused the notice, delivered by
#: the running service through the notifier plugins, retried with back-off.
notification = sa.Table(
    "notification",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("account_id", sa.String(64), nullable=True),
    sa.Column("channel", sa.String(32), nullable=False),
    sa.Column("recipient", sa.String(200), nullable=False),
    sa.Column("subject", sa.String(200), nullable=False),
    sa.Column("body", sa.String(4000), nullable=False),
    sa.Column("data", sa.JSON(), nullable=False),
    #: PENDING, SENT, FAILED.
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("next_attempt_at", UtcDateTime(), nullable=False),
    sa.Column("last_error", sa.String(1000), nullable=True),
    sa.Column("idempotency_key", sa.String(200), nullable=True, unique=True),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("sent_at", UtcDateTime(), nullable=True),
    sa.CheckConstraint("state IN ('PENDING', 'SENT', 'FAILED')", name="state"),
)
sa.Index(
    "ix_notification_state_next_attempt_at", notification.c.state, notification.c.next_attempt_at
)

# -- billing operations (revision 0005, core/billing) ------------------------------------------

#: The last Good reading of a meter's cumulative registers at or before a capture instant
#: (each site-local day at the freeze hour; the monthly freeze instant is one of them): what
#: common-area apportionment, post-paid bills and the loss analysis difference. Main and
#: sub-meters are thus read at the same instant, from their own registers.
billing_reading = sa.Table(
    "billing_reading",
    metadata,
    sa.Column("meter_id", sa.String(64), primary_key=True),
    #: The capture instant (UTC).
    sa.Column("at", UtcDateTime(), primary_key=True),
    #: When the reading was taken (at or before `at`).
    sa.Column("read_at", UtcDateTime(), nullable=False),
    #: The total register in 0.001 kWh or m³.
    sa.Column("energy", sa.BigInteger(), nullable=False),
    #: Rate registers (T1..T4 point name → 0.001 units), empty when the meter has none.
    sa.Column("registers", sa.JSON(), nullable=False),
    #: meter (captured from the sample stream) or manual (entered by an operator).
    sa.Column("source", sa.String(16), nullable=False),
    sa.Column("recorded_by", sa.String(100), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
)
sa.Index("ix_billing_reading_at", billing_reading.c.at)

#: One computation of a common-area pool or a custom charge for a period. A re-run that
#: computes the same thing changes nothing; one that computes something else reverses the
#: posted revision and posts a new one (revision + 1).
billing_run = sa.Table(
    "billing_run",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    #: pool:<id> or charge:<id>.
    sa.Column("source", sa.String(100), nullable=False),
    #: The billing period (YYYY-MM, starting at the freeze instant of that month).
    sa.Column("period", sa.String(16), nullable=False),
    sa.Column("revision", sa.Integer(), nullable=False),
    #: POSTED, HELD (loss above the cap or stale readings: waits for approval), FAULT
    #: (negative loss: a meter fault, nothing allocated), NO_DATA, EMPTY (nothing to charge),
    #: REVERSED (replaced by a later revision, or withdrawn).
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("amount_fen", sa.BigInteger(), nullable=False),
    #: Hash of what the run posts (lines and inputs): an identical re-run is a replay.
    sa.Column("digest", sa.String(64), nullable=False),
    #: Inputs, method, loss figures and the lines per account (for the itemised statement).
    sa.Column("detail", sa.JSON(), nullable=False),
    sa.Column("reason", sa.String(500), nullable=False, server_default=""),
    sa.Column("journal_id", BigId, sa.ForeignKey("journal.id"), nullable=True),
    sa.Column("reversal_journal_id", BigId, sa.ForeignKey("journal.id"), nullable=True),
    sa.Column("requested_by", sa.String(100), nullable=False),
    sa.Column("approved_by", sa.String(100), nullable=True),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.UniqueConstraint("source", "period", "revision"),
    sa.CheckConstraint(
        "state IN ('POSTED', 'HELD', 'FAULT', 'NO_DATA', 'EMPTY', 'REVERSED')", name="state"
    ),
)

#: Every charge of an account, itemised: common-area shares, property fee, rent, services,
#: late fees, post-paid usage. `mode` wallet = taken from the general wallet; bill = owed
#: (asset:ar:<account>) and shown on the account's next bill.
billing_item = sa.Table(
    "billing_item",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("account_id", sa.String(64), sa.ForeignKey("account.id"), nullable=False),
    sa.Column("period", sa.String(16), nullable=False),
    #: public_energy, property, rent, service, custom, late_fee, electricity, water.
    sa.Column("kind", sa.String(32), nullable=False),
    #: pool:<id>, charge:<id>, bill:<number>, once:<reference>.
    sa.Column("source", sa.String(100), nullable=False),
    sa.Column("description", sa.String(300), nullable=False),
    sa.Column("quantity", sa.String(60), nullable=False, server_default=""),
    sa.Column("unit_price", sa.String(40), nullable=False, server_default=""),
    sa.Column("amount_fen", sa.BigInteger(), nullable=False),
    sa.Column("mode", sa.String(8), nullable=False),
    sa.Column("run_id", BigId, sa.ForeignKey("billing_run.id"), nullable=True),
    sa.Column("journal_id", BigId, sa.ForeignKey("journal.id"), nullable=True),
    sa.Column("bill_id", BigId, sa.ForeignKey("bill.id"), nullable=True),
    #: True once its run was reversed before it reached a bill, or (source bill:<number>)
    #: once its bill was void.
    sa.Column("void", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.CheckConstraint("mode IN ('wallet', 'bill')", name="mode"),
)
sa.Index("ix_billing_item_account_id_period", billing_item.c.account_id, billing_item.c.period)
sa.Index("ix_billing_item_run_id", billing_item.c.run_id)
sa.Index("ix_billing_item_bill_id", billing_item.c.bill_id)

#: A post-paid bill: DRAFT (recomputed until confirmed) → CONFIRMED (usage and late fees
#: posted, items attached) → ISSUED (due date set) → PAID; an unpaid CONFIRMED or ISSUED
#: bill can be VOID instead (what confirming it posted is reversed, its items released).
bill = sa.Table(
    "bill",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("number", sa.String(64), nullable=False, unique=True),
    sa.Column("account_id", sa.String(64), sa.ForeignKey("account.id"), nullable=False),
    sa.Column("period", sa.String(16), nullable=False),
    #: Site-local dates of the cycle, end exclusive (YYYY-MM-DD).
    sa.Column("start_date", sa.String(10), nullable=False),
    sa.Column("end_date", sa.String(10), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("total_fen", sa.BigInteger(), nullable=False),
    sa.Column("paid_fen", sa.BigInteger(), nullable=False, server_default="0"),
    #: The bill's lines (usage, common area, charges, late fees, arrears brought forward).
    sa.Column("lines", sa.JSON(), nullable=False),
    #: Problems that keep a draft from being confirmed (a missing meter reading...).
    sa.Column("problems", sa.JSON(), nullable=False),
    #: Hash of what the lines were computed from (readings, items, tariff...): a draft
    #: whose inputs changed since it was made is not confirmed.
    sa.Column("digest", sa.String(64), nullable=False, server_default=""),
    #: The journal that posted the bill's usage (shared by bills confirmed together).
    sa.Column("journal_id", BigId, sa.ForeignKey("journal.id"), nullable=True),
    sa.Column("due_date", sa.String(10), nullable=True),
    sa.Column("confirmed_by", sa.String(100), nullable=True),
    sa.Column("issued_by", sa.String(100), nullable=True),
    sa.Column("issued_at", UtcDateTime(), nullable=True),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    #: A VOID bill keeps its lines for audit: why, who, when, and the journal that reversed
    #: what confirming it posted.
    sa.Column("void_reason", sa.String(300), nullable=True),
    sa.Column("voided_by", sa.String(100), nullable=True),
    sa.Column("voided_at", UtcDateTime(), nullable=True),
    sa.Column("void_journal_id", BigId, sa.ForeignKey("journal.id"), nullable=True),
    sa.CheckConstraint("state IN ('DRAFT', 'CONFIRMED', 'ISSUED', 'PAID', 'VOID')", name="state"),
)
sa.Index("ix_bill_period_state", bill.c.period, bill.c.state)
#: One live bill per account and period; void bills stay next to their replacement.
sa.Index(
    "uq_bill_live_account_period",
    bill.c.account_id,
    bill.c.period,
    unique=True,
    sqlite_where=bill.c.state != "VOID",
    postgresql_where=bill.c.state != "VOID",
)

#: A payment towards an account's bills (oldest first); what is left goes to the general
#: wallet. `reference` (payment id, receipt) is unique: a replay changes nothing.
bill_payment = sa.Table(
    "bill_payment",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("reference", sa.String(160), nullable=False, unique=True),
    sa.Column("account_id", sa.String(64), sa.ForeignKey("account.id"), nullable=False),
    sa.Column("amount_fen", sa.BigInteger(), nullable=False),
    sa.Column("channel", sa.String(32), nullable=False),
    sa.Column("journal_id", BigId, sa.ForeignKey("journal.id"), nullable=False),
    #: Bill number → fen applied.
    sa.Column("allocations", sa.JSON(), nullable=False),
    sa.Column("to_wallet_fen", sa.BigInteger(), nullable=False),
    sa.Column("requested_by", sa.String(100), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.CheckConstraint("amount_fen > 0", name="positive"),
)
sa.Index("ix_bill_payment_account_id", bill_payment.c.account_id)

#: A batch operation over many accounts or meters, run now, at a time or on a schedule.
#: Claimed with a lease like meter commands, so several instances never run it twice.
batch_job = sa.Table(
    "batch_job",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    #: set_tariff, set_thresholds, set_price, set_params, disconnect, reconnect, topup.
    sa.Column("action", sa.String(32), nullable=False),
    sa.Column("params", sa.JSON(), nullable=False),
    #: How targets are chosen (site, building, floor, list, csv rows), resolved per run.
    sa.Column("selection", sa.JSON(), nullable=False),
    #: SCHEDULED, RUNNING, DONE, CANCELLED.
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(500), nullable=False),
    sa.Column("created_by", sa.String(100), nullable=False),
    #: Recurrence: null (once), day, week or month, at the time of day of the first run.
    sa.Column("every", sa.String(16), nullable=True),
    sa.Column("first_run_at", UtcDateTime(), nullable=False),
    sa.Column("next_run_at", UtcDateTime(), nullable=True),
    #: The current (or last) occurrence, from 1.
    sa.Column("run_no", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("total", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("done", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("failed", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("claimed_by", sa.String(100), nullable=True),
    sa.Column("lease_until", UtcDateTime(), nullable=True),
    sa.Column("last_error", sa.String(1000), nullable=True),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    sa.Column("started_at", UtcDateTime(), nullable=True),
    sa.Column("finished_at", UtcDateTime(), nullable=True),
    sa.CheckConstraint("state IN ('SCHEDULED', 'RUNNING', 'DONE', 'CANCELLED')", name="state"),
)
sa.Index("ix_batch_job_state_next_run_at", batch_job.c.state, batch_job.c.next_run_at)

#: One target of one occurrence of a batch job, with its result.
batch_item = sa.Table(
    "batch_item",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("job_id", BigId, sa.ForeignKey("batch_job.id"), nullable=False),
    sa.Column("run_no", sa.Integer(), nullable=False),
    sa.Column("seq", sa.Integer(), nullable=False),
    #: An account or meter id.
    sa.Column("target", sa.String(64), nullable=False),
    #: Per-item parameters (a CSV row's amount...).
    sa.Column("params", sa.JSON(), nullable=False),
    #: PENDING, RUNNING (started, outcome not yet recorded), WAITING (carried out, its
    #: device commands not finished yet; revision 0009), DONE, FAILED.
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("result", sa.String(1000), nullable=False, server_default=""),
    sa.Column("updated_at", UtcDateTime(), nullable=False),
    #: The device commands the item queued (ids in meter_command): its outcome is theirs.
    #: Revision 0009.
    sa.Column("command_ids", sa.JSON(), nullable=True),
    sa.UniqueConstraint("job_id", "run_no", "seq"),
    sa.CheckConstraint(
        "state IN ('PENDING', 'RUNNING', 'WAITING', 'DONE', 'FAILED')", name="state"
    ),
)
#: The items whose device commands are followed (WAITING) are looked up by state.
sa.Index("ix_batch_item_state", batch_item.c.state)

#: The service's month-end of a period (apportionment, charges, draft bills): claimed once.
billing_cycle = sa.Table(
    "billing_cycle",
    metadata,
    sa.Column("period", sa.String(16), primary_key=True),
    #: RUNNING, DONE.
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("claimed_by", sa.String(100), nullable=True),
    sa.Column("lease_until", UtcDateTime(), nullable=True),
    sa.Column("summary", sa.JSON(), nullable=False),
    sa.Column("started_at", UtcDateTime(), nullable=False),
    sa.Column("finished_at", UtcDateTime(), nullable=True),
)

#: What committed changes the running services must learn of (core/operations/outbox.py):
#: written in the transaction of the change by whichever process made it (the CLI, another
#: instance), read by every running service, which publishes it on its event bus.
event_outbox = sa.Table(
    "event_outbox",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    #: The writer (one `Operations`): a service skips what it published itself.
    sa.Column("origin", sa.String(64), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    #: {"events": [event records], "accounts": [...], "commands": [ids], "notices": n}
    sa.Column("payload", sa.JSON(), nullable=False),
)
sa.Index("ix_event_outbox_created_at", event_outbox.c.created_at)

# -- online payment (revision 0010) ----------------------------------------------------------

#: One online payment (WeChat Pay, Alipay...) from order to credit (core/payments): CREATED →
#: PAID → CREDITED, CREATED → CLOSED, CREDITED → REFUNDED, any → CONFLICT for a person.
payment_order = sa.Table(
    "payment_order",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    #: Ours, sent to the provider: [0-9A-Za-z], at most 32 characters, unguessable.
    sa.Column("out_trade_no", sa.String(32), nullable=False, unique=True),
    #: The provider ("wechat", "alipay") and how the payer pays ("native", "jsapi", "qr").
    sa.Column("channel", sa.String(32), nullable=False),
    sa.Column("method", sa.String(16), nullable=False),
    sa.Column("account_id", sa.String(64), sa.ForeignKey("account.id"), nullable=False),
    sa.Column("room", sa.String(64), nullable=True),
    sa.Column("amount_fen", sa.BigInteger(), nullable=False),
    sa.Column("currency", sa.String(8), nullable=False),
    #: CREATED, PAID, CREDITED, CLOSED, REFUNDED, CONFLICT (core.payments.states).
    sa.Column("state", sa.String(16), nullable=False),
    #: The provider's id of the payment (the top-up's reference); unique once known.
    sa.Column("transaction_id", sa.String(64), nullable=True, unique=True),
    sa.Column("merchant_id", sa.String(64), nullable=False),
    sa.Column("app_id", sa.String(64), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("expires_at", UtcDateTime(), nullable=False),
    sa.Column("paid_at", UtcDateTime(), nullable=True),
    sa.Column("credited_at", UtcDateTime(), nullable=True),
    sa.Column("closed_at", UtcDateTime(), nullable=True),
    sa.Column("refunded_fen", sa.BigInteger(), nullable=False, server_default="0"),
    #: Why a person must look at it (amount/merchant/app/currency mismatch...).
    sa.Column("conflict", sa.Text(), nullable=True),
    #: Notices received (notifications and query answers) and the last one, decoded.
    sa.Column("notices", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("last_notice", sa.JSON(), nullable=True),
    sa.Column("last_query_at", UtcDateTime(), nullable=True),
    sa.Column("requested_by", sa.String(100), nullable=False),
    sa.CheckConstraint("amount_fen > 0", name="positive"),
    sa.CheckConstraint(
        "state IN ('CREATED', 'PAID', 'CREDITED', 'CLOSED', 'REFUNDED', 'CONFLICT')",
        name="state",
    ),
    sa.CheckConstraint("refunded_fen >= 0 AND refunded_fen <= amount_fen", name="refunded"),
)
#: The service looks up open orders (CREATED to query or close, PAID to credit) by state.
sa.Index("ix_payment_order_state", payment_order.c.state)
sa.Index("ix_payment_order_account_id", payment_order.c.account_id)

payment_refund = sa.Table(
    "payment_refund",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    #: Ours, sent to the provider (the same number again refunds once); also the ledger
    #: refund's reference.
    sa.Column("out_refund_no", sa.String(64), nullable=False, unique=True),
    sa.Column("order_id", BigId, sa.ForeignKey("payment_order.id"), nullable=False),
    sa.Column("out_trade_no", sa.String(32), nullable=False),
    sa.Column("channel", sa.String(32), nullable=False),
    sa.Column("account_id", sa.String(64), nullable=False),
    sa.Column("amount_fen", sa.BigInteger(), nullable=False),
    #: REQUESTED, PROCESSING, SUCCESS, ABNORMAL, CLOSED (core.payments.refunds).
    sa.Column("state", sa.String(16), nullable=False),
    #: The provider's id of the refund, once it accepted it.
    sa.Column("refund_id", sa.String(64), nullable=True),
    sa.Column("reason", sa.Text(), nullable=False),
    #: Requested although the wallet lacked the money (the account goes into arrears).
    sa.Column("forced", sa.Boolean(), nullable=False, server_default=sa.false()),
    #: Why the provider refused or closed it, or why it is ABNORMAL.
    sa.Column("failure", sa.Text(), nullable=True),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("last_notice", sa.JSON(), nullable=True),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("sent_at", UtcDateTime(), nullable=True),
    sa.Column("last_query_at", UtcDateTime(), nullable=True),
    sa.Column("finished_at", UtcDateTime(), nullable=True),
    sa.Column("requested_by", sa.String(100), nullable=False),
    sa.CheckConstraint("amount_fen > 0", name="positive"),
    sa.CheckConstraint(
        "state IN ('REQUESTED', 'PROCESSING', 'SUCCESS', 'ABNORMAL', 'CLOSED')", name="state"
    ),
)
sa.Index("ix_payment_refund_state", payment_refund.c.state)
sa.Index("ix_payment_refund_order_id", payment_refund.c.order_id)

payment_reconciliation = sa.Table(
    "payment_reconciliation",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    #: The bill's day (the provider's, China time) and channel; one row each, re-runs update it.
    sa.Column("day", sa.Date(), nullable=False),
    sa.Column("channel", sa.String(32), nullable=False),
    #: OK, DIFFERENCES (see `report`), FAILED (the bill could not be had: `error`).
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("bill_rows", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("matched", sa.Integer(), nullable=False, server_default="0"),
    #: Orders paid there and credited here by this reconciliation.
    sa.Column("credited", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("differences", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("paid_fen", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("refunded_fen", sa.BigInteger(), nullable=False, server_default="0"),
    #: The differences, one object each (kind, out_trade_no, amounts, what was done).
    sa.Column("report", sa.JSON(), nullable=True),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("started_at", UtcDateTime(), nullable=False),
    sa.Column("finished_at", UtcDateTime(), nullable=False),
    sa.Column("requested_by", sa.String(100), nullable=False),
    sa.UniqueConstraint("day", "channel"),
    sa.CheckConstraint("state IN ('OK', 'DIFFERENCES', 'FAILED')", name="state"),
)

# -- several instances (revision 0012, core/cluster) -----------------------------------------

#: A lease: who owns a link (name = link id) or a leader job (name = "leader:<job>"), until
#: when by the database clock, and the epoch, incremented on every change of owner (the
#: fencing token the command path checks).
link_lease = sa.Table(
    "link_lease",
    metadata,
    sa.Column("name", sa.String(100), primary_key=True),
    sa.Column("owner", sa.String(100), nullable=True),
    sa.Column("epoch", sa.BigInteger(), nullable=False, server_default="0"),
    sa.Column("expires_at", UtcDateTime(), nullable=True),
    sa.Column("acquired_at", UtcDateTime(), nullable=True),
    sa.Column("renewed_at", UtcDateTime(), nullable=True),
    #: A leader job's persisted progress: the next leader resumes from it.
    sa.Column("progress", sa.JSON(), nullable=True),
)

#: The instances sharing the database and their last heartbeat (`openprepay cluster status`).
cluster_instance = sa.Table(
    "cluster_instance",
    metadata,
    sa.Column("id", sa.String(100), primary_key=True),
    sa.Column("host", sa.String(200), nullable=False),
    sa.Column("pid", sa.Integer(), nullable=False),
    #: The link patterns this instance may own.
    sa.Column("links", sa.JSON(), nullable=False),
    sa.Column("started_at", UtcDateTime(), nullable=False),
    sa.Column("heartbeat_at", UtcDateTime(), nullable=False),
)

#: The last command sequence number given to each meter.
meter_command_seq = sa.Table(
    "meter_command_seq",
    metadata,
    sa.Column("meter_id", sa.String(64), primary_key=True),
    sa.Column("last_seq", sa.BigInteger(), nullable=False),
)

#: Which payer at a provider (WeChat openid) the tenant page bound to which room
#: (core.payments.bindings); one row per (channel, payer, room), revoked rather than deleted.
payer_binding = sa.Table(
    "payer_binding",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("channel", sa.String(32), nullable=False),
    sa.Column("payer_id", sa.String(128), nullable=False),
    sa.Column("room", sa.String(64), nullable=False),
    sa.Column("created_at", UtcDateTime(), nullable=False),
    sa.Column("created_by", sa.String(100), nullable=False),
    sa.Column("last_seen_at", UtcDateTime(), nullable=False),
    sa.Column("revoked_at", UtcDateTime(), nullable=True),
    sa.Column("revoked_by", sa.String(100), nullable=True),
    sa.UniqueConstraint("channel", "payer_id", "room"),
)
sa.Index("ix_payer_binding_room", payer_binding.c.room)
