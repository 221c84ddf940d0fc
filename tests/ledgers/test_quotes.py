"""Quotes: prices named before paying, remembered per key until they expire (and for an hour at most), shared
by guards on one ledger; on a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from ledgers import QUOTE_LIFETIME_S, Amount, AmountError, Ledger
from tests.conftest import FakeClock
from tests.ledgers.helpers import query

URL = "https://api.example/item"


@pytest.fixture
def ledger(ledger_url: str, clock: FakeClock) -> Iterator[Ledger]:
    with Ledger.open(ledger_url, clock=clock) as opened:
        yield opened


def test_a_quote_is_used_until_it_expires_and_never_after(ledger: Ledger, clock: FakeClock) -> None:
    expires = clock.now() + timedelta(seconds=600)
    stored = ledger.remember_quote(URL, Amount(21_000, "msat"), expires=expires, payment_id="ab" * 32)
    assert stored is not None and stored.expires == expires
    clock.advance(599)
    found = ledger.quote(URL)
    assert found is not None
    assert (found.key, found.amount, found.payment_id) == (URL, Amount(21_000, "msat"), "ab" * 32)
    assert found.expires == expires
    clock.advance(1)
    assert ledger.quote(URL) is None


def test_a_quote_without_an_expiry_or_with_a_far_one_lasts_an_hour_at_most(ledger: Ledger, clock: FakeClock) -> None:
    ledger.remember_quote(URL, Amount(30, "sat"))
    ledger.remember_quote(URL + "/far", Amount(30, "sat"), expires=clock.now() + timedelta(days=365))
    clock.advance(QUOTE_LIFETIME_S - 1)
    assert ledger.quote(URL) is not None and ledger.quote(URL + "/far") is not None
    clock.advance(1)
    assert ledger.quote(URL) is None and ledger.quote(URL + "/far") is None


def test_a_quote_that_expired_already_is_not_stored(ledger: Ledger, ledger_url: str, clock: FakeClock) -> None:
    assert ledger.remember_quote(URL, Amount(30, "sat"), expires=clock.now()) is None
    assert ledger.quote(URL) is None
    assert query(ledger_url, "SELECT COUNT(*) FROM ledger_quotes")[0][0] == 0


def test_the_latest_quote_for_a_key_replaces_the_one_before_and_expired_ones_are_swept(
    ledger: Ledger, ledger_url: str, clock: FakeClock
) -> None:
    ledger.remember_quote("https://old.example/x", Amount(5, "sat"), expires=clock.now() + timedelta(seconds=10))
    ledger.remember_quote(URL, Amount(30, "sat"))
    clock.advance(20)
    ledger.remember_quote(URL, Amount(50, "sat"), expires=clock.now() + timedelta(seconds=60))
    found = ledger.quote(URL)
    assert found is not None and found.amount == Amount(50, "sat")
    assert query(ledger_url, "SELECT key FROM ledger_quotes") == [(URL,)]


def test_guards_sharing_a_ledger_share_its_quotes(ledger: Ledger, ledger_url: str, clock: FakeClock) -> None:
    ledger.remember_quote(URL, Amount(30, "sat"))
    with Ledger.open(ledger_url, clock=clock) as other:
        found = other.quote(URL)
    assert found is not None and found.amount == Amount(30, "sat")


def test_a_quote_needs_an_amount(ledger: Ledger) -> None:
    with pytest.raises(AmountError):
        ledger.remember_quote(URL, 30)  # type: ignore[arg-type]
