"""Money: an integer amount with a unit. No floats, ever.

Units:
- `msat`, `sat`: Lightning (1 sat = 1000 msat); they convert into each other exactly.
- `usd_micro`: US dollars in millionths ("2.50 usd" is 2_500_000 usd_micro).
- a stablecoin's atomic units, named by asset: `usdc` has 6 decimals ("0.01 usdc" is 10_000 usdc).
- `credits:<origin>`: a paid server's own credits, per origin.
- `tokens`: a token budget (never money).

Units of different families never mix silently: comparing usd with sat raises `UnitMismatch`
unless a `Rates` table says how many of one make the other.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal, InvalidOperation
from fractions import Fraction
from typing import Literal

from ledgers._errors import AmountError, UnitMismatch

MAX_AMOUNT = 2**63 - 1  # what a BIGINT column holds

# unit -> (family, how many base units of the family one of it is)
_LIGHTNING = {"msat": 1, "sat": 1000}
# Words people write for decimal currencies -> (stored unit, decimals).
_DECIMAL_UNITS = {"usd": ("usd_micro", 6), "usdc": ("usdc", 6), "eurc": ("eurc", 6), "usdt": ("usdt", 6)}
_UNIT_NAME = re.compile(r"^(?:msat|sat|usd_micro|usdc|eurc|usdt|tokens|credits:\S+)$")

Rounding = Literal["up", "down", "exact"]


def check_unit(unit: str) -> str:
    """Return `unit` if it is a unit the ledger knows, else raise `AmountError`."""
    if not isinstance(unit, str) or not _UNIT_NAME.match(unit):
        known = "msat, sat, usd_micro, usdc, eurc, usdt, tokens or credits:<origin>"
        raise AmountError(f"unknown unit {unit!r}: expected {known}")
    return unit


def check_value(value: object, what: str = "amount") -> int:
    """Return `value` if it is a whole number of units in 0 ≤ value < 2^63, else raise `AmountError`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise AmountError(f"{what} must be a whole number of units, not {type(value).__name__} {value!r}")
    if value < 0:
        raise AmountError(f"{what} must not be negative: {value}")
    if value > MAX_AMOUNT:
        raise AmountError(f"{what} {value} is too large: the most a ledger holds is 2^63-1")
    return value


@dataclass(frozen=True, order=False)
class Amount:
    """A whole number of `unit`s."""

    value: int
    unit: str

    def __post_init__(self) -> None:
        check_value(self.value)
        check_unit(self.unit)

    @classmethod
    def parse(cls, text: str) -> Amount:
        """Parse "5000 sat", "2.50 usd", "0.01 usdc", "1500 msat", "300 tokens", "12 credits:https://x".

        Decimal figures are exact: "2.50 usd" is 2_500_000 usd_micro; "1.5 sat" is refused (write
        1500 msat), as is anything finer than the unit holds.
        """
        if not isinstance(text, str):
            raise AmountError(f"expected an amount such as '5000 sat', not {type(text).__name__} {text!r}")
        parts = text.strip().split()
        if len(parts) != 2:
            raise AmountError(f"{text!r} is not an amount: expected '<number> <unit>', such as '5000 sat'")
        figure, word = parts
        try:
            number = Decimal(figure.replace("_", ""))
        except InvalidOperation:
            raise AmountError(f"{text!r}: {figure!r} is not a number") from None
        if not number.is_finite():
            raise AmountError(f"{text!r}: {figure!r} is not a finite number")
        if word.lower() in _DECIMAL_UNITS:
            unit, decimals = _DECIMAL_UNITS[word.lower()]
            scaled = number.scaleb(decimals)
            if scaled != scaled.to_integral_value():
                raise AmountError(f"{text!r} has more than {decimals} decimals, finer than {unit} can hold")
            return cls(_whole(scaled, text), unit)
        unit = check_unit(word)
        if number != number.to_integral_value():
            hint = " (write it in msat)" if unit == "sat" else ""
            raise AmountError(f"{text!r} is not a whole number of {unit}{hint}")
        return cls(_whole(number, text), unit)

    def __str__(self) -> str:
        for word, (unit, decimals) in _DECIMAL_UNITS.items():
            if unit == self.unit:
                return f"{Decimal(self.value).scaleb(-decimals).normalize():f} {word}"
        return f"{self.value} {self.unit}"

    def to(self, unit: str, *, rates: Rates | None = None, rounding: Rounding = "exact") -> Amount:
        """This amount in `unit`. Lightning units convert exactly (msat -> sat must divide, unless
        `rounding` says up or down); other families need `rates`, else `UnitMismatch`."""
        check_unit(unit)
        if unit == self.unit:
            return self
        if self.unit in _LIGHTNING and unit in _LIGHTNING:
            ratio = Fraction(_LIGHTNING[self.unit], _LIGHTNING[unit])
        elif rates is not None and (ratio_or_none := rates.ratio(self.unit, unit)) is not None:
            ratio = ratio_or_none
        else:
            raise UnitMismatch(f"cannot compare {self.unit} with {unit}: no exchange rate is configured")
        return Amount(_rounded(self.value * ratio, rounding, f"{self} in {unit}"), unit)

    def above(self, bound: Amount) -> Amount | None:
        """How much more than `bound` this is, in `bound`'s unit (this amount rounded up, as settling
        converts it); None when it is not more, or the units do not compare without a rate."""
        try:
            over = self.to(bound.unit, rounding="up").value - bound.value
        except UnitMismatch:
            return None
        return Amount(over, bound.unit) if over > 0 else None


def _whole(number: Decimal, text: str) -> int:
    value = int(number)
    if value < 0:
        raise AmountError(f"{text!r} is negative: amounts are never negative")
    if value > MAX_AMOUNT:
        raise AmountError(f"{text!r} is too large: the most a ledger holds is 2^63-1 units")
    return value


def _rounded(value: Fraction, rounding: Rounding, what: str) -> int:
    if value.denominator == 1:
        return int(value)
    if rounding == "exact":
        raise AmountError(f"{what} is not a whole number of units; say whether to round up or down")
    quotient = Decimal(value.numerator) / Decimal(value.denominator)
    return int(quotient.to_integral_value(ROUND_CEILING if rounding == "up" else ROUND_FLOOR))


@dataclass(frozen=True)
class Rates:
    """Exchange rates between unit families: `Rates({("sat", "usd_micro"): Fraction(600, 1)})` says
    one sat is worth 600 usd_micro. The inverse direction is implied."""

    table: dict[tuple[str, str], Fraction]

    def ratio(self, source: str, target: str) -> Fraction | None:
        """How many `target` one `source` is worth, through Lightning sub-units where needed."""
        for (a, b), rate in self.table.items():
            for src_scale, tgt_scale, forward in (
                (_scale(source, a), _scale(target, b), True),
                (_scale(source, b), _scale(target, a), False),
            ):
                if src_scale is not None and tgt_scale is not None:
                    r = rate if forward else 1 / rate
                    return r * src_scale / tgt_scale
        return None


def _scale(unit: str, anchor: str) -> Fraction | None:
    """How many `anchor` one `unit` is, when they are the same unit or both Lightning units."""
    if unit == anchor:
        return Fraction(1)
    if unit in _LIGHTNING and anchor in _LIGHTNING:
        return Fraction(_LIGHTNING[unit], _LIGHTNING[anchor])
    return None
