"""The policy's `rates:` table: what one unit of money is worth in another, exact, with the stablecoin
defaults and never a guessed sat rate; every pair that follows from the entries; bad entries as located
errors (file, line, column)."""

from __future__ import annotations

from fractions import Fraction

import pytest

from guard.policy.files import parse
from ledgers import Amount, UnitMismatch
from tests.policy.helpers import policy_text, problems


def rates_of(table: str) -> dict[tuple[str, str], Fraction]:
    policy, _ = policy_text(f"version: 1\nrates: {table}\n")
    return policy.rates.table


def test_usdc_and_usdt_count_as_dollars_when_no_rate_is_written() -> None:
    rates = parse("version: 1\n")[0].rates
    assert Amount(1_250_000, "usdc").to("usd_micro", rates=rates) == Amount(1_250_000, "usd_micro")
    assert Amount(3, "usdt").to("usdc", rates=rates) == Amount(3, "usdc")


def test_no_rate_between_sats_and_dollars_is_ever_assumed() -> None:
    rates = parse("version: 1\n")[0].rates
    with pytest.raises(UnitMismatch):
        Amount(21, "sat").to("usd_micro", rates=rates, rounding="up")


def test_a_written_sat_rate_is_exact_and_reaches_every_unit_rated_in_dollars() -> None:
    """0.00095 usd is 950 usd_micro per sat (a float would make it 949.99...); through the default usdc
    rate, sats convert to usdc as well."""
    table = rates_of("{sat: 0.00095 usd}")
    assert table[("sat", "usd_micro")] == Fraction(950)
    assert table[("sat", "usdc")] == Fraction(950)
    rates = parse("version: 1\nrates: {sat: 0.00095 usd}\n")[0].rates
    assert Amount(21, "sat").to("usd_micro", rates=rates) == Amount(19_950, "usd_micro")
    assert Amount(1_500, "msat").to("usd_micro", rates=rates, rounding="up") == Amount(1_425, "usd_micro")
    assert Amount(1_000_000, "usd_micro").to("sat", rates=rates, rounding="up") == Amount(1_053, "sat")


def test_a_rate_may_be_written_either_way_round_and_in_any_unit_of_a_family() -> None:
    assert rates_of("{usd: 1000 sat}")[("sat", "usd_micro")] == Fraction(1000)  # $1 = 1000 sat: 1 sat = $0.001
    assert rates_of("{msat: 0.000001 usd}")[("sat", "usd_micro")] == Fraction(1000)


def test_naming_a_stablecoin_replaces_its_default() -> None:
    table = rates_of("{usdc: 0.999 usd}")
    assert table[("usd_micro", "usdc")] == Fraction(1000, 999)  # one usdc is 0.999 usd
    assert table[("usd_micro", "usdt")] == Fraction(1)  # usdt keeps its default


@pytest.mark.parametrize(
    ("table", "column", "where", "message"),
    [
        ("{sat: -0.001 usd}", 14, "rates.sat", "expected what one unit is worth"),
        ("{sat: 0 usd}", 14, "rates.sat", "a rate must be more than zero"),
        ("{sat: 0.001}", 14, "rates.sat", "expected what one unit is worth"),
        ("{sat: 0.001 dollars}", 14, "rates.sat", "'dollars' is not a unit of money a rate converts"),
        ("{doge: 0.1 usd}", 15, "rates.doge", "'doge' is not a unit of money a rate converts"),
        ("{tokens: 1 usd}", 17, "rates.tokens", "'tokens' is not a unit of money a rate converts"),
        ("{sat: 1e-3 usd}", 14, "rates.sat", "expected what one unit is worth"),
        ("{usdc: 1 usdc}", 8, "rates", "usdc: 1 usdc rates a unit against itself"),
        ("{sat: 1000 msat}", 8, "rates", "sat: 1000 msat rates a unit against itself"),
        (
            "{sat: 0.00095 usd, msat: 0.000001 usd}",
            8,
            "rates",
            "msat: 0.000001 usd contradicts usdc: 1 usd (a default), usdt: 1 usd (a default), sat: 0.00095 usd",
        ),
        (
            "{usdc: 1 usdt, usdt: 1 usd, usd: 2 usdc}",
            8,
            "rates",
            "usd: 2 usdc contradicts usdc: 1 usdt, usdt: 1 usd: they set different rates between usd and usdc",
        ),
    ],
)
def test_a_bad_rate_is_a_located_error(table: str, column: int, where: str, message: str) -> None:
    (problem,) = problems(f"version: 1\nrates: {table}\n")
    assert (problem.line, problem.column, problem.where) == (2, column, where)
    assert problem.message.startswith(message), problem.message


def test_a_reload_with_another_rate_builds_another_table_the_old_policy_keeps_its_own() -> None:
    old = parse("version: 1\nrates: {sat: 0.001 usd}\n")[0]
    new = parse("version: 1\nrates: {sat: 0.002 usd}\n")[0]
    assert (old.rates.table[("sat", "usd_micro")], new.rates.table[("sat", "usd_micro")]) == (1000, 2000)
