"""Policy files: presets as bases, located errors (file, line, column, the key), `dump` round trips."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from guard.errors import PolicyError
from guard.policy import files as _policy_files
from guard.policy.files import dump, load, parse
from tests.conftest import FIXTURES
from tests.policy.cases import FULL_POLICY, INTERCEPT, MISTAKES
from tests.policy.helpers import (
    PRESETS,
    SEEDS,
    policy_text,
    problems,
)

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


# --- located errors -------------------------------------------------------------------------------------


# (name, text, line, column, where, message start)
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
