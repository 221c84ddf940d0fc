"""402-mcp's own per-payment cap: the largest payment a policy admits for a call 402-mcp pays by itself
(`largest_auto_payment`), and the MAX_AUTO_PAY_SATS a 402-mcp upstream guard starts is given
(`with_auto_pay_cap`). End to end, reaching the fake 402-mcp: tests/hostile/test_upstream_overpays.py."""

from __future__ import annotations

import pytest

from guard.cli.serve import largest_auto_payment, with_auto_pay_cap
from guard.policy.files import parse
from guard.proxy.upstream import HttpUpstream, StdioUpstream

BUDGET = "budgets:\n  - name: b\n    limit: 5000 sat\n"


def policy(tools: str, budgets: str = BUDGET, head: str = "version: 1\n") -> str:
    return head + budgets + "tools:\n" + tools


@pytest.mark.parametrize(
    ("text", "cap"),
    [
        ("version: 1\ndefault: deny\n", 0),  # no paying tool is allowed: 402-mcp may pay nothing by itself
        (policy("  l402-fetch: {pays: true, max_price: 10 sat}\n"), 10),
        (policy("  l402_fetch: {pays: true, max_price: 10500 msat}\n"), 10),  # whole sats, rounded down
        (policy("  l402-fetch: {}\n", "budgets:\n  - name: b\n    limit: 70 sat\n"), 70),  # only a budget bounds it
        (policy("  l402-fetch: {}\n", "budgets:\n  - name: b\n    limit: 5 usd\n"), 0),  # no budget counts sats
        # With a sat rate written, a usd budget bounds it ($0.05 at 0.00095 usd a sat: 52 whole sats).
        (policy("  l402-fetch: {}\n", "rates: {sat: 0.00095 usd}\nbudgets:\n  - name: b\n    limit: 0.05 usd\n"), 52),
        (policy("  l402-fetch: {pays: true, max_price: 0.01 usd}\n", "rates: {sat: 0.001 usd}\n" + BUDGET), 10),
        (policy("  l402-pay: {action: approve, pays: true, max_price: 40 sat}\n"), 40),  # paid once approved
        (policy("  l402-pay: {action: deny, pays: true, max_price: 40 sat}\n"), 0),
        # One cap for every payment 402-mcp makes: the tool the policy lets spend most sets it.
        (
            policy(
                "  l402-fetch: {pays: true, max_price: 10 sat}\n"
                "  l402-buy-credits: {pays: true, price_from: args.amountSats, price_unit: sat, max_price: 1000 sat}\n"
            ),
            1000,
        ),
        ("version: 1\npreset: 402-mcp\n", 1000),
    ],
    ids=[
        "nothing allowed",
        "max_price",
        "msat max_price, snake case",
        "a budget only",
        "a budget in usd only",
        "a usd budget with a sat rate",
        "a usd max_price with a sat rate",
        "an approved tool",
        "a denied tool",
        "the largest tool sets it",
        "the preset",
    ],
)
def test_the_largest_payment_a_policy_admits_for_402_mcp(text: str, cap: int) -> None:
    assert largest_auto_payment(parse(text)[0]) == cap


FETCH_10 = policy("  l402-fetch: {pays: true, max_price: 10 sat}\n", head="version: 1\npreset: 402-mcp\n")
FETCH_10 += "  l402-pay: {action: deny}\n  l402-buy-credits: {action: deny}\n  l402-redeem-cashu: {action: deny}\n"


@pytest.mark.parametrize(
    ("inherited", "cap"),
    [(None, "10"), ("5", "5"), ("50", "10"), ("lots", "10"), ("-3", "10")],
    ids=["none", "lower stays", "higher lowered", "unreadable", "negative"],
)
def test_a_402_mcp_started_by_guard_gets_the_lower_of_the_environments_cap_and_the_policys(
    monkeypatch: pytest.MonkeyPatch, inherited: str | None, cap: str
) -> None:
    if inherited is None:
        monkeypatch.delenv("MAX_AUTO_PAY_SATS", raising=False)
    else:
        monkeypatch.setenv("MAX_AUTO_PAY_SATS", inherited)
    spec = with_auto_pay_cap(StdioUpstream(("python", "fake.py"), {"FAKE_STATE": "s.json"}), parse(FETCH_10)[0])
    assert isinstance(spec, StdioUpstream)
    assert spec.env == {"FAKE_STATE": "s.json", "MAX_AUTO_PAY_SATS": cap}
    assert spec.environment["MAX_AUTO_PAY_SATS"] == cap


@pytest.mark.parametrize(
    "command", [("npx", "-y", "402-mcp"), ("npx", "-y", "402-mcp@4.2.1"), ("/opt/bin/402-mcp",)], ids=str
)
def test_a_command_that_runs_402_mcp_gets_the_cap_without_the_preset(command: tuple[str, ...]) -> None:
    spec = with_auto_pay_cap(StdioUpstream(command), parse(policy("  l402-fetch: {pays: true, max_price: 7 sat}\n"))[0])
    assert isinstance(spec, StdioUpstream) and spec.env["MAX_AUTO_PAY_SATS"] == "7"


def test_other_upstreams_and_http_ones_are_left_as_they_are() -> None:
    other = StdioUpstream(("npx", "-y", "@p402/mcp-server"))
    assert with_auto_pay_cap(other, parse(FETCH_10.replace("preset: 402-mcp", "preset: p402"))[0]) == other
    remote = HttpUpstream("https://mcp.example/402")  # not started by guard: its environment is not guard's
    assert with_auto_pay_cap(remote, parse(FETCH_10)[0]) == remote
