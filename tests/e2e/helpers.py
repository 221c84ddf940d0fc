"""What the end-to-end and hostile tests share about an upstream's answers and the resources they pay for."""

from __future__ import annotations

import json
from typing import Any

JSON = dict[str, Any]


def body(result: JSON) -> Any:
    """The JSON in the first text item of an upstream's answer."""
    return json.loads(result["content"][0]["text"])


def site(n: int) -> str:
    """A paid resource on an origin of its own (402-mcp reuses a credential per origin for free)."""
    return f"https://shop{n}.example/item"


# A 402-mcp policy: 100 sat per session, fetches and payments up to 50 sat each.
L402_POLICY = """\
version: 1
default: deny
budgets:
  - name: per-session
    limit: 100 sat
    scope: session
tools:
  l402-fetch-preview: {}
  l402-discover: {}
  l402-fetch:
    pays: true
    max_price: 50 sat
  l402-pay:
    pays: true
    max_price: 50 sat
"""
