"""guard: a budget-aware guard for payment MCP servers.

The layout (docs/ARCHITECTURE.md has the whole map):

- `guard.core`: the call a gate decides and the `Gate` protocol (no MCP SDK);
- `guard.proxy`: the MCP wire: relay, stdio and HTTP fronts, upstream link;
- `guard.policy`: the policy file and the decisions that need no storage;
- `guard.payments`: the money in calls: adapters per upstream, the one price-and-budget decision, settlement;
- `guard.gate`: the ordered checklist that ties policy, payments and the ledger to the relay;
- `guard.operators`: budget view, reports, alerts, metrics, schedules (read the ledger, never in a call's way);
- `guard.cli`: the `guard` command;
- `ledgers` (beside this package): the accounting core, which knows nothing of MCP.
"""

from __future__ import annotations

from guard._version import __version__
from guard.core import JSON, Forward, Gate, OpenGate, Session, SessionLink, ToolCall
from guard.errors import (
    ConfigError,
    GuardError,
    MessageRefused,
    PolicyError,
    PriceUnknown,
    UpstreamError,
    UpstreamStartError,
)

__all__ = [
    "JSON",
    "ConfigError",
    "Forward",
    "Gate",
    "GuardError",
    "MessageRefused",
    "OpenGate",
    "PolicyError",
    "PriceUnknown",
    "Session",
    "SessionLink",
    "ToolCall",
    "UpstreamError",
    "UpstreamStartError",
    "__version__",
]
