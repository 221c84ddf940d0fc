"""`guard refresh`: ask the upstream once for every known balance that is due (for cron, where no guard
runs to keep them fresh), and store the answers in the ledger."""

from __future__ import annotations

from typing import Annotated

import typer

from guard.cli.options import LedgerOption, PolicyOption, UpstreamCommand, UpstreamUrl, policy_path, upstream_spec
from guard.policy.source import PolicySource
from ledgers import Ledger


def refresh(
    command: UpstreamCommand = None,
    upstream: UpstreamUrl = None,
    policy_file: PolicyOption = None,
    every: Annotated[bool, typer.Option("--all", help="Refresh every known balance, due or not.")] = False,
    ledger_url: LedgerOption = None,
) -> None:
    """Ask the upstream once for each known balance older than `balances.refresh_every` (for cron)."""
    spec = upstream_spec(command, upstream)
    source = PolicySource.from_file(policy_path(policy_file))
    spec.check()
    from guard.operators.refresh import refresh_once  # the MCP SDK: loaded by the commands that use it

    with Ledger.open(ledger_url) as ledger:
        done = refresh_once(spec, source.policy, ledger, every=every)
    typer.echo(f"refreshed {done} balance{'' if done == 1 else 's'}")
