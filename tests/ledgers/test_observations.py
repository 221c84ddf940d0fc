"""What upstreams said: balance observations (the newest of a key, its age, whether it is money) and
quotes (prices named before paying, remembered per key until they expire and for an hour at most,
shared by guards on one ledger). On a real SQLite file and a real PostgreSQL server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ledgers import QUOTE_LIFETIME_S, Amount, AmountError, BalanceObservation, Ledger
from tests.ledgers.conftest import FakeClock
from tests.ledgers.helpers import query

URL = "https://api.example/item"


# --- balances -------------------------------------------------------------------------------------------------


def test_the_latest_balance_observation_and_its_age(ledger: Ledger, clock: FakeClock) -> None:
    origin = "https://api.example.com"
    assert ledger.latest(origin) is None
    ledger.observe(BalanceObservation("l402-balance", origin, Amount(40, f"credits:{origin}"), upstream_stale=True))
    clock.advance(30)
    upstream_time = datetime(2026, 11, 21, 11, 59, tzinfo=UTC)
    ledger.observe(
        BalanceObservation("l402-fetch", origin, Amount(39, f"credits:{origin}"), "ok", upstream_time, False)
    )
    clock.advance(12)
    latest = ledger.latest(origin)
    assert latest is not None
    observation, age = latest
    assert (observation.source, observation.amount, observation.status) == (
        "l402-fetch",
        Amount(39, f"credits:{origin}"),
        "ok",
    )
    assert observation.upstream_time == upstream_time and observation.upstream_stale is False
    assert age == pytest.approx(12)


def test_an_observation_says_whether_its_balance_is_money(ledger: Ledger) -> None:
    ledger.observe(BalanceObservation("get_balance", "wallet:alby", Amount(5000, "sat"), money=True))
    ledger.observe(BalanceObservation("l402-balance", "https://api.example", Amount(40, "credits:x")))
    wallet, credits = ledger.latest("wallet:alby"), ledger.latest("https://api.example")
    assert wallet is not None and credits is not None
    assert (wallet[0].money, credits[0].money) == (True, False)


def test_the_newest_observation_of_every_key_is_listed_oldest_first_with_its_age(
    ledger: Ledger, clock: FakeClock
) -> None:
    ledger.observe(BalanceObservation("get_balance", "wallet:alby", Amount(5000, "sat"), money=True))
    clock.advance(10)
    ledger.observe(BalanceObservation("p402", "p402:s1", Amount(2, "usd_micro"), status="active", money=True))
    clock.advance(10)
    ledger.observe(BalanceObservation("get_balance", "wallet:alby", Amount(4000, "sat"), money=True))
    clock.advance(5)
    assert [(o.key, o.amount, o.status, o.money, age) for o, age in ledger.observed()] == [
        ("p402:s1", Amount(2, "usd_micro"), "active", True, 15),
        ("wallet:alby", Amount(4000, "sat"), None, True, 5),
    ]


def test_an_observation_needs_an_amount(ledger: Ledger) -> None:
    with pytest.raises(AmountError):
        ledger.observe(BalanceObservation("get_balance", "wallet:alby", 5000))  # type: ignore[arg-type]


# --- quotes ---------------------------------------------------------------------------------------------------


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
