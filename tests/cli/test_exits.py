"""The one map from errors to exit statuses, and the root group that applies it to every command."""

from __future__ import annotations

import pytest
import typer
from typer.testing import CliRunner

from guard.cli.exits import EXITS, ExitStatuses, Status, explain, fail
from guard.errors import (
    ConfigError,
    GuardError,
    MessageRefused,
    PolicyError,
    PriceUnknown,
    Problem,
    UpstreamError,
    UpstreamStartError,
)
from ledgers import (
    AmountError,
    ApprovalError,
    BudgetExceeded,
    HoldStateError,
    LedgerError,
    SchemaError,
    StorageError,
    UnitMismatch,
)

PROBLEM = Problem("policy.yaml", 2, 1, "bogus", "unknown key 'bogus'")


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        (ConfigError("--listen x: expected [HOST:]PORT"), 2, "--listen x: expected [HOST:]PORT"),
        (PolicyError([PROBLEM]), 2, "policy.yaml:2:1: bogus: unknown key 'bogus'"),
        (UpstreamStartError("cannot start upstream `x`"), 3, "cannot start upstream `x`"),
        (StorageError("cannot open the ledger at l.db"), 4, "ledger: cannot open the ledger at l.db"),
        (SchemaError("the ledger is newer"), 4, "ledger: the ledger is newer"),
        (UpstreamError(-32003, "upstream gone"), 1, "upstream gone"),
        (MessageRefused(-32600, "bad id"), 1, "bad id"),
        (PriceUnknown("no price"), 1, "no price"),
        (GuardError("something"), 1, "something"),
        (HoldStateError("hold 5 is settled"), 1, "hold 5 is settled"),
        (ApprovalError("no approval a1"), 1, "no approval a1"),
        (AmountError("'1.5 sat' is not a whole number of sat"), 1, "'1.5 sat' is not a whole number of sat"),
        (UnitMismatch("sat and usd"), 1, "sat and usd"),
        (BudgetExceeded("over"), 1, "over"),
        (LedgerError("something"), 1, "something"),
    ],
)
def test_each_error_has_its_status_and_message(error: GuardError | LedgerError, status: int, message: str) -> None:
    assert explain(error) == (status, message)


def test_every_row_comes_before_the_rows_of_its_bases() -> None:
    kinds = [kind for kind, _, _ in EXITS]
    for later, kind in enumerate(kinds):
        assert not any(issubclass(kind, earlier) for earlier in kinds[:later]), f"{kind.__name__} is never reached"


def command_app(raising: BaseException) -> typer.Typer:
    app = typer.Typer(cls=ExitStatuses)

    @app.command("go")
    def go() -> None:
        raise raising

    @app.command("other")
    def other() -> None:  # a second command makes `go` a subcommand, as guard's are
        pass

    return app


def test_an_error_a_command_raises_is_one_line_on_stderr_and_its_status() -> None:
    ran = CliRunner().invoke(command_app(UpstreamStartError("upstream http://x is unreachable")), ["go"])
    assert (ran.exit_code, ran.stdout, ran.stderr) == (3, "", "guard: error: upstream http://x is unreachable\n")


def test_an_exception_of_neither_tree_is_a_bug_and_is_not_hidden() -> None:
    ran = CliRunner().invoke(command_app(ValueError("a bug")), ["go"])
    assert isinstance(ran.exception, ValueError)


def test_fail_prints_the_message_and_exits_with_the_status(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(typer.Exit) as exited:
        fail(Status.FAILED, "--out /x: Permission denied")
    assert exited.value.exit_code == 1
    assert capsys.readouterr().err == "guard: error: --out /x: Permission denied\n"
