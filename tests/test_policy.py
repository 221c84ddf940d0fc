"""The policy: every rule kind, read from a file by `parse` and decided by `Policy`; the seed formats
(Intercept, PolicyLayer) as written; located errors; `dump` round trips; `guard policy` on the
command line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from guard.errors import PolicyError, PriceUnknown, Problem
from guard.policy import files as _policy_files
from guard.policy.arguments import args_digest
from guard.policy.files import detect, dump, load, parse
from guard.policy.rules import Policy, Who
from ledgers import Amount, Window
from tests.conftest import FIXTURES, ROOT, WAIT_S

JSON = dict[str, Any]
SEEDS = FIXTURES / "seed-policies"
PRESETS = FIXTURES / "policies"
WHO = Who(session="s1", identity="alice", server="shop")
SECRET = "sk_live_51HxQ9Zb7ZsEcReTtOkEn0123456789"


def policy_of(data: JSON) -> Policy:
    """A policy from a dict, written as YAML text and read back the way a file is."""
    policy, kind = parse(yaml.safe_dump(data, sort_keys=False), "test.yaml")
    assert kind == "guard"
    return policy


def policy_text(text: str, file: str = "test.yaml") -> tuple[Policy, str]:
    return parse(textwrap.dedent(text), file)


def problems(text: str) -> list[Problem]:
    with pytest.raises(PolicyError) as failed:
        parse(textwrap.dedent(text), "test.yaml")
    return failed.value.problems


def tools(rules: JSON, **top: Any) -> Policy:
    return policy_of({"version": 1, **top, "tools": rules})


def condition_holds(condition: JSON, arguments: JSON) -> bool:
    """Whether one argument condition, written in a file, lets a call with these arguments through."""
    return tools({"t": {"when": [condition]}}).failed_condition("t", arguments) is None


# --- which tools a policy lets through at all -----------------------------------------------------------


@pytest.mark.parametrize(
    ("default", "refused_by"),
    [("deny", "default"), ("allow", None)],
    ids=["default-deny-refuses-unnamed-tools", "default-allow-lets-unnamed-tools-through"],
)
def test_a_tool_no_rule_names_follows_the_default(default: str, refused_by: str | None) -> None:
    policy = tools({"named": {}}, default=default)
    refusal = policy.refusal("unnamed")
    assert (refusal.rule if refusal else None) == refused_by
    assert policy.visible("unnamed") is (refused_by is None)
    assert policy.refusal("named") is None


def test_the_default_is_deny_when_the_file_does_not_say() -> None:
    refusal = tools({}).refusal("anything")
    assert refusal is not None
    assert (refusal.rule, refusal.kind) == ("default", "default")
    assert "anything is not allowed by the policy (default: deny)" in refusal.reason


@pytest.mark.parametrize(
    ("rules", "tool", "rule", "reason"),
    [
        ({"pay": {"action": "deny", "reason": "paying is disabled"}}, "pay", "tools.pay", "paying is disabled"),
        ({"pay": {"action": "deny"}}, "pay", "tools.pay", "the policy denies pay"),
        ({"admin": {"hidden": True}}, "admin", "tools.admin", "the policy denies admin"),
        ({"admin": {"hidden": True, "reason": "not for agents"}}, "admin", "tools.admin", "not for agents"),
        ({"*": {"action": "deny", "reason": "maintenance"}, "read": {}}, "read", "tools.*", "maintenance"),
        ({"*": {"action": "deny"}}, "unnamed", "tools.*", "the policy denies unnamed"),
        ({"*": {"hidden": True}, "read": {}}, "read", "tools.*", "the policy denies read"),
        ({"read": {}}, "read", None, None),
        ({"pay": {"action": "approve"}}, "pay", None, None),
    ],
    ids=[
        "deny-with-reason",
        "deny-without-reason",
        "hidden",
        "hidden-with-reason",
        "star-deny-covers-named-tools",
        "star-deny-covers-unnamed-tools",
        "star-hidden-hides-everything",
        "allow",
        "approve-is-not-a-refusal",
    ],
)
def test_refusals_that_need_no_arguments(rules: JSON, tool: str, rule: str | None, reason: str | None) -> None:
    policy = tools(rules, default="allow")
    refusal = policy.refusal(tool)
    assert (refusal.rule if refusal else None, refusal.reason if refusal else None) == (rule, reason)
    assert refusal is None or refusal.kind == "tool"
    assert policy.visible(tool) is (rule is None)


@pytest.mark.parametrize(
    ("rules", "tool", "where"),
    [
        ({"pay": {"action": "approve"}}, "pay", "tools.pay"),
        ({"*": {"action": "approve"}, "read": {}}, "read", "tools.*"),
        ({"pay": {"action": "approve"}}, "read", None),
        ({"read": {}}, "read", None),
    ],
    ids=["own-rule", "star-rule-covers-every-tool", "other-tools-need-none", "allow-needs-none"],
)
def test_which_calls_need_a_humans_approval(rules: JSON, tool: str, where: str | None) -> None:
    assert tools(rules, default="allow").needs_approval(tool) == where


@pytest.mark.parametrize(
    ("rule_name", "called"),
    [("l402-fetch", "l402_fetch"), ("l402_fetch", "l402-fetch"), ("l402-fetch", "l402-fetch")],
    ids=["kebab-rule-snake-call", "snake-rule-kebab-call", "same-spelling"],
)
def test_a_rule_names_a_tool_in_kebab_or_snake_case(rule_name: str, called: str) -> None:
    policy = tools(
        {rule_name: {"action": "deny", "reason": "no fetching"}},
        default="allow",
        budgets=[{"name": "fetches", "limit": "10 sat", "tools": [rule_name]}],
    )
    refusal = policy.refusal(called)
    assert refusal is not None and refusal.reason == "no fetching"
    assert policy.rule_for(called) == (f"tools.{rule_name}", policy.spec.tools[rule_name])
    assert [b.name for b in policy.budgets(called, WHO)] == ["fetches"]
    assert policy.refusal("l402-pay") is None


def test_two_rules_naming_one_tool_in_kebab_and_snake_case_are_an_error() -> None:
    (problem,) = problems("version: 1\ntools:\n  l402-fetch: {}\n  l402_fetch:\n    action: deny\n")
    assert problem.message == "'l402-fetch' and 'l402_fetch' name the same tool (kebab and snake case match)"
    assert (problem.line, problem.column, problem.where) == (3, 3, "tools")


@pytest.mark.parametrize("key", ["price: 5 sat", "max_price: 5 sat", "price_from: amount\n    price_unit: sat"])
def test_a_price_on_a_rule_that_does_not_pay_is_a_located_error(key: str) -> None:
    (problem,) = problems(f"version: 1\ntools:\n  a:\n    {key}\n")
    assert (problem.line, problem.column, problem.where) == (4, 5, "tools.a")
    assert "needs pays: true" in problem.message


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


# --- rate limits and quotas -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate_limit", "expected"),
    [
        ("10/minute", [("calls:t/1m@session:s1", 10, "1m", 1)]),
        ("1/second", [("calls:t/1s@session:s1", 1, "1s", 1)]),
        ({"limit": "3/hour", "scope": "identity"}, [("calls:t/1h@identity:alice", 3, "1h", 1)]),
        ({"limit": "100/day", "scope": "global"}, [("calls:t/1d@global", 100, "1d", 1)]),
        ({"limit": "5/minute"}, [("calls:t/1m@session:s1", 5, "1m", 1)]),
        (
            ["10/minute", {"limit": "100/hour", "scope": "global"}],
            [("calls:t/1m@session:s1", 10, "1m", 1), ("calls:t/1h@global", 100, "1h", 1)],
        ),
        (["10/minute", "5/minute"], [("calls:t/1m@session:s1", 5, "1m", 1)]),
        (["5/minute", "10/minute"], [("calls:t/1m@session:s1", 5, "1m", 1)]),
        (
            ["5/minute", {"limit": "10/minute", "scope": "identity"}],
            [
                ("calls:t/1m@session:s1", 5, "1m", 1),
                ("calls:t/1m@identity:alice", 10, "1m", 1),
            ],
        ),
    ],
    ids=[
        "string",
        "per-second",
        "identity-scope",
        "global-scope",
        "mapping-defaults-to-session",
        "list",
        "stricter-second-wins",
        "stricter-first-wins",
        "same-window-other-scopes-both-count",
    ],
)
def test_rate_limit_forms(rate_limit: Any, expected: list[tuple[str, int, str, int]]) -> None:
    limits = tools({"t": {"rate_limit": rate_limit}}).rate_limits("t", {}, WHO)
    found = [(x.rate.key, x.rate.limit, str(x.rate.window), x.rate.cost) for x in limits]
    assert found == expected
    assert all((x.rule, x.kind) == ("tools.t.rate_limit", "rate_limit") for x in limits)


def test_a_rate_limit_is_described_in_words() -> None:
    (limit,) = tools({"t": {"rate_limit": {"limit": "3/hour", "scope": "identity"}}}).rate_limits("t", {}, WHO)
    assert limit.text == "3 calls per hour for t (per identity)"


def test_a_star_rate_limit_is_one_count_shared_by_every_tool() -> None:
    policy = tools({"*": {"rate_limit": "60/minute"}, "a": {"rate_limit": "5/minute"}, "b": {}})
    a_keys = {x.rate.key: x.rule for x in policy.rate_limits("a", {}, WHO)}
    b_keys = {x.rate.key: x.rule for x in policy.rate_limits("b", {}, WHO)}
    assert a_keys == {"calls:a/1m@session:s1": "tools.a.rate_limit", "calls:*/1m@session:s1": "tools.*.rate_limit"}
    assert b_keys == {"calls:*/1m@session:s1": "tools.*.rate_limit"}
    (shared,) = [x for x in policy.rate_limits("b", {}, WHO)]
    assert shared.text == "60 calls per minute for all tools (per session)"


def test_an_anonymous_caller_counts_under_one_identity() -> None:
    policy = tools({"t": {"rate_limit": {"limit": "3/hour", "scope": "identity"}}})
    (limit,) = policy.rate_limits("t", {}, Who("s1", None, "shop"))
    assert limit.rate.key == "calls:t/1h@identity:anonymous"


def test_a_rate_limits_key_never_names_its_limit_so_editing_it_keeps_the_count() -> None:
    before = tools({"t": {"rate_limit": "10/minute"}}).rate_limits("t", {}, WHO)
    after = tools({"t": {"rate_limit": "20/minute"}}).rate_limits("t", {}, WHO)
    assert [x.rate.key for x in before] == [x.rate.key for x in after]


@pytest.mark.parametrize(
    ("quota", "arguments", "expected"),
    [
        ({"counter": "calls", "max": 5, "window": "hour"}, {}, ("counter:calls/1h@global", 5, "1h", 1)),
        ({"counter": "c", "max": 5, "window": "10m", "increment": 3}, {}, ("counter:c/10m@global", 5, "10m", 3)),
        (
            {"counter": "c", "max": 5, "window": "minute", "scope": "session"},
            {},
            ("counter:c/1m@session:s1", 5, "1m", 1),
        ),
        (
            {"counter": "c", "max": 5, "window": "day", "scope": "identity"},
            {},
            ("counter:c/1d@identity:alice", 5, "1d", 1),
        ),
        (
            {"counter": "sats", "max": 1000, "window": "hour", "increment_from": "amount"},
            {"amount": 250},
            ("counter:sats/1h@global", 1000, "1h", 250),
        ),
        (
            {"counter": "sats", "max": 1000, "window": "hour", "increment_from": "args.order.sats"},
            {"order": {"sats": "42"}},
            ("counter:sats/1h@global", 1000, "1h", 42),
        ),
        (
            {"counter": "sats", "max": 1000, "window": "hour", "increment_from": "amount"},
            {"amount": 7.0},
            ("counter:sats/1h@global", 1000, "1h", 7),
        ),
    ],
    ids=[
        "defaults",
        "increment",
        "session-scope",
        "identity-scope",
        "increment-from",
        "increment-from-nested-string",
        "increment-from-whole-float",
    ],
)
def test_quotas_count_an_increment(quota: JSON, arguments: JSON, expected: tuple[str, int, str, int]) -> None:
    (limit,) = tools({"t": {"quotas": [quota]}}).rate_limits("t", arguments, WHO)
    assert (limit.rate.key, limit.rate.limit, str(limit.rate.window), limit.rate.cost) == expected
    assert (limit.rule, limit.kind) == ("tools.t.quotas[0]", "quota")


@pytest.mark.parametrize(
    "arguments",
    [{}, {"amount": "lots"}, {"amount": -1}, {"amount": 2.5}, {"amount": True}, {"amount": [1]}, {"amount": None}],
    ids=["missing", "word", "negative", "fraction", "bool", "list", "null"],
)
def test_a_quota_increment_that_is_not_a_whole_number_makes_the_call_unpriceable(arguments: JSON) -> None:
    policy = tools({"t": {"quotas": [{"counter": "sats", "max": 10, "window": "hour", "increment_from": "amount"}]}})
    with pytest.raises(PriceUnknown, match="argument amount must be a whole number"):
        policy.rate_limits("t", arguments, WHO)


def test_a_tools_rate_limits_and_quotas_count_together() -> None:
    policy = tools({"t": {"rate_limit": "10/minute", "quotas": [{"counter": "c", "max": 3, "window": "day"}]}})
    assert sorted(x.rate.key for x in policy.rate_limits("t", {}, WHO)) == [
        "calls:t/1m@session:s1",
        "counter:c/1d@global",
    ]


# --- prices ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("own", "star", "cap"),
    [
        ("500 sat", "300 sat", Amount(300, "sat")),
        ("300 sat", "500 sat", Amount(300, "sat")),
        ("300 sat", None, Amount(300, "sat")),
        (None, "300 sat", Amount(300, "sat")),
        (None, None, None),
    ],
    ids=["star-stricter", "own-stricter", "own-only", "star-only", "none"],
)
def test_max_price_is_the_stricter_of_the_tools_and_stars(
    own: str | None, star: str | None, cap: Amount | None
) -> None:
    rules: JSON = {"t": {"pays": True}, "*": {"pays": True}}
    if own:
        rules["t"]["max_price"] = own
    if star:
        rules["*"]["max_price"] = star
    assert tools(rules).max_price("t") == cap


def test_max_price_compares_caps_in_convertible_units_by_their_worth() -> None:
    policy = tools({"t": {"pays": True, "max_price": "2 sat"}, "*": {"pays": True, "max_price": "1500 msat"}})
    assert policy.max_price("t") == Amount(1500, "msat")


@pytest.mark.parametrize(
    ("rules", "pays"),
    [({"t": {"pays": True}}, True), ({"t": {}}, False), ({"t": {}, "*": {"pays": True}}, True)],
    ids=["own-rule", "not-paying", "star-rule"],
)
def test_which_tools_pay(rules: JSON, pays: bool) -> None:
    assert tools(rules).pays("t") is pays


# --- budgets --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "key"),
    [("session", "session:s1"), ("identity", "identity:alice"), ("server", "server:shop"), ("global", "global")],
)
def test_a_budget_counts_under_its_scopes_key(scope: str, key: str) -> None:
    policy = tools({"t": {}}, budgets=[{"name": "b", "limit": "100 sat", "scope": scope}])
    (budget,) = policy.budgets("t", WHO)
    assert (budget.name, budget.limit, budget.scope, budget.key) == ("b", Amount(100, "sat"), key, f"budget:b@{key}")


@pytest.mark.parametrize(
    ("window", "timezone", "expected"),
    [
        (None, None, Window.session()),
        ("session", None, Window.session()),
        ("day", None, Window.calendar("day", "UTC")),
        ("day", "Europe/Paris", Window.calendar("day", "Europe/Paris")),
        ("week", "America/New_York", Window.calendar("week", "America/New_York")),
        ("month", "Asia/Tokyo", Window.calendar("month", "Asia/Tokyo")),
        ("24h", "Europe/Paris", Window.sliding("24h")),
        ("7d", None, Window.sliding("7d")),
    ],
    ids=[
        "default-session",
        "session",
        "day-utc",
        "day-paris",
        "week-new-york",
        "month-tokyo",
        "sliding-24h",
        "sliding-7d",
    ],
)
def test_a_budgets_window_is_read_in_the_policys_timezone(
    window: str | None, timezone: str | None, expected: Window
) -> None:
    budget: JSON = {"name": "b", "limit": "100 sat"}
    if window:
        budget["window"] = window
    top: JSON = {"budgets": [budget]}
    if timezone:
        top["timezone"] = timezone
    (found,) = tools({"t": {}}, **top).budgets("t", WHO)
    assert found.window == expected


def test_a_budget_with_tools_covers_only_those_tools_in_either_spelling() -> None:
    policy = tools(
        {"l402-fetch": {}, "l402-pay": {}},
        budgets=[
            {"name": "everything", "limit": "1000 sat"},
            {"name": "fetching", "limit": "100 sat", "tools": ["l402_fetch"]},
        ],
    )
    assert [b.name for b in policy.budgets("l402-fetch", WHO)] == ["everything", "fetching"]
    assert [b.name for b in policy.budgets("l402-pay", WHO)] == ["everything"]


# --- presets ---------------------------------------------------------------------------------------------


@pytest.fixture
def fixture_presets(monkeypatch: pytest.MonkeyPatch) -> None:
    """`preset: NAME` reads tests/fixtures/policies/NAME.yaml instead of the shipped presets."""
    monkeypatch.setattr(_policy_files, "presets", lambda: sorted(p.stem for p in PRESETS.glob("*.yaml")))
    monkeypatch.setattr(_policy_files, "preset_text", lambda name: (PRESETS / f"{name}.yaml").read_text())


@pytest.mark.usefixtures("fixture_presets")
def test_a_preset_is_the_base_the_files_tools_and_budgets_override_by_name() -> None:
    policy, kind = policy_text(
        """\
        version: 1
        preset: fixture-base
        default: allow
        budgets:
          - name: daily
            limit: 100 sat
            scope: global
            window: day
        tools:
          pay:
            action: deny
          write: {}
        """
    )
    assert kind == "guard"
    spec = policy.spec
    assert (spec.default, spec.description) == ("allow", "fixture base preset")
    assert [(b.name, b.limit) for b in spec.budgets] == [("per-session", "1000 sat"), ("daily", "100 sat")]
    assert sorted(spec.tools) == ["get-quote", "pay", "read", "write"]
    assert spec.tools["pay"].action == "deny" and spec.tools["pay"].max_price is None
    assert spec.tools["read"].rate_limit == "10/minute"


@pytest.mark.usefixtures("fixture_presets")
def test_a_file_replaces_a_preset_rule_named_in_the_other_case_style() -> None:
    policy, _ = policy_text("version: 1\npreset: fixture-base\ntools:\n  get_quote:\n    action: deny\n")
    assert sorted(policy.spec.tools) == ["get_quote", "pay", "read"]
    refusal = policy.refusal("get-quote")
    assert refusal is not None and refusal.rule == "tools.get_quote"


@pytest.mark.usefixtures("fixture_presets")
def test_presets_that_include_each_other_are_an_error() -> None:
    (problem,) = problems("version: 1\npreset: fixture-loop\n")
    assert "presets include each other" in problem.message


@pytest.mark.usefixtures("fixture_presets")
@pytest.mark.parametrize("value", ["[read]", "5"], ids=["list", "number"])
def test_a_preset_with_tools_that_are_not_a_mapping_is_a_located_error(value: str) -> None:
    (problem,) = problems(f"version: 1\npreset: fixture-base\ntools: {value}\n")
    assert (problem.line, problem.where) == (3, "tools")


@pytest.mark.usefixtures("fixture_presets")
@pytest.mark.parametrize("name", ["[a, b]", "{a: 1}"], ids=["list", "mapping"])
def test_a_preset_with_a_budget_name_that_is_not_a_string_is_a_located_error(name: str) -> None:
    (problem,) = problems(f"version: 1\npreset: fixture-base\nbudgets:\n  - name: {name}\n    limit: 5 sat\n")
    assert problem.line == 4 and "budgets" in problem.where


def test_an_unknown_preset_names_the_shipped_ones() -> None:
    (problem,) = problems("version: 1\npreset: no-such-preset\n")
    assert (problem.line, problem.column, problem.where) == (2, 9, "preset")
    assert problem.message.startswith("unknown preset 'no-such-preset'; shipped:")


# --- the seed formats -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "kind"),
    [
        ("intercept-402-mcp.yaml", "intercept"),
        ("policylayer-p402.json", "policylayer"),
        ("policylayer-token-pilot.json", "policylayer"),
    ],
)
def test_each_seed_file_loads_unedited_in_its_detected_format(file: str, kind: str) -> None:
    policy, found = load(SEEDS / file)
    assert found == kind
    assert detect(yaml.safe_load((SEEDS / file).read_text())) == kind
    assert policy.source == str(SEEDS / file)


def test_the_intercept_seed_allows_its_tool_and_by_interceptss_default_every_other() -> None:
    policy, _ = load(SEEDS / "intercept-402-mcp.yaml")
    assert policy.spec.default == "allow"
    for tool in ("l402-balance", "l402-fetch", "l402-pay"):
        assert policy.refusal(tool) is None
        assert policy.failed_condition(tool, {"url": "https://x"}) is None
        assert policy.rate_limits(tool, {}, WHO) == []


def test_the_p402_seed_allows_get_session_and_denies_the_rest_by_default() -> None:
    policy, _ = load(SEEDS / "policylayer-p402.json")
    assert policy.refusal("p402_get_session") is None
    assert policy.rate_limits("p402_get_session", {}, WHO) == []
    refusal = policy.refusal("p402_pay")
    assert refusal is not None and refusal.rule == "default"


def test_the_token_pilot_seed_caps_session_budget_at_30_a_minute_per_identity() -> None:
    policy, _ = load(SEEDS / "policylayer-token-pilot.json")
    assert policy.refusal("session_budget") is None
    (limit,) = policy.rate_limits("session_budget", {}, WHO)
    assert (limit.rate.key, limit.rate.limit, str(limit.rate.window), limit.rate.cost) == (
        "counter:session_budget_rate/1m@identity:alice",
        30,
        "1m",
        1,
    )
    refusal = policy.refusal("other_tool")
    assert refusal is not None and refusal.rule == "default"


INTERCEPT = """\
    version: "1"
    description: inline intercept policy
    hide: [admin-reset]
    tools:
      pay:
        rules:
          - name: never
            action: deny
            on_deny: paying is off
      fetch:
        rules:
          - name: per-minute
            rate_limit: 5/minute
"""


def test_intercept_hide_and_deny_rules_refuse_with_their_reason() -> None:
    policy, kind = policy_text(INTERCEPT)
    assert kind == "intercept"
    assert policy.spec.description == "inline intercept policy"
    hidden = policy.refusal("admin-reset")
    assert hidden is not None and hidden.rule == "tools.admin-reset" and not policy.visible("admin-reset")
    denied = policy.refusal("pay")
    assert denied is not None and (denied.rule, denied.reason) == ("tools.pay", "paying is off")
    assert policy.refusal("fetch") is None and policy.refusal("unnamed") is None


def test_an_intercept_rate_limit_counts_every_callers_calls_together() -> None:
    policy, _ = policy_text(INTERCEPT)
    (limit,) = policy.rate_limits("fetch", {}, WHO)
    assert (limit.rate.key, limit.rate.limit) == ("calls:fetch/1m@global", 5)


def test_an_intercept_default_deny_is_kept() -> None:
    policy, kind = policy_text("default: deny\ntools:\n  a:\n    rules:\n      - action: allow\n")
    assert kind == "intercept"
    assert policy.refusal("a") is None
    refusal = policy.refusal("b")
    assert refusal is not None and refusal.rule == "default"


INTERCEPT_OPS: list[tuple[str, Any, str, JSON, JSON]] = [
    ("eq", "read", "equals", {"x": "read"}, {"x": "write"}),
    ("neq", "write", "not_equals", {"x": "read"}, {"x": "write"}),
    ("in", ["a", "b"], "one_of", {"x": "b"}, {"x": "c"}),
    ("not_in", ["a"], "not_one_of", {"x": "b"}, {"x": "a"}),
    ("lt", 5, "lt", {"x": 4}, {"x": 5}),
    ("lte", 5, "lte", {"x": 5}, {"x": 6}),
    ("gt", 5, "gt", {"x": 6}, {"x": 5}),
    ("gte", 5, "gte", {"x": 5}, {"x": 4}),
    ("regex", "^https://", "matches", {"x": "https://a"}, {"x": "http://a"}),
    ("contains", "ok", "contains", {"x": "is ok"}, {"x": "no"}),
    ("exists", None, "exists", {"x": 1}, {}),
    ("exists", True, "exists", {"x": 1}, {}),
    ("exists", False, "exists", {}, {"x": 1}),
]


@pytest.mark.parametrize(
    ("op", "value", "test", "holding", "failing"),
    INTERCEPT_OPS,
    ids=[f"{op}-{value}".lower() if op == "exists" else op for op, value, *_ in INTERCEPT_OPS],
)
def test_an_intercept_condition_op_becomes_the_guards_test(
    op: str, value: Any, test: str, holding: JSON, failing: JSON
) -> None:
    condition: JSON = {"path": "args.x", "op": op}
    if value is not None:
        condition["value"] = value
    rule = {"name": "check", "conditions": [condition], "on_deny": "x is not acceptable"}
    policy, kind = parse(yaml.safe_dump({"tools": {"t": {"rules": [rule]}}}), "intercept.yaml")
    assert kind == "intercept"
    (condition,) = policy.spec.tools["t"].when
    assert condition.test == test
    assert policy.failed_condition("t", holding) is None
    denial = policy.failed_condition("t", failing)
    assert denial is not None and (denial.rule, denial.reason) == ("tools.t.when[0]", "x is not acceptable")


@pytest.mark.parametrize(
    ("op", "value", "calls_admitted"),
    [("lt", 3, 3), ("lte", 3, 4), ("lt", 0, 0)],
    ids=["lt-admits-n", "lte-admits-n-plus-one", "lt-zero-admits-none"],
)
def test_an_intercept_state_counter_with_a_bound_is_a_quota(op: str, value: int, calls_admitted: int) -> None:
    policy, _ = policy_text(
        f"""\
        tools:
          fetch:
            rules:
              - name: count
                state:
                  counter: fetches
                  window: hour
              - name: cap
                conditions:
                  - path: state.session.fetches
                    op: {op}
                    value: {value}
        """
    )
    (quota,) = policy.spec.tools["fetch"].quotas
    assert (quota.counter, quota.max, quota.window, quota.scope) == ("fetches", calls_admitted, "hour", "session")
    (limit,) = policy.rate_limits("fetch", {}, WHO)
    assert (limit.rate.key, limit.rate.limit, limit.rate.cost) == ("counter:fetches/1h@session:s1", calls_admitted, 1)


@pytest.mark.parametrize(
    ("state", "arguments", "cost"),
    [
        ("increment_from: args.sats", {"sats": 120}, 120),
        ("increment: 5", {}, 5),
    ],
    ids=["increment-from", "increment"],
)
def test_an_intercept_state_counter_adds_its_increment(state: str, arguments: JSON, cost: int) -> None:
    policy, _ = policy_text(
        f"""\
        tools:
          pay:
            rules:
              - name: spend
                state:
                  counter: sats
                  window: day
                  {state}
                conditions:
                  - path: state.global.sats
                    op: lt
                    value: 1000
        """
    )
    (limit,) = policy.rate_limits("pay", arguments, WHO)
    assert (limit.rate.key, limit.rate.limit, limit.rate.cost) == ("counter:sats/1d@global", 1000, cost)


@pytest.mark.parametrize(
    ("text", "line", "column", "where", "message"),
    [
        (
            """\
            tools:
              pay:
                rules:
                  - action: deny
                    conditions:
                      - path: args.x
                        op: eq
                        value: 1
            """,
            4,
            9,
            "tools.pay.rules[0]",
            "a deny rule with conditions is not supported: write an evaluate rule",
        ),
        (
            """\
            tools:
              fetch:
                rules:
                  - conditions:
                      - path: state.global.nobody
                        op: lt
                        value: 3
            """,
            5,
            19,
            "tools.fetch.rules[0].conditions[0].path",
            "counter 'nobody' is not counted by a state block of fetch's rules",
        ),
        (
            """\
            tools:
              fetch:
                rules:
                  - state: {counter: c, window: minute}
                    conditions:
                      - path: state.global.c
                        op: gt
                        value: 3
            """,
            7,
            17,
            "tools.fetch.rules[0].conditions[0].op",
            "a state condition must be lt or lte a whole number",
        ),
        (
            """\
            tools:
              fetch:
                rules:
                  - conditions:
                      - path: url
                        op: eq
                        value: x
            """,
            5,
            19,
            "tools.fetch.rules[0].conditions[0].path",
            "expected a path starting with args. or state.",
        ),
        (
            """\
            tools:
              fetch:
                rules:
                  - conditions:
                      - path: args.x
                        op: like
                        value: x
            """,
            6,
            17,
            "tools.fetch.rules[0].conditions[0].op",
            "expected 'eq', 'neq', 'in', 'not_in', 'lt', 'lte', 'gt', 'gte', 'regex', 'contains' or 'exists'",
        ),
    ],
    ids=["deny-rule-with-conditions", "uncounted-state-counter", "state-condition-gt", "path-not-args", "unknown-op"],
)
def test_intercept_shapes_the_guard_cannot_enforce_are_located_errors(
    text: str, line: int, column: int, where: str, message: str
) -> None:
    (problem,) = problems(text)
    assert (problem.file, problem.line, problem.column, problem.where, problem.message) == (
        "test.yaml",
        line,
        column,
        where,
        message,
    )


def test_a_policylayer_deny_keeps_its_reason_and_its_limits_scopes_map_to_the_guards() -> None:
    text = json.dumps(
        {
            "version": "1",
            "default": "allow",
            "tools": {
                "transfer": {"action": "deny", "reason": "transfers need a human"},
                "quote": {
                    "limits": [
                        {"counter": "per_grant", "window": "minute", "max": 10, "scope": "grant"},
                        {"counter": "per_session", "window": "hour", "max": 20, "scope": "session"},
                        {"counter": "for_all", "window": "day", "max": 30, "scope": "global"},
                        {"counter": "fast", "window": "second", "max": 2},
                    ]
                },
            },
        },
        indent=2,
    )
    policy, kind = parse(text, "pl.json")
    assert kind == "policylayer"
    refusal = policy.refusal("transfer")
    assert refusal is not None and (refusal.rule, refusal.reason) == ("tools.transfer", "transfers need a human")
    assert policy.refusal("unnamed") is None
    found = [(x.rate.key, x.rate.limit) for x in policy.rate_limits("quote", {}, WHO)]
    assert found == [
        ("counter:per_grant/1m@identity:alice", 10),
        ("counter:per_session/1h@session:s1", 20),
        ("counter:for_all/1d@global", 30),
        ("counter:fast/1s@identity:alice", 2),
    ]


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        ({"version": "1", "tools": {"a": {}}}, "policylayer"),
        ({"version": "1", "default": "allow"}, "policylayer"),
        ({"tools": {"a": {"limits": []}}}, "policylayer"),
        ({"version": 1, "tools": {"a": {}}}, "guard"),
        ({"version": "1", "budgets": []}, "guard"),
        ({"hide": ["a"]}, "intercept"),
        ({"version": "1", "tools": {"a": {"rules": []}}}, "intercept"),
        (["not", "a", "mapping"], "guard"),
    ],
    ids=[
        "string-version",
        "string-version-no-tools",
        "limits",
        "number-version",
        "guard-keys-with-string-version",
        "hide",
        "rules",
        "not-a-mapping",
    ],
)
def test_the_format_is_detected_from_the_files_shape(data: Any, kind: str) -> None:
    assert detect(data) == kind


def test_a_policylayer_mistake_is_located_in_the_json() -> None:
    text = (
        '{\n  "version": "1",\n  "tools": {\n'
        '    "quote": {"limits": [{"counter": "c", "window": "week", "max": 1}]}\n'
        "  }\n}\n"
    )
    (problem,) = problems(text)
    assert (problem.line, problem.where) == (4, "tools.quote.limits[0].window")
    assert "expected 'second', 'minute', 'hour' or 'day'" in problem.message


# --- located errors -------------------------------------------------------------------------------------


# (name, text, line, column, where, message start)
_MISTAKES: list[Any] = [
    (
        "wrong-type",
        "version: 1\ntools:\n  a:\n    price: 5\n",
        4,
        12,
        "tools.a.price",
        "expected an amount with a unit",
    ),
    (
        "bad-regex",
        "version: 1\ntools:\n  a:\n    when:\n      - arg: x\n        matches: '('\n",
        6,
        18,
        "tools.a.when[0].matches",
        "not a valid regular expression",
    ),
    (
        "amount-without-unit",
        "version: 1\ntools:\n  a:\n    max_price: '500'\n",
        4,
        16,
        "tools.a.max_price",
        "expected an amount with a unit, such as '1000 sat' or '2.50 usd' ('500' is not an amount",
    ),
    (
        "bad-rate",
        "version: 1\ntools:\n  a:\n    rate_limit: 10/fortnight\n",
        4,
        17,
        "tools.a.rate_limit",
        "expected a rate such as 10/minute",
    ),
    (
        "duplicate-key",
        "version: 1\ndefault: deny\ndefault: allow\n",
        3,
        1,
        "",
        "not valid YAML: duplicate key 'default'",
    ),
    (
        "yaml-syntax",
        "version: 1\ntools:\n  a:\n    when:\n      - arg: x\n        equals: a: b\n",
        6,
        18,
        "",
        "not valid YAML: mapping values are not allowed here",
    ),
    ("unknown-preset", "version: 1\npreset: nope\n", 2, 9, "preset", "unknown preset 'nope'; shipped:"),
    ("wrong-version", "version: 2\n", 1, 10, "version", "expected 1"),
    (
        "missing-key",
        "version: 1\nbudgets:\n  - name: b\n    scope: session\n",
        3,
        5,
        "budgets[0]",
        "missing key 'limit'",
    ),
    ("bad-timezone", "version: 1\ntimezone: Mars/Olympus\n", 2, 11, "timezone", "expected an IANA time zone"),
    (
        "two-tests",
        "version: 1\ntools:\n  a:\n    when:\n      - {arg: x, lt: 1, gt: 0}\n",
        5,
        9,
        "tools.a.when[0]",
        "a condition needs exactly one of",
    ),
    pytest.param(
        "unknown-key",
        "version: 1\ntools:\n  a:\n    colour: red\n",
        4,
        5,
        "tools.a.colour",
        "unknown key 'colour'",
        id="unknown-key",
    ),
    pytest.param(
        "unknown-key-with-a-mapping",
        "version: 1\ntools:\n  a:\n    colour:\n      shade: red\n",
        4,
        5,
        "tools.a.colour",
        "unknown key 'colour'",
        id="unknown-key-with-a-mapping",
    ),
]
MISTAKES = [pytest.param(*c, id=c[0]) if type(c) is tuple else c for c in _MISTAKES]


@pytest.mark.parametrize(("name", "text", "line", "column", "where", "message"), MISTAKES)
def test_a_mistake_is_reported_at_its_line_and_column(
    name: str, text: str, line: int, column: int, where: str, message: str
) -> None:
    (problem,) = problems(text)
    assert (problem.line, problem.column, problem.where) == (line, column, where)
    assert problem.message.startswith(message)
    assert str(problem).startswith(f"test.yaml:{line}:{column}: ")


def test_every_mistake_in_a_file_is_reported_in_line_order() -> None:
    found = problems("version: 1\ndefault: maybe\ntools:\n  a:\n    price: 5\n  b:\n    rate_limit: often\n")
    assert [(p.line, p.where) for p in found] == [(2, "default"), (5, "tools.a.price"), (7, "tools.b.rate_limit")]


@pytest.mark.parametrize(
    "text",
    ["", "- 1\n- 2\n", "just a string\n", "42\n"],
    ids=["empty", "list", "string", "number"],
)
def test_a_file_that_is_not_a_mapping_is_an_error_at_its_top(text: str) -> None:
    (problem,) = problems(text)
    assert (problem.line, problem.column) == (1, 1)
    assert problem.message.startswith("expected a mapping of policy keys")


def test_json_that_yaml_cannot_read_is_read_as_json() -> None:
    policy, kind = parse('{\n\t"version": 1,\n\t"default": "allow"\n}\n', "tabs.json")
    assert (kind, policy.spec.default) == ("guard", "allow")


def test_broken_json_is_located_by_the_json_parser() -> None:
    (problem,) = problems('{\n\t"version": 1\n\t"default": "allow"\n}\n')
    assert (problem.line, problem.column, problem.message) == (3, 2, "not valid JSON: Expecting ',' delimiter")


def test_a_mistake_in_json_that_yaml_cannot_read_still_names_its_key() -> None:
    (problem,) = problems('{\n\t"version": 1,\n\t"tools": {"a": {"price": 5}}\n}\n')
    assert problem.where == "tools.a.price"


def test_an_unreadable_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as failed:
        load(tmp_path / "missing.yaml")
    (problem,) = failed.value.problems
    assert (problem.line, problem.column) == (1, 1)
    assert problem.message.startswith("cannot read the policy")


# --- dump round trips -----------------------------------------------------------------------------------

FULL_POLICY = """\
version: 1
description: every rule kind
default: allow
server: shop
timezone: Europe/Paris
budgets:
  - name: per-session
    limit: 5000 sat
  - name: daily
    limit: 2.50 usd
    scope: identity
    window: day
    tools: [pay]
balances:
  stale_after: 10m
  on_stale: deny
  refresh_every: null
approvals:
  expire_after: 30m
tools:
  "*":
    rate_limit: 100/minute
  fetch:
    when:
      - arg: args.url
        matches: ^https://
        reason: https only
      - arg: headers.authorization
        exists: false
      - arg: items.0.qty
        lte: 10
      - arg: dry_run
        equals: false
      - arg: network
        one_of: [main, test]
    rate_limit:
      - 10/minute
      - limit: 1000/day
        scope: global
    quotas:
      - counter: fetched
        max: 50
        window: hour
        increment_from: count
        scope: identity
  pay:
    action: approve
    pays: true
    price_from: amount
    price_unit: msat
    max_price: 1000 sat
  buy:
    pays: true
    price: 0.01 usdc
  admin:
    hidden: true
  drop:
    action: deny
    reason: never
"""


@pytest.mark.parametrize(
    "text",
    [
        pytest.param((SEEDS / "intercept-402-mcp.yaml").read_text(), id="seed-intercept"),
        pytest.param((SEEDS / "policylayer-p402.json").read_text(), id="seed-p402"),
        pytest.param((SEEDS / "policylayer-token-pilot.json").read_text(), id="seed-token-pilot"),
        pytest.param(textwrap.dedent(INTERCEPT), id="intercept-inline"),
        pytest.param("version: 1\n", id="guard-minimal"),
        pytest.param(FULL_POLICY, id="guard-every-rule-kind"),
        pytest.param((FIXTURES / "allow-all.yaml").read_text(), id="guard-allow-all"),
        pytest.param(
            "version: 1\ntools:\n  t:\n    when:\n      - arg: x\n        equals: null\n",
            id="guard-equals-null",
        ),
    ],
)
def test_dump_writes_guard_yaml_that_parses_back_to_the_same_spec(text: str) -> None:
    policy, _ = parse(text, "original")
    dumped = dump(policy.spec)
    again, kind = parse(dumped, "dumped")
    assert kind == "guard"
    assert again.spec == policy.spec
    assert dump(again.spec) == dumped


def test_dump_keeps_the_version_and_default_first() -> None:
    dumped = dump(policy_text(FULL_POLICY)[0].spec)
    assert dumped.splitlines()[:2] == ["version: 1", "default: allow"]


# --- the command line -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ran:
    code: int
    stdout: str
    stderr: str


def _guard(*args: str) -> Ran:
    # From the project root: `policies` (the presets) is importable from there.
    done = subprocess.run(
        [sys.executable, "-m", "guard", "policy", *args], capture_output=True, text=True, cwd=ROOT, timeout=WAIT_S * 2
    )
    return Ran(done.returncode, done.stdout, done.stderr)


CLI_SEEDS = ["intercept-402-mcp.yaml", "policylayer-p402.json", "policylayer-token-pilot.json"]
# The mistakes `guard policy check` is run on (each run starts a Python: a second or two).
CLI_MISTAKES = [
    c
    for c in MISTAKES
    if c.values[0]
    in {
        "wrong-type",
        "unknown-key",
        "bad-regex",
        "amount-without-unit",
        "bad-rate",
        "duplicate-key",
        "yaml-syntax",
        "unknown-preset",
    }
]


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, str], tuple[Path, Ran]]]:
    """Every `guard policy` run these tests look at, started at once (each takes a second or two)."""
    folder = tmp_path_factory.mktemp("policies")
    jobs: dict[tuple[str, str], tuple[Path, tuple[str, ...]]] = {}
    texts = {"full": FULL_POLICY, **{c.values[0]: c.values[1] for c in CLI_MISTAKES}}
    for name, text in texts.items():
        path = folder / f"{name}.yaml"
        path.write_text(text)
        jobs["check", name] = (path, ("check", str(path)))
    jobs["check", "seed"] = (SEEDS / CLI_SEEDS[0], ("check", str(SEEDS / CLI_SEEDS[0])))
    for seed in CLI_SEEDS:
        jobs["convert", seed] = (SEEDS / seed, ("convert", str(SEEDS / seed)))
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {key: (path, pool.submit(_guard, *args)) for key, (path, args) in jobs.items()}
        results = {key: (path, future.result()) for key, (path, future) in futures.items()}
    yield results


def test_policy_check_summarises_a_valid_file(cli: dict[tuple[str, str], tuple[Path, Ran]]) -> None:
    path, ran = cli["check", "full"]
    assert (ran.code, ran.stderr) == (0, "")
    assert ran.stdout.splitlines() == [
        f"{path}: valid guard policy",
        "  default: allow",
        "  allow: *, fetch, buy",
        "  approve: pay",
        "  deny: admin, drop",
        "  budget per-session: 5000 sat per session, scope session",
        "  budget daily: 2.50 usd per day, scope identity",
        "  paying tools: pay, buy",
    ]


def test_policy_check_names_a_seed_files_format(cli: dict[tuple[str, str], tuple[Path, Ran]]) -> None:
    path, ran = cli["check", "seed"]
    assert (ran.code, ran.stderr) == (0, "")
    assert ran.stdout.splitlines() == [
        f"{path}: valid intercept (seed format) policy",
        "  default: allow",
        "  allow: l402-balance",
    ]


@pytest.mark.parametrize(("name", "text", "line", "column", "where", "message"), CLI_MISTAKES)
def test_policy_check_exits_2_with_each_problem_at_file_line_column(
    cli: dict[tuple[str, str], tuple[Path, Ran]], name: str, text: str, line: int, column: int, where: str, message: str
) -> None:
    path, ran = cli["check", name]
    assert (ran.code, ran.stdout) == (2, "")
    (reported,) = ran.stderr.splitlines()
    assert reported.startswith(f"{path}:{line}:{column}: " + (f"{where}: " if where else "") + message)


@pytest.mark.parametrize("seed", CLI_SEEDS)
def test_policy_convert_prints_guard_yaml_that_loads_back_equal(
    cli: dict[tuple[str, str], tuple[Path, Ran]], seed: str
) -> None:
    path, ran = cli["convert", seed]
    assert (ran.code, ran.stderr) == (0, "")
    converted, kind = parse(ran.stdout, "converted.yaml")
    assert kind == "guard"
    assert converted.spec == load(path)[0].spec
