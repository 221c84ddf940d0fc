"""Ledger test fixtures: `ledger_url`, `clock` and `FakeClock` live in tests/conftest.py, shared with the
operators' view tests; re-exported here for the ledger tests that import them from this package."""

from tests.conftest import FakeClock, reset_postgres

__all__ = ["FakeClock", "reset_postgres"]
