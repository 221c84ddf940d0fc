"""The shipped presets classify every tool of their payment server, and the published schema is the model's."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from guard.policy.files import load, parse, presets
from guard.policy.model import json_schema
from guard.policy.rules import Policy, Who
from ledgers import Amount, UnitMismatch, Window

ROOT = Path(__file__).resolve().parents[2]
POLICIES = ROOT / "policies"
SCHEMA = POLICIES / "policy.schema.json"
WHO = Who("s", None, "srv")


@dataclass(frozen=True)
class Server:
    """One upstream's tools, as its own source exposes them."""

    preset: str
    reads: list[str]  # free: listed, allowed, rate limited
    paying: list[str]  # spend money: capped and counted against a budget
    raw_invoice: list[str] = field(default_factory=list)  # pay an invoice the agent hands in
    other: list[str] = field(default_factory=list)  # named, with a choice of their own


SERVERS = [
    Server(
        "402-mcp",
        reads=["l402-config", "l402-discover", "l402-fetch-preview", "l402-credentials", "l402-balance", "l402-search"],
        paying=["l402-fetch", "l402-pay", "l402-buy-credits", "l402-redeem-cashu"],
        raw_invoice=["l402-pay"],
        other=["l402-store-token"],
    ),
    Server(
        "p402",
        reads=["p402_get_session", "p402_list_models", "p402_compare_providers", "p402_health", "p402_agent_status"],
        paying=["p402_chat"],
        other=["p402_create_session"],
    ),
    Server("alby", reads=["get_balance"], paying=["fetch_l402", "pay_invoice"], raw_invoice=["pay_invoice"]),
    Server("token-pilot", reads=["session_budget"], paying=[]),
]


def _loaded(server: Server, how: str) -> Policy:
    if how == "file":
        policy, kind = load(POLICIES / f"{server.preset}.yaml")
    else:
        policy, kind = parse(f"version: 1\npreset: {server.preset}\n", "<user policy>")
    assert kind == "guard"
    return policy


@pytest.fixture(
    params=[(server, how) for server in SERVERS for how in ("file", "preset")],
    ids=lambda p: f"{p[0].preset}-{p[1]}",
)
def case(request: pytest.FixtureRequest) -> tuple[Server, Policy]:
    server, how = request.param
    return server, _loaded(server, how)


def test_the_committed_schema_is_the_policy_models_schema() -> None:
    committed = json.loads(SCHEMA.read_text())
    assert committed == json_schema(), (
        "policies/policy.schema.json is stale: regenerate it with"
        " `.venv/bin/guard policy schema > policies/policy.schema.json`"
    )


def test_every_shipped_preset_is_described_here() -> None:
    assert presets() == sorted(server.preset for server in SERVERS)


def test_every_tool_of_the_server_is_named_by_its_preset(case: tuple[Server, Policy]) -> None:
    server, policy = case
    for tool in [*server.reads, *server.paying, *server.other]:
        assert policy.rule_for(tool) is not None, f"{server.preset} does not classify {tool}"
    assert policy.spec.default == "deny"
    assert policy.spec.description


def test_tools_the_server_does_not_list_are_denied(case: tuple[Server, Policy]) -> None:
    _, policy = case
    assert policy.refusal("some_new_tool") is not None
    assert not policy.visible("some_new_tool")


def test_reading_tools_are_listed_free_and_rate_limited(case: tuple[Server, Policy]) -> None:
    server, policy = case
    for tool in server.reads:
        assert policy.visible(tool), tool
        assert not policy.pays(tool), tool
        assert policy.needs_approval(tool) is None, tool
        assert policy.failed_condition(tool, {}) is None, tool
        assert policy.rate_limits(tool, {}, WHO), f"{tool} has no rate limit"


def test_paying_tools_are_capped_and_counted_against_a_budget_in_their_unit(case: tuple[Server, Policy]) -> None:
    server, policy = case
    for tool in server.paying:
        assert policy.pays(tool), f"{tool} is not marked pays: true"
        bound = policy.max_price(tool)  # with no price argument: the cap bounds it
        assert bound is not None, f"{tool} has no max_price"
        budgets = policy.budgets(tool, WHO)
        assert budgets, f"no budget covers {tool}"
        comparable = []
        for budget in budgets:
            try:
                bound.to(budget.limit.unit, rounding="up")
            except UnitMismatch:
                continue
            comparable.append(budget)
        assert comparable, f"no budget of {tool} is in a unit comparable with {bound}"
        assert policy.rate_limits(tool, {}, WHO), f"{tool} has no rate limit"


def test_paying_tools_an_agent_calls_by_itself_break_a_loop_on_the_fourth_identical_purchase(
    case: tuple[Server, Policy],
) -> None:
    """Raw invoices wait for a human, and one invoice is paid once (its payment hash): no loop to break."""
    server, policy = case
    for tool in set(server.paying) - set(server.raw_invoice):
        if policy.needs_approval(tool) is None:
            limit = policy.repeat_limit(tool, "https://shop.example/item", WHO)
            assert limit is not None, f"{tool} has no repeat_limit"
            assert (limit.rate.limit, str(limit.rate.window)) == (3, str(Window.sliding("10m"))), tool


def test_raw_invoice_payments_wait_for_a_human(case: tuple[Server, Policy]) -> None:
    server, policy = case
    for tool in server.raw_invoice:
        assert policy.needs_approval(tool) is not None, f"{tool} pays any invoice without approval"
        assert policy.visible(tool), f"{tool} should be listed so the agent can ask for approval"


def test_402_mcp_answers_to_its_older_snake_case_names_alike() -> None:
    policy, _ = load(POLICIES / "402-mcp.yaml")
    for tool in next(s for s in SERVERS if s.preset == "402-mcp").paying:
        snake = tool.replace("-", "_")
        assert policy.rule_for(snake) == policy.rule_for(tool)
        assert policy.pays(snake) and policy.budgets(snake, WHO)


def test_402_mcp_prices_a_credit_purchase_from_amount_sats_and_refuses_one_without_it() -> None:
    policy, _ = load(POLICIES / "402-mcp.yaml")
    assert policy.fixed_price("l402-buy-credits", {"url": "https://x", "amountSats": 300}) == Amount(300, "sat")
    assert policy.failed_condition("l402-buy-credits", {"url": "https://x", "amountSats": 300}) is None
    denial = policy.failed_condition("l402-buy-credits", {"url": "https://x"})
    assert denial is not None and "amountSats" in denial.reason


def test_402_mcp_asks_a_human_before_storing_a_token_or_redeeming_cashu() -> None:
    policy, _ = load(POLICIES / "402-mcp.yaml")
    assert policy.needs_approval("l402-store-token") is not None
    assert policy.needs_approval("l402-redeem-cashu") is not None


def test_p402_refuses_a_session_cap_larger_than_its_session_budget() -> None:
    policy, _ = load(POLICIES / "p402.yaml")
    assert policy.failed_condition("p402_create_session", {"budget_usd": 5}) is None
    assert policy.failed_condition("p402_create_session", {"budget_usd": 50}) is not None


def test_token_pilot_never_pays() -> None:
    policy, _ = load(POLICIES / "token-pilot.yaml")
    assert not policy.pays("session_budget")
    assert policy.spec.budgets == []


@pytest.mark.parametrize("server", SERVERS, ids=lambda s: s.preset)
def test_policy_check_accepts_every_preset(server: Server) -> None:
    path = POLICIES / f"{server.preset}.yaml"
    done = subprocess.run(
        [sys.executable, "-m", "guard", "policy", "check", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "valid guard policy" in done.stdout
