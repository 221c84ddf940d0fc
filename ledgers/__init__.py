"""ledgers: the accounting core. Money, budgets, two-phase holds, durable windows, storage.

It knows nothing of MCP: `guard` calls it, never the other way round.
"""

from ledgers._errors import (
    AlreadyPaid,
    AmountError,
    ApprovalError,
    BudgetExceeded,
    Frozen,
    HoldStateError,
    LedgerError,
    PaymentInFlight,
    RateLimited,
    Refused,
    SchemaError,
    StorageError,
    UnitMismatch,
)
from ledgers._holds import AnswerStep, Reserved
from ledgers._ledger import Ledger
from ledgers._money import MAX_AMOUNT, Amount, Rates
from ledgers._observations import QUOTE_LIFETIME_S, NamedQuote
from ledgers._records import (
    Approval,
    Authorization,
    BalanceObservation,
    Budget,
    BudgetState,
    CallRecord,
    Decision,
    Freeze,
    HoldInfo,
    Quote,
    RateLimit,
    RecordedCall,
    RuleKind,
    Usage,
)
from ledgers._recovery import DEFAULT_LEASE_S
from ledgers._report import (
    BalanceDrift,
    BudgetCount,
    DoubtfulHold,
    OverReservation,
    RuleCount,
    Spend,
    SpendReport,
    StaleDenial,
    WouldDenial,
)
from ledgers._schema import SCHEMA_VERSION
from ledgers._store import DEFAULT_POOL, default_path, location
from ledgers._time import Clock, SystemClock, Window

__all__ = [
    "DEFAULT_LEASE_S",
    "DEFAULT_POOL",
    "MAX_AMOUNT",
    "QUOTE_LIFETIME_S",
    "SCHEMA_VERSION",
    "AlreadyPaid",
    "Amount",
    "AmountError",
    "AnswerStep",
    "Approval",
    "ApprovalError",
    "Authorization",
    "BalanceDrift",
    "BalanceObservation",
    "Budget",
    "BudgetCount",
    "BudgetExceeded",
    "BudgetState",
    "CallRecord",
    "Clock",
    "Decision",
    "DoubtfulHold",
    "Freeze",
    "Frozen",
    "HoldInfo",
    "HoldStateError",
    "Ledger",
    "LedgerError",
    "NamedQuote",
    "OverReservation",
    "PaymentInFlight",
    "Quote",
    "RateLimit",
    "RateLimited",
    "Rates",
    "RecordedCall",
    "Refused",
    "Reserved",
    "RuleCount",
    "RuleKind",
    "SchemaError",
    "Spend",
    "SpendReport",
    "StaleDenial",
    "StorageError",
    "SystemClock",
    "UnitMismatch",
    "Usage",
    "Window",
    "WouldDenial",
    "default_path",
    "location",
]
