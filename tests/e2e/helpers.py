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
