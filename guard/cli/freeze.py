"""`guard freeze` and `guard unfreeze`: the kill switch. A freeze is stored in the ledger, so every guard on
it refuses the frozen scope's paying calls (or every call, `--all-tools`) within a second; both are audited."""

from __future__ import annotations

import getpass
from typing import Annotated, Optional

import typer

from guard.cli.exits import Status, fail
from guard.cli.options import LedgerOption
from guard.errors import ConfigError
from ledgers import Ledger

IdentityOption = Annotated[
    Optional[str],  # noqa: UP045 - typer needs Optional here
    typer.Option("--identity", metavar="NAME", help="Only this identity's calls (default: every guard's calls)."),
]
SessionOption = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option("--session", metavar="ID", help="Only this session's calls."),
]
ByOption = Annotated[
    Optional[str],  # noqa: UP045
    typer.Option(
        "--by",
        metavar="NAME",
        help="Who does it, as denials and the audit trail say (default: the OS user).",
    ),
]


def freeze(
    reason: Annotated[str, typer.Option("--reason", metavar="TEXT", help="Why: every denial shows it.")],
    identity: IdentityOption = None,
    session: SessionOption = None,
    all_tools: Annotated[
        bool, typer.Option("--all-tools", help="Refuse every call, not only the paying ones.")
    ] = False,
    by: ByOption = None,
    ledger_url: LedgerOption = None,
) -> None:
    """Refuse paying calls (every call with --all-tools) on every guard using this ledger, within a second,
    until `guard unfreeze`: everyone's, one identity's or one session's. A second freeze of the same scope
    replaces the first."""
    scope = _scope(identity, session)
    with Ledger.open(ledger_url) as ledger:
        frozen = ledger.freeze(scope, reason=reason, by=by or _os_user(), all_tools=all_tools)
    typer.echo(f"frozen: {frozen.what} ({frozen.scope}), by {frozen.by}: {frozen.reason}")


def unfreeze(
    identity: IdentityOption = None,
    session: SessionOption = None,
    by: ByOption = None,
    ledger_url: LedgerOption = None,
) -> None:
    """Lift the freeze of everyone (no flag), one identity or one session. Exit 1 if that scope was not frozen."""
    scope = _scope(identity, session)
    with Ledger.open(ledger_url) as ledger:
        lifted = ledger.unfreeze(scope, by=by or _os_user())
        standing = ledger.freezes()
    if lifted is None:
        others = f"; frozen: {', '.join(f.scope for f in standing)}" if standing else ""
        fail(Status.FAILED, f"{scope} is not frozen{others}")
    typer.echo(f"unfrozen: {lifted.scope} (frozen by {lifted.by}: {lifted.reason})")


def _scope(identity: str | None, session: str | None) -> str:
    if identity is not None and session is not None:
        raise ConfigError("give --identity or --session, not both")
    if identity is not None:
        return f"identity:{_name(identity, '--identity')}"
    if session is not None:
        return f"session:{_name(session, '--session')}"
    return "global"


def _name(value: str, flag: str) -> str:
    if not value.strip():
        raise ConfigError(f"{flag}: expected a name, got an empty string")
    return value


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name for this uid (a bare container)
        return "unknown user"
