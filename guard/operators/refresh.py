"""Refreshing balances once, through the SDK's client (`guard refresh`, `guard run --refresh-only`): ask the
upstream for every known balance that is due, and store the answers in the ledger."""

from __future__ import annotations

import logging
from typing import Any

import anyio
from mcp import Client

from guard.core import JSON
from guard.errors import UpstreamError, UpstreamStartError
from guard.payments.adapters import family_adapters, x402_adapter
from guard.payments.payments import Payments
from guard.policy.rules import Policy
from guard.proxy import upstream
from ledgers import Ledger

logger = logging.getLogger("guard.refresh")


class _ClientLink:
    """A `SessionLink` over the SDK's client: the guard's own calls, with no client of its own."""

    def __init__(self, client: Client) -> None:
        self._client = client

    async def tools_changed(self) -> None:
        return None

    async def call(self, name: str, arguments: JSON) -> JSON:
        from mcp import MCPError

        try:
            result = await self._client.call_tool(name, arguments)
        except MCPError as exc:
            raise UpstreamError(exc.error.code, exc.error.message, exc.error.data) from None
        dumped: dict[str, Any] = result.model_dump(by_alias=True, exclude_none=True, mode="json")
        return dumped


def refresh_once(spec: upstream.UpstreamSpec, policy: Policy, ledger: Ledger, *, every: bool) -> int:
    """Refresh the balances due (all known ones with `every`); return how many answered.

    Raises:
        UpstreamStartError: the upstream cannot be started or reached."""
    payments = Payments(ledger, family_adapters(policy.spec.preset), x402_adapter(policy.spec.assets))
    if every:
        balances = policy.spec.balances.model_copy(update={"refresh_every": "1s"})
        policy = Policy(policy.spec.model_copy(update={"balances": balances}), policy.source)

    async def main() -> int:
        try:
            async with Client(upstream.client_target(spec), mode="legacy") as client:
                link = _ClientLink(client)
                return await payments.refresh_due(policy, lambda: [link])
        except OSError as exc:
            raise UpstreamStartError(f"cannot start upstream {spec.label}: {exc.strerror or exc}") from None

    return anyio.run(main)
