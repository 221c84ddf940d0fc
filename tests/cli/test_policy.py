"""`guard policy`, `guard approvals` and `guard audit`: a policy file checked and converted; calls waiting
for a human decided; the audit trail read."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from guard.policy.files import load, parse
from ledgers import Amount, CallRecord, Ledger
from tests.cli.conftest import Ran, guard, json_lines
from tests.conftest import FIXTURES
from tests.policy.cases import FULL_POLICY, MISTAKES
from tests.policy.helpers import SEEDS

SEED = FIXTURES / "seed-policies" / "intercept-402-mcp.yaml"
POLICY = """\
version: 1
default: deny
budgets:
  - {name: per-session, limit: 5000 sat, scope: session, window: session}
tools:
  fetch: {pays: true, max_price: 10 sat}
  pay: {action: approve}
  admin: {action: deny}
"""


def test_check_summarises_a_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    ran = guard("policy", "check", str(path))
    assert (ran.status, ran.stderr) == (0, "")
    assert ran.stdout.splitlines() == [
        f"{path}: valid guard policy",
        "  default: deny",
        "  allow: fetch",
        "  approve: pay",
        "  deny: admin",
        "  budget per-session: 5000 sat per session, scope session",
        "  paying tools: fetch",
    ]


def test_check_names_a_seed_files_format() -> None:
    ran = guard("policy", "check", str(SEED))
    assert (ran.status, ran.stdout.splitlines()[0]) == (0, f"{SEED}: valid intercept (seed format) policy")


def test_check_prints_each_problem_as_file_line_column_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\ntools:\n  fetch: {max_price: 10}\nbogus: 1\n")
    ran = guard("policy", "check", str(path))
    assert (ran.status, ran.stdout) == (2, "")
    problems = ran.stderr.splitlines()
    assert [line.split(": ")[0] for line in problems] == [f"{path}:3:22", f"{path}:4:1"]
    assert not any(line.startswith("guard: error:") for line in problems)  # a linter's lines, as they are


def test_convert_prints_a_seed_in_guards_format_or_writes_it(tmp_path: Path) -> None:
    printed = guard("policy", "convert", str(SEED))
    assert (printed.status, printed.stderr) == (0, "")
    converted, kind = parse(printed.stdout, "converted.yaml")
    assert kind == "guard" and converted.rule_for("l402-balance") is not None

    out = tmp_path / "converted.yaml"
    written = guard("policy", "convert", str(SEED), "-o", str(out))
    assert (written.status, written.stdout, written.stderr) == (0, "", f"wrote {out}\n")
    assert out.read_text() == printed.stdout


def test_convert_of_a_file_with_problems_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("version: 1\nbogus: 1\n")
    ran = guard("policy", "convert", str(path))
    assert (ran.status, ran.stdout, ran.stderr) == (2, "", f"{path}:2:1: bogus: unknown key 'bogus'\n")


def test_schema_is_the_shipped_json_schema() -> None:
    ran = guard("policy", "schema")
    shipped = Path(__file__).parents[2] / "policies" / "policy.schema.json"
    assert json.loads(ran.stdout) == json.loads(shipped.read_text())


# --- approvals ------------------------------------------------------------------------------------------


@pytest.fixture
def waiting(tmp_path: Path) -> tuple[Path, str]:
    """A ledger with one call to `pay` waiting for a human, and the approval's id."""
    path = tmp_path / "ledger.db"
    with Ledger.open(path) as ledger:
        approval = ledger.request_approval("session:s1", "pay", "d" * 64, identity="alice", expire_after_s=600)
    return path, approval.id


def test_approvals_list_shows_what_waits_and_approve_lets_one_call_through(waiting: tuple[Path, str]) -> None:
    path, approval = waiting
    [entry] = json_lines(guard("approvals", "list", "--json", "--ledger", str(path)).stdout)
    assert {k: entry[k] for k in ("id", "state", "tool", "session", "identity")} == {
        "id": approval,
        "state": "pending",
        "tool": "pay",
        "session": "s1",
        "identity": "alice",
    }
    assert entry["arguments_digest"] == "d" * 16  # a prefix: never the arguments
    table = guard("approvals", "list", "--ledger", str(path)).stdout
    assert approval in table and "pending" in table

    approved = guard("approvals", "approve", approval, "--ledger", str(path))
    assert approved.status == 0
    assert approved.stdout.startswith(f"approved {approval}: one call to pay with the same arguments may go through")
    assert guard("approvals", "list", "--ledger", str(path)).stdout == "no approvals waiting\n"
    assert "approved" in guard("approvals", "list", "--all", "--ledger", str(path)).stdout

    again = guard("approvals", "deny", approval, "--ledger", str(path))
    assert again.status == 1 and again.stderr.startswith("guard: error: ") and approval in again.stderr


def test_deny_refuses_the_call_and_an_unknown_approval_is_named(waiting: tuple[Path, str]) -> None:
    path, approval = waiting
    denied = guard("approvals", "deny", approval, "--ledger", str(path))
    assert denied.stdout == f"denied {approval}: calls to pay with those arguments are refused\n"
    unknown = guard("approvals", "approve", "nope", "--ledger", str(path))
    assert (unknown.status, unknown.stderr) == (1, "guard: error: no approval nope\n")


# --- audit ----------------------------------------------------------------------------------------------


def test_audit_tail_shows_the_latest_decisions_as_lines_or_json(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    with Ledger.open(path) as ledger:
        ledger.record(CallRecord("fetch", "allow", session="s1", identity="alice", spent=Amount(7, "sat")))
        ledger.record(CallRecord("admin", "deny", session="s1", rule="tools.admin", reason="no admin", kind="tool"))
    lines = guard("audit", "tail", "--ledger", str(path)).stdout.splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == [
        "ALLOW fetch session=s1 identity=alice spent=7 sat",
        "DENY admin session=s1 rule=tools.admin — no admin",
    ]
    [last] = json_lines(guard("audit", "tail", "-n", "1", "--json", "--ledger", str(path)).stdout)
    assert {k: last[k] for k in ("tool", "decision", "rule", "kind", "reason", "spent")} == {
        "tool": "admin",
        "decision": "deny",
        "rule": "tools.admin",
        "kind": "tool",
        "reason": "no admin",
        "spent": None,
    }


# --- every mistake of the policy tests, and the full policy, through `guard policy` ------------------------

CLI_SEEDS = ["intercept-402-mcp.yaml", "policylayer-p402.json", "policylayer-token-pilot.json"]
# The mistakes `guard policy check` is run on.
CLI_MISTAKES = [
    c
    for c in MISTAKES
    if c.values[0]
    in {
        "wrong-type",
        "unknown-key",
        "bad-regex",
        "amount-without-unit",
        "bad-rate",
        "duplicate-key",
        "yaml-syntax",
        "unknown-preset",
    }
]


@pytest.fixture(scope="module")
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, str], tuple[Path, Ran]]]:
    """Every `guard policy` run these tests look at, in this process."""
    folder = tmp_path_factory.mktemp("policies")
    jobs: dict[tuple[str, str], tuple[Path, tuple[str, ...]]] = {}
    texts = {"full": FULL_POLICY, **{c.values[0]: c.values[1] for c in CLI_MISTAKES}}
    for name, text in texts.items():
        path = folder / f"{name}.yaml"
        path.write_text(text)
        jobs["check", name] = (path, ("check", str(path)))
    jobs["check", "seed"] = (SEEDS / CLI_SEEDS[0], ("check", str(SEEDS / CLI_SEEDS[0])))
    for seed in CLI_SEEDS:
        jobs["convert", seed] = (SEEDS / seed, ("convert", str(SEEDS / seed)))
    yield {key: (path, guard("policy", *args)) for key, (path, args) in jobs.items()}


def test_policy_check_summarises_a_valid_file(cli: dict[tuple[str, str], tuple[Path, Ran]]) -> None:
    path, ran = cli["check", "full"]
    assert (ran.status, ran.stderr) == (0, "")
    assert ran.stdout.splitlines() == [
        f"{path}: valid guard policy",
        "  default: allow",
        "  allow: *, fetch, buy",
        "  approve: pay",
        "  deny: admin, drop",
        "  budget per-session: 5000 sat per session, scope session",
        "  budget daily: 2.50 usd per day, scope identity",
        "  paying tools: pay, buy",
    ]


def test_policy_check_names_a_seed_files_format(cli: dict[tuple[str, str], tuple[Path, Ran]]) -> None:
    path, ran = cli["check", "seed"]
    assert (ran.status, ran.stderr) == (0, "")
    assert ran.stdout.splitlines() == [
        f"{path}: valid intercept (seed format) policy",
        "  default: allow",
        "  allow: l402-balance",
    ]


@pytest.mark.parametrize(("name", "text", "line", "column", "where", "message"), CLI_MISTAKES)
def test_policy_check_exits_2_with_each_problem_at_file_line_column(
    cli: dict[tuple[str, str], tuple[Path, Ran]], name: str, text: str, line: int, column: int, where: str, message: str
) -> None:
    path, ran = cli["check", name]
    assert (ran.status, ran.stdout) == (2, "")
    (reported,) = ran.stderr.splitlines()
    assert reported.startswith(f"{path}:{line}:{column}: " + (f"{where}: " if where else "") + message)


@pytest.mark.parametrize("seed", CLI_SEEDS)
def test_policy_convert_prints_guard_yaml_that_loads_back_equal(
    cli: dict[tuple[str, str], tuple[Path, Ran]], seed: str
) -> None:
    path, ran = cli["convert", seed]
    assert (ran.status, ran.stderr) == (0, "")
    converted, kind = parse(ran.stdout, "converted.yaml")
    assert kind == "guard"
    assert converted.spec == load(path)[0].spec


# policy simulate (the engine: tests/gate/test_simulate.py; end to end: tests/e2e/test_simulate.py)


def test_simulate_of_a_candidate_that_does_not_parse_prints_its_located_problem_and_exits_2(tmp_path: Path) -> None:
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text("version: 1\ntools:\n  fetch: {action: maybe}\n")
    ran = guard("policy", "simulate", str(candidate), "--ledger", str(tmp_path / "ledger.db"))
    assert ran.status == 2
    assert ran.stderr.startswith(f"{candidate}:3:")
    assert "action" in ran.stderr
    assert not (tmp_path / "ledger.db").exists()  # nothing read, nothing created


def test_simulate_takes_either_since_or_day_not_both(tmp_path: Path) -> None:
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(POLICY)
    ran = guard("policy", "simulate", str(candidate), "--since", "7d", "--day", "2026-11-21")
    assert ran.status == 2
    assert "give either --since or --day, not both" in ran.stderr


def test_simulate_of_an_empty_period_says_so_and_writes_no_ledger(tmp_path: Path) -> None:
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(POLICY)
    ledger = tmp_path / "ledger.db"
    Ledger.open(ledger).close()
    ran = guard("policy", "simulate", str(candidate), "--day", "2026-11-21", "--ledger", str(ledger))
    assert (ran.status, ran.stderr) == (0, "")
    assert ran.stdout == (
        "No calls were recorded from 2026-11-21T00:00:00+00:00 to 2026-11-22T00:00:00+00:00: nothing to replay.\n"
    )
    as_json = guard("policy", "simulate", str(candidate), "--since", "7d", "--ledger", str(ledger), "--format", "json")
    assert as_json.status == 0
    doc = json.loads(as_json.stdout)
    assert (doc["calls"], doc["flips"], doc["budgets"][0]["name"]) == (0, [], "per-session")


def test_simulate_refuses_an_unknown_format(tmp_path: Path) -> None:
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(POLICY)
    ran = guard("policy", "simulate", str(candidate), "--format", "html", "--ledger", str(tmp_path / "l.db"))
    assert ran.status == 2
    assert "--format html: expected md or json" in ran.stderr
