"""Ledger test fixtures: `ledger_url` (a real SQLite file, and the test PostgreSQL server emptied),
`clock` and `FakeClock` live in tests/conftest.py, shared with the operators' view tests; `ledger` is an
open ledger on each, under the fake clock."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ledgers import Ledger
from tests.conftest import FakeClock, reset_postgres

__all__ = ["FakeClock", "reset_postgres"]


@pytest.fixture
def ledger(ledger_url: str, clock: FakeClock) -> Iterator[Ledger]:
    with Ledger.open(ledger_url, clock=clock) as opened:
        yield opened
