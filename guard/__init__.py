"""guard: a budget-aware guard for payment MCP servers.

The relay carries MCP between a client and one upstream; the `Gate` is its one interception point.

The names below load on first use (PEP 562): the operators' commands (`guard budget show`, `guard report`)
start without importing the MCP SDK at all.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from guard._errors import ConfigError, GuardError, UpstreamStartError
from guard._version import __version__

if TYPE_CHECKING:
    from guard._relay import ClientPort, Forward, Gate, OpenGate, Relay, Session, ToolCall, UpstreamError
    from guard._upstream import HttpUpstream, StdioUpstream, UpstreamLink, connect

_LAZY = {
    **dict.fromkeys(
        ("ClientPort", "Forward", "Gate", "OpenGate", "Relay", "Session", "ToolCall", "UpstreamError"), "guard._relay"
    ),
    **dict.fromkeys(("HttpUpstream", "StdioUpstream", "UpstreamLink", "connect"), "guard._upstream"),
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'guard' has no attribute {name!r}")


__all__ = [
    "ClientPort",
    "ConfigError",
    "Forward",
    "Gate",
    "GuardError",
    "HttpUpstream",
    "OpenGate",
    "Relay",
    "Session",
    "StdioUpstream",
    "ToolCall",
    "UpstreamError",
    "UpstreamLink",
    "UpstreamStartError",
    "__version__",
    "connect",
]
