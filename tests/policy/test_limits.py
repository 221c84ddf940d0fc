"""What a policy may not say, and how tool names compare: patterns RE2 cannot run, absurd numbers, files
too deep, too large or blown up by YAML aliases (each a located error), and tool-name variants."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from guard.errors import PolicyError, PriceUnknown, Problem
from guard.names import folded, spelling
from guard.policy.files import MAX_FILE_BYTES, load, parse
from guard.policy.model import MAX_MATCHED_CHARS
from guard.policy.rules import Policy, Who
from tests.conftest import ROOT, WAIT_S


def problems(text: str, file: str = "test.yaml") -> list[Problem]:
    with pytest.raises(PolicyError) as failed:
        parse(textwrap.dedent(text), file)
    return failed.value.problems


def one_problem(text: str) -> tuple[int, int, str, str]:
    (problem,) = problems(text)
    return problem.line, problem.column, problem.where, problem.message


def with_pattern(pattern: str) -> str:
    return f"version: 1\ntools:\n  a:\n    when:\n      - arg: x\n        matches: '{pattern}'\n"


# --- patterns: RE2 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "message"),
    [
        (r"(a)\1", r"RE2 does not take backreferences (\1 to \9) (invalid escape sequence: \1): match the text"),
        (r"(?P<x>a)(?P=x)", "RE2 does not take named backreferences (?P=name) (invalid perl operator: (?P)"),
        (r"^(?=.*\d)", "RE2 does not take lookahead (?=...) or (?!...) (invalid perl operator: (?=): split the test"),
        (r"^(?!admin)", "RE2 does not take lookahead (?=...) or (?!...) (invalid perl operator: (?!)"),
        (r"(?<=\$)\d+", "RE2 does not take lookbehind (?<=...) or (?<!...) (invalid perl operator: (?<=)"),
        (r"a++b", "RE2 does not take possessive quantifiers (++, *+, ?+, {n}+) (bad repetition operator: ++): drop"),
        (r"a{2}+", "RE2 does not take possessive quantifiers (++, *+, ?+, {n}+) (bad repetition operator: {2}+)"),
        (r"(?>a+)b", "RE2 does not take atomic groups (?>...) (invalid perl operator: (?>): write (?:...)"),
        (r"^https://\S+\Z", r"RE2 does not take \Z (invalid escape sequence: \Z): write \z (the end of the text)"),
        (r"(?x) a b", "RE2 does not take the verbose flag (?x)"),
        (r"a{1001}", "RE2 does not take counts above 1000 (invalid repetition size: {1001})"),
        ("(", "not a valid regular expression (RE2 syntax): missing ): ("),
    ],
    ids=[
        "backreference",
        "named-backreference",
        "lookahead",
        "negative-lookahead",
        "lookbehind",
        "possessive",
        "possessive-count",
        "atomic-group",
        "python-end-of-text",
        "verbose-flag",
        "count-over-1000",
        "unbalanced",
    ],
)
def test_a_pattern_re2_cannot_run_is_a_located_error_naming_the_construct(pattern: str, message: str) -> None:
    line, column, where, said = one_problem(with_pattern(pattern))
    assert (line, column, where) == (6, 18, "tools.a.when[0].matches")
    assert said.startswith(message)


def test_a_pattern_in_an_intercept_seed_is_checked_by_re2_too() -> None:
    seed = "version: '1'\ntools:\n  fetch:\n    rules:\n      - conditions:\n          - path: args.url\n"
    seed += "            op: regex\n            value: '^(?!http:)'\n"
    _, _, where, message = one_problem(seed)
    assert where.startswith("tools.fetch")
    assert "RE2 does not take lookahead" in message


def condition_holds(pattern: str, value: str) -> bool:
    policy, _ = parse(with_pattern(pattern).replace("tools:\n", "default: allow\ntools:\n"), "test.yaml")
    return policy.failed_condition("a", {"x": value}) is None


@pytest.mark.parametrize(
    ("pattern", "value", "holds"),
    [
        (r"^(a+)+$", "a" * 39 + "!", False),
        (r"^(a+)+$", "a" * 40, True),
        (r"^https://api\.example\.com/", "https://api.example.com/v1", True),
        (r"(?i)^HTTPS://", "https://x", True),
        # RE2's $ is the end of the text (Python's also matches before a final newline).
        (r"^[a-z]+$", "abc\n", False),
        # RE2's \d is ASCII digits only (Python's takes every Unicode digit).
        (r"^\d+$", "\u0663", False),
        (r"^\d+\z", "123", True),
    ],
    ids=["redos-fails", "redos-holds", "anchored-url", "case-flag", "dollar-is-end-of-text", "ascii-digits", "z"],
)
def test_a_pattern_is_matched_by_re2(pattern: str, value: str, holds: bool) -> None:
    assert condition_holds(pattern, value) is holds


def test_a_string_longer_than_patterns_are_run_against_fails_the_condition_and_says_so() -> None:
    policy, _ = parse(with_pattern(".").replace("tools:\n", "default: allow\ntools:\n"), "test.yaml")
    assert policy.failed_condition("a", {"x": "a" * MAX_MATCHED_CHARS}) is None
    denial = policy.failed_condition("a", {"x": "a" * (MAX_MATCHED_CHARS + 1)})
    assert denial is not None and denial.rule == "tools.a.when[0]"
    assert denial.reason == "argument x is longer than 65536 characters, the most a pattern is matched against"


# --- absurd numbers ---------------------------------------------------------------------------------------

ABSURD = [
    (
        "amount-over-the-ledgers-max",
        "version: 1\nbudgets:\n  - name: b\n    limit: 9223372036854775808 sat\n",
        (4, 12, "budgets[0].limit"),
        "expected an amount with a unit, such as '1000 sat' or '2.50 usd' ('9223372036854775808 sat' is too large",
    ),
    (
        "max-price-over-the-ledgers-max",
        "version: 1\ntools:\n  a:\n    pays: true\n    max_price: 99999999999999999999999 usd\n",
        (5, 16, "tools.a.max_price"),
        "expected an amount with a unit",
    ),
    (
        "rate-over-a-billion",
        "version: 1\ntools:\n  a:\n    rate_limit: 1000000001/second\n",
        (4, 17, "tools.a.rate_limit"),
        "1000000001 calls is too many: at most 1000000000 per second",
    ),
    (
        "rate-with-5000-digits",
        "version: 1\ntools:\n  a:\n    rate_limit: " + "9" * 5000 + "/minute\n",
        (4, 17, "tools.a.rate_limit"),
        "9999",
    ),
    (
        "quota-max",
        "version: 1\ntools:\n  a:\n    quotas:\n      - {counter: c, max: 99999999999999999999, window: day}\n",
        (5, 27, "tools.a.quotas[0].max"),
        "expected less than or equal to 1000000000",
    ),
    (
        "quota-increment",
        "version: 1\ntools:\n  a:\n    quotas:\n      - {counter: c, max: 5, window: day, increment: 1000000001}\n",
        (5, 54, "tools.a.quotas[0].increment"),
        "expected less than or equal to 1000000000",
    ),
    (
        "budget-window-over-10-years",
        "version: 1\nbudgets:\n  - name: b\n    limit: 5 sat\n    window: 3651d\n",
        (5, 13, "budgets[0].window"),
        "3651d is too long: at most 3650d (about 10 years)",
    ),
    (
        "quota-window-over-10-years",
        "version: 1\ntools:\n  a:\n    quotas:\n      - {counter: c, max: 5, window: 99999999999999999999w}\n",
        (5, 38, "tools.a.quotas[0].window"),
        "99999999999999999999w is too long: at most 3650d",
    ),
    (
        "stale-after-with-5000-digits",
        "version: 1\nbalances:\n  stale_after: " + "9" * 5000 + "s\n",
        (3, 16, "balances.stale_after"),
        "expected a duration such as 30s, 5m, 1h, 24h or 7d",
    ),
    (
        "approval-expiry",
        "version: 1\napprovals:\n  expire_after: 522w\n",
        (3, 17, "approvals.expire_after"),
        "522w is too long: at most 3650d",
    ),
    (
        "threshold-zero",
        "version: 1\nalerts:\n  webhook: https://hooks.example/x\n  thresholds: [0, 0.5]\n",
        (4, 16, "alerts.thresholds[0]"),
        "expected greater than 0",
    ),
    (
        "threshold-over-one",
        "version: 1\nalerts:\n  webhook: https://hooks.example/x\n  thresholds: [0.5, 1.5]\n",
        (4, 21, "alerts.thresholds[1]"),
        "expected less than or equal to 1",
    ),
    (
        "condition-bound-infinite",
        "version: 1\ntools:\n  a:\n    when:\n      - {arg: n, lt: .inf}\n",
        (5, 22, "tools.a.when[0].lt"),
        "expected a finite number",
    ),
    (
        "condition-bound-nan",
        "version: 1\ntools:\n  a:\n    when:\n      - {arg: n, gte: .nan}\n",
        (5, 23, "tools.a.when[0].gte"),
        "expected a finite number",
    ),
    (
        "integer-too-long-to-read",
        "version: 1\ntools:\n  a:\n    when:\n      - {arg: n, lt: " + "9" * 5000 + "}\n",
        (5, 22, ""),
        "not valid YAML: a number too long to read",
    ),
]


@pytest.mark.parametrize(("text", "at", "message"), [pytest.param(*c[1:], id=c[0]) for c in ABSURD])
def test_an_absurd_number_is_a_located_error(text: str, at: tuple[int, int, str], message: str) -> None:
    line, column, where, said = one_problem(text)
    assert (line, column, where) == at
    assert said.startswith(message), said


def test_the_largest_sane_numbers_are_accepted() -> None:
    text = """\
    version: 1
    budgets:
      - {name: b, limit: 9223372036854775 sat, window: 3650d}
    approvals: {expire_after: 3650d}
    tools:
      a:
        rate_limit: 1000000000/second
        quotas:
          - {counter: c, max: 1000000000, window: 3650d, increment: 1000000000}
    """
    policy, _ = parse(textwrap.dedent(text), "test.yaml")
    assert policy.spec.budgets[0].window == "3650d"


def test_a_quota_increment_argument_over_the_bound_makes_the_call_unpriceable() -> None:
    text = "version: 1\ntools:\n  a:\n    quotas:\n      - {counter: c, max: 5, window: day, increment_from: n}\n"
    policy, _ = parse(text, "test.yaml")
    who = Who("s", None, "x")
    assert policy.rate_limits("a", {"n": 1_000_000_000}, who)[0].rate.cost == 1_000_000_000
    with pytest.raises(PriceUnknown, match="argument n must be a whole number from 0 to 1000000000"):
        policy.rate_limits("a", {"n": 10**30}, who)


# --- the shape of the file --------------------------------------------------------------------------------


def test_a_yaml_file_nested_deeper_than_32_levels_is_refused_before_it_is_built() -> None:
    deep = "version: 1\ntools:\n  a:\n    when:\n      - arg: x\n        equals: " + "[" * 28 + "]" * 28 + "\n"
    assert one_problem(deep) == (6, 44, "tools.a.when[0].equals" + "[0]" * 27, "nested deeper than 32 levels")
    # 100 000 levels would exhaust Python's stack in the YAML composer.
    assert one_problem("description: " + "[" * 100_000 + "]" * 100_000)[3] == "nested deeper than 32 levels"


def test_a_json_file_nested_deeper_than_32_levels_is_refused_before_it_is_parsed() -> None:
    # Tabs: only the JSON parser reads this, and it would run out of stack at about 1000 levels.
    text = '{\n\t"version": 1,\n\t"description": ' + "[" * 50_000 + "]" * 50_000 + "\n}\n"
    assert one_problem(text) == (3, 48, "", "nested deeper than 32 levels")


def test_an_alias_counts_as_deep_as_what_it_stands_for() -> None:
    text = "x-deep: &deep " + "[" * 20 + "]" * 20 + "\nversion: 1\ndescription: " + "[" * 15 + "*deep" + "]" * 15 + "\n"
    line, column, where, message = one_problem(text)
    assert (line, column, message) == (3, 29, "nested deeper than 32 levels")
    assert where == "description" + "[0]" * 15


def test_yaml_aliases_that_repeat_more_than_100000_values_are_refused() -> None:
    # A "billion laughs": each level repeats the one before ten times (10^9 values at the last level).
    levels = ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    levels += [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 10)}]" for n in range(1, 9)]
    line, _, where, message = one_problem("\n".join(levels) + "\n")
    assert (line, where, message) == (5, "a4[7]", "more than 100000 values (with what aliases such as *a3 repeat)")


def test_aliases_within_the_bounds_are_read() -> None:
    text = """\
    version: 1
    default: allow
    tools:
      fetch:
        when: &https-only
          - {arg: url, matches: '^https://'}
      preview:
        when: *https-only
    """
    policy, _ = parse(textwrap.dedent(text), "test.yaml")
    assert policy.failed_condition("preview", {"url": "http://x"}) is not None


def test_a_file_larger_than_256_kib_is_refused_before_it_is_read(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("version: 1\n" + "#" * MAX_FILE_BYTES)
    with pytest.raises(PolicyError) as failed:
        load(big)
    assert str(failed.value) == f"{big}:1:1: the file is larger than 256 KiB, more than a policy needs"
    assert [p.message for p in problems("#" * (MAX_FILE_BYTES + 1))] == [
        "the file is larger than 256 KiB, more than a policy needs"
    ]


def test_policy_check_refuses_a_backreference_and_a_billion_laughs_at_their_lines(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(with_pattern(r"(a)\1"))
    laughs = tmp_path / "laughs.yaml"
    laughs.write_text("a: &a [" + ", ".join(["x"] * 400) + "]\nb: [" + ", ".join(["*a"] * 400) + "]\n")
    for path, expected in [
        (bad, f"{bad}:6:18: tools.a.when[0].matches: RE2 does not take backreferences"),
        (laughs, f"{laughs}:2:"),
    ]:
        ran = subprocess.run(
            [sys.executable, "-m", "guard", "policy", "check", str(path)],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=WAIT_S,
        )
        assert (ran.returncode, ran.stdout) == (2, "")
        assert ran.stderr.startswith(expected), ran.stderr


# --- tool names -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "variant",
    [
        "L402-PAY",
        " l402-pay\t",
        "l402\u2010pay",  # HYPHEN
        "l402\u2011pay",  # NON-BREAKING HYPHEN
        "l402\u2212pay",  # MINUS SIGN
        "l402\uff0dpay",  # FULLWIDTH HYPHEN-MINUS
        "\uff4c\uff14\uff10\uff12-\uff50\uff41\uff59",  # fullwidth letters and digits
        "l402-p\u00aday",  # SOFT HYPHEN (invisible)
        "\u200bl402-pay",  # ZERO WIDTH SPACE
        "L402_PAY",
    ],
)
def test_every_variant_folds_to_the_same_name(variant: str) -> None:
    assert folded(variant) == folded("l402-pay") == "l402-pay"


def test_names_that_differ_otherwise_do_not_fold_together() -> None:
    assert len({folded(n) for n in ["l402-pay", "l402-pays", "l402pay", "l402-fetch", "l4o2-pay"]}) == 5
    assert spelling("l402_fetch") == spelling("l402-fetch") != spelling("L402-FETCH")


def names_policy(default: str = "allow") -> Policy:
    text = f"""\
    version: 1
    default: {default}
    budgets: [{{name: b, limit: 100 sat}}]
    tools:
      l402-pay: {{action: deny, reason: no invoices}}
      l402-fetch: {{pays: true, max_price: 50 sat}}
      secret-tool: {{hidden: true}}
    """
    policy, _ = parse(textwrap.dedent(text), "test.yaml")
    return policy


@pytest.mark.parametrize("default", ["allow", "deny"])
@pytest.mark.parametrize(
    ("called", "rule", "reason"),
    [
        (
            "L402-PAY",
            "tools.l402-pay",
            "'L402-PAY' differs from 'l402-pay' only in case, width, dashes or spaces: no invoices",
        ),
        (
            "SECRET_TOOL",
            "tools.secret-tool",
            "'SECRET_TOOL' differs from 'secret-tool' only in case, width, dashes or spaces:"
            " the policy denies secret-tool",
        ),
        (
            "l402\u2013fetch",
            "tools.l402-fetch",
            "'l402\\u2013fetch' differs from 'l402-fetch' only in case, width, dashes or spaces:"
            " refused as ambiguous; call the tool by its exact name",
        ),
    ],
    ids=["denied-tool", "hidden-tool", "paying-tool"],
)
def test_a_variant_of_a_named_tool_is_refused_naming_the_tool_it_matched(
    default: str, called: str, rule: str, reason: str
) -> None:
    policy = names_policy(default)
    refusal = policy.refusal(called)
    assert refusal is not None and (refusal.rule, refusal.reason) == (rule, reason)
    assert not policy.visible(called)


def test_exact_and_case_style_spellings_keep_their_own_rule() -> None:
    policy = names_policy()
    assert policy.refusal("l402-fetch") is None and policy.refusal("l402_fetch") is None
    assert policy.pays("l402_fetch")
    assert [b.name for b in policy.budgets("l402_fetch", Who("s", None, "x"))] == ["b"]
    refusal = policy.refusal("l402_pay")
    assert refusal is not None and refusal.reason == "no invoices"
    assert policy.refusal("L402-BALANCE") is None  # no rule names anything like it: the default applies


def test_two_rules_whose_names_fold_together_are_an_error() -> None:
    (problem,) = problems("version: 1\ntools:\n  l402-pay: {}\n  L402-Pay:\n    action: deny\n")
    assert problem.message == (
        "'l402-pay' and 'L402-Pay' name the same tool (they differ only in case, width, dashes or spaces:"
        " an upstream may run them as one)"
    )
    assert (problem.line, problem.column, problem.where) == (3, 3, "tools")
