"""guard: a budget-aware guard for payment MCP servers.

The relay carries MCP between a client and one upstream; the `Gate` is its one interception point.
"""

from guard._errors import ConfigError, GuardError, UpstreamStartError
from guard._relay import ClientPort, Forward, Gate, OpenGate, Relay, Session, ToolCall, UpstreamError
from guard._upstream import HttpUpstream, StdioUpstream, UpstreamLink, connect
from guard._version import __version__

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
