"""The seed formats (Intercept, PolicyLayer) loaded as written and translated, or refused where guard
cannot enforce them as they mean."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from guard.policy.files import detect, load, parse
from tests.policy.cases import INTERCEPT
from tests.policy.helpers import (
    JSON,
    SEEDS,
    WHO,
    policy_text,
    problems,
)

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
