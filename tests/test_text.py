"""How guard writes durations for people: `duration` (two units) and `rough_duration` (one number)."""

from __future__ import annotations

import pytest

from guard.text import duration, rough_duration


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (0, "0s"),
        (42, "42s"),
        (42.9, "42s"),
        (60, "1m"),
        (200, "3m 20s"),
        (3600, "1h"),
        (7500, "2h 5m"),
        (86_400, "1d"),
        (100_800, "1d 4h"),
        (-5, "0s"),
    ],
)
def test_a_duration_is_its_largest_unit_and_the_next_rounded_down(seconds: float, words: str) -> None:
    assert duration(seconds) == words


@pytest.mark.parametrize(
    ("seconds", "words"),
    [
        (0, "0s"),
        (60, "60s"),
        (119.9, "119s"),
        (120, "2m"),
        (7199, "119m"),
        (7200, "2h"),
        (7205.3, "2h"),
        (90_000, "25h"),
    ],
)
def test_a_rough_duration_is_one_number(seconds: float, words: str) -> None:
    assert rough_duration(seconds) == words
