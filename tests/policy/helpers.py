"""What the policy tests share: a policy read from a dict or a text the way a file is."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest
import yaml

from guard.errors import PolicyError, Problem
from guard.policy.files import parse
from guard.policy.rules import Policy, Who
from tests.conftest import FIXTURES

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
