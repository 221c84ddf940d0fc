"""ledgers: the accounting core (money, budgets, holds, windows, storage). It knows nothing of MCP.

Filled by the ledgers issue; `guard` depends on it, never the other way round.
"""

__all__: list[str] = []
