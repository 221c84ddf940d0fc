"""Exit statuses: the one map from errors to what `guard` prints and the status it exits with.

Every command runs inside `ExitStatuses`, the app's root group: an error of guard's tree (`guard.errors`)
or of the ledger's (`ledgers`) that reaches it is printed as `guard: error: <message>` on stderr, and
guard exits with the status of the first row its type matches:

    ConfigError (PolicyError too)   2   bad flags, settings, files or policy
    UpstreamStartError              3   the upstream cannot be started or reached
    StorageError, SchemaError       4   the ledger cannot be opened, read or written ("ledger: <message>")
    any other GuardError            1
    any other LedgerError           1   a step the ledger refuses (a hold resolved already, an approval
                                        decided, an amount in the wrong unit)

Failures that are no error of either tree go through `fail`: an upstream that died while serving, an
output file that cannot be written, a bug guard caught in itself (1). Click's own usage errors (an
unknown option, a value of the wrong type) exit 2 with Click's usage message; Ctrl-C exits 130.
README's "Exit statuses" lists the same.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import IntEnum
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup

from guard.errors import ConfigError, GuardError, UpstreamStartError
from ledgers import LedgerError, SchemaError, StorageError


class Status(IntEnum):
    """What `guard` exits with."""

    OK = 0
    FAILED = 1
    CONFIG = 2
    UPSTREAM = 3
    LEDGER = 4
    INTERRUPTED = 130


# The first row whose type matches an error gives its status and the words before its message
# (subclasses before their bases).
EXITS: tuple[tuple[type[Exception], Status, str], ...] = (
    (ConfigError, Status.CONFIG, ""),
    (UpstreamStartError, Status.UPSTREAM, ""),
    (StorageError, Status.LEDGER, "ledger: "),
    (SchemaError, Status.LEDGER, "ledger: "),
    (GuardError, Status.FAILED, ""),
    (LedgerError, Status.FAILED, ""),
)


def explain(error: GuardError | LedgerError) -> tuple[Status, str]:
    """The status `error` exits with and the message printed after `guard: error: `."""
    for kind, status, prefix in EXITS:
        if isinstance(error, kind):
            return status, f"{prefix}{error}"
    raise AssertionError(f"{type(error).__name__} has no row in EXITS")  # pragma: no cover - the bases are rows


def fail(status: Status, message: str) -> NoReturn:
    """Print `guard: error: <message>` on stderr and exit with `status`."""
    typer.echo(f"guard: error: {message}", err=True)
    raise typer.Exit(status) from None


@contextmanager
def exit_statuses() -> Iterator[None]:
    """Turn an error of guard's or the ledger's tree into its message on stderr and its exit status."""
    try:
        yield
    except (GuardError, LedgerError) as error:
        status, message = explain(error)
        fail(status, message)


class ExitStatuses(TyperGroup):
    """The root command group: every command (and the global options' callback) runs in `exit_statuses`."""

    def invoke(self, ctx: Any) -> Any:  # typer's (vendored) click Context, a private type
        with exit_statuses():
            return super().invoke(ctx)


__all__ = ["EXITS", "ExitStatuses", "Status", "exit_statuses", "explain", "fail"]
