"""`guard refresh`: ask the upstream once for every known balance that is due (for cron, where no guard
runs to keep them fresh), and store the answers in the ledger."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import anyio
import typer
from mcp import Client

from guard import _upstream
from guard._errors import ConfigError, UpstreamStartError
from guard._ledger_commands import LedgerOption, open_ledger
from guard._options import PolicyOption, UpstreamCommand, UpstreamUrl, policy_path, upstream_spec
from guard._payments import Payments
from guard._policy import Policy
from guard._policy_source import PolicySource
from guard._relay import JSON, UpstreamError
from guard.adapters import family_adapters, x402_adapter
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
            raise UpstreamError(exc.error) from None
        dumped: dict[str, Any] = result.model_dump(by_alias=True, exclude_none=True, mode="json")
        return dumped


def refresh_once(spec: _upstream.UpstreamSpec, policy: Policy, ledger: Ledger, *, every: bool) -> int:
    """Refresh the balances due (all known ones with `every`); return how many answered.

    Raises:
        UpstreamStartError: the upstream cannot be started or reached."""
    payments = Payments(ledger, family_adapters(policy.spec.preset), x402_adapter(policy.spec.assets))
    if every:
        balances = policy.spec.balances.model_copy(update={"refresh_every": "1s"})
        policy = Policy(policy.spec.model_copy(update={"balances": balances}), policy.source)

    async def main() -> int:
        try:
            async with Client(_upstream.client_target(spec), mode="legacy") as client:
                link = _ClientLink(client)
                return await payments.refresh_stale(policy, lambda: [link])
        except OSError as exc:
            raise UpstreamStartError(f"cannot start upstream {spec.label}: {exc.strerror or exc}") from None

    return anyio.run(main)


def refresh(
    command: UpstreamCommand = None,
    upstream: UpstreamUrl = None,
    policy_file: PolicyOption = None,
    every: Annotated[bool, typer.Option("--all", help="Refresh every known balance, due or not.")] = False,
    ledger_url: LedgerOption = None,
) -> None:
    """Ask the upstream once for each known balance older than `balances.refresh_every` (for cron)."""
    try:
        spec = upstream_spec(command, upstream)
        source = PolicySource.from_file(policy_path(policy_file))
        spec.check()
    except ConfigError as exc:
        typer.echo(f"guard: error: {exc}", err=True)
        raise typer.Exit(2) from None
    except UpstreamStartError as exc:
        typer.echo(f"guard: error: {exc}", err=True)
        raise typer.Exit(3) from None
    with open_ledger(ledger_url) as ledger:
        try:
            done = refresh_once(spec, source.policy, ledger, every=every)
        except UpstreamStartError as exc:
            typer.echo(f"guard: error: {exc}", err=True)
            raise typer.Exit(3) from None
    typer.echo(f"refreshed {done} balance{'' if done == 1 else 's'}")
