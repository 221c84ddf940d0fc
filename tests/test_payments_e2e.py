"""Payments end to end: a real `guard run` in front of the fake payment upstreams (tests/upstreams/fake_*.py).

Each test starts `guard run --policy P --ledger L -- python tests/upstreams/fake_X.py` (stdio, spoken to
in raw JSON-RPC lines; over `--listen` HTTP with the SDK client for the many-sessions test), then
cross-checks the guard's ledger (opened afterwards, without recovery, so nothing is tidied away) against
the fake's own record of what left its wallet (`payments` in its FAKE_STATE file).

Old balance observations are seeded straight into the ledger file with a clock in the past; every wait
is an event (a line on the guard's stderr, an answer) bounded by WAIT_S: no fixed sleeps.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import bolt11
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from ledgers import Amount, BalanceObservation, Budget, Ledger

from .conftest import GUARD, ROOT, WAIT_S
from .rawguard import JSON, RawGuard
from .test_fake_upstreams import T0, payment_for

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

    def edit_policy(self, policy: str) -> None:
        """Replace the policy file (as an editor does) and wait until the guard has reloaded it."""
        tmp = self.policy.with_suffix(".new")
        tmp.write_text(policy)
        os.replace(tmp, self.policy)
        self.wait_for_stderr(f"policy {self.policy} reloaded")

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


def body(result: JSON) -> Any:
    """The JSON in the first text item of an upstream's answer."""
    return json.loads(result["content"][0]["text"])


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


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GUARD, *args], capture_output=True, text=True, timeout=WAIT_S, stdin=subprocess.DEVNULL)


def audit_events(ledger_path: Path) -> list[JSON]:
    tail = cli("audit", "tail", "--json", "-n", "1000", "--ledger", str(ledger_path))
    assert tail.returncode == 0, tail.stderr
    return [json.loads(line) for line in tail.stdout.splitlines()]


def site(n: int) -> str:
    """A paid resource on an origin of its own (402-mcp reuses a credential per origin for free)."""
    return f"https://shop{n}.example/item"


# --- 402-mcp ------------------------------------------------------------------------------------------------

L402_POLICY = """\
version: 1
default: deny
budgets:
  - name: per-session
    limit: 100 sat
    scope: session
tools:
  l402-fetch-preview: {}
  l402-discover: {}
  l402-fetch:
    pays: true
    max_price: 50 sat
  l402-pay:
    pays: true
    max_price: 50 sat
"""


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


def test_a_fetch_with_no_live_quote_is_priced_by_a_preview_guard_asks_itself_and_a_free_one_by_max_price(
    start: Callable[..., Guard],
) -> None:
    guard = start("fake_402mcp", L402_POLICY, state={"prices": {site(5): 20}}, session="s2")
    # No preview, no discover, no 402 seen by the agent: guard previews each URL itself before paying.
    fetched = guard.call("l402-fetch", {"url": site(5), "autoPay": True})
    unquoted = guard.call("l402-fetch", {"url": site(6), "autoPay": True})
    guard.stop()

    assert body(fetched)["satsPaid"] == 20
    assert body(unquoted)["satsPaid"] == 0  # free: site(6) has no price, and nothing was paid
    payments = guard.state()["payments"]
    assert [(p["url"], p["amount"]) for p in payments] == [(site(5), 20)]
    with read_ledger(guard.ledger) as ledger:
        usage = ledger.usage(Budget("per-session", Amount(100, "sat"), "session:s2"))
        [first, second] = [e.call for e in ledger.calls(last=100) if e.call.tool == "l402-fetch"]
        assert ledger.open_holds() == []
        assert (ledger.hold(first.hold_id or 0).priced_by, ledger.hold(second.hold_id or 0).priced_by) == (
            "quote",
            "max_price",
        )
    assert (first.price, first.spent) == (Amount(20, "sat"), Amount(20, "sat"))
    # The preview of a free resource names no price: max_price still bounds the call.
    assert (second.price, second.spent) == (Amount(50, "sat"), Amount(0, "sat"))
    assert (usage.spent, usage.held) == (20, 0) == (sum(p["amount"] for p in payments), 0)


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


TOKEN = "alice-token-0123456789abcdef"
# Over HTTP every client session gets its own upstream process: each fake keeps its own state file
# (named by its pid, copied from a template), so concurrent fakes never overwrite each other's record.
PER_PROCESS_STATE = 'f="$FAKE_DIR/state-$$.json"; cp "$FAKE_DIR/template.json" "$f"; FAKE_STATE="$f" exec "$0" "$1"'


@pytest.mark.anyio
async def test_over_http_twenty_sessions_of_one_identity_share_its_budget_without_overspending(
    http_guard: Any, tmp_path: Path
) -> None:
    urls = list(PRICES_5_TO_24)
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    (fakes / "template.json").write_text(json.dumps({"prices": PRICES_5_TO_24}))
    policy = tmp_path / "policy.yaml"
    policy.write_text(CONCURRENT_POLICY)
    ledger_path = tmp_path / "ledger.db"
    upstream = ["sh", "-c", PER_PROCESS_STATE, sys.executable, str(UPSTREAMS / "fake_402mcp.py")]
    guard = http_guard(
        [
            "--token",
            TOKEN,
            "--identity",
            "alice",
            "--policy",
            str(policy),
            "--ledger",
            str(ledger_path),
            "--",
            *upstream,
        ],
        env={"FAKE_DIR": str(fakes)},
    )
    results: dict[str, JSON] = {}
    quoted = 0
    all_quoted = anyio.Event()

    async def session(url: str) -> None:
        nonlocal quoted
        # (httpx's default 5 s read timeout is shorter than twenty upstreams take to start on a small machine)
        http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=WAIT_S)
        async with http, Client(streamable_http_client(guard.url, http_client=http), mode="legacy") as client:
            await client.call_tool("l402-fetch-preview", {"url": url})
            quoted += 1
            if quoted == len(urls):
                all_quoted.set()
            await all_quoted.wait()  # then every session fetches at once
            result = await client.call_tool("l402-fetch", {"url": url, "autoPay": True})
            results[url] = result.model_dump(by_alias=True, mode="json")

    with anyio.fail_after(WAIT_S):
        async with anyio.create_task_group() as tg:
            for url in urls:
                tg.start_soon(session, url)

    payments = [p for state in sorted(fakes.glob("state-*.json")) for p in json.loads(state.read_text())["payments"]]
    with read_ledger(ledger_path) as ledger:
        usage = ledger.usage(Budget("per-identity", Amount(100, "sat"), "identity:alice"))
        assert ledger.open_holds() == []
    check_concurrent_spend(results, payments, usage.spent, usage.held)
    assert len(list(fakes.glob("state-*.json"))) == len(urls)  # twenty sessions, twenty upstreams
    assert "database is locked" not in guard.stderr


UNKNOWN_URL = "https://doubt.example/item"


def test_a_fetch_whose_payment_state_is_unknown_stays_in_doubt_at_its_full_price_and_keeps_counting(
    start: Callable[..., Guard],
) -> None:
    state = {"prices": {UNKNOWN_URL: 30, site(7): 45, site(8): 30}, "outcomes": {UNKNOWN_URL: "unknown"}}
    guard = start("fake_402mcp", L402_POLICY, state=state)
    for url in (UNKNOWN_URL, site(7), site(8)):
        guard.call("l402-fetch-preview", {"url": url})
    doubtful = guard.call("l402-fetch", {"url": UNKNOWN_URL, "autoPay": True})
    status = cli("ledger", "status", "--json", "--ledger", str(guard.ledger))  # while the guard runs
    fits = guard.call("l402-fetch", {"url": site(7), "autoPay": True})
    over = guard.call("l402-fetch", {"url": site(8), "autoPay": True})
    guard.stop()

    # The upstream's own answer reaches the agent unchanged: not a denial.
    assert doubtful["isError"] is True and not denied(doubtful)
    assert body(doubtful)["paymentState"] == "unknown"
    assert status.returncode == 0, status.stderr
    [shown] = json.loads(status.stdout)["open_holds"]
    assert (shown["phase"], shown["amount"], shown["unit"]) == ("in_doubt", 30, "sat")
    # 30 sat in doubt + 45 spent leave 25: the budget still counts the doubtful payment.
    assert body(fits)["satsPaid"] == 45
    assert (denial(over)["rule"], denial(over)["remaining"]) == ("budgets.per-session", 25)
    paid = [(p["url"], p["amount"], p["reported"]) for p in guard.state()["payments"]]
    assert paid == [(UNKNOWN_URL, 30, "unknown"), (site(7), 45, "paid")]
    with read_ledger(guard.ledger) as ledger:
        [hold] = ledger.open_holds()
        usage = ledger.usage(Budget("per-session", Amount(100, "sat"), "session:s1"))
    assert (hold.id, hold.phase, hold.amount) == (shown["id"], "in_doubt", Amount(30, "sat"))
    assert (usage.spent, usage.held) == (45, 30)


def test_paying_an_invoice_again_after_l402_pay_answered_unknown_is_refused_by_the_idempotency_rule(
    start: Callable[..., Guard],
) -> None:
    state = {"prices": {UNKNOWN_URL: 30}, "outcomes": {UNKNOWN_URL: "unknown"}}
    guard = start("fake_402mcp", L402_POLICY, state=state)
    challenge = body(guard.call("l402-discover", {"url": UNKNOWN_URL}))
    invoice, payment_hash = challenge["invoice"], challenge["paymentHash"]
    first = guard.call("l402-pay", {"invoice": invoice, "paymentHash": payment_hash})
    by_hash = guard.call("l402-pay", {"paymentHash": payment_hash})
    by_invoice = guard.call("l402-pay", {"invoice": invoice, "paymentHash": payment_hash})
    guard.stop()

    assert body(first)["paymentState"] == "unknown" and not denied(first)
    for retry in (by_hash, by_invoice):
        refused = denial(retry)
        assert refused["rule"] == "idempotency"
        assert refused["reason"] == f"payment {payment_hash} is already in doubt: paying again could pay twice"
    assert [(p["payment_hash"], p["amount"]) for p in guard.state()["payments"]] == [(payment_hash, 30)]
    with read_ledger(guard.ledger) as ledger:
        [hold] = ledger.open_holds()
        usage = ledger.usage(Budget("per-session", Amount(100, "sat"), "session:s1"))
    assert (hold.phase, hold.amount.to("sat"), hold.idempotency_key) == ("in_doubt", Amount(30, "sat"), payment_hash)
    assert (usage.spent, usage.held) == (0, 30)


def test_retrying_an_in_doubt_fetch_by_its_payment_hash_is_refused_by_the_idempotency_rule(
    start: Callable[..., Guard],
) -> None:
    state = {"prices": {UNKNOWN_URL: 30}, "outcomes": {UNKNOWN_URL: "unknown"}}
    guard = start("fake_402mcp", L402_POLICY, state=state)
    guard.call("l402-fetch-preview", {"url": UNKNOWN_URL})
    doubtful = body(guard.call("l402-fetch", {"url": UNKNOWN_URL, "autoPay": True}))
    retry = guard.call("l402-pay", {"paymentHash": doubtful["paymentHash"]})
    guard.stop()

    assert doubtful["paymentState"] == "unknown"
    assert denial(retry)["rule"] == "idempotency"


MALFORMED_URL = "https://garbled.example/item"


def test_a_malformed_fetch_answer_never_crashes_the_guard_and_is_flagged_in_the_audit_trail(
    start: Callable[..., Guard],
) -> None:
    state = {"prices": {MALFORMED_URL: 40, site(8): 10}, "outcomes": {MALFORMED_URL: "malformed"}}
    guard = start("fake_402mcp", L402_POLICY, state=state)
    garbled = guard.call("l402-fetch", {"url": MALFORMED_URL, "autoPay": True})
    guard.call("l402-fetch-preview", {"url": site(8)})
    after = guard.call("l402-fetch", {"url": site(8), "autoPay": True})  # the guard still serves
    guard.stop()

    with pytest.raises(json.JSONDecodeError):
        body(garbled)  # the fake cut its answer in half
    assert not denied(garbled)
    assert body(after)["satsPaid"] == 10
    assert guard.process.returncode == 0
    assert [(p["url"], p["amount"]) for p in guard.state()["payments"]] == [(MALFORMED_URL, 40), (site(8), 10)]
    [event] = [e for e in audit_events(guard.ledger) if e["tool"] == "l402-fetch" and e["price"] == 50]
    assert event["decision"] == "allow"
    assert event["reason"].startswith("flagged: ")
    with read_ledger(guard.ledger) as ledger:
        usage = ledger.usage(Budget("per-session", Amount(100, "sat"), "session:s1"))
        hold = ledger.hold(event["hold"])
    # Counted in full (the reserved max_price, 50 sat: no quote could be read), never released.
    assert hold.amount == Amount(50, "sat")
    assert usage.spent + usage.held == 50 + 10


def test_a_malformed_fetch_answer_settles_its_hold_at_the_reserved_amount(start: Callable[..., Guard]) -> None:
    state = {"prices": {MALFORMED_URL: 40}, "outcomes": {MALFORMED_URL: "malformed"}}
    guard = start("fake_402mcp", L402_POLICY, state=state)
    guard.call("l402-fetch", {"url": MALFORMED_URL, "autoPay": True})
    guard.stop()

    [event] = [e for e in audit_events(guard.ledger) if e["tool"] == "l402-fetch"]
    with read_ledger(guard.ledger) as ledger:
        hold = ledger.hold(event["hold"])
    assert (hold.phase, hold.settled) == ("settled", Amount(50, "sat"))
    assert event["spent"] == 50


# --- Alby: stale balances ------------------------------------------------------------------------------------

ALBY_POLICY = """\
version: 1
default: deny
balances:
  stale_after: 1m
  on_stale: {on_stale}
  refresh_every: null
budgets:
  - name: wallet
    limit: 1000 sat
    scope: session
tools:
  pay_invoice:
    pays: true
    max_price: 500 sat
"""


def invoice_for(sats: int) -> tuple[str, str]:
    """A real BOLT11 invoice from someone else's node: (invoice, payment hash)."""
    payment_hash = hashlib.sha256(os.urandom(32)).hexdigest()
    tags = bolt11.Tags()
    tags.add(bolt11.TagChar.payment_hash, payment_hash)
    tags.add(bolt11.TagChar.payment_secret, os.urandom(32).hex())
    tags.add(bolt11.TagChar.description, "test")
    invoice = bolt11.Bolt11(
        currency="bc", date=int(datetime.now(UTC).timestamp()), tags=tags, amount_msat=bolt11.MilliSatoshi(sats * 1000)
    )
    return bolt11.encode(invoice, private_key="33" * 32), payment_hash


def test_a_stale_wallet_balance_denies_payment_under_on_stale_deny_and_is_refreshed_upstream_under_refresh(
    start: Callable[..., Guard], tmp_path: Path
) -> None:
    seed_observation(
        tmp_path / "ledger.db",
        BalanceObservation("get_balance", "wallet:alby", Amount(100_000, "sat")),
        age=timedelta(hours=2),
    )
    guard = start("fake_alby", ALBY_POLICY.format(on_stale="deny"), state={"wallet_sats": 77_777})
    invoice, payment_hash = invoice_for(25)
    stale = guard.call("pay_invoice", {"invoice": invoice})
    paid_before = guard.state()["payments"]
    guard.edit_policy(ALBY_POLICY.format(on_stale="refresh"))
    paid = guard.call("pay_invoice", {"invoice": invoice})
    guard.stop()

    refused = denial(stale)
    assert refused["rule"] == "balances.stale_after"
    assert refused["reason"] == (
        "the balance wallet:alby was seen 2h ago and is stale (older than 60s); the guard will not pay on it"
    )
    assert paid_before == []
    assert paid["isError"] is False and "preimage" in body(paid)
    [payment] = guard.state()["payments"]
    assert (payment["payment_hash"], payment["amount"]) == (payment_hash, 25)
    with read_ledger(guard.ledger) as ledger:
        found = ledger.latest("wallet:alby")
        usage = ledger.usage(Budget("wallet", Amount(1000, "sat"), "session:s1"))
    assert found is not None
    observation, age = found
    # 77 777 sat is the fake's wallet, not the seeded 100 000: the guard asked the upstream itself
    # (get_balance, which the policy does not even let the agent call), before paying.
    assert (observation.source, observation.amount) == ("get_balance", Amount(77_777, "sat"))
    assert age < 60
    assert (usage.spent, usage.held) == (25, 0)


# --- P402: sessions, scheduled refresh, costs -----------------------------------------------------------------


def p402_session(session_id: str, *, total: float, used: float = 0.0, expires_in: timedelta) -> JSON:
    when = (datetime.now(UTC) + expires_in).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return {
        "id": session_id,
        "status": "active",
        "total_usd": total,
        "used_usd": used,
        "expires_at": when,
        "agent_id": "agent",
        "session_key": "p402_sk_live_" + "0" * 48,
        "created_at": when,
    }


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


P402_POLICY = """\
version: 1
default: deny
balances:
  stale_after: 5m
  on_stale: refresh
  refresh_every: null
budgets:
  - name: llm
    limit: 2 usd
    scope: session
tools:
  p402_chat:
    pays: true
    max_price: 0.50 usd
"""
EXHAUSTED, EXPIRED = "sess_" + "e0" * 12, "sess_" + "d0" * 12
MODEL_COSTS = {"cheap": 0.0123, "tiny": 0.0000015, "thirds": 0.333333333}


def micro_up(cost_usd: float) -> int:
    """A reported USD cost in usd_micro, rounded up (as the guard counts it)."""
    return math.ceil(Decimal(repr(cost_usd)) * 1_000_000)


def test_p402_chats_settle_at_their_reported_cost_rounded_up_and_dead_sessions_are_denied_after_a_refresh(
    start: Callable[..., Guard],
) -> None:
    sessions = {
        LIVE: p402_session(LIVE, total=1.0, expires_in=timedelta(hours=1)),
        EXHAUSTED: p402_session(EXHAUSTED, total=0.05, used=0.05, expires_in=timedelta(hours=1)),
        EXPIRED: p402_session(EXPIRED, total=1.0, expires_in=-timedelta(hours=1)),
    }
    guard = start("fake_p402", P402_POLICY, state={"sessions": sessions, "model_costs": MODEL_COSTS})
    chats = [guard.call("p402_chat", {"message": "hi", "model": model, "session_id": LIVE}) for model in MODEL_COSTS]
    chats.append(guard.call("p402_chat", {"message": "no session", "model": "thirds"}))
    exhausted = guard.call("p402_chat", {"message": "hi", "session_id": EXHAUSTED})
    expired = guard.call("p402_chat", {"message": "hi", "session_id": EXPIRED})
    guard.stop()

    reported = [body(chat)["metadata"]["cost_usd"] for chat in chats]
    assert reported == [*MODEL_COSTS.values(), MODEL_COSTS["thirds"]]
    for result, status in ((exhausted, "exhausted"), (expired, "expired")):
        refused = denial(result)
        assert refused["rule"] == "balances"
        assert refused["reason"] == f"the balance p402:{EXHAUSTED if status == 'exhausted' else EXPIRED} is {status}"
    payments = guard.state()["payments"]
    assert [p["session_id"] for p in payments] == [LIVE, LIVE, LIVE, None]  # the dead sessions were never charged
    expected = sum(micro_up(p["cost_usd"]) for p in payments)
    assert expected == sum(micro_up(cost) for cost in reported) == 12_300 + 2 + 333_334 * 2
    with read_ledger(guard.ledger) as ledger:
        usage = ledger.usage(Budget("llm", Amount(2_000_000, "usd_micro"), "session:s1"))
        spent = [e.call.spent for e in ledger.calls(last=100) if e.call.tool == "p402_chat" and e.call.spent]
        dead = {key: ledger.latest(f"p402:{key}") for key in (EXHAUSTED, EXPIRED)}
        assert ledger.open_holds() == []
    assert (usage.spent, usage.held) == (expected, 0)
    assert spent == [Amount(micro_up(cost), "usd_micro") for cost in reported]
    # The guard asked the router about each session itself before refusing.
    assert {key: found[0].status for key, found in dead.items() if found} == {
        EXHAUSTED: "exhausted",
        EXPIRED: "expired",
    }


# --- x402 over MCP -------------------------------------------------------------------------------------------

X402_POLICY = """\
version: 1
default: deny
budgets:
  - name: usdc
    limit: 1 usdc
    scope: session
tools:
  summarize: {}
"""


def test_x402_upto_reserves_the_accepted_amount_settles_at_the_receipt_and_a_replayed_nonce_is_refused(
    start: Callable[..., Guard],
) -> None:
    guard = start("fake_x402", X402_POLICY, state={"now": T0})
    text = {"text": "one two three four five"}  # 2000 + 200 per word: 3000 of at most 50000
    unpaid = guard.call("summarize", text)
    payment = payment_for(unpaid["structuredContent"], "ab")
    paid = guard.call("summarize", text, meta={"x402/payment": payment})
    replay = guard.call("summarize", text, meta={"x402/payment": payment})
    guard.stop()

    # The fake's PaymentRequired reaches the agent unchanged.
    assert unpaid["isError"] is True and not denied(unpaid)
    assert unpaid["structuredContent"]["accepts"][0]["amount"] == "50000"
    receipt = paid["_meta"]["x402/payment-response"]
    assert (paid.get("isError", False), receipt["success"], receipt["amount"]) == (False, True, "3000")
    refused = denial(replay)
    assert refused["rule"] == "idempotency"
    assert refused["reason"] == f"payment {'0x' + 'ab' * 32} was already made"
    [record] = guard.state()["payments"]
    assert (record["amount"], record["max_amount"], record["scheme"]) == (3000, 50000, "upto")
    with read_ledger(guard.ledger) as ledger:
        quote = ledger.quote("mcp://tool/summarize")
        usage = ledger.usage(Budget("usdc", Amount(1_000_000, "usdc"), "session:s1"))
        [event] = [e.call for e in ledger.calls(last=10) if e.call.hold_id is not None]
        hold = ledger.hold(event.hold_id or 0)
    assert quote is not None and quote.amount == Amount(50_000, "usdc")
    assert (hold.amount, hold.settled, hold.idempotency_key) == (
        Amount(50_000, "usdc"),
        Amount(3000, "usdc"),
        "0x" + "ab" * 32,
    )
    assert (usage.spent, usage.held) == (record["amount"], 0) == (3000, 0)
