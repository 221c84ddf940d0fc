"""`guard budget show`: budgets in use and the balances guard decides on, as JSON, as plain columns when
piped, on SQLite and PostgreSQL, on an empty ledger, and next to a running writer."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest

from ledgers import Amount, Authorization, BalanceObservation, Budget, Ledger, Rates, Window
from tests.cli.conftest import Ran, guard
from tests.scripted_run import EXTERNAL_SPEND, INVOICE_SATS, POLICY_ALBY, ScriptedRun, scripted_run

DAILY = Budget("daily", Amount(1000, "sat"), "global", Window.calendar("day"))
SESSION = Budget("per-session", Amount(100, "sat"), "session:s1")


def budget_show(*args: str) -> Ran:
    return guard("budget", "show", *args)


def shown(*args: str) -> dict[str, Any]:
    result = budget_show(*args, "--json")
    assert result.status == 0, result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def some_spend(url: str) -> None:
    with Ledger.open(url) as ledger:
        ledger.settle(ledger.reserve([SESSION, DAILY], Amount(30, "sat"), session="s1", tool="buy"), Amount(30, "sat"))
        doubtful = ledger.reserve([SESSION, DAILY], Amount(20, "sat"), session="s1", tool="buy")
        ledger.mark_forwarded(doubtful)
        ledger.mark_in_doubt(doubtful)
        ledger.reserve([Budget("per-session", Amount(100, "sat"), "session:s2")], Amount(5, "sat"), session="s2")
        ledger.observe(BalanceObservation("p402", "p402:sess_1", Amount(4_500_000, "usd_micro"), status="active"))
        ledger.remember_quote("https://x.example/a", Amount(10, "sat"))


def test_json_has_a_row_per_budget_and_scope_and_the_latest_balances(ledger_url: str) -> None:
    some_spend(ledger_url)
    view = shown("--ledger", ledger_url)
    rows = {(b["name"], b["scope"]): b for b in view["budgets"]}
    assert set(rows) == {("daily", "global"), ("per-session", "session:s1"), ("per-session", "session:s2")}
    daily = rows[("daily", "global")]
    assert {k: daily[k] for k in ("unit", "limit", "spent", "held", "in_doubt", "remaining", "percent_used")} == {
        "unit": "sat",
        "limit": 1000,
        "spent": 30,
        "held": 0,
        "in_doubt": 20,
        "remaining": 950,
        "percent_used": 5,
    }
    assert daily["window"] == "day" and daily["resets_at"].startswith(daily["window_start"][:4])
    s2 = rows[("per-session", "session:s2")]
    assert (s2["held"], s2["remaining"], s2["percent_used"], s2["resets_at"]) == (5, 95, 5, None)
    # Balances: the latest per key, never a remembered quote; amounts stay integers with their unit.
    (balance,) = view["balances"]
    assert {k: balance[k] for k in ("key", "amount", "unit", "status", "stale")} == {
        "key": "p402:sess_1",
        "amount": 4_500_000,
        "unit": "usd_micro",
        "status": "active",
        "stale": False,
    }


def test_a_session_shows_only_the_budgets_it_was_charged_to(ledger_url: str) -> None:
    some_spend(ledger_url)
    view = shown("--ledger", ledger_url, "--session", "s2")
    assert [(b["name"], b["scope"]) for b in view["budgets"]] == [("per-session", "session:s2")]
    assert view["session"] == "s2"


def test_piped_output_is_plain_columns_with_a_bar(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.db")
    some_spend(path)
    result = budget_show("--ledger", path)
    assert result.status == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "budget", "scope", "window", "resets", "unit", "limit", "spent", "held", "in_doubt", "remaining", "used",
    ]  # fmt: skip
    (s1,) = [line for line in lines if "session:s1" in line]
    assert s1.split()[4:10] == ["sat", "100", "30", "0", "20", "50"]
    assert s1.endswith("[####....] 50%")
    assert "\x1b[" not in result.stdout and "┃" not in result.stdout  # no colour, no box drawing
    assert "p402:sess_1" in result.stdout and "4.5 usd" in result.stdout


def test_a_budget_counting_other_units_shows_what_they_were_paid_in(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.db")
    dollars = Budget("dollars", Amount(5_000_000, "usd_micro"), "global")
    rates = Rates({("sat", "usd_micro"): Fraction(950), ("usdc", "usd_micro"): Fraction(1)})
    with Ledger.open(path) as ledger:
        ledger.settle(ledger.reserve([dollars], Amount(300, "sat"), rates=rates), Amount(300, "sat"))
        ledger.settle(ledger.reserve([dollars], Amount(500_000, "usdc"), rates=rates), Amount(500_000, "usdc"))
        ledger.reserve([SESSION], Amount(5, "sat"), session="s1")  # a sat budget paid in sats: nothing to say
    (row,) = [b for b in shown("--ledger", path)["budgets"] if b["name"] == "dollars"]
    assert (row["unit"], row["spent"]) == ("usd_micro", 785_000)
    assert row["paid_in"] == [{"unit": "msat", "amount": 300_000}, {"unit": "usdc", "amount": 500_000}]
    lines = budget_show("--ledger", path).stdout.splitlines()
    assert lines[0].split()[-1] == "paid_in"
    (line,) = [line for line in lines if line.startswith("dollars")]
    assert line.endswith("300 sat + 0.5 usdc")
    (sats,) = [line for line in lines if line.startswith("per-session")]
    assert sats.endswith("%")  # its paid_in cell is empty


def test_an_x402_payment_in_doubt_past_valid_before_with_no_settlement_is_shown_apart(tmp_path: Path) -> None:
    """Without `chains:` guard cannot ask the chain: the lapsed authorization is shown, so someone can."""
    path = str(tmp_path / "ledger.db")
    now = datetime.now(UTC)
    with Ledger.open(path) as ledger:
        for nonce, valid_before in (
            ("0x" + "aa" * 32, now - timedelta(hours=1)),
            ("0x" + "bb" * 32, now + timedelta(days=1)),
        ):
            value = Amount(10_000, "usdc")
            ledger.remember_authorization(Authorization("eip155:8453", "0xusdc", "0xpayer", nonce, value, valid_before))
            hold = ledger.reserve([Budget("wallet", Amount(10**6, "usdc"), "session:s1")], value, session="s1",
                                  tool="get_weather", idempotency_key=nonce)  # fmt: skip
            ledger.mark_forwarded(hold)
            ledger.mark_in_doubt(hold)

    [lapsed] = shown("--ledger", path)["x402_lapsed"]
    assert (lapsed["nonce"], lapsed["amount"], lapsed["unit"], lapsed["network"]) == (
        "0x" + "aa" * 32, 10_000, "usdc", "eip155:8453",
    )  # fmt: skip
    assert 3600 <= lapsed["lapsed_s"] < 3600 + 60
    assert shown("--ledger", path, "--session", "other")["x402_lapsed"] == []
    lines = budget_show("--ledger", path).stdout.splitlines()
    title = lines.index("x402 payments in doubt past validBefore, no settlement (guard holds resolve, or chains:)")
    assert lines[title + 1].split()[:4] == ["hold", "tool", "session", "amount"]
    assert lines[title + 2].split()[1:5] == ["get_weather", "s1", "0.01", "usdc"]
    assert lines[title + 3 :] == []


def test_nothing_past_valid_before_shows_no_such_section(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.db")
    some_spend(path)
    assert shown("--ledger", path)["x402_lapsed"] == []
    assert "validBefore" not in budget_show("--ledger", path).stdout


def test_an_empty_or_missing_ledger_shows_nothing_in_use(tmp_path: Path) -> None:
    missing = tmp_path / "none" / "ledger.db"
    view = shown("--ledger", str(missing))
    assert (view["budgets"], view["balances"]) == ([], [])
    assert not missing.exists()  # reading never creates a ledger
    Ledger.open(tmp_path / "empty.db").close()
    assert budget_show("--ledger", str(tmp_path / "empty.db")).stdout.startswith("No budgets in use.")


def test_stale_follows_the_policys_stale_after(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.db")
    some_spend(path)
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nbalances: {stale_after: 1s}\n")
    fresh = shown("--ledger", path, "--policy", str(policy))
    assert fresh["stale_after_s"] == 1
    with Ledger.open(path) as ledger:
        ledger.observe(BalanceObservation("p402", "p402:sess_2", Amount(1, "usd_micro"), upstream_stale=True))
    marked = {b["key"]: b["stale"] for b in shown("--ledger", path, "--policy", str(policy))["balances"]}
    assert marked["p402:sess_2"] is True  # the upstream itself says stale


def test_a_bad_policy_is_named_and_nothing_is_shown(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nbalances: {stale_after: soon}\n")
    result = budget_show("--ledger", str(tmp_path / "l.db"), "--policy", str(policy))
    assert result.status == 2
    assert result.stderr.startswith(f"guard: error: {policy}:2") and "stale_after" in result.stderr
    assert result.stdout == ""


# --- golden: the ledger real guards left after tests/scripted_run.py --------------------------------------

GOLDEN = Path(__file__).parent.parent / "golden" / "budget-show.json"
# `stale` follows `age_s` (checked apart): a slow machine may reach the test after stale_after has passed.
VOLATILE = ("window_start", "resets_at", "last_used", "seen", "age_s", "stale")


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> ScriptedRun:
    return scripted_run(tmp_path_factory.mktemp("scripted"))


def normalised(view: dict[str, Any]) -> dict[str, Any]:
    """The view without what changes from run to run: times, ages and the ledger's path."""
    fixed = {**view, "ledger": "<ledger>", "at": "<now>"}
    for rows in ("budgets", "balances"):
        fixed[rows] = [
            {k: (f"<{k}>" if k in VOLATILE and v is not None else v) for k, v in r.items()} for r in view[rows]
        ]
    return fixed


def test_budget_show_json_matches_its_golden_file_and_the_fakes_record(scripted: ScriptedRun) -> None:
    view = shown("--ledger", str(scripted.ledger), "--policy", str(POLICY_ALBY))
    if os.environ.get("GUARD_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(normalised(view), indent=2) + "\n")
    assert normalised(view) == json.loads(GOLDEN.read_text()), "GUARD_UPDATE_GOLDEN=1 rewrites the golden file"
    for balance in view["balances"]:  # no upstream in the scripted run marks its balance stale
        if balance["age_s"] != view["stale_after_s"]:  # (whole seconds shown: at the limit either is right)
            assert balance["stale"] == (balance["age_s"] > view["stale_after_s"]), balance
    # The sums agree with what the fake upstreams themselves say they were paid.
    rows = {(b["name"], b["scope"]): b for b in view["budgets"]}
    daily = rows[("daily", "global")]
    assert daily["spent"] + daily["in_doubt"] == scripted.paid("paid") + scripted.paid("unknown") - INVOICE_SATS
    assert daily["in_doubt"] == scripted.paid("unknown")
    wallet = rows[("wallet", "session:carol-1")]
    assert wallet["spent"] == INVOICE_SATS + EXTERNAL_SPEND  # include_external: the 1 000 sat spent elsewhere
    per_session = sum(b["spent"] + b["in_doubt"] for (name, _), b in rows.items() if name == "per-session")
    assert per_session == daily["spent"] + daily["in_doubt"]


def test_a_ledger_url_s_password_is_never_printed(postgres_url: str) -> None:
    from sqlalchemy.engine import make_url

    with_password = make_url(postgres_url).set(password="hunter2-secret").render_as_string(hide_password=False)
    result = budget_show("--ledger", with_password, "--json")
    assert "hunter2-secret" not in result.stdout + result.stderr
    if result.status == 0:  # the test server trusts local connections: the password is not checked
        assert json.loads(result.stdout)["ledger"] == make_url(with_password).render_as_string(hide_password=True)
