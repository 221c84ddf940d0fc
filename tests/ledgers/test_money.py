"""Money is an integer with a unit; parsing is exact and units never mix silently."""

from __future__ import annotations

from fractions import Fraction

import pytest

from ledgers import MAX_AMOUNT, Amount, AmountError, Rates, UnitMismatch


@pytest.mark.parametrize(
    ("text", "value", "unit"),
    [
        ("5000 sat", 5000, "sat"),
        ("1500 msat", 1500, "msat"),
        ("2.50 usd", 2_500_000, "usd_micro"),
        ("0.01 usdc", 10_000, "usdc"),
        ("0.000001 USD", 1, "usd_micro"),
        ("300 tokens", 300, "tokens"),
        ("12 credits:https://api.example.com", 12, "credits:https://api.example.com"),
        ("1_000 sat", 1000, "sat"),
        ("  7   sat ", 7, "sat"),
        (f"{MAX_AMOUNT} msat", MAX_AMOUNT, "msat"),
    ],
)
def test_amounts_parse_exactly(text: str, value: int, unit: str) -> None:
    assert Amount.parse(text) == Amount(value, unit)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1.5 sat", "'1.5 sat' is not a whole number of sat (write it in msat)"),
        ("-1 sat", "is negative"),
        ("2.5000001 usd", "more than 6 decimals"),
        (f"{MAX_AMOUNT + 1} sat", "too large"),
        ("nan sat", "not a finite number"),
        ("ten sat", "'ten' is not a number"),
        ("5 btc", "unknown unit 'btc'"),
        ("5000", "expected '<number> <unit>'"),
        ("5 credits:", "unknown unit"),
    ],
)
def test_bad_amounts_are_refused_with_the_reason(text: str, message: str) -> None:
    with pytest.raises(AmountError, match=None) as raised:
        Amount.parse(text)
    assert message in str(raised.value)


@pytest.mark.parametrize("value", [-1, 1.5, 2**63, True, "5", None])
def test_an_amount_is_a_whole_non_negative_integer_below_two_to_the_63(value: object) -> None:
    with pytest.raises(AmountError):
        Amount(value, "sat")  # type: ignore[arg-type]


def test_sat_and_msat_convert_exactly_and_round_only_when_told() -> None:
    assert Amount(5, "sat").to("msat") == Amount(5000, "msat")
    assert Amount(5000, "msat").to("sat") == Amount(5, "sat")
    with pytest.raises(AmountError, match="round up or down"):
        Amount(1500, "msat").to("sat")
    assert Amount(1500, "msat").to("sat", rounding="up") == Amount(2, "sat")
    assert Amount(1500, "msat").to("sat", rounding="down") == Amount(1, "sat")


def test_other_units_never_mix_without_a_rate() -> None:
    with pytest.raises(UnitMismatch, match="cannot compare usd_micro with sat"):
        Amount.parse("1 usd").to("sat")
    with pytest.raises(UnitMismatch):
        Amount.parse("1 usdc").to("usd_micro")
    with pytest.raises(UnitMismatch):
        Amount(1, "credits:https://a").to("credits:https://b")


def test_a_configured_rate_converts_both_ways_and_through_msat() -> None:
    rates = Rates({("sat", "usd_micro"): Fraction(600)})  # 1 sat = $0.0006
    assert Amount(10, "sat").to("usd_micro", rates=rates) == Amount(6000, "usd_micro")
    assert Amount(6000, "usd_micro").to("sat", rates=rates) == Amount(10, "sat")
    assert Amount(1000, "msat").to("usd_micro", rates=rates) == Amount(600, "usd_micro")
    assert Amount(1, "usd_micro").to("sat", rates=rates, rounding="up") == Amount(1, "sat")


def test_amounts_print_as_people_write_them() -> None:
    assert str(Amount.parse("2.50 usd")) == "2.5 usd"
    assert str(Amount.parse("0.01 usdc")) == "0.01 usdc"
    assert str(Amount(5000, "sat")) == "5000 sat"
