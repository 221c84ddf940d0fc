"""Reading an upstream's JSON defensively: nothing here raises except `Unreadable`, nothing is a float.

Upstreams send numbers as JSON floats, as strings, negative, huge, NaN, or not at all. These helpers
turn a field into an exact `Decimal` or an `Amount`, or raise `Unreadable` with a message that names
the field (never a secret: callers only pass numeric fields, and values are shown truncated).
"""

from __future__ import annotations

import json
import math
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Literal

from guard.core import JSON
from ledgers import MAX_AMOUNT, Amount

# Longest numeric text worth reading: anything longer is not an amount (and costs time to parse).
_MAX_FIGURE = 80


class Unreadable(ValueError):
    """A field is missing or not what the upstream documents."""


def short(value: object, limit: int = 40) -> str:
    """`value` for a message: its repr, cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def as_dict(value: object) -> JSON | None:
    """`value` when it is a JSON object, else None."""
    return value if isinstance(value, dict) else None


def dig(value: object, *path: str) -> object:
    """The value at `path` inside nested objects, or None when a step is missing or not an object."""
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def text_of(result: JSON) -> str | None:
    """The first text item of a tool result's `content`, or None."""
    content = result.get("content")
    if isinstance(content, list):
        for item in content:
            if isinstance(item, dict) and item.get("type") == "text" and isinstance(item.get("text"), str):
                return str(item["text"])
    return None


def parse_json(text: str) -> object:
    """`text` parsed as JSON, with fractions as exact `Decimal`s (NaN and Infinity too: `decimal`
    refuses them where a number is read); `Unreadable` if it is not JSON."""
    try:
        return json.loads(text, parse_float=Decimal, parse_constant=Decimal)
    except (ValueError, RecursionError):
        raise Unreadable("the text is not JSON") from None


def result_object(result: JSON) -> JSON:
    """A tool result's payload object: `structuredContent`, else its first text item parsed as JSON."""
    structured = as_dict(result.get("structuredContent"))
    if structured is not None:
        return structured
    text = text_of(result)
    if text is None:
        raise Unreadable("the result has no text content")
    value = as_dict(parse_json(text))
    if value is None:
        raise Unreadable("the result's text is not a JSON object")
    return value


def decimal(value: object, what: str) -> Decimal:
    """`value` (a JSON number, or a number written as a string) as an exact, finite `Decimal`."""
    if isinstance(value, bool) or value is None:
        raise Unreadable(f"{what} is missing" if value is None else f"{what} is not a number: {short(value)}")
    if isinstance(value, int | Decimal):
        number = Decimal(value)
    elif isinstance(value, float):
        number = Decimal(str(value))  # the float's shortest text, not its binary expansion
    elif isinstance(value, str) and len(value) <= _MAX_FIGURE:
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            raise Unreadable(f"{what} is not a number: {short(value)}") from None
    else:
        raise Unreadable(f"{what} is not a number: {short(value)}")
    if not number.is_finite():
        raise Unreadable(f"{what} is not a finite number: {short(value)}")
    return number


def amount(
    value: object,
    what: str,
    unit: str,
    *,
    decimals: int = 0,
    rounding: Literal["up", "down", "exact"] = "exact",
) -> Amount:
    """`value` (in units of 10^decimals `unit`) as an `Amount` of `unit`: "0.25" usd with 6 decimals is
    250_000 usd_micro. `rounding` says what to do with a finer figure; negative, too large or
    (with "exact") fractional figures are `Unreadable`."""
    number = decimal(value, what)
    if number < 0:
        raise Unreadable(f"{what} is negative: {short(value)}")
    if number == 0:
        return Amount(0, unit)
    if number.adjusted() + decimals > 20:  # ≥ 10^21 units: more than a ledger holds (2^63 ≈ 9.2·10^18)
        raise Unreadable(f"{what} is too large: {short(value)}")
    if number.adjusted() + decimals < -2:  # below a hundredth of a unit: no need to expand it exactly
        scaled = Fraction(1, 1000)
    else:
        scaled = Fraction(number) * 10**decimals
    if scaled.denominator != 1 and rounding == "exact":
        raise Unreadable(f"{what} is not a whole number of {unit}: {short(value)}")
    whole = math.ceil(scaled) if rounding == "up" else math.floor(scaled)
    if whole > MAX_AMOUNT:
        raise Unreadable(f"{what} is too large: {short(value)}")
    return Amount(whole, unit)
