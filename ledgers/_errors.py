"""The ledger's exceptions.

LedgerError
├── AmountError        a malformed, negative, fractional or overflowing amount, or an unknown unit
│   └── UnitMismatch   two units that cannot be compared (no rate configured)
├── Refused            a reservation the rules do not allow (nothing was written)
│   ├── BudgetExceeded     a budget would go over its limit
│   ├── RateLimited        a rate limit is used up
│   ├── PaymentInFlight    the idempotency key is held or in doubt already
│   ├── Frozen             an operator froze the scope (the kill switch)
│   └── AlreadyPaid        the idempotency key was settled: it was paid
├── ApprovalError      no such approval, or one already decided, used or expired
├── HoldStateError     a step the hold's current phase does not allow (it resolves at most once)
├── SchemaError        the ledger's schema is newer than this release, or unreadable
└── StorageError       the database could not be reached or written
"""

from __future__ import annotations

from dataclasses import dataclass


class LedgerError(Exception):
    """Base class of every error the ledger raises."""


class AmountError(LedgerError, ValueError):
    """An amount or unit is not acceptable; the message says which and why."""


class UnitMismatch(AmountError):
    """Two amounts of units that cannot be compared without an exchange rate."""


@dataclass
class Refused(LedgerError):
    """The rules refuse this reservation. Nothing was written.

    `rule` names the budget or rate limit; `remaining` is what is left (in `unit`), and
    `retry_after_s` when waiting would help (None when it would not)."""

    message: str
    rule: str | None = None
    remaining: int | None = None
    unit: str | None = None
    retry_after_s: float | None = None

    def __str__(self) -> str:
        return self.message


class BudgetExceeded(Refused):
    """Reserving this amount would take a budget over its limit."""


class RateLimited(Refused):
    """A rate limit has no calls left in its window."""


class PaymentInFlight(Refused):
    """The idempotency key (payment hash, x402 nonce) is reserved or in doubt already: paying again
    could pay twice."""


class Frozen(Refused):
    """An operator froze the caller's scope (`guard freeze`): `rule` is the frozen scope; the message
    names the reason and who froze."""


class AlreadyPaid(Refused):
    """The idempotency key was settled: this payment was made."""


class ApprovalError(LedgerError):
    """No such approval, or it is not in a state that allows this step (decided, used, expired)."""


class HoldStateError(LedgerError):
    """The hold is not in a phase that allows this step (a hold resolves at most once)."""


class SchemaError(LedgerError):
    """The ledger database has a schema this release cannot use."""


class StorageError(LedgerError):
    """The database could not be reached or written."""
