"""What the ledger raises: a bad request (nothing changed; `core.errors.RequestError`) or
an inconsistent ledger."""

from __future__ import annotations

from ..errors import OpenPrepayError, RequestError


class IdempotencyConflict(RequestError):
    """The idempotency key was already used for a different request."""


class LedgerIntegrityError(OpenPrepayError):
    """The ledger is inconsistent (found while posting); the transaction is rolled back."""
