"""The PostgreSQL server that scripts/test starts is there, real, and durable."""

from __future__ import annotations

import sqlalchemy


def test_postgres_is_reachable_with_fsync_on(postgres_url: str) -> None:
    engine = sqlalchemy.create_engine(postgres_url)
    try:
        with engine.connect() as connection:
            version = connection.execute(sqlalchemy.text("SELECT version()")).scalar_one()
            fsync = connection.execute(sqlalchemy.text("SHOW fsync")).scalar_one()
    finally:
        engine.dispose()
    assert "PostgreSQL" in version
    # The ledger's durability tests mean nothing against a server that does not flush.
    assert fsync == "on"
