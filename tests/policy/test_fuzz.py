"""Whatever text a policy file holds, `parse` returns a policy or raises `PolicyError` whose problems
each point at a real line and column: never another exception."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guard.errors import PolicyError
from guard.policy import files as _policy_files
from guard.policy.files import parse
from guard.policy.rules import Policy
from tests.conftest import FIXTURES

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))

GUARD_BASE: dict[str, Any] = {
    "version": 1,
    "description": "fuzz base",
    "default": "deny",
    "server": "shop",
    "timezone": "Europe/Paris",
    "budgets": [
        {"name": "per-session", "limit": "5000 sat"},
        {"name": "daily", "limit": "2.50 usd", "scope": "identity", "window": "day", "tools": ["pay"]},
    ],
    "balances": {"stale_after": "5m", "on_stale": "refresh", "refresh_every": "2m"},
    "approvals": {"expire_after": "1h"},
    "tools": {
        "*": {"rate_limit": "100/minute"},
        "fetch": {
            "when": [
                {"arg": "args.url", "matches": "^https://", "reason": "https only"},
                {"arg": "headers.authorization", "exists": False},
                {"arg": "items.0.qty", "lte": 10},
                {"arg": "network", "one_of": ["main", "test"]},
            ],
            "rate_limit": ["10/minute", {"limit": "1000/day", "scope": "global"}],
            "quotas": [{"counter": "fetched", "max": 50, "window": "hour", "increment_from": "count"}],
        },
        "pay": {
            "action": "approve",
            "pays": True,
            "price_from": "amount",
            "price_unit": "msat",
            "max_price": "1000 sat",
        },
        "admin": {"hidden": True},
        "drop": {"action": "deny", "reason": "never"},
    },
}

INTERCEPT_BASE: dict[str, Any] = {
    "version": "1",
    "description": "fuzz intercept",
    "hide": ["admin"],
    "tools": {
        "fetch": {
            "rules": [
                {
                    "name": "https",
                    "action": "evaluate",
                    "conditions": [{"path": "args.url", "op": "regex", "value": "^https://"}],
                    "on_deny": "https only",
                },
                {"name": "rate", "rate_limit": "5/minute"},
                {
                    "name": "count",
                    "state": {"counter": "sats", "window": "day", "increment_from": "args.sats"},
                    "conditions": [{"path": "state.global.sats", "op": "lt", "value": 1000}],
                },
            ]
        },
        "pay": {"rules": [{"action": "deny", "on_deny": "no"}]},
    },
}

PRESET_BASE: dict[str, Any] = {
    "version": 1,
    "preset": "fixture-base",
    "budgets": [{"name": "daily", "limit": "100 sat", "scope": "global", "window": "day"}],
    "tools": {"pay": {"action": "deny"}, "get_quote": {}},
}
PRESETS = FIXTURES / "policies"

POLICYLAYER_BASE: dict[str, Any] = {
    "version": "1",
    "default": "deny",
    "tools": {
        "quote": {"limits": [{"counter": "q", "window": "minute", "max": 30, "scope": "grant"}]},
        "transfer": {"action": "deny", "reason": "needs a human"},
    },
}

# Keys the formats know (and some they do not), so inserted keys often reach the validators.
KEYS = sorted(
    {
        *("version", "description", "preset", "default", "server", "timezone", "budgets", "balances"),
        *("approvals", "tools", "action", "reason", "hidden", "when", "rate_limit", "quotas", "pays"),
        *("price", "price_from", "price_unit", "max_price", "arg", "equals", "not_equals", "one_of"),
        *("not_one_of", "matches", "contains", "lt", "lte", "gt", "gte", "exists", "limit", "scope"),
        *("counter", "max", "window", "increment", "increment_from", "name", "tools", "hide", "rules"),
        *("conditions", "path", "op", "value", "on_deny", "state", "limits", "*", "stale_after", "bogus"),
    }
)
WORDS = st.sampled_from(
    [
        *("", "1", "allow", "deny", "approve", "session", "identity", "global", "grant", "server", "day"),
        *("hour", "minute", "1h", "0s", "24h", "10/minute", "0/minute", "5 sat", "2.50 usd", "1.5 sat"),
        *("5", "-1 sat", "usd", "msat", "sat", "args.x", "args.", "state.global.sats", "state.x", "(", "^ok$"),
        *("fixture-base", "fixture-loop", "no-such-preset"),
        *("UTC", "Mars/Olympus", "eq", "regex", "exists", "lt", "args.items.0", "fetch", "pay", "*", "evaluate"),
    ]
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    WORDS,
    st.text(max_size=12),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), inner, max_size=3),
    ),
    max_leaves=6,
)


def check(text: str) -> None:
    """The property: a Policy, or a PolicyError whose every problem is placed inside the text."""
    try:
        policy, kind = parse(text, "fuzz.yaml")
    except PolicyError as error:
        assert error.problems, "a PolicyError must say what is wrong"
        lines = len(text.splitlines())
        for problem in error.problems:
            assert problem.file == "fuzz.yaml"
            assert problem.line >= 1 and problem.column >= 1, problem
            assert problem.line <= lines + 1, (problem, lines)
            assert problem.message.strip(), problem
        return
    assert isinstance(policy, Policy)
    assert kind in ("guard", "intercept", "policylayer")


def containers(tree: Any) -> list[Any]:
    """Every dict and list in `tree`, the root first."""
    found = [tree] if isinstance(tree, dict | list) else []
    children = tree.values() if isinstance(tree, dict) else tree if isinstance(tree, list) else []
    for child in children:
        found.extend(containers(child))
    return found


@st.composite
def mutated(draw: st.DrawFn, base: dict[str, Any]) -> Any:
    """`base` after a few random key deletions, insertions and value replacements."""
    tree = copy.deepcopy(base)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        target = draw(st.sampled_from(containers(tree)))
        operation = draw(st.sampled_from(["delete", "insert", "replace"]))
        if isinstance(target, dict):
            if operation == "insert" or not target:
                target[draw(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)))] = draw(VALUES)
                continue
            key = draw(st.sampled_from(sorted(target, key=str)))
            if operation == "delete":
                del target[key]
            else:
                target[key] = draw(VALUES)
        else:
            if operation == "insert" or not target:
                target.insert(draw(st.integers(min_value=0, max_value=len(target))), draw(VALUES))
                continue
            index = draw(st.integers(min_value=0, max_value=len(target) - 1))
            if operation == "delete":
                del target[index]
            else:
                target[index] = draw(VALUES)
    return tree


def serialise(tree: Any, as_json: bool) -> str:
    if as_json:
        return json.dumps(tree, indent=2)
    return str(yaml.safe_dump(tree, sort_keys=False, allow_unicode=True))


@FUZZ
@given(st.text())
def test_arbitrary_text_is_a_policy_or_a_located_policy_error(text: str) -> None:
    check(text)


TOKENS = st.sampled_from([*"{}[]:,-'\"#&*!|>%@`\t\n ab1.", "version: 1", "tools:", "\n  ", "\n    ", "- ", "rules:"])


@FUZZ
@given(st.lists(TOKENS, max_size=40).map("".join))
def test_text_made_of_yaml_punctuation_is_a_policy_or_a_located_policy_error(text: str) -> None:
    check(text)


@FUZZ
@given(mutated(GUARD_BASE), st.booleans())
def test_a_mutated_guard_policy_is_a_policy_or_a_located_policy_error(tree: Any, as_json: bool) -> None:
    check(serialise(tree, as_json))


@FUZZ
@given(st.one_of(mutated(INTERCEPT_BASE), mutated(POLICYLAYER_BASE)), st.booleans())
def test_a_mutated_seed_policy_is_a_policy_or_a_located_policy_error(tree: Any, as_json: bool) -> None:
    check(serialise(tree, as_json))


@settings(FUZZ, derandomize=True, report_multiple_bugs=False)
@given(mutated(PRESET_BASE), st.booleans())
def test_a_mutated_policy_over_a_preset_is_a_policy_or_a_located_policy_error(tree: Any, as_json: bool) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_policy_files, "presets", lambda: sorted(p.stem for p in PRESETS.glob("*.yaml")))
        patch.setattr(_policy_files, "preset_text", lambda name: (PRESETS / f"{name}.yaml").read_text())
        check(serialise(tree, as_json))


def test_the_unmutated_bases_are_valid_policies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_policy_files, "presets", lambda: sorted(p.stem for p in PRESETS.glob("*.yaml")))
    monkeypatch.setattr(_policy_files, "preset_text", lambda name: (PRESETS / f"{name}.yaml").read_text())
    bases = [
        (GUARD_BASE, "guard"),
        (PRESET_BASE, "guard"),
        (INTERCEPT_BASE, "intercept"),
        (POLICYLAYER_BASE, "policylayer"),
    ]
    for base, kind in bases:
        for as_json in (False, True):
            assert parse(serialise(base, as_json), "base")[1] == kind
