"""Adapters: what the money in each upstream family's calls and answers is (see `_facts`).

A call is read by the first family adapter that knows its tool (the policy's preset first), and by
`X402` whenever it carries an x402 payment: any server may speak x402 over MCP.
"""

from __future__ import annotations

from collections.abc import Mapping

from guard.payments.adapters._facts import Adapter, Outcome, Prepared, Quote, Refresh
from guard.payments.adapters.alby import Alby
from guard.payments.adapters.l402_mcp import L402Mcp
from guard.payments.adapters.p402 import P402
from guard.payments.adapters.token_pilot import TokenPilot
from guard.payments.adapters.x402 import X402

FAMILIES: dict[str, type[Adapter]] = {"402-mcp": L402Mcp, "p402": P402, "alby": Alby, "token-pilot": TokenPilot}


def family_adapters(preset: str | None = None) -> list[Adapter]:
    """Every family's adapter, the preset's first (it wins a tool name two families share)."""
    order = sorted(FAMILIES, key=lambda name: name != preset)
    return [FAMILIES[name]() for name in order]


def x402_adapter(assets: Mapping[str, str] | None = None) -> X402:
    """The x402 adapter, knowing the units of the policy's extra assets (address → unit)."""
    return X402(assets=assets)


__all__ = ["FAMILIES", "Adapter", "Outcome", "Prepared", "Quote", "Refresh", "family_adapters", "x402_adapter"]
