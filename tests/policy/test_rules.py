"""`Policy`'s decisions, each read from a file the way `guard run` reads it: which tools pass at all,
approvals, rate limits and quotas, prices and caps, budgets."""

from __future__ import annotations

from typing import Any

import pytest

from guard.errors import PriceUnknown
from guard.policy.rules import Who
from ledgers import Amount, Window
from tests.policy.helpers import (
    JSON,
    WHO,
    problems,
    tools,
)

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


# --- the loop breaker (repeat_limit) -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "count", "window"), [("3/10m", 3, "10m"), (" 5 / 1h ", 5, "1h"), ("2/minute", 2, "1m"), ("1/1d", 1, "1d")]
)
def test_a_repeat_limit_is_n_purchases_per_sliding_window_per_session(text: str, count: int, window: str) -> None:
    policy = tools({"buy": {"pays": True, "repeat_limit": text}})
    limit = policy.repeat_limit("buy", "https://shop.example/item", WHO)
    assert limit is not None
    assert (limit.rate.limit, str(limit.rate.window), limit.rule, limit.kind) == (
        count,
        str(Window.sliding(window)),
        "tools.buy.repeat_limit",
        "repeat_limit",
    )
    assert limit.rate.key.startswith("repeat:buy:") and limit.rate.key.endswith(f"/{window}@session:s1")
    assert limit.text == f"the same purchase at most {count} times per {window} (per session)"


def test_a_repeat_limits_key_names_a_digest_of_the_resource_never_the_resource_or_the_limit() -> None:
    three = tools({"buy": {"pays": True, "repeat_limit": "3/10m"}})
    five = tools({"buy": {"pays": True, "repeat_limit": "5/10m"}})
    url = "https://shop.example/item"
    key = three.repeat_limit("buy", url, WHO).rate.key  # type: ignore[union-attr]
    assert key == five.repeat_limit("buy", url, WHO).rate.key  # type: ignore[union-attr]
    assert "shop.example" not in key
    assert key != three.repeat_limit("buy", "https://shop.example/other", WHO).rate.key  # type: ignore[union-attr]


def test_without_a_repeat_limit_there_is_none_and_the_strictest_of_two_rules_wins() -> None:
    assert tools({"buy": {"pays": True}}).repeat_limit("buy", "r", WHO) is None
    policy = tools({"*": {"repeat_limit": "2/1h", "pays": True}, "buy": {"pays": True, "repeat_limit": "5/1h"}})
    limit = policy.repeat_limit("buy", "r", WHO)
    assert limit is not None and (limit.rate.limit, limit.rule) == (2, "tools.*.repeat_limit")


@pytest.mark.parametrize("text", ["3", "0/10m", "3/forever", "-1/1m", "3/10m/1h", "99999999999/1m", "3/0s"])
def test_an_unreadable_repeat_limit_is_a_located_error(text: str) -> None:
    (problem,) = problems(f"version: 1\ntools:\n  buy:\n    pays: true\n    repeat_limit: '{text}'\n")
    assert (problem.line, problem.where) == (5, "tools.buy.repeat_limit")
    assert "repeat limit such as 3/10m" in problem.message or "too many" in problem.message


def test_a_repeat_limit_on_a_rule_that_does_not_pay_is_a_located_error() -> None:
    (problem,) = problems("version: 1\ntools:\n  browse:\n    repeat_limit: 3/10m\n")
    assert problem.where == "tools.browse"
    assert problem.message.startswith("repeat_limit needs pays: true")
