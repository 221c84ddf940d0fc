"""Argument conditions (`when`): every test, exact numbers, reasons that never quote the caller's value;
the arguments' digest."""

from __future__ import annotations

import pytest

from guard.policy.arguments import args_digest
from tests.policy.helpers import (
    JSON,
    SECRET,
    condition_holds,
    tools,
)

# --- argument conditions --------------------------------------------------------------------------------

CONDITIONS = [
    # equals
    ("equals-string-holds", {"arg": "mode", "equals": "read"}, {"mode": "read"}, True),
    ("equals-string-fails", {"arg": "mode", "equals": "read"}, {"mode": "write"}, False),
    ("equals-int-holds-for-an-equal-float", {"arg": "n", "equals": 2}, {"n": 2.0}, True),
    ("equals-true-holds-for-true", {"arg": "dry", "equals": True}, {"dry": True}, True),
    ("equals-true-fails-for-1", {"arg": "dry", "equals": True}, {"dry": 1}, False),
    ("equals-1-fails-for-true", {"arg": "n", "equals": 1}, {"n": True}, False),
    ("equals-false-fails-for-0", {"arg": "dry", "equals": False}, {"dry": 0}, False),
    ("equals-0-fails-for-false", {"arg": "n", "equals": 0}, {"n": False}, False),
    ("equals-list-holds", {"arg": "tags", "equals": ["a", "b"]}, {"tags": ["a", "b"]}, True),
    ("equals-list-fails-in-other-order", {"arg": "tags", "equals": ["a", "b"]}, {"tags": ["b", "a"]}, False),
    ("equals-mapping-holds", {"arg": "opts", "equals": {"k": 1}}, {"opts": {"k": 1}}, True),
    ("equals-null-holds-for-null", {"arg": "x", "equals": None}, {"x": None}, True),
    ("equals-null-fails-for-missing", {"arg": "x", "equals": None}, {}, False),
    ("equals-fails-for-missing", {"arg": "mode", "equals": "read"}, {}, False),
    # not_equals
    ("not-equals-holds", {"arg": "mode", "not_equals": "write"}, {"mode": "read"}, True),
    ("not-equals-fails", {"arg": "mode", "not_equals": "write"}, {"mode": "write"}, False),
    ("not-equals-true-holds-for-1", {"arg": "dry", "not_equals": True}, {"dry": 1}, True),
    ("not-equals-holds-for-missing", {"arg": "mode", "not_equals": "write"}, {}, True),
    # one_of / not_one_of
    ("one-of-holds", {"arg": "net", "one_of": ["main", "test"]}, {"net": "test"}, True),
    ("one-of-fails", {"arg": "net", "one_of": ["main", "test"]}, {"net": "regtest"}, False),
    ("one-of-1-fails-for-true", {"arg": "n", "one_of": [1, 2]}, {"n": True}, False),
    ("one-of-fails-for-missing", {"arg": "net", "one_of": ["main"]}, {}, False),
    ("not-one-of-holds", {"arg": "net", "not_one_of": ["main"]}, {"net": "test"}, True),
    ("not-one-of-fails", {"arg": "net", "not_one_of": ["main"]}, {"net": "main"}, False),
    ("not-one-of-holds-for-missing", {"arg": "net", "not_one_of": ["main"]}, {}, True),
    # matches
    (
        "matches-holds",
        {"arg": "url", "matches": r"^https://api\.example\.com/"},
        {"url": "https://api.example.com/x"},
        True,
    ),
    ("matches-fails", {"arg": "url", "matches": r"^https://api\.example\.com/"}, {"url": "https://evil.com/"}, False),
    ("matches-searches-anywhere", {"arg": "url", "matches": r"example"}, {"url": "https://example.com"}, True),
    ("matches-fails-for-a-number", {"arg": "n", "matches": "5"}, {"n": 5}, False),
    ("matches-fails-for-missing", {"arg": "url", "matches": "."}, {}, False),
    # contains
    ("contains-substring-holds", {"arg": "memo", "contains": "refund"}, {"memo": "a refund for"}, True),
    ("contains-substring-fails", {"arg": "memo", "contains": "refund"}, {"memo": "a payment"}, False),
    ("contains-list-item-holds", {"arg": "tags", "contains": "ok"}, {"tags": ["x", "ok"]}, True),
    ("contains-list-item-fails", {"arg": "tags", "contains": "ok"}, {"tags": ["x", "okay"]}, False),
    ("contains-list-1-fails-for-true", {"arg": "ids", "contains": 1}, {"ids": [True, 2]}, False),
    ("contains-number-in-string-fails", {"arg": "memo", "contains": 1}, {"memo": "a1"}, False),
    ("contains-fails-for-a-number", {"arg": "n", "contains": "1"}, {"n": 12}, False),
    ("contains-fails-for-missing", {"arg": "tags", "contains": "ok"}, {}, False),
    # lt / lte / gt / gte
    ("lt-holds-below", {"arg": "sats", "lt": 100}, {"sats": 99}, True),
    ("lt-fails-at-the-bound", {"arg": "sats", "lt": 100}, {"sats": 100}, False),
    ("lte-holds-at-the-bound", {"arg": "sats", "lte": 100}, {"sats": 100}, True),
    ("lte-fails-above", {"arg": "sats", "lte": 100}, {"sats": 100.5}, False),
    ("gt-holds-above", {"arg": "sats", "gt": 10}, {"sats": 11}, True),
    ("gt-fails-at-the-bound", {"arg": "sats", "gt": 10}, {"sats": 10}, False),
    ("gte-holds-at-the-bound", {"arg": "sats", "gte": 10}, {"sats": 10}, True),
    ("gte-fails-below", {"arg": "sats", "gte": 10}, {"sats": 9}, False),
    ("lt-float-bound", {"arg": "usd", "lt": 2.5}, {"usd": 2.49}, True),
    ("lt-numeric-string-holds", {"arg": "sats", "lt": 100}, {"sats": "99"}, True),
    ("lt-numeric-string-fails", {"arg": "sats", "lt": 100}, {"sats": " 150 "}, False),
    ("gte-decimal-string-holds", {"arg": "usd", "gte": 0.5}, {"usd": "0.50"}, True),
    ("lt-fails-for-a-word", {"arg": "sats", "lt": 100}, {"sats": "cheap"}, False),
    ("lt-fails-for-nan", {"arg": "sats", "lt": 100}, {"sats": "NaN"}, False),
    ("lt-fails-for-a-bool", {"arg": "sats", "lt": 100}, {"sats": False}, False),
    ("lt-fails-for-a-list", {"arg": "sats", "lt": 100}, {"sats": [1]}, False),
    ("lt-fails-for-missing", {"arg": "sats", "lt": 100}, {}, False),
    # exists
    ("exists-true-holds", {"arg": "memo", "exists": True}, {"memo": ""}, True),
    ("exists-true-holds-for-null", {"arg": "memo", "exists": True}, {"memo": None}, True),
    ("exists-true-fails-for-missing", {"arg": "memo", "exists": True}, {}, False),
    ("exists-false-holds-for-missing", {"arg": "invoice", "exists": False}, {}, True),
    ("exists-false-fails", {"arg": "invoice", "exists": False}, {"invoice": "lnbc1"}, False),
    # paths
    ("args-prefix-nested", {"arg": "args.headers.authorization", "exists": False}, {"headers": {"x": 1}}, True),
    (
        "args-prefix-nested-fails",
        {"arg": "args.headers.authorization", "exists": False},
        {"headers": {"authorization": "B"}},
        False,
    ),
    (
        "nested-without-prefix",
        {"arg": "headers.authorization", "equals": "B"},
        {"headers": {"authorization": "B"}},
        True,
    ),
    (
        "nested-without-prefix-fails",
        {"arg": "headers.authorization", "equals": "B"},
        {"headers": {"authorization": "C"}},
        False,
    ),
    ("nested-parent-missing", {"arg": "headers.authorization", "equals": "B"}, {}, False),
    ("nested-through-a-string", {"arg": "headers.authorization", "exists": True}, {"headers": "authorization"}, False),
    ("list-index", {"arg": "items.0.id", "equals": "sku-1"}, {"items": [{"id": "sku-1"}, {"id": "sku-2"}]}, True),
    (
        "list-index-fails",
        {"arg": "items.1.id", "equals": "sku-1"},
        {"items": [{"id": "sku-1"}, {"id": "sku-2"}]},
        False,
    ),
    ("list-index-out-of-range", {"arg": "items.5.id", "exists": True}, {"items": [{"id": "sku-1"}]}, False),
    ("list-index-not-a-number", {"arg": "items.first.id", "exists": True}, {"items": [{"id": "sku-1"}]}, False),
    ("list-index-args-prefix", {"arg": "args.items.0", "lte": 3}, {"items": [3, 9]}, True),
    ("an-argument-named-args", {"arg": "args", "equals": 1}, {"args": 1}, True),
]


@pytest.mark.parametrize(
    ("condition", "arguments", "expected"), [c[1:] for c in CONDITIONS], ids=[c[0] for c in CONDITIONS]
)
def test_an_argument_condition_holds_or_fails(condition: JSON, arguments: JSON, expected: bool) -> None:
    assert condition_holds(condition, arguments) is expected


def test_every_condition_of_a_rule_must_hold_and_the_denial_names_the_first_that_fails() -> None:
    policy = tools({"t": {"when": [{"arg": "a", "exists": True}, {"arg": "b", "lt": 5}, {"arg": "c", "lt": 5}]}})
    assert policy.failed_condition("t", {"a": 1, "b": 1, "c": 1}) is None
    denial = policy.failed_condition("t", {"a": 1, "b": 9, "c": 9})
    assert denial is not None and (denial.rule, denial.kind) == ("tools.t.when[1]", "condition")
    assert denial.reason == "argument b must be less than 5"


def test_conditions_under_star_apply_to_every_tool() -> None:
    policy = tools({"*": {"when": [{"arg": "network", "equals": "testnet"}]}, "t": {}})
    denial = policy.failed_condition("t", {"network": "mainnet"})
    assert denial is not None and denial.rule == "tools.*.when[0]"
    assert policy.failed_condition("t", {"network": "testnet"}) is None


@pytest.mark.parametrize(
    ("condition", "rule_reason", "reason"),
    [
        ({"arg": "url", "matches": "^https://"}, None, "argument url must match '^https://'"),
        ({"arg": "url", "matches": "^https://", "reason": "https only"}, None, "https only"),
        ({"arg": "url", "matches": "^https://"}, "only api.example.com", "only api.example.com"),
        ({"arg": "url", "matches": "^https://", "reason": "https only"}, "other", "https only"),
    ],
    ids=["described", "condition-reason", "rule-reason", "condition-reason-first"],
)
def test_a_failed_conditions_reason(condition: JSON, rule_reason: str | None, reason: str) -> None:
    rule: JSON = {"when": [condition]}
    if rule_reason:
        rule["reason"] = rule_reason
    denial = tools({"t": rule}).failed_condition("t", {"url": "http://x"})
    assert denial is not None and denial.reason == reason


@pytest.mark.parametrize(
    "condition",
    [
        {"arg": "headers.authorization", "equals": "Bearer public"},
        {"arg": "headers.authorization", "one_of": ["Bearer a", "Bearer b"]},
        {"arg": "headers.authorization", "matches": "^Bearer [a-z]+$"},
        {"arg": "headers.authorization", "contains": "Bearer"},
        {"arg": "headers.authorization", "lt": 5},
        {"arg": "headers.authorization", "lte": 5},
        {"arg": "headers.authorization", "gt": 5},
        {"arg": "headers.authorization", "gte": 5},
        {"arg": "headers.authorization", "exists": False},
    ],
    ids=lambda c: next(k for k in c if k != "arg"),
)
def test_a_denial_never_quotes_the_callers_argument(condition: JSON) -> None:
    denial = tools({"t": {"when": [condition]}}).failed_condition("t", {"headers": {"authorization": SECRET}})
    assert denial is not None
    assert denial.reason.startswith("argument headers.authorization ")
    assert SECRET not in denial.reason and "sk_live" not in denial.reason


def test_the_arguments_digest_is_stable_and_reveals_nothing() -> None:
    digest = args_digest({"b": 1, "token": SECRET})
    assert digest == args_digest({"token": SECRET, "b": 1})
    assert digest != args_digest({"b": 2, "token": SECRET})
    assert SECRET not in digest and len(digest) == 64
