"""The service functions: one path for every operator action, whoever asks.

The command line, the OPC UA server's methods and batch jobs all call `Operations` (built
by the composition root, `core.app.services`); none of them touches the ledger, the
accounts or the command queue directly. Each call:

- checks its input and raises `core.ledger.RequestError(field, message)` before anything
  is written (a bad call changes nothing);
- does its database work in **one transaction**, including what it causes: a top-up,
  refund or threshold change re-evaluates fee control in the same transaction (new fee
  state stored, relay/valve commands queued, notices put in the outbox), so a crash can
  never leave money moved without its consequence;
- publishes an `AuditRecord` on the event bus (also when it was refused) and, once
  committed, the events it caused (`AlarmLevelChanged`, account samples); the durable
  commands it queued are executed by the running service's command executor;
- writes the same effects to the event outbox in its transaction (`outbox.py`): a running
  service in another process (the CLI's changes) or on another machine (a second instance
  on the same PostgreSQL) publishes them on its own bus and wakes its executor within its
  outbox poll (0.2 s).

Calls are synchronous (they block on the database): from asyncio code run them with
`asyncio.to_thread`. Reads (`account_snapshot`, `list_accounts`) are not audited.

Manual disconnect (`disconnect`) is an operator's override of the policy gate: it is
audited with who and why, skips the time, notice, exemption and arrears rules, but never
cuts a protected (保电) account and still counts against the site's mass-disconnect rate
limit (a disconnect beyond it is queued for the instant the limit allows). With
`override=False` it goes through the whole gate like an automatic trip (refused when the
gate denies, queued for later when it defers). A manual reconnect of an account in arrears
puts a hold on it: fee control leaves its supply on until the account leaves arrears (a
top-up) or an operator disconnects it again.
"""

from __future__ import annotations

from .account_settings import AccountSettingsDoor
from .bills import BillDoor
from .door import Door
from .failures import CommandDoor
from .lifecycle import AccountLifecycleDoor, NewAccount, Opened
from .meters import MeterDoor
from .money import MoneyDoor
from .payer_bindings import PayerBindingDoor
from .payment_figures import PaymentFigureReads
from .payments import NoticeOutcome, PaymentDoor
from .readings import ReadingDoor, ReadingsImported
from .snapshots import AccountSnapshot, MeterSnapshot
from .supply import SupplyDoor
from .tenant import RoomView, TenantReads

__all__ = [
    "AccountSnapshot",
    "Door",
    "MeterSnapshot",
    "NewAccount",
    "NoticeOutcome",
    "Opened",
    "Operations",
    "ReadingsImported",
    "RoomView",
]


class Operations(
    PaymentDoor,
    PaymentFigureReads,
    PayerBindingDoor,
    MoneyDoor,
    AccountLifecycleDoor,
    AccountSettingsDoor,
    ReadingDoor,
    BillDoor,
    SupplyDoor,
    CommandDoor,
    MeterDoor,
    TenantReads,
):
    """The door of one site: every state change is one method here (see the module
    docstring); each part lives in the module of its subject."""
