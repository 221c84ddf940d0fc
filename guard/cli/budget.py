"""`guard budget show`: what each budget in use has spent, holds and has left, and how fresh the balances
guard decides on are. Read-only: it never blocks a running guard, and an empty ledger shows nothing."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from guard.cli.options import LedgerOption, PolicyOption, default_policy_path
from guard.core import JSON
from guard.operators.budget_view import balance_fields, budget_fields, lapsed_fields
from guard.policy.files import load
from guard.policy.model import Balances, seconds
from guard.policy.rules import Policy
from guard.text import duration
from ledgers import Amount, AmountError, Freeze, Ledger, location

budget_app = typer.Typer(help="Budgets: what is spent, held and left.", no_args_is_help=True)

BAR_WIDTH = 8


@budget_app.command("show")
def show(
    ledger_url: LedgerOption = None,
    session: Annotated[
        Optional[str],  # noqa: UP045 - typer needs Optional here
        typer.Option("--session", metavar="ID", help="Only the budgets this session was charged to."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    policy_file: PolicyOption = None,
) -> None:
    """The freezes standing (`guard freeze`), then one row per budget in use and scope: window, limit,
    spent, held, in doubt, remaining; then the latest balance the upstream reported for each key, with its
    age. `--policy` (or GUARD_POLICY) sets when a balance counts as stale (`balances.stale_after`) and which
    budgets are shadowed (marked, with how far over their limit they are)."""
    policy = _policy(policy_file)
    stale_after = seconds((policy.spec.balances if policy else Balances()).stale_after)
    shadowed = _shadowed_budgets(policy)
    # Read-only: never blocks a running guard, and a ledger that does not exist yet reads as empty.
    with Ledger.open(ledger_url, read_only=True) as ledger:
        states = ledger.budget_states(session=session)
        observed = ledger.observed()
        freezes = ledger.freezes()
        authorized = ledger.authorized_in_doubt()
    now = datetime.now(UTC)
    lapsed = [fields for hold, auth in authorized if (fields := lapsed_fields(hold, auth, now)) is not None]
    view: JSON = {
        "ledger": location(ledger_url),  # never a password
        "at": now.isoformat(timespec="seconds"),
        "session": session,
        "stale_after_s": int(stale_after),
        "frozen": [_freeze_fields(f) for f in freezes],
        "budgets": [budget_fields(state, state.budget.name in shadowed) for state in states],
        "balances": [balance_fields(o, age, stale_after) for o, age in sorted(observed, key=lambda b: b[0].key)],
        "x402_lapsed": [row for row in lapsed if session is None or row["session"] == session],
    }
    if as_json:
        typer.echo(json.dumps(view, indent=2))
    elif sys.stdout.isatty():
        _print_tables(view)
    else:
        _print_plain(view)


def _freeze_fields(freeze: Freeze) -> JSON:
    return {
        "scope": freeze.scope,
        "refuses": "all_tools" if freeze.all_tools else "paying_calls",
        "reason": freeze.reason,
        "by": freeze.by,
        "since": freeze.since.isoformat(timespec="seconds"),
    }


def _frozen_lines(view: JSON) -> list[str]:
    """A line per freeze standing (the kill switch), above the budgets: nothing is spent while it stands."""
    return [
        f"FROZEN {f['scope']}: {'every call' if f['refuses'] == 'all_tools' else 'paying calls'} refused"
        f" since {f['since']}, by {f['by']}: {f['reason']}"
        for f in view["frozen"]
    ]


def _policy(policy_file: Path | None) -> Policy | None:
    """The policy given or found, if any."""
    path = policy_file or (default_policy_path() if default_policy_path().exists() else None)
    return None if path is None else load(path)[0]


def _shadowed_budgets(policy: Policy | None) -> set[str]:
    """The names of the budgets the policy shadows (`mode: shadow`, or `shadow: true` on the budget)."""
    if policy is None:
        return set()
    return {b.name for b in policy.spec.budgets if b.shadow or policy.spec.mode == "shadow"}


# --- for people ---------------------------------------------------------------------------------------------


def _print_tables(view: JSON) -> None:
    console = Console()
    for line in _frozen_lines(view):
        console.print(Text(line, style="bold red"))
    budgets = _table("Budgets")
    for column in ("budget", "scope", "window", "resets", "unit", "limit", "spent", "held", "in doubt", "left"):
        budgets.add_column(column, justify="right" if column in _MONEY_COLUMNS else "left", no_wrap=True)
    budgets.add_column("used", no_wrap=True)
    mixed = _any_paid_in_another_unit(view)
    if mixed:
        budgets.add_column("paid in", no_wrap=True)
    for row in view["budgets"]:
        style = "red" if row["percent_used"] >= 100 else "yellow" if row["percent_used"] >= 80 else "green"
        used = Text(f"{_bar(row, '█', '░')} {row['percent_used']}%", style=style)
        budgets.add_row(*_budget_cells(row), used, *([_paid_in(row)] if mixed else []))
    console.print(budgets if view["budgets"] else _nothing("budgets", view))
    balances = _table("Balances")
    for column in ("key", "amount", "age", "stale", "status"):
        balances.add_column(column, justify="right" if column in ("amount", "age") else "left")
    for row in view["balances"]:
        stale = Text("stale", style="red") if row["stale"] else Text("fresh", style="green")
        balances.add_row(
            row["key"], _money(row["amount"], row["unit"]), duration(row["age_s"]), stale, row["status"] or ""
        )
    console.print(balances if view["balances"] else "No balance observed yet.")
    if view["x402_lapsed"]:
        console.print(Text(_LAPSED_TITLE, style="yellow"))
        lapsed = _table("")
        for column in _LAPSED_HEADER:
            lapsed.add_column(column, no_wrap=True)
        for cells in _lapsed_rows(view):
            lapsed.add_row(*cells)
        console.print(lapsed)


def _table(title: str) -> Table:
    """A compact table: it fits a budget's eleven columns in a 110-column terminal."""
    return Table(
        title=title, title_justify="left", box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False, collapse_padding=True
    )


def _print_plain(view: JSON) -> None:
    """Aligned columns without colour or box drawing, for pipes and files."""
    for line in _frozen_lines(view):
        typer.echo(line)
    header = ["budget", "scope", "window", "resets", "unit", "limit", "spent", "held", "in_doubt", "remaining", "used"]
    mixed = _any_paid_in_another_unit(view)
    header += ["paid_in"] if mixed else []
    rows = [
        [*_budget_cells(row), f"[{_bar(row)}] {row['percent_used']}%", *([_paid_in(row)] if mixed else [])]
        for row in view["budgets"]
    ]
    typer.echo(_columns(header, rows) if rows else _nothing("budgets", view))
    typer.echo("")
    header = ["balance", "amount", "age", "stale", "status"]
    rows = [
        [
            b["key"],
            _money(b["amount"], b["unit"]),
            duration(b["age_s"]),
            "stale" if b["stale"] else "fresh",
            b["status"] or "",
        ]
        for b in view["balances"]
    ]
    typer.echo(_columns(header, rows) if rows else "No balance observed yet.")
    if view["x402_lapsed"]:
        typer.echo("")
        typer.echo(_LAPSED_TITLE)
        typer.echo(_columns(list(_LAPSED_HEADER), _lapsed_rows(view)))


# x402 payments in doubt whose signed authorization can no longer move money (without `chains:` guard cannot
# ask the chain whether it did before): `guard holds resolve` once the payer's wallet says.
_LAPSED_TITLE = "x402 payments in doubt past validBefore, no settlement (guard holds resolve, or chains:)"
_LAPSED_HEADER = ("hold", "tool", "session", "amount", "network", "payer", "valid before", "lapsed")


def _lapsed_rows(view: JSON) -> list[list[str]]:
    return [
        [
            str(row["hold"]),
            row["tool"] or "",
            row["session"] or "",
            _money(row["amount"], row["unit"]),
            row["network"],
            row["payer"],
            row["valid_before"],
            f"{duration(row['lapsed_s'])} ago",
        ]
        for row in view["x402_lapsed"]
    ]


_MONEY_COLUMNS = ("limit", "spent", "held", "in doubt", "left")


def _budget_cells(row: JSON) -> list[str]:
    window = row["window"] + (f" {row['timezone']}" if row["timezone"] else "")
    resets = _when(row["resets_at"]) if row["resets_at"] else "rolling" if row["window"] != "session" else "never"
    money = [_money(row[k], row["unit"]).split(" ") for k in ("limit", "spent", "held", "in_doubt", "remaining")]
    return [_budget_name(row), row["scope"], window, resets, money[0][-1], *(number for number, *_ in money)]


def _budget_name(row: JSON) -> str:
    """A budget's name, marked when shadowed (and how far over its limit shadow mode let it go)."""
    if not row["shadow"]:
        return str(row["name"])
    over = f", {_money(row['over'], row['unit'])} over" if row["over"] else ""
    return f"{row['name']} (shadow{over})"


def _any_paid_in_another_unit(view: JSON) -> bool:
    """Whether a budget counts payments made in another unit than its own (then a column says which)."""
    return any(_other_units(row) for row in view["budgets"])


def _other_units(row: JSON) -> bool:
    own = "msat" if row["unit"] == "sat" else row["unit"]  # paid_in counts Lightning in msat
    return any(paid["unit"] != own for paid in row["paid_in"])


def _paid_in(row: JSON) -> str:
    """What a budget's use was paid in, in the payments' own units: `0.5 usdc + 300 sat`."""
    if not _other_units(row):
        return ""
    return " + ".join(_money(*_whole_sats(paid["amount"], paid["unit"])) for paid in row["paid_in"])


def _whole_sats(value: int, unit: str) -> tuple[int, str]:
    return (value // 1000, "sat") if unit == "msat" and value % 1000 == 0 else (value, unit)


def _nothing(what: str, view: JSON) -> str:
    where = f" for session {view['session']}" if view["session"] else ""
    return f"No {what} in use{where}."


def _used(row: JSON) -> int:
    return int(row["spent"] + row["held"] + row["in_doubt"])


def _bar(row: JSON, full: str = "#", empty: str = ".") -> str:
    filled = min(BAR_WIDTH, int(row["percent_used"]) * BAR_WIDTH // 100)
    return full * filled + empty * (BAR_WIDTH - filled)


def _money(value: Any, unit: str | None) -> str:
    if value is None or unit is None:
        return ""
    try:
        return str(Amount(value, unit))
    except AmountError:
        return f"{value} {unit}"


def _when(iso: str) -> str:
    left = int((datetime.fromisoformat(iso) - datetime.now(UTC)).total_seconds())
    return f"in {duration(max(left, 0))}"


def _columns(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in [header, *rows]
    )
