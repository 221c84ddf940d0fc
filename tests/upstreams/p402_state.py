"""A P402 session as the fake P402 server (tests/upstreams/fake_p402.py) keeps it in its state file."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

JSON = dict[str, Any]


def p402_session(session_id: str, *, total: float, used: float = 0.0, expires_in: timedelta) -> JSON:
    when = (datetime.now(UTC) + expires_in).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return {
        "id": session_id,
        "status": "active",
        "total_usd": total,
        "used_usd": used,
        "expires_at": when,
        "agent_id": "agent",
        "session_key": "p402_sk_live_" + "0" * 48,
        "created_at": when,
    }
