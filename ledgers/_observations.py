"""What upstreams said: balance observations (appended; the newest of a key is what it is now) and
quotes (a price named before paying, one per key, used until it expires and for an hour at most).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from ledgers._errors import AmountError, UnitMismatch
from ledgers._money import Amount
from ledgers._part import Part
from ledgers._records import BalanceObservation, Quote
from ledgers._store import columns, run
from ledgers._time import US_PER_S, from_us, to_us

# The longest a remembered price is used (a BOLT11 invoice's default expiry): prices change.
QUOTE_LIFETIME_S = 3600

# An observation's columns (besides its id), as written and as read.
OBSERVATION_COLUMNS = ("source", "key", "amount", "unit", "status", "upstream_us", "upstream_stale", "seen_us", "money")
QUOTE_COLUMNS = ("key", "amount", "unit", "payment_id", "seen_us", "expires_us")


@dataclass(frozen=True)
class NamedQuote:
    """A price an answer named, to remember (`Observations.remember_quote`) under `key`, usable until
    `expires` (and for `QUOTE_LIFETIME_S` at most). `keep_higher`: the key is one invoice's, and of two
    prices named for it the higher stays (the ledger must not say less than the wallet may pay)."""

    key: str
    amount: Amount
    expires: datetime | None = None
    payment_id: str | None = None
    keep_higher: bool = False


class Observations(Part):
    def observe(self, observation: BalanceObservation) -> None:
        """Store what an upstream said about a balance."""
        with self._store.write() as conn:
            insert_observation(conn, observation, self._store.now_us())

    def latest(self, key: str) -> tuple[BalanceObservation, float] | None:
        """The newest observation for `key`, and its age in seconds by the guard's clock."""
        with self._store.read() as conn:
            row = run(
                conn,
                f"SELECT {columns(OBSERVATION_COLUMNS)} FROM ledger_observations WHERE key = :k"
                " ORDER BY seen_us DESC, id DESC LIMIT 1",
                {"k": key},
            ).first()
        if row is None:
            return None
        return _observation(row), (self._store.now_us() - row.seen_us) / US_PER_S

    def observed(self) -> list[tuple[BalanceObservation, float]]:
        """The newest observation of every key, with its age in seconds, oldest first."""
        with self._store.read() as conn:
            rows = run(
                conn,
                f"SELECT {columns(OBSERVATION_COLUMNS, 'o.')} FROM ledger_observations o"
                " JOIN (SELECT key, MAX(id) AS id FROM ledger_observations GROUP BY key) n ON o.id = n.id"
                " ORDER BY o.seen_us",
            ).all()
        now = self._store.now_us()
        return [(_observation(row), (now - row.seen_us) / US_PER_S) for row in rows]

    def remember_quote(
        self,
        key: str,
        amount: Amount,
        *,
        expires: datetime | None = None,
        payment_id: str | None = None,
        keep_higher: bool = False,
    ) -> Quote | None:
        """Remember the price named for `key` (replacing the one before, or, with `keep_higher`, unless the
        one before is higher), usable until `expires` and for at most `QUOTE_LIFETIME_S`. Returns it as
        stored; None when it had expired already."""
        named = NamedQuote(key, amount, expires, payment_id, keep_higher)
        if not isinstance(amount, Amount):
            raise AmountError(f"a quote's amount must be an Amount, not {amount!r}")
        if _until(named, self._store.now_us()) is None:
            return None  # no write for a price that expired already
        with self._store.write() as conn:
            return store_quote(conn, named, self._store.now_us())

    def quote(self, key: str) -> Quote | None:
        """The price last named for `key`, unless it expired (an expired quote is never used)."""
        now = self._store.now_us()
        with self._store.read() as conn:
            return _live_quote(conn, key, now)


# Inside a transaction


def insert_observation(conn: Connection, observation: BalanceObservation, now: int) -> None:
    """Append what an upstream said about a balance, seen at `now`."""
    amount = observation.amount
    if amount is not None and not isinstance(amount, Amount):
        raise AmountError(f"an observation's amount must be an Amount, not {amount!r}")
    values = {
        "source": observation.source,
        "key": observation.key,
        "amount": amount.value if amount else None,
        "unit": amount.unit if amount else None,
        "status": observation.status,
        "upstream_us": to_us(observation.upstream_time) if observation.upstream_time else None,
        "upstream_stale": observation.upstream_stale,
        "money": observation.money,
        "seen_us": now,
    }
    run(
        conn,
        f"INSERT INTO ledger_observations ({columns(OBSERVATION_COLUMNS)})"
        f" VALUES ({columns(OBSERVATION_COLUMNS, ':')})",
        values,
    )


def store_quote(conn: Connection, named: NamedQuote, now: int) -> Quote | None:
    """Remember a named price (see `Observations.remember_quote`), dropping the quotes that expired.
    None when it had expired already (nothing stored)."""
    if not isinstance(named.amount, Amount):
        raise AmountError(f"a quote's amount must be an Amount, not {named.amount!r}")
    until = _until(named, now)
    if until is None:
        return None
    amount = named.amount
    if named.keep_higher and (earlier := _live_quote(conn, named.key, now)) is not None:
        amount = _higher(earlier.amount, amount)
    values = {"key": named.key, "amount": amount.value, "unit": amount.unit, "payment_id": named.payment_id}
    run(conn, "DELETE FROM ledger_quotes WHERE expires_us <= :now", {"now": now})
    run(
        conn,
        f"INSERT INTO ledger_quotes ({columns(QUOTE_COLUMNS)}) VALUES ({columns(QUOTE_COLUMNS, ':')})"
        " ON CONFLICT (key) DO UPDATE SET amount = :amount, unit = :unit, payment_id = :payment_id,"
        " seen_us = :seen_us, expires_us = :expires_us",
        values | {"seen_us": now, "expires_us": until},
    )
    return Quote(named.key, amount, from_us(until), named.payment_id, from_us(now))


def _until(named: NamedQuote, now: int) -> int | None:
    """Until when a quote named now is used; None when it expired already."""
    until = now + QUOTE_LIFETIME_S * US_PER_S
    if named.expires is not None:
        until = min(until, to_us(named.expires))
    return until if until > now else None


def _live_quote(conn: Connection, key: str, now: int) -> Quote | None:
    row = run(
        conn,
        f"SELECT {columns(QUOTE_COLUMNS)} FROM ledger_quotes WHERE key = :k AND expires_us > :now",
        {"k": key, "now": now},
    ).first()
    if row is None:
        return None
    return Quote(row.key, Amount(row.amount, row.unit), from_us(row.expires_us), row.payment_id, from_us(row.seen_us))


def _higher(earlier: Amount, named: Amount) -> Amount:
    """The higher of two prices named for one invoice (they should agree: if not, the ledger must not say
    less than the wallet may pay); the one named last when they do not compare."""
    try:
        return earlier if earlier.to(named.unit, rounding="up").value > named.value else named
    except UnitMismatch:
        return named


def _observation(row: Any) -> BalanceObservation:
    return BalanceObservation(
        source=row.source,
        key=row.key,
        amount=Amount(row.amount, row.unit) if row.amount is not None else None,
        status=row.status,
        upstream_time=from_us(row.upstream_us) if row.upstream_us is not None else None,
        upstream_stale=bool(row.upstream_stale) if row.upstream_stale is not None else None,
        seen=from_us(row.seen_us),
        money=bool(row.money),
    )
