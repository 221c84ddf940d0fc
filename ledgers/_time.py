"""Time for the ledger: an injectable clock, windows, and stored times as integer microseconds.

Stored times are UTC microseconds since the epoch (integers index well and never round). A
ledger never stores a time earlier than one it stored before (see `Ledger`), so a clock that
jumps backwards cannot reopen a window.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ledgers._errors import LedgerError

US_PER_S = 1_000_000


class Clock(Protocol):
    """Where the ledger gets the time. Inject a fake one in tests."""

    def now(self) -> datetime:
        """The current time, timezone-aware."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


def to_us(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise LedgerError(f"naive datetime {moment.isoformat()}: the ledger needs timezone-aware times")
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * US_PER_S + delta.microseconds


def from_us(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


_DURATION = re.compile(r"^(\d+)\s*(s|m|h|d|w)$")
_DURATION_US = {
    "s": US_PER_S,
    "m": 60 * US_PER_S,
    "h": 3600 * US_PER_S,
    "d": 86_400 * US_PER_S,
    "w": 604_800 * US_PER_S,
}
Calendar = Literal["day", "week", "month"]


@dataclass(frozen=True)
class Window:
    """Which rows count towards a budget or rate limit.

    - `Window.session()`: every row of the budget's scope (a session budget's scope is the session);
    - `Window.sliding("1h")`: rows of the last hour (`s`, `m`, `h`, `d`, `w`);
    - `Window.calendar("day", "Europe/Paris")`: rows since the current day, week (from Monday) or
      month began in that time zone.
    """

    kind: Literal["session", "sliding", "calendar"]
    length_us: int = 0
    period: Calendar | None = None
    timezone: str = "UTC"

    @classmethod
    def session(cls) -> Window:
        return cls("session")

    @classmethod
    def sliding(cls, text: str) -> Window:
        match = _DURATION.match(text.strip()) if isinstance(text, str) else None
        if match is None or int(match.group(1)) == 0:
            raise LedgerError(f"window {text!r}: expected a positive duration such as 30s, 15m, 1h, 24h, 7d")
        return cls("sliding", length_us=int(match.group(1)) * _DURATION_US[match.group(2)])

    @classmethod
    def calendar(cls, period: str, timezone: str = "UTC") -> Window:
        if period not in ("day", "week", "month"):
            raise LedgerError(f"window {period!r}: expected day, week or month")
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise LedgerError(f"time zone {timezone!r} is unknown") from None
        return cls("calendar", period=period, timezone=timezone)  # type: ignore[arg-type]

    @classmethod
    def parse(cls, text: str, timezone: str = "UTC") -> Window:
        """`session`, a duration (`1h`, `24h`), or `day` / `week` / `month`."""
        if text == "session":
            return cls.session()
        if text in ("day", "week", "month"):
            return cls.calendar(text, timezone)
        return cls.sliding(text)

    def start_us(self, now_us: int) -> int:
        """The first microsecond that counts, at `now_us`."""
        if self.kind == "session":
            return 0
        if self.kind == "sliding":
            return now_us - self.length_us + 1
        local = from_us(now_us).astimezone(ZoneInfo(self.timezone))
        start = local.replace(hour=0, minute=0, second=0, microsecond=0)
        if self.period == "week":
            start -= timedelta(days=start.weekday())
        elif self.period == "month":
            start = start.replace(day=1)
        # Rebuild with the zone so a DST change between start and now is accounted for.
        start = datetime(start.year, start.month, start.day, tzinfo=ZoneInfo(self.timezone))
        return to_us(start)

    def end_us(self, now_us: int) -> int | None:
        """When the current calendar period ends (None for other kinds)."""
        if self.kind != "calendar":
            return None
        local = from_us(self.start_us(now_us)).astimezone(ZoneInfo(self.timezone))
        if self.period == "day":
            nxt = local.date() + timedelta(days=1)
        elif self.period == "week":
            nxt = local.date() + timedelta(days=7)
        else:
            nxt = (local.date().replace(day=28) + timedelta(days=4)).replace(day=1)
        return to_us(datetime(nxt.year, nxt.month, nxt.day, tzinfo=ZoneInfo(self.timezone)))

    @property
    def text(self) -> str:
        """The window as `Window.parse` reads it back (with `timezone`): session, 24h, day, ..."""
        if self.kind == "calendar":
            return str(self.period)
        return str(self) if self.kind == "sliding" else "session"

    def __str__(self) -> str:
        if self.kind == "sliding":
            for suffix, size in sorted(_DURATION_US.items(), key=lambda kv: -kv[1]):
                if self.length_us % size == 0:
                    return f"{self.length_us // size}{suffix}"
        if self.kind == "calendar":
            return f"{self.period} ({self.timezone})"
        return self.kind
