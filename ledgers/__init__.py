"""ledgers: the accounting core. Money, budgets, two-phase holds, durable windows, storage.

It knows nothing of MCP: `guard` calls it, never the other way round.
"""

from ledgers._errors import (
    AlreadyPaid,
    AmountError,
    ApprovalError,
    BudgetExceeded,
    HoldStateError,
    LedgerError,
    PaymentInFlight,
    RateLimited,
    Refused,
    SchemaError,
    StorageError,
    UnitMismatch,
)
from ledgers._ledger import (
    DEFAULT_LEASE_S,
    DEFAULT_POOL,
    Approval,
    BalanceObservation,
    Budget,
    BudgetState,
    CallRecord,
    HoldInfo,
    Ledger,
    RateLimit,
    RecordedCall,
    Usage,
    default_path,
    location,
)
from ledgers._money import MAX_AMOUNT, Amount, Rates
from ledgers._report import MONEY_BALANCES, BalanceDrift, DoubtfulHold, RuleCount, Spend, SpendReport, StaleDenial
from ledgers._schema import SCHEMA_VERSION
from ledgers._time import Clock, SystemClock, Window

__all__ = [
    "DEFAULT_LEASE_S",
    "DEFAULT_POOL",
    "MAX_AMOUNT",
    "MONEY_BALANCES",
    "SCHEMA_VERSION",
    "AlreadyPaid",
    "Amount",
    "AmountError",
    "Approval",
    "ApprovalError",
    "BalanceDrift",
    "BalanceObservation",
    "Budget",
    "BudgetExceeded",
    "BudgetState",
    "CallRecord",
    "Clock",
    "DoubtfulHold",
    "HoldInfo",
    "HoldStateError",
    "Ledger",
    "LedgerError",
    "PaymentInFlight",
    "RateLimit",
    "RateLimited",
    "Rates",
    "RecordedCall",
    "Refused",
    "RuleCount",
    "SchemaError",
    "Spend",
    "SpendReport",
    "StaleDenial",
    "StorageError",
    "SystemClock",
    "UnitMismatch",
    "Usage",
    "Window",
    "default_path",
    "location",
]
