"""How much one guard lets its clients and its upstream take: every bound the fronts and the relay enforce,
in one value (`guard run` flags fill it; the defaults are safe for one agent on one machine)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from guard.errors import ConfigError

MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    # One client message (a stdio line, an HTTP body): a larger one is answered with an error and dropped.
    max_message_bytes: int = 16 * MIB
    # How long the upstream may take to answer one request: then the client gets an error, the request
    # is cancelled upstream, and a paying call's hold stays counted, in doubt.
    request_timeout_s: float = 300.0
    # HTTP client sessions open at once (each may hold an upstream process): a new one past it gets 503.
    max_sessions: int = 64
    # An HTTP session (or a 2026-07-28 identity channel) with no request for this long is closed.
    session_idle_s: float = 30 * 60.0
    # HTTP connections open at once: more are answered 503 by the server.
    max_connections: int = 256
    # An HTTP request must arrive whole (headers and body) within this long, or its connection is closed.
    read_timeout_s: float = 10.0


DEFAULT_LIMITS = Limits()

_SIZE = re.compile(r"^\s*(\d+)\s*(|b|kb|kib|mb|mib|gb|gib)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "kb": 1000, "kib": 1024, "mb": 1000**2, "mib": MIB, "gb": 1000**3, "gib": 1024**3}


def parse_size(text: str, flag: str) -> int:
    """`16MiB`, `4mb`, `1048576` in bytes.

    Raises:
        ConfigError: not a size, or zero."""
    match = _SIZE.match(text)
    if match is None or int(match.group(1)) == 0:
        raise ConfigError(f"{flag} {text!r}: expected a size such as 16MiB, 4MB or 1048576 (bytes), above zero")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]


def parse_duration(text: str, flag: str) -> float:
    """`30s`, `5m`, `1h` in seconds.

    Raises:
        ConfigError: not a duration."""
    from ledgers import LedgerError, Window

    try:
        return Window.sliding(text.strip()).length_us / 1_000_000
    except LedgerError:
        raise ConfigError(f"{flag} {text!r}: expected a duration such as 30s, 5m or 1h") from None


def parse_count(text: str, flag: str) -> int:
    """A whole number ≥ 1.

    Raises:
        ConfigError: not one."""
    if not text.strip().isdigit() or int(text) < 1:
        raise ConfigError(f"{flag} {text!r}: expected a whole number of at least 1")
    return int(text)
