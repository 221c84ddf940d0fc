"""Ledger test fixtures: every ledger test runs on a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text


class FakeClock:
    """A clock tests move by hand, forwards or backwards."""

    def __init__(self, start: datetime = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)) -> None:
        self.moment = start

    def now(self) -> datetime:
        return self.moment

    def advance(self, seconds: float) -> None:
        self.moment += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def reset_postgres(url: str) -> None:
    """Drop the ledger's tables so a test starts from an empty ledger."""
    engine = create_engine(url)
    with engine.begin() as conn:
        for table in [t for t in inspect(conn).get_table_names() if t.startswith("ledger_")]:
            conn.execute(text(f"DROP TABLE IF EXISTS {table} CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty ledger's URL: a SQLite file in tmp_path, or the test PostgreSQL server, emptied."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    url = str(request.getfixturevalue("postgres_url"))
    reset_postgres(url)
    return url
