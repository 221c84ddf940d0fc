"""Payments end to end: a real `guard run` in front of the fake payment upstreams (tests/upstreams/fake_*.py).

What only real processes show: the ledger matching what a fake's wallet paid through the whole stack
(relay, stdio, the fake as an MCP server), twenty calls at once over one stdio session, and the
scheduler refreshing a balance through the session's link with no client call. Each test starts
`guard run --policy P --ledger L -- python tests/upstreams/fake_X.py` (stdio, spoken to in raw JSON-RPC
lines), then cross-checks the guard's ledger (opened afterwards, without recovery, so nothing is tidied
away) against the fake's own record of what left its wallet (`payments` in its FAKE_STATE file).

Everything else the gate does in front of these fakes runs in process: tests/gate/test_in_front_of_the_fakes.py.
Old balance observations are seeded straight into the ledger file with a clock in the past; every wait
is an event (a line on the guard's stderr, an answer) bounded by WAIT_S: no fixed sleeps.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ledgers import Amount, BalanceObservation, Budget, Ledger
from tests.conftest import ROOT
from tests.e2e.helpers import L402_POLICY, body, site
from tests.rawguard import JSON, RawGuard
from tests.upstreams.p402_state import p402_session
from tests.upstreams.x402_payments import T0, payment_for

UPSTREAMS = ROOT / "tests" / "upstreams"


# --- a guard over stdio, in raw JSON-RPC -------------------------------------------------------------------


class Guard(RawGuard):
    """`guard run --policy P --ledger L --session S -- python tests/upstreams/<fake>.py` over stdio.

    The policy, ledger and the fake's state file live in `tmp`; a second Guard in the same `tmp`
    shares the ledger and the fake's state (pass `state=None` to keep the state file as it is)."""

    def __init__(
        self,
        tmp: Path,
        fake: str,
        policy: str,
        *,
        state: JSON | None = None,
        session: str = "s1",
        identity: str | None = None,
    ) -> None:
        policy_file = tmp / "policy.yaml"
        self.state_file = tmp / f"{fake}-state.json"
        policy_file.write_text(policy)
        if state is not None:
            self.state_file.write_text(json.dumps(state))
        super().__init__(
            tmp,
            policy_file,
            upstream=[sys.executable, str(UPSTREAMS / f"{fake}.py")],
            session=session,
            extra=() if identity is None else ("--identity", identity),
            env={"FAKE_STATE": str(self.state_file)},
        )

    def state(self) -> JSON:
        """The fake's state file: its record of what it was paid."""
        return json.loads(self.state_file.read_text())  # type: ignore[no-any-return]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Guard]]:
    """`start(fake, policy, state=..., session=..., identity=...)`: a Guard in tmp_path, stopped after the test."""
    started: list[Guard] = []

    def begin(fake: str, policy: str, **options: Any) -> Guard:
        guard = Guard(tmp_path, fake, policy, **options)
        started.append(guard)
        return guard

    yield begin
    for guard in started:
        guard.stop()


# --- reading answers and the ledger ------------------------------------------------------------------------


def denial(result: JSON) -> JSON:
    """The machine-readable fields of a guard's denial (asserting it is one)."""
    assert result["isError"] is True, result
    assert result["content"][0]["text"].startswith("Denied by guard: "), result
    assert result["structuredContent"]["denied"] is True
    return result["structuredContent"]  # type: ignore[no-any-return]


def denied(result: JSON) -> bool:
    return bool((result.get("structuredContent") or {}).get("denied"))


def read_ledger(path: Path) -> Ledger:
    """The ledger file as the guard left it (no recovery: nothing is voided or put in doubt by reading)."""
    return Ledger.open(path, recover=False)


@dataclass(frozen=True)
class FixedClock:
    moment: datetime

    def now(self) -> datetime:
        return self.moment


def seed_observation(ledger_path: Path, observation: BalanceObservation, age: timedelta) -> None:
    """Store `observation` in the ledger file as if the guard had seen it `age` ago."""
    with Ledger.open(ledger_path, clock=FixedClock(datetime.now(UTC) - age)) as ledger:
        ledger.observe(observation)


# --- 402-mcp ------------------------------------------------------------------------------------------------


def test_a_100_sat_session_budget_admits_three_quoted_30_sat_fetches_and_the_ledger_matches_what_the_fake_paid(
    start: Callable[..., Guard],
) -> None:
    guard = start("fake_402mcp", L402_POLICY, state={"prices": {site(n): 30 for n in (1, 2, 3, 4)}})
    # Each price is known before paying: from a preview, a discover, a 402 answer (autoPay off), a preview.
    assert body(guard.call("l402-fetch-preview", {"url": site(1)}))["costSats"] == 30
    assert body(guard.call("l402-discover", {"url": site(2)}))["costSats"] == 30
    assert body(guard.call("l402-fetch", {"url": site(3)}))["status"] == 402
    assert body(guard.call("l402-fetch-preview", {"url": site(4)}))["costSats"] == 30
    fetched = [guard.call("l402-fetch", {"url": site(n), "autoPay": True}) for n in (1, 2, 3, 4)]
    guard.stop()

    for result in fetched[:3]:
        assert result["isError"] is False and body(result)["satsPaid"] == 30
    refused = denial(fetched[3])
    assert (refused["rule"], refused["remaining"], refused["unit"]) == ("budgets.per-session", 10, "sat")
    assert "(rule budgets.per-session; 10 sat left)" in fetched[3]["content"][0]["text"]
    payments = guard.state()["payments"]
    assert [(p["url"], p["amount"], p["reported"]) for p in payments] == [(site(n), 30, "paid") for n in (1, 2, 3)]
    with read_ledger(guard.ledger) as ledger:
        usage = ledger.usage(Budget("per-session", Amount(100, "sat"), "session:s1"))
        holds = ledger.open_holds()
        paying = [e.call for e in ledger.calls(last=100) if e.call.hold_id is not None]
    assert holds == []
    assert (usage.spent, usage.held, usage.remaining) == (90, 0, 10)
    assert usage.spent == sum(p["amount"] for p in payments) == sum(body(r)["satsPaid"] for r in fetched[:3])
    # Each hold was reserved at its quote (an invoice's quote is in msat), and settled at satsPaid.
    assert [c.price.to("sat").value for c in paying if c.price] == [30, 30, 30]
    assert [c.spent for c in paying] == [Amount(30, "sat")] * 3


CONCURRENT_POLICY = L402_POLICY.replace(
    "  - name: per-session\n    limit: 100 sat\n    scope: session\n",
    "  - name: per-identity\n    limit: 100 sat\n    scope: identity\n",
)
PRICES_5_TO_24 = {site(n): 5 + n for n in range(20)}  # 290 sat in all: not every fetch can fit in 100


def check_concurrent_spend(results: dict[str, JSON], payments: list[JSON], usage_spent: int, usage_held: int) -> None:
    """Admitted spend ≤ the budget, equal to what the fake paid; every refusal was the budget's, and right."""
    admitted = {url for url, result in results.items() if not denied(result)}
    refused = {url: denial(result) for url, result in results.items() if denied(result)}
    total = sum(PRICES_5_TO_24[url] for url in admitted)
    assert admitted and refused
    for url in admitted:
        assert body(results[url])["satsPaid"] == PRICES_5_TO_24[url]
    assert {r["rule"] for r in refused.values()} == {"budgets.per-identity"}
    assert total <= 100
    assert sorted((p["url"], p["amount"]) for p in payments) == sorted((u, PRICES_5_TO_24[u]) for u in admitted)
    assert (usage_spent, usage_held) == (total, 0)
    # No spurious refusal: every hold settles at its full quote, so a refused fetch's price was more than
    # what was left at the end (and so, at the moment it was refused).
    assert min(PRICES_5_TO_24[url] for url in refused) > 100 - total


def test_twenty_concurrent_fetches_in_one_session_never_overspend_the_identity_budget(
    start: Callable[..., Guard],
) -> None:
    urls = list(PRICES_5_TO_24)
    guard = start("fake_402mcp", CONCURRENT_POLICY, state={"prices": PRICES_5_TO_24}, identity="alice")
    guard.call("l402-fetch-preview", {"url": urls[0], "urls": urls[:10]})
    guard.call("l402-fetch-preview", {"url": urls[10], "urls": urls[10:]})
    answers = guard.call_all([("l402-fetch", {"url": url, "autoPay": True}) for url in urls])
    guard.stop()

    with read_ledger(guard.ledger) as ledger:
        usage = ledger.usage(Budget("per-identity", Amount(100, "sat"), "identity:alice"))
        assert ledger.open_holds() == []
    check_concurrent_spend(dict(zip(urls, answers, strict=True)), guard.state()["payments"], usage.spent, usage.held)
    assert not [line for line in guard.stderr if "database is locked" in line or "Traceback" in line]


# Over HTTP every client session gets its own upstream process: each fake keeps its own state file
# (named by its pid, copied from a template), so concurrent fakes never overwrite each other's record.
# --- Alby: stale balances ------------------------------------------------------------------------------------

# --- P402: sessions, scheduled refresh, costs -----------------------------------------------------------------


SCHEDULE_POLICY = """\
version: 1
default: deny
balances:
  stale_after: 5m
  on_stale: deny
  refresh_every: 1s
tools:
  p402_health: {}
"""
LIVE = "sess_" + "a1" * 12


def test_the_scheduler_refreshes_an_old_p402_session_observation_from_the_upstream_without_any_client_call(
    start: Callable[..., Guard], tmp_path: Path
) -> None:
    seed_observation(
        tmp_path / "ledger.db",
        BalanceObservation("seed", f"p402:{LIVE}", Amount(1_000_000, "usd_micro"), status="active"),
        age=timedelta(hours=1),
    )
    state = {"sessions": {LIVE: p402_session(LIVE, total=1.0, used=0.25, expires_in=timedelta(hours=1))}}
    # The stdio session's link to its upstream lives from the start (the client only initialized).
    guard = start("fake_p402", SCHEDULE_POLICY, state=state)
    line = guard.wait_for_stderr("refreshed 1 balance")
    guard.stop()

    assert "refreshed 1 balance" in line
    with read_ledger(guard.ledger) as ledger:
        found = ledger.latest(f"p402:{LIVE}")
        events = ledger.calls(last=100)
    assert found is not None
    observation, age = found
    # The router's figures (1.00 - 0.25 used), not the seeded ones, and seen just now.
    assert (observation.source, observation.amount, observation.status) == (
        "p402",
        Amount(750_000, "usd_micro"),
        "active",
    )
    assert age < 60
    # No client call was made: the audit trail holds no decision on one (only what the guard noted itself).
    assert [e.call for e in events if e.call.decision in ("allow", "deny", "error")] == []


# --- x402 over MCP -------------------------------------------------------------------------------------------


# --- one budget across rails ----------------------------------------------------------------------------------

ACROSS_RAILS_POLICY = """\
version: 1
default: deny
rates: {sat: 0.001 usd}
budgets:
  - name: dollars
    limit: 0.05 usd
    scope: global
tools:
  l402-fetch-preview: {}
  l402-fetch: {pays: true, max_price: 0.03 usd}
  get_weather: {}
"""
DOLLARS = Budget("dollars", Amount(50_000, "usd_micro"), "global")


def test_one_usd_budget_counts_sats_through_the_written_rate_and_usdc_through_the_default(
    start: Callable[..., Guard],
) -> None:
    """Two guards on one ledger, one in front of a Lightning server (402-mcp), one in front of an x402
    server paid in USDC: the global $0.05 counts both, and refuses the payment that would pass it."""
    lightning = start("fake_402mcp", ACROSS_RAILS_POLICY, state={"prices": {site(1): 20, site(2): 20}})
    stablecoin = start("fake_x402", ACROSS_RAILS_POLICY, state={"now": T0})
    assert body(lightning.call("l402-fetch-preview", {"url": site(1)}))["costSats"] == 20
    assert body(lightning.call("l402-fetch", {"url": site(1), "autoPay": True}))["satsPaid"] == 20  # $0.02
    required = stablecoin.call("get_weather", {"city": "Oslo"})["structuredContent"]
    for nonce in ("a1", "a2"):  # 0.01 USDC each
        paid = stablecoin.call("get_weather", {"city": "Oslo"}, meta={"x402/payment": payment_for(required, nonce)})
        assert paid["_meta"]["x402/payment-response"]["success"] is True
    assert body(lightning.call("l402-fetch-preview", {"url": site(2)}))["costSats"] == 20
    over = lightning.call("l402-fetch", {"url": site(2), "autoPay": True})  # $0.02 of $0.01 left
    lightning.stop()
    stablecoin.stop()

    refused = denial(over)
    assert (refused["rule"], refused["remaining"], refused["unit"]) == ("budgets.dollars", 10_000, "usd_micro")
    assert [p["amount"] for p in lightning.state()["payments"]] == [20]
    assert [p["amount"] for p in stablecoin.state()["payments"]] == [10_000, 10_000]
    with read_ledger(lightning.ledger) as ledger:
        usage = ledger.usage(DOLLARS)
        (state,) = ledger.states([DOLLARS])
        refusal = [e.call for e in ledger.calls(last=100) if e.call.decision == "deny"]
    assert (usage.spent, usage.held) == (40_000, 0)
    assert state.paid_in == (Amount(20_000, "msat"), Amount(20_000, "usdc"))
    assert [(c.rule, c.price) for c in refusal] == [("budgets.dollars", Amount(20, "sat"))]
