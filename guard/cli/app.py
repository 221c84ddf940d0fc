"""The `guard` command: the app assembled from its command groups, and the global options.

Each command lives in its own module (`run`, `init`, `demo`, `refresh`, `budget`, `report`, `ledger` with
`holds`, `policy` with `approvals` and `audit`, `freeze` with `unfreeze`); `exits` turns what they raise
into exit statuses.
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from guard._version import __version__
from guard.cli import logs
from guard.cli.budget import budget_app
from guard.cli.demo import demo
from guard.cli.exits import ExitStatuses, Status
from guard.cli.freeze import freeze, unfreeze
from guard.cli.init import init
from guard.cli.ledger import holds_app, ledger_app
from guard.cli.policy import approvals_app, audit_app, policy_app
from guard.cli.refresh import refresh
from guard.cli.report import report
from guard.cli.run import run

app = typer.Typer(
    name="guard",
    help="A budget-aware guard for payment MCP servers.",
    cls=ExitStatuses,
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Commands that wrap an upstream take its command line after `--`, options and all.
app.command("run", context_settings={"allow_interspersed_args": False})(run)
app.command("init", context_settings={"allow_interspersed_args": False})(init)
app.command("refresh", context_settings={"allow_interspersed_args": False})(refresh)
app.command("demo")(demo)
app.add_typer(budget_app, name="budget")
app.command("report")(report)
app.add_typer(ledger_app, name="ledger")
app.add_typer(holds_app, name="holds")
app.add_typer(policy_app, name="policy")
app.add_typer(approvals_app, name="approvals")
app.add_typer(audit_app, name="audit")
app.command("freeze")(freeze)
app.command("unfreeze")(unfreeze)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"guard {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        Optional[bool],  # noqa: UP045 - typer needs Optional here
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = None,
    log_level: Annotated[
        str, typer.Option("--log-level", envvar="GUARD_LOG_LEVEL", help="debug, info, warning or error.")
    ] = "info",
    log_format: Annotated[
        str,
        typer.Option("--log-format", envvar="GUARD_LOG_FORMAT", help="text or json (one object per line)."),
    ] = "text",
) -> None:
    """Logs always go to stderr; in stdio mode stdout carries only MCP messages."""
    if log_level.lower() not in ("debug", "info", "warning", "error"):
        raise typer.BadParameter(f"{log_level!r} is not one of debug, info, warning, error", param_hint="--log-level")
    if log_format not in ("text", "json"):
        raise typer.BadParameter(f"{log_format!r} is not one of text, json", param_hint="--log-format")
    logs.configure(log_level, log_format)  # type: ignore[arg-type]


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(Status.INTERRUPTED)


__all__ = ["app", "main"]
