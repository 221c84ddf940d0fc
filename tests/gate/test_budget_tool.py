"""`expose_budget_tool: true`: guard lists its own read-only tool `guard-budget`, answers it itself (never
forwarded), with the caller's budgets — through a real MCP client, a real guard process and a real ledger."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client, StdioServerParameters

from ledgers import Ledger
from tests.conftest import GUARD, ROOT, WAIT_S

pytestmark = pytest.mark.anyio

SHOP = [sys.executable, str(ROOT / "tests/upstreams/shop.py")]
POLICY = """\
version: 1
expose_budget_tool: {exposed}
budgets:
  - name: per-session
    limit: 100 sat
  - name: daily
    limit: 1000 sat
    scope: global
    window: day
    timezone: UTC
tools:
  buy:
    pays: true
    price_from: args.amount
    price_unit: sat
  browse: {{}}
"""


def guard_params(tmp_path: Path, *, exposed: bool, session: str = "agent-1") -> StdioServerParameters:
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(exposed=str(exposed).lower()).replace("    timezone: UTC\n", ""))
    args = ["run", "--policy", str(policy), "--ledger", str(tmp_path / "ledger.db"), "--session", session]
    env = {**os.environ, "SHOP_RECORD": str(tmp_path / "shop.jsonl")}
    return StdioServerParameters(command=GUARD[0], args=[*GUARD[1:], *args, "--", *SHOP], env=env)


def paid_by_shop(tmp_path: Path) -> int:
    record = tmp_path / "shop.jsonl"
    return sum(json.loads(line)["amount"] for line in record.read_text().splitlines()) if record.exists() else 0


def budgets_of(result: Any) -> dict[str, dict[str, Any]]:
    assert result.is_error is False
    assert result.structured_content is not None
    return {b["name"]: b for b in result.structured_content["budgets"]}


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_the_agent_sees_its_budgets_before_and_after_paying(tmp_path: Path, mode: str) -> None:
    with anyio.fail_after(WAIT_S):
        async with Client(guard_params(tmp_path, exposed=True), mode=mode) as agent:  # type: ignore[arg-type]
            tools = await agent.list_tools()
            listed = {tool.name: tool for tool in tools.tools}
            assert {"buy", "browse", "guard-budget"} <= set(listed)
            assert listed["guard-budget"].annotations is not None
            assert listed["guard-budget"].annotations.read_only_hint is True

            before = budgets_of(await agent.call_tool("guard-budget", {}))
            assert (before["per-session"]["remaining"], before["per-session"]["spent"]) == (100, 0)
            assert before["per-session"]["scope"] == "session:agent-1"
            assert before["daily"]["remaining"] == 1000 and before["daily"]["resets_at"] is not None

            bought = await agent.call_tool("buy", {"item": "tea", "amount": 30})
            assert bought.is_error is False

            after = await agent.call_tool("guard-budget", {})
            budgets = budgets_of(after)
            assert (budgets["per-session"]["remaining"], budgets["per-session"]["spent"]) == (70, 30)
            assert budgets["daily"]["remaining"] == 970
            text = after.content[0].text  # type: ignore[union-attr]
            assert "per-session (session:agent-1, per session): 70 sat left of 100 sat" in text

    assert paid_by_shop(tmp_path) == 30  # the budget tool itself paid nothing and reached no upstream
    with Ledger.open(tmp_path / "ledger.db", read_only=True) as ledger:
        tools = [c.call.tool for c in ledger.calls(last=10)]
    assert tools.count("guard-budget") == 2  # audited like every call


@pytest.mark.parametrize("mode", ["legacy", "auto"])
async def test_without_the_option_the_tool_is_neither_listed_nor_answered_by_guard(tmp_path: Path, mode: str) -> None:
    # (In the 2026-07-28 era, `auto`, the denial must carry resultType for the client to read it at all.)
    with anyio.fail_after(WAIT_S):
        async with Client(guard_params(tmp_path, exposed=False), mode=mode) as agent:  # type: ignore[arg-type]
            names = {tool.name for tool in (await agent.list_tools()).tools}
            assert "guard-budget" not in names
            result = await agent.call_tool("guard-budget", {})
    assert result.is_error is True
    assert result.structured_content is not None and result.structured_content["rule"] == "default"
