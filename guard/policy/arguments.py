"""Reading a call's arguments: paths (`args.headers.authorization`), the argument conditions of `when`,
and numbers taken from arguments (a `price_from` price, a quota's `increment_from`). Every test is exact
(Decimal numbers, 1 is not true) and never quotes the caller's value in words.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from guard.core import JSON
from guard.errors import PriceUnknown
from guard.policy.model import MAX_COUNT, MAX_MATCHED_CHARS, Condition, path_parts, pattern
from ledgers import Amount, AmountError


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()


def lookup(arguments: Any, path: str) -> Any:
    """The value at `path` (`url`, `args.headers.authorization`, `items.0.id`), or `MISSING`."""
    value = arguments
    for part in path_parts(path):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return MISSING
    return value


def holds(condition: Condition, arguments: JSON) -> bool:
    """Whether `condition` holds for these arguments. A missing argument fails every test but
    `exists: false` and the negative ones (`not_equals`, `not_one_of`)."""
    value = lookup(arguments, condition.arg)
    test = condition.test
    expected = getattr(condition, test)
    if test == "exists":
        return bool((value is not MISSING) == expected)
    if value is MISSING:
        return test in ("not_equals", "not_one_of")
    if test == "equals":
        return _same(value, expected)
    if test == "not_equals":
        return not _same(value, expected)
    if test == "one_of":
        return any(_same(value, option) for option in expected)
    if test == "not_one_of":
        return not any(_same(value, option) for option in expected)
    if test == "matches":
        return (
            isinstance(value, str) and len(value) <= MAX_MATCHED_CHARS and pattern(expected).search(value) is not None
        )
    if test == "contains":
        if isinstance(value, str):
            return isinstance(expected, str) and expected in value
        return isinstance(value, list) and any(_same(item, expected) for item in value)
    number = _number(value)
    if number is None:
        return False
    bound = Decimal(str(expected))
    return {"lt": number < bound, "lte": number <= bound, "gt": number > bound, "gte": number >= bound}[test]


def too_long(condition: Condition, arguments: JSON) -> str | None:
    """Why a `matches` failed when its argument is longer than patterns are run against."""
    value = lookup(arguments, condition.arg)
    if condition.test == "matches" and isinstance(value, str) and len(value) > MAX_MATCHED_CHARS:
        path = ".".join(path_parts(condition.arg))
        return f"argument {path} is longer than {MAX_MATCHED_CHARS} characters, the most a pattern is matched against"
    return None


def describe(condition: Condition) -> str:
    """A condition in words, naming the argument but never quoting the caller's value."""
    test, expected = condition.test, getattr(condition, condition.test)
    words = {
        "equals": f"must equal {expected!r}",
        "not_equals": f"must not equal {expected!r}",
        "one_of": f"must be one of {expected!r}",
        "not_one_of": f"must not be one of {expected!r}",
        "matches": f"must match {expected!r}",
        "contains": f"must contain {expected!r}",
        "lt": f"must be less than {expected}",
        "lte": f"must be at most {expected}",
        "gt": f"must be more than {expected}",
        "gte": f"must be at least {expected}",
        "exists": "is required" if expected else "must not be given",
    }[test]
    return f"argument {'.'.join(path_parts(condition.arg))} {words}"


def _same(value: Any, expected: Any) -> bool:
    # 1 == True in Python; in a policy they are different things.
    if isinstance(value, bool) or isinstance(expected, bool):
        return type(value) is type(expected) and bool(value == expected)
    if isinstance(value, int | float) and isinstance(expected, int | float):
        return Decimal(str(value)) == Decimal(str(expected))
    return bool(value == expected)


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return Decimal(str(value))
    if isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except ArithmeticError:
            return None
        return number if number.is_finite() else None
    return None


def price_at(value: Any, path: str, unit: str) -> Amount:
    """The number at `path` read as an amount of `unit` ("0.25" usd is 250 000 usd_micro)."""
    number = _number(value)
    if number is None or number < 0:
        raise PriceUnknown(f"argument {'.'.join(path_parts(path))} must be a number ≥ 0")
    try:
        return Amount.parse(f"{number:f} {unit}")
    except AmountError as exc:
        raise PriceUnknown(f"argument {'.'.join(path_parts(path))}: {exc}") from None


def whole_number_at(value: Any, path: str) -> int:
    number = _number(value) if value is not MISSING else None
    if number is None or not 0 <= number <= MAX_COUNT or number != number.to_integral_value():
        raise PriceUnknown(f"argument {'.'.join(path_parts(path))} must be a whole number from 0 to {MAX_COUNT}")
    return int(number)


def args_digest(arguments: JSON) -> str:
    """A digest of the exact arguments (canonical JSON), for approvals and the audit trail. It never
    reveals the arguments themselves."""
    canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()
