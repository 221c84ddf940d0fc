"""`guard ledger ...` and `guard holds ...`: look at the ledger's open holds and reconcile those in doubt."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from guard.cli.exits import Status, fail
from guard.cli.options import LedgerOption, PolicyOption, default_policy_path
from guard.errors import ConfigError
from guard.payments.reconcile import resolution
from guard.policy.files import load
from ledgers import Amount, AmountError, Ledger, location

ledger_app = typer.Typer(help="Inspect the ledger and resolve holds in doubt.", no_args_is_help=True)
holds_app = typer.Typer(help="Payments held against budgets: list, reconcile those in doubt.", no_args_is_help=True)


@ledger_app.command("status")
def status(
    ledger_url: LedgerOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show the ledger's location and its open holds (reserved, forwarded, in doubt)."""
    with Ledger.open(ledger_url) as ledger:
        holds = ledger.open_holds()
    where = location(ledger_url)
    if as_json:
        entries = [
            {
                "id": h.id,
                "phase": h.phase,
                "amount": h.amount.value,
                "unit": h.amount.unit,
                "idempotency_key": h.idempotency_key,
                "created": h.created.isoformat(),
            }
            for h in holds
        ]
        typer.echo(json.dumps({"ledger": where, "open_holds": entries}))
        return
    console = Console()
    console.print(f"ledger: {where}")
    if not holds:
        console.print("no open holds")
        return
    table = Table("hold", "phase", "amount", "payment", "since")
    for h in holds:
        table.add_row(
            str(h.id), h.phase, str(h.amount), h.idempotency_key or "", h.created.isoformat(timespec="seconds")
        )
    console.print(table)


@ledger_app.command("resolve")
def resolve(
    hold: Annotated[int, typer.Argument(help="The id of a hold in doubt (see `guard ledger status`).")],
    paid: Annotated[
        str, typer.Option("--paid", metavar="AMOUNT", help="What was really paid, e.g. '120 sat' or '0 sat'.")
    ],
    ledger_url: LedgerOption = None,
) -> None:
    """Settle a hold in doubt at what was really paid (0 releases it), once the outcome is known."""
    _resolve(hold, _amount(paid, "--paid"), ledger_url)


def _amount(text: str | None, option: str) -> Amount | None:
    try:
        return Amount.parse(text) if text is not None else None
    except AmountError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


def _resolve(hold: int, paid: Amount | None, ledger_url: str | None) -> None:
    """Resolve an in-doubt hold at `paid` (None or zero: nothing was paid), with its call event in the same
    ledger transaction."""
    with Ledger.open(ledger_url) as ledger:
        info = ledger.hold(hold)
        amount = paid if paid is not None else Amount(0, info.amount.unit)
        what = f"settled at {amount}" if amount.value else "voided: nothing was paid"
        event = resolution(info, f"an operator resolved hold {hold}: {what}", amount if amount.value else None)
        ledger.resolve(hold, amount, event=event)
        phase = ledger.hold(hold).phase
    typer.echo(f"hold {hold} is {phase}" + (f" at {amount}" if phase == "settled" else ""))


@holds_app.command("list")
def holds_list(
    ledger_url: LedgerOption = None,
    in_doubt: Annotated[bool, typer.Option("--in-doubt", help="Only holds whose outcome is unknown.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Show open holds: reserved, forwarded (a call in flight) and in doubt (a payment that may have left)."""
    with Ledger.open(ledger_url) as ledger:
        holds = ledger.open_holds("in_doubt" if in_doubt else None)
    if as_json:
        for h in holds:
            entry = {
                "id": h.id,
                "phase": h.phase,
                "amount": h.amount.value,
                "unit": h.amount.unit,
                "tool": h.tool,
                "session": h.session,
                "identity": h.identity,
                "payment": h.idempotency_key,
                "created": h.created.isoformat(),
            }
            typer.echo(json.dumps(entry))
        return
    if not holds:
        typer.echo("no holds in doubt" if in_doubt else "no open holds")
        return
    table = Table("hold", "phase", "amount", "tool", "session", "payment", "since")
    for h in holds:
        table.add_row(
            str(h.id),
            h.phase,
            str(h.amount),
            h.tool or "",
            h.session or "",
            h.idempotency_key or "",
            h.created.isoformat(timespec="seconds"),
        )
    Console().print(table)


@holds_app.command("resolve")
def holds_resolve(
    hold: Annotated[int, typer.Argument(metavar="ID", help="The id of a hold in doubt (see `guard holds list`).")],
    spent: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--spent", metavar="AMOUNT", help="What was really paid, e.g. '120 sat'."),
    ] = None,
    void: Annotated[bool, typer.Option("--void", help="Nothing was paid: release the hold.")] = False,
    ledger_url: LedgerOption = None,
) -> None:
    """Reconcile a hold in doubt: `--spent AMOUNT` (what really left) or `--void` (nothing did)."""
    if (spent is None) == (not void):
        raise typer.BadParameter("give exactly one of --spent AMOUNT or --void", param_hint="--spent/--void")
    _resolve(hold, _amount(spent, "--spent"), ledger_url)


@holds_app.command("reconcile")
def holds_reconcile(ledger_url: LedgerOption = None, policy_file: PolicyOption = None) -> None:
    """Ask the policy's chains (`chains:`) about x402 payments in doubt: a used authorization settles its hold,
    one unused past its validBefore voids it, one unused before it stays in doubt. Exits 1 when a node
    could not answer (those holds stay in doubt), 2 when the policy names no chain."""
    import anyio  # the command's only async part

    from guard.payments import chains

    path = policy_file or default_policy_path()
    policy, _ = load(path)
    nodes = chains.nodes(policy)
    if not nodes:
        raise ConfigError(f"{path}: the policy names no chain to ask (chains: {{eip155:8453: {{rpc: URL}}}})")
    with Ledger.open(ledger_url) as ledger:
        checked = anyio.run(chains.reconcile, ledger, nodes)
    for entry in checked:
        typer.echo(f"hold {entry.hold}: {entry.outcome.replace('_', ' ')} ({entry.why})")
    if not checked:
        typer.echo("no x402 payment in doubt on these chains")
    if any(entry.outcome == "unknown" for entry in checked):
        fail(Status.FAILED, "a chain's node could not answer: those holds stay in doubt")
