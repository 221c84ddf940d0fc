"""What every part of the ledger shares: `Ledger` is made of parts (holds, windows, approvals...), each a
mixin of its public methods over one `Store`.

A part's methods open their own transactions; inside a transaction, parts share work through each
other's module functions (which take the open connection), never through each other's methods.
"""

from __future__ import annotations

from ledgers._money import Rates
from ledgers._store import Store

# A budget's definition as stored for operators' views: key, limit, unit, window, time zone.
BudgetDefinition = tuple[str, int, str, str, str]


class Part:
    _store: Store
    # Exchange rates between units that do not convert by themselves (None: only sat and msat do).
    _rates: Rates | None
    # This process among those sharing the ledger (its open holds are its own; see recovery).
    owner: str
    # Budget definitions this process has stored (see `_windows.define_budgets`): one write per definition.
    _defined: set[BudgetDefinition]
    # Silence after which another host's process is taken to be gone (see recovery).
    _lease_us: int
