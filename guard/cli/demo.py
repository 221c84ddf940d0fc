"""`guard demo`: guard in front of a simulated L402 server, with no wallet and nothing to configure.

It writes a policy (the 402-mcp preset and a 100 sat budget per session) and a SQLite ledger into a
fresh directory, starts `guard run` over stdio with the simulated server (`guard.demo.server`) behind
it, and drives it as an agent would through the mcp SDK's client: a price preview, a paid fetch that
the budget admits, a second one it denies. Then it shows what the ledger counted, as `guard budget show` does.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Annotated, Any, Optional

import anyio
import typer

from guard.cli.budget import show

POLICY = """\
# Written by `guard demo`: the 402-mcp preset, with a small budget so the second purchase is refused.
version: 1
preset: 402-mcp
budgets:
  - {name: per-session, limit: 100 sat, scope: session, window: session}
"""
JOKE, FORECAST = "https://api.example.com/joke", "https://api.example.com/forecast"


def demo(
    directory: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--dir", metavar="DIR", help="Where to write the policy and ledger (default: a new temp dir)."),
    ] = None,
) -> None:
    """Run guard in front of a simulated L402 server: one payment admitted, one denied, the budget shown."""
    where = directory or Path(tempfile.mkdtemp(prefix="guard-demo-"))
    where.mkdir(parents=True, exist_ok=True)
    policy, ledger = where / "policy.yaml", where / "ledger.db"
    policy.write_text(POLICY)
    typer.echo(f"policy {policy}\nledger {ledger}\n")
    anyio.run(_drive, policy, ledger)
    typer.echo("")
    _show_budget(policy, ledger)


async def _drive(policy: Path, ledger: Path) -> None:
    from mcp import Client, StdioServerParameters  # the MCP SDK: loaded when the demo runs

    guard = StdioServerParameters(
        command=sys.executable,
        args=[
            "-m",
            "guard",
            "--log-level",
            "warning",
            "run",
            "--policy",
            str(policy),
            "--ledger",
            str(ledger),
            "--session",
            "demo",
            "--",
            sys.executable,
            "-m",
            "guard.demo.server",
        ],
    )
    async with Client(guard, mode="legacy") as agent:
        steps: list[tuple[str, str, dict[str, Any]]] = [
            ("preview the joke's price", "l402-fetch-preview", {"url": JOKE}),
            ("buy the joke (60 sat)", "l402-fetch", {"url": JOKE, "autoPay": True}),
            ("preview the forecast's price", "l402-fetch-preview", {"url": FORECAST}),
            ("buy the forecast (80 sat)", "l402-fetch", {"url": FORECAST, "autoPay": True}),
        ]
        for what, tool, arguments in steps:
            result = await agent.call_tool(tool, arguments)
            text = str(getattr(result.content[0], "text", "")) if result.content else ""
            denied = bool((result.structured_content or {}).get("denied"))
            typer.echo(f"{'DENIED' if denied else 'ok':7} {what:30} {text if denied else _gist(text)}")


def _gist(text: str) -> str:
    """The fields of a 402-mcp answer worth a glance."""
    try:
        answer = json.loads(text)
    except ValueError:
        return " ".join(text.split())[:100]
    shown = ("status", "costSats", "satsPaid", "body")
    return ", ".join(f"{key}: {answer[key]}" for key in shown if isinstance(answer, dict) and key in answer)


def _show_budget(policy_path: Path, ledger_path: Path) -> None:
    """What an operator would run: `guard budget show --ledger LEDGER`."""
    typer.echo(f"$ guard budget show --ledger {ledger_path}")
    show(ledger_url=str(ledger_path), policy_file=policy_path)
