"""The copied captures (tests/captures/README.md), as the tests read them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

CAPTURES = Path(__file__).parent / "402-mcp-4.2.1"

JSON = dict[str, Any]


def capture(name: str) -> JSON:
    """One capture file (`paywall-human-09-l402-pay`, with or without `.json`)."""
    return json.loads((CAPTURES / f"{name.removesuffix('.json')}.json").read_text())  # type: ignore[no-any-return]


def names() -> list[str]:
    """Every capture's name (without `.json`), in order."""
    return sorted(path.stem for path in CAPTURES.glob("*.json"))
