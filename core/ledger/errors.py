"""What the ledger raises: a bad request (nothing changed) or an inconsistent ledger."""

from __future__ import annotations

from ..errors import OpenPrepayError


class RequestError(OpenPrepayError):
    """A request that cannot be carried out; `field` names what is wrong. Nothing changed."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class IdempotencyConflict(RequestError):
    """The idempotency key was already used for a different request."""


class LedgerIntegrityError(OpenPrepayError):
    """The ledger is inconsistent (found while posting); the transaction is rolled back."""
