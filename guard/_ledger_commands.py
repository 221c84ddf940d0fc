"""`guard ledger ...`: look at the ledger and reconcile what is in doubt."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from ledgers import Amount, Ledger, LedgerError, default_path

ledger_app = typer.Typer(help="Inspect the ledger and resolve holds in doubt.", no_args_is_help=True)

LedgerOption = Annotated[
    Optional[str],  # noqa: UP045 - typer needs Optional here
    typer.Option(
        "--ledger",
        envvar="GUARD_LEDGER",
        metavar="URL",
        help="Ledger database: a SQLite path or SQLAlchemy URL (default: the per-user SQLite file).",
    ),
]


def open_ledger(url: str | None) -> Ledger:
    """Open the ledger or exit 4 with the reason."""
    try:
        return Ledger.open(url)
    except LedgerError as exc:
        typer.echo(f"guard: error: ledger: {exc}", err=True)
        raise typer.Exit(4) from None


@ledger_app.command("status")
def status(
    ledger_url: LedgerOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Show the ledger's location and its open holds (reserved, forwarded, in doubt)."""
    with open_ledger(ledger_url) as ledger:
        holds = ledger.open_holds()
    where = ledger_url or str(default_path())
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
    try:
        amount = Amount.parse(paid)
    except LedgerError as exc:
        raise typer.BadParameter(str(exc), param_hint="--paid") from None
    with open_ledger(ledger_url) as ledger:
        try:
            ledger.resolve(hold, amount)
        except LedgerError as exc:
            typer.echo(f"guard: error: {exc}", err=True)
            raise typer.Exit(1) from None
        phase = ledger.hold(hold).phase
    typer.echo(f"hold {hold} is {phase}" + (f" at {amount}" if phase == "settled" else ""))
