"""Time: windows decide which rows count (the session, a sliding duration, or a calendar period in a time
zone); times are integer microseconds."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ledgers import LedgerError, Window
from ledgers._time import from_us, to_us


def at(text: str) -> int:
    return to_us(datetime.fromisoformat(text))


def test_a_session_window_counts_everything() -> None:
    assert Window.parse("session").start_us(at("2026-11-21T12:00:00+00:00")) == 0


def test_a_sliding_window_counts_its_last_duration() -> None:
    now = at("2026-11-21T12:00:00+00:00")
    assert Window.parse("1h").start_us(now) == now - 3_600_000_000 + 1
    assert str(Window.parse("24h")) == "1d"
    assert str(Window.parse("90m")) == "90m"


@pytest.mark.parametrize(
    ("period", "zone", "now", "start"),
    [
        ("day", "UTC", "2026-11-21T12:00:00+00:00", "2026-11-21T00:00:00+00:00"),
        ("day", "Europe/Paris", "2026-11-21T23:30:00+00:00", "2026-11-22T00:00:00+01:00"),
        ("week", "UTC", "2026-11-21T12:00:00+00:00", "2026-11-16T00:00:00+00:00"),
        ("month", "America/New_York", "2026-11-01T03:00:00+00:00", "2026-10-01T00:00:00-04:00"),
        ("day", "Europe/Paris", "2026-03-29T12:00:00+00:00", "2026-03-29T00:00:00+01:00"),
    ],
)
def test_a_calendar_window_starts_at_the_local_period_start(period: str, zone: str, now: str, start: str) -> None:
    window = Window.calendar(period, zone)
    assert from_us(window.start_us(at(now))) == datetime.fromisoformat(start).astimezone(UTC)


def test_a_calendar_window_knows_when_it_ends() -> None:
    window = Window.calendar("month", "UTC")
    assert from_us(window.end_us(at("2026-12-15T00:00:00+00:00")) or 0) == datetime(2027, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("text", ["0h", "1 year", "-5m", "h", "fortnight"])
def test_bad_windows_are_named(text: str) -> None:
    with pytest.raises(LedgerError, match="expected a positive duration"):
        Window.parse(text)


def test_an_unknown_time_zone_is_named() -> None:
    with pytest.raises(LedgerError, match="time zone 'Mars/Olympus' is unknown"):
        Window.calendar("day", "Mars/Olympus")
