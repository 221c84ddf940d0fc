"""How guard writes a duration for people to read (denials, reports, tables), in one place.

- `duration`: `42s`, `3m 20s`, `2h 5m`, `1d 4h`: the largest unit and the next one, whole seconds rounded
  down (a retry-after is rounded up to whole seconds before it gets here).
- `rough_duration`: `90s`, `15m`, `2h`: one number, as a sentence says it ("seen 2h ago", "older than 60s").
  Reports group stale-balance denials by these words, so they change only with the reports' golden files.
"""

from __future__ import annotations

_UNITS = ((86_400, "d", 3_600, "h"), (3_600, "h", 60, "m"), (60, "m", 1, "s"))


def duration(seconds: float) -> str:
    """`seconds` as `42s`, `3m 20s`, `2h 5m` or `1d 4h` (rounded down; never negative)."""
    whole = max(0, int(seconds))
    for size, name, smaller, smaller_name in _UNITS:
        if whole >= size:
            major, rest = divmod(whole, size)
            return f"{major}{name}" + (f" {rest // smaller}{smaller_name}" if rest // smaller else "")
    return f"{whole}s"


def rough_duration(seconds: float) -> str:
    """`seconds` as one number: seconds under 2 minutes, minutes under 2 hours, else hours (rounded down)."""
    whole = max(0, int(seconds))
    if whole < 120:
        return f"{whole}s"
    if whole < 7200:
        return f"{whole // 60}m"
    return f"{whole // 3600}h"


def short(text: str, most: int = 64) -> str:
    """A peer's string (a method name, an id) as logs and errors show it: never longer than `most`."""
    return text if len(text) <= most else text[:most] + "…"
