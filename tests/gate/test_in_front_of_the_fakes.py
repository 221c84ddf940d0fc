"""The gate in front of each fake payment upstream (tests/upstreams/fake_*.py, shop.py), in process
(tests/gate/fakes.py): quotes and previews, concurrency against one budget, payments in doubt and their
retries, malformed answers, stale balances, P402 costs and dead sessions, x402, identities and sessions,
counters that outlive a restart. Each test cross-checks the ledger against the fake's own record of what
left its wallet, as the end-to-end tests (tests/e2e/test_payments.py, tests/e2e/test_enforcement.py) do with a
real `guard run`."""

from __future__ import annotations

import hashlib
import json
import math
import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import bolt11
import pytest

from guard.core import Session
from guard.errors import UpstreamError
from ledgers import Amount, BalanceObservation, Budget, Ledger
from tests.conftest import WAIT_S
from tests.e2e.helpers import L402_POLICY
from tests.gate.fakes import guarded
from tests.upstreams.p402_state import p402_session
from tests.upstreams.x402_payments import T0, payment_for

pytestmark = pytest.mark.anyio

JSON = dict[str, Any]


def body(result: JSON) -> Any:
    """The JSON in the first text item of an upstream's answer."""
    return json.loads(result["content"][0]["text"])


def denial(result: JSON) -> JSON:
    assert result["isError"] is True, result
    assert result["content"][0]["text"].startswith("Denied by guard: "), result
    assert result["structuredContent"]["denied"] is True
    return result["structuredContent"]  # type: ignore[no-any-return]


def denied(result: JSON) -> bool:
    return bool((result.get("structuredContent") or {}).get("denied"))


def read_ledger(tmp_path: Path) -> Ledger:
    """The ledger file as the gate left it (no recovery: nothing is voided or put in doubt by reading)."""
    return Ledger.open(tmp_path / "ledger.db", recover=False)


def site(n: int) -> str:
    """A paid resource on an origin of its own (402-mcp reuses a credential per origin for free)."""
    return f"https://shop{n}.example/item"


# --- 402-mcp ------------------------------------------------------------------------------------------------


async def test_a_fetch_with_no_live_quote_is_priced_by_a_preview_guard_asks_itself_and_a_free_one_by_max_price(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = {"prices": {site(5): 20}}
    async with guarded(tmp_path, "fake_402mcp", L402_POLICY, monkeypatch, state=state, session="s2") as guard:
        # No preview, no discover, no 402 seen by the agent: guard previews each URL itself before paying.
        fetched = await guard.call("l402-fetch", {"url": site(5), "autoPay": True})
        unquoted = await guard.call("l402-fetch", {"url": site(6), "autoPay": True})

    assert body(fetched)["satsPaid"] == 20
    assert body(unquoted)["satsPaid"] == 0  # free: site(6) has no price, and nothing was paid
    assert guard.upstream.own_calls == [
        ("l402-fetch-preview", {"url": site(5)}),
        ("l402-fetch-preview", {"url": site(6)}),
    ]
    payments = guard.state()["payments"]
    assert [(p["url"], p["amount"]) for p in payments] == [(site(5), 20)]
    with read_ledger(tmp_path) as ledger:
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


async def test_twenty_sessions_of_one_identity_fetching_at_once_never_overspend_its_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    urls = list(PRICES_5_TO_24)
    sessions = {url: Session(f"s{n}", identity="alice") for n, url in enumerate(urls)}
    results: dict[str, JSON] = {}
    state = {"prices": PRICES_5_TO_24}
    async with guarded(tmp_path, "fake_402mcp", CONCURRENT_POLICY, monkeypatch, state=state) as guard:
        for url in urls:
            await guard.call("l402-fetch-preview", {"url": url}, session=sessions[url])

        async def fetch(url: str) -> None:
            results[url] = await guard.call("l402-fetch", {"url": url, "autoPay": True}, session=sessions[url])

        with anyio.fail_after(WAIT_S):
            async with anyio.create_task_group() as tasks:
                for url in urls:
                    tasks.start_soon(fetch, url)

    admitted = {url for url, result in results.items() if not denied(result)}
    refused = {url: denial(result) for url, result in results.items() if denied(result)}
    total = sum(PRICES_5_TO_24[url] for url in admitted)
    assert admitted and refused
    for url in admitted:
        assert body(results[url])["satsPaid"] == PRICES_5_TO_24[url]
    assert {r["rule"] for r in refused.values()} == {"budgets.per-identity"}
    assert total <= 100
    payments = guard.state()["payments"]
    assert sorted((p["url"], p["amount"]) for p in payments) == sorted((u, PRICES_5_TO_24[u]) for u in admitted)
    with read_ledger(tmp_path) as ledger:
        usage = ledger.usage(Budget("per-identity", Amount(100, "sat"), "identity:alice"))
        assert ledger.open_holds() == []
    assert (usage.spent, usage.held) == (total, 0)
    # No spurious refusal: every hold settles at its full quote, so a refused fetch's price was more than
    # what was left at the end (and so, at the moment it was refused).
    assert min(PRICES_5_TO_24[url] for url in refused) > 100 - total


UNKNOWN_URL = "https://doubt.example/item"


async def test_a_fetch_whose_payment_state_is_unknown_stays_in_doubt_at_its_full_price_and_keeps_counting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = {"prices": {UNKNOWN_URL: 30, site(7): 45, site(8): 30}, "outcomes": {UNKNOWN_URL: "unknown"}}
    async with guarded(tmp_path, "fake_402mcp", L402_POLICY, monkeypatch, state=state) as guard:
        for url in (UNKNOWN_URL, site(7), site(8)):
            await guard.call("l402-fetch-preview", {"url": url})
        doubtful = await guard.call("l402-fetch", {"url": UNKNOWN_URL, "autoPay": True})
        [shown] = guard.ledger.open_holds()  # what `guard ledger status` shows while the guard runs
        fits = await guard.call("l402-fetch", {"url": site(7), "autoPay": True})
        over = await guard.call("l402-fetch", {"url": site(8), "autoPay": True})

    # The upstream's own answer reaches the agent unchanged: not a denial.
    assert doubtful["isError"] is True and not denied(doubtful)
    assert body(doubtful)["paymentState"] == "unknown"
    assert (shown.phase, shown.amount.to("sat")) == ("in_doubt", Amount(30, "sat"))
    # 30 sat in doubt + 45 spent leave 25: the budget still counts the doubtful payment.
    assert body(fits)["satsPaid"] == 45
    assert (denial(over)["rule"], denial(over)["remaining"]) == ("budgets.per-session", 25)
    paid = [(p["url"], p["amount"], p["reported"]) for p in guard.state()["payments"]]
    assert paid == [(UNKNOWN_URL, 30, "unknown"), (site(7), 45, "paid")]
    with read_ledger(tmp_path) as ledger:
        [hold] = ledger.open_holds()
        usage = ledger.usage(Budget("per-session", Amount(100, "sat"), "session:s1"))
    assert (hold.id, hold.phase, hold.amount.to("sat")) == (shown.id, "in_doubt", Amount(30, "sat"))
    assert (usage.spent, usage.held) == (45, 30)


async def test_paying_an_invoice_again_after_l402_pay_answered_unknown_is_refused_by_the_idempotency_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = {"prices": {UNKNOWN_URL: 30}, "outcomes": {UNKNOWN_URL: "unknown"}}
    async with guarded(tmp_path, "fake_402mcp", L402_POLICY, monkeypatch, state=state) as guard:
        challenge = body(await guard.call("l402-discover", {"url": UNKNOWN_URL}))
        invoice, payment_hash = challenge["invoice"], challenge["paymentHash"]
        first = await guard.call("l402-pay", {"invoice": invoice, "paymentHash": payment_hash})
        by_hash = await guard.call("l402-pay", {"paymentHash": payment_hash})
        by_invoice = await guard.call("l402-pay", {"invoice": invoice, "paymentHash": payment_hash})

    assert body(first)["paymentState"] == "unknown" and not denied(first)
    for retry in (by_hash, by_invoice):
        refused = denial(retry)
        assert refused["rule"] == "idempotency"
        assert refused["reason"] == f"payment {payment_hash} is already in doubt: paying again could pay twice"
    assert [e.kind for e in guard.events if e.decision == "deny"] == ["idempotency", "idempotency"]
    assert [(p["payment_hash"], p["amount"]) for p in guard.state()["payments"]] == [(payment_hash, 30)]
    with read_ledger(tmp_path) as ledger:
        [hold] = ledger.open_holds()
        usage = ledger.usage(Budget("per-session", Amount(100, "sat"), "session:s1"))
    assert (hold.phase, hold.amount.to("sat"), hold.idempotency_key) == ("in_doubt", Amount(30, "sat"), payment_hash)
    assert (usage.spent, usage.held) == (0, 30)


async def test_retrying_an_in_doubt_fetch_by_its_payment_hash_is_refused_by_the_idempotency_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = {"prices": {UNKNOWN_URL: 30}, "outcomes": {UNKNOWN_URL: "unknown"}}
    async with guarded(tmp_path, "fake_402mcp", L402_POLICY, monkeypatch, state=state) as guard:
        await guard.call("l402-fetch-preview", {"url": UNKNOWN_URL})
        doubtful = body(await guard.call("l402-fetch", {"url": UNKNOWN_URL, "autoPay": True}))
        retry = await guard.call("l402-pay", {"paymentHash": doubtful["paymentHash"]})

    assert doubtful["paymentState"] == "unknown"
    assert denial(retry)["rule"] == "idempotency"


MALFORMED_URL = "https://garbled.example/item"


async def test_a_malformed_fetch_answer_settles_its_hold_at_the_reserved_amount_flagged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = {"prices": {MALFORMED_URL: 40, site(8): 10}, "outcomes": {MALFORMED_URL: "malformed"}}
    async with guarded(tmp_path, "fake_402mcp", L402_POLICY, monkeypatch, state=state) as guard:
        garbled = await guard.call("l402-fetch", {"url": MALFORMED_URL, "autoPay": True})
        await guard.call("l402-fetch-preview", {"url": site(8)})
        after = await guard.call("l402-fetch", {"url": site(8), "autoPay": True})  # the guard still serves

    with pytest.raises(json.JSONDecodeError):
        body(garbled)  # the fake cut its answer in half
    assert not denied(garbled)
    assert body(after)["satsPaid"] == 10
    assert [(p["url"], p["amount"]) for p in guard.state()["payments"]] == [(MALFORMED_URL, 40), (site(8), 10)]
    with read_ledger(tmp_path) as ledger:
        [event] = [
            e.call for e in ledger.calls(last=100) if e.call.tool == "l402-fetch" and e.call.price == Amount(50, "sat")
        ]
        usage = ledger.usage(Budget("per-session", Amount(100, "sat"), "session:s1"))
        hold = ledger.hold(event.hold_id or 0)
    assert event.decision == "allow"
    assert event.reason is not None and event.reason.startswith("flagged: ")
    # Counted in full (the reserved max_price, 50 sat: no quote could be read), never released.
    assert (hold.amount, hold.phase, hold.settled, event.spent) == (
        Amount(50, "sat"),
        "settled",
        Amount(50, "sat"),
        Amount(50, "sat"),
    )
    assert usage.spent + usage.held == 50 + 10


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


class PastClock:
    def __init__(self, age: timedelta) -> None:
        self.moment = datetime.now(UTC) - age

    def now(self) -> datetime:
        return self.moment


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


async def test_a_stale_wallet_balance_denies_payment_under_on_stale_deny_and_is_refreshed_upstream_under_refresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Ledger.open(tmp_path / "ledger.db", clock=PastClock(timedelta(hours=2))) as seeding:
        seeding.observe(BalanceObservation("get_balance", "wallet:alby", Amount(100_000, "sat"), money=True))
    invoice, payment_hash = invoice_for(25)
    policy = ALBY_POLICY.format(on_stale="deny")
    async with guarded(tmp_path, "fake_alby", policy, monkeypatch, state={"wallet_sats": 77_777}) as guard:
        stale = await guard.call("pay_invoice", {"invoice": invoice})
        paid_before = guard.state()["payments"]
        (tmp_path / "policy.yaml").write_text(ALBY_POLICY.format(on_stale="refresh"))
        assert await guard.source.reload()
        paid = await guard.call("pay_invoice", {"invoice": invoice})

    refused = denial(stale)
    assert refused["rule"] == "balances.stale_after"
    assert refused["reason"] == (
        "the balance wallet:alby was seen 2h ago and is stale (older than 60s); the guard will not pay on it"
    )
    assert (guard.events[0].kind, guard.events[0].balance_key) == ("stale_balance", "wallet:alby")
    assert paid_before == []
    assert paid["isError"] is False and "preimage" in body(paid)
    [payment] = guard.state()["payments"]
    assert (payment["payment_hash"], payment["amount"]) == (payment_hash, 25)
    with read_ledger(tmp_path) as ledger:
        found = ledger.latest("wallet:alby")
        usage = ledger.usage(Budget("wallet", Amount(1000, "sat"), "session:s1"))
    assert found is not None
    observation, age = found
    # 77 777 sat is the fake's wallet, not the seeded 100 000: the guard asked the upstream itself
    # (get_balance, which the policy does not even let the agent call), before paying.
    assert (observation.source, observation.amount) == ("get_balance", Amount(77_777, "sat"))
    assert guard.upstream.own_calls == [("get_balance", {})]
    assert age < 60
    assert (usage.spent, usage.held) == (25, 0)


# --- P402: costs and dead sessions ---------------------------------------------------------------------------


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
LIVE, EXHAUSTED, EXPIRED = "sess_" + "a1" * 12, "sess_" + "e0" * 12, "sess_" + "d0" * 12
MODEL_COSTS = {"cheap": 0.0123, "tiny": 0.0000015, "thirds": 0.333333333}


def micro_up(cost_usd: float) -> int:
    """A reported USD cost in usd_micro, rounded up (as the guard counts it)."""
    return math.ceil(Decimal(repr(cost_usd)) * 1_000_000)


async def test_p402_chats_settle_at_their_reported_cost_rounded_up_and_dead_sessions_are_denied_after_a_refresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions = {
        LIVE: p402_session(LIVE, total=1.0, expires_in=timedelta(hours=1)),
        EXHAUSTED: p402_session(EXHAUSTED, total=0.05, used=0.05, expires_in=timedelta(hours=1)),
        EXPIRED: p402_session(EXPIRED, total=1.0, expires_in=-timedelta(hours=1)),
    }
    state = {"sessions": sessions, "model_costs": MODEL_COSTS}
    async with guarded(tmp_path, "fake_p402", P402_POLICY, monkeypatch, state=state) as guard:
        chats = [
            await guard.call("p402_chat", {"message": "hi", "model": model, "session_id": LIVE})
            for model in MODEL_COSTS
        ]
        chats.append(await guard.call("p402_chat", {"message": "no session", "model": "thirds"}))
        exhausted = await guard.call("p402_chat", {"message": "hi", "session_id": EXHAUSTED})
        expired = await guard.call("p402_chat", {"message": "hi", "session_id": EXPIRED})

    reported = [body(chat)["metadata"]["cost_usd"] for chat in chats]
    assert reported == [*MODEL_COSTS.values(), MODEL_COSTS["thirds"]]
    for result, status in ((exhausted, "exhausted"), (expired, "expired")):
        refused = denial(result)
        assert refused["rule"] == "balances"
        assert refused["reason"] == f"the balance p402:{EXHAUSTED if status == 'exhausted' else EXPIRED} is {status}"
    assert [(e.kind, e.balance_key) for e in guard.events if e.decision == "deny"] == [
        ("balance", f"p402:{EXHAUSTED}"),
        ("balance", f"p402:{EXPIRED}"),
    ]
    payments = guard.state()["payments"]
    assert [p["session_id"] for p in payments] == [LIVE, LIVE, LIVE, None]  # the dead sessions were never charged
    expected = sum(micro_up(p["cost_usd"]) for p in payments)
    assert expected == sum(micro_up(cost) for cost in reported) == 12_300 + 2 + 333_334 * 2
    with read_ledger(tmp_path) as ledger:
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


async def test_x402_upto_reserves_the_accepted_amount_settles_at_the_receipt_and_a_replayed_nonce_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = {"text": "one two three four five"}  # 2000 + 200 per word: 3000 of at most 50000
    async with guarded(tmp_path, "fake_x402", X402_POLICY, monkeypatch, state={"now": T0}) as guard:
        unpaid = await guard.call("summarize", text)
        payment = payment_for(unpaid["structuredContent"], "ab")
        paid = await guard.call("summarize", text, meta={"x402/payment": payment})
        replay = await guard.call("summarize", text, meta={"x402/payment": payment})

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
    with read_ledger(tmp_path) as ledger:
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


async def test_x402_settlement_failures_shaped_as_the_sdk_writes_them_are_counted_as_what_they_prove(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fake answers as the official SDK (tests/x402 runs the real one): a revert voids, `settlement_pending`
    and a tool that failed after verification stay in doubt, a payer short of funds is refused at verification."""
    policy = X402_POLICY.replace("  summarize: {}\n", "  summarize: {}\n  get_weather: {}\n")
    outcomes = {"0x" + "a1" * 32: "failed", "0x" + "a2" * 32: "pending", "0x" + "a3" * 32: "tool_fails"}
    state = {"now": T0, "outcomes": outcomes}
    async with guarded(tmp_path, "fake_x402", policy, monkeypatch, state=state) as guard:
        required = (await guard.call("get_weather", {"city": "Oslo"}))["structuredContent"]
        answers = [
            await guard.call("get_weather", {"city": "Oslo"}, meta={"x402/payment": payment_for(required, nonce)})
            for nonce in ("a1", "a2", "a3")
        ]
    assert [a["isError"] for a in answers] == [True] * 3 and not any(denied(a) for a in answers)
    assert [(tool, phase) for tool, phase, _ in x402_holds(tmp_path)] == [
        ("get_weather", "voided"),
        ("get_weather", "in_doubt"),
        ("get_weather", "in_doubt"),
    ]
    assert [p["reported"] for p in guard.state()["payments"]] == ["pending"]  # what moved: counted, in doubt


X402_PAYS_POLICY = """\
version: 1
default: deny
budgets:
  - name: usdc
    limit: 1 usdc
    scope: session
tools:
  get_weather:
    pays: true
    max_price: 0.05 usdc
  summarize:
    pays: {summarize}
  ping:
    pays: true
"""


def x402_holds(tmp_path: Path) -> list[tuple[str, str, int]]:
    """Every hold: (tool, phase, reserved), in order."""
    with read_ledger(tmp_path) as ledger:
        events = [e.call for e in ledger.calls(last=100) if e.call.hold_id is not None]
        return [(e.tool, ledger.hold(e.hold_id or 0).phase, ledger.hold(e.hold_id or 0).amount.value) for e in events]


async def test_pays_true_on_an_x402_tool_holds_only_its_very_first_unpaid_call_and_a_second_guard_knows_it_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first unpaid call ever of a `pays: true` tool is held at its max_price (guard cannot know yet that
    x402 pays it) and voided by its PaymentRequired; that answer is remembered by the tool on the ledger, so
    no later unpaid call to it is held, in this guard or another on the same ledger."""
    policy = X402_PAYS_POLICY.format(summarize="true")
    async with guarded(tmp_path, "fake_x402", policy, monkeypatch, state={"now": T0}) as guard:
        first = await guard.call("get_weather", {"city": "Oslo"})
        second = await guard.call("get_weather", {"city": "Oslo"})
        payment = payment_for(second["structuredContent"], "cd")
        paid = await guard.call("get_weather", {"city": "Oslo"}, meta={"x402/payment": payment})
    async with guarded(tmp_path, "fake_x402", policy, monkeypatch, session="s2") as other:
        third = await other.call("get_weather", {"city": "Bergen"})

    assert [r["isError"] and not denied(r) for r in (first, second, third)] == [True] * 3  # PaymentRequired
    assert paid["_meta"]["x402/payment-response"]["success"] is True
    assert x402_holds(tmp_path) == [("get_weather", "voided", 50_000), ("get_weather", "settled", 10_000)]
    [record] = guard.state()["payments"]
    with read_ledger(tmp_path) as ledger:
        usage = ledger.usage(Budget("usdc", Amount(1_000_000, "usdc"), "session:s1"))
    assert (usage.spent, usage.held) == (record["amount"], 0) == (10_000, 0)


async def test_pays_true_with_no_price_denies_the_first_unpaid_call_and_pays_x402_lets_it_through_unheld(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fail closed: guard cannot tell an x402 tool from any other paying tool before it answered, so `pays:
    true` with no price or max_price denies it (naming `pays: x402`); `pays: x402` says it up front."""
    async with guarded(tmp_path, "fake_x402", X402_PAYS_POLICY.format(summarize="true"), monkeypatch) as guard:
        refused = await guard.call("summarize", {"text": "a b"})
    assert denial(refused)["rule"] == "tools.summarize"
    assert "pays: x402" in refused["structuredContent"]["reason"]

    policy = X402_PAYS_POLICY.format(summarize="x402")
    async with guarded(tmp_path, "fake_x402", policy, monkeypatch, state={"now": T0}) as guard:
        unpaid = await guard.call("summarize", {"text": "a b"})
        payment = payment_for(unpaid["structuredContent"], "ef")
        paid = await guard.call("summarize", {"text": "a b"}, meta={"x402/payment": payment})
        ping = await guard.call("ping")

    assert unpaid["isError"] is True and not denied(unpaid)
    assert paid["_meta"]["x402/payment-response"]["success"] is True
    # A non-x402 tool marked `pays: true` with no price is still refused: the x402 knowledge is per tool.
    assert denial(ping)["rule"] == "tools.ping"
    assert x402_holds(tmp_path) == [("summarize", "settled", 50_000)]


# --- the shop: budgets, identities, counters ------------------------------------------------------------------

SHOP_POLICY = """\
version: 1
default: deny
budgets:
  - name: per-session
    limit: 100 sat
    scope: session
tools:
  buy:
    pays: true
    price_from: args.amount
    price_unit: sat
    max_price: 60 sat
    when:
      - arg: item
        matches: '^[a-z]+$'
        reason: items are lower-case words
  refuse:
    pays: true
    price: 30 sat
  browse:
    rate_limit: 2/minute
"""


async def test_paying_calls_reserve_against_the_budget_and_the_ledger_matches_what_the_shop_was_paid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with guarded(tmp_path, "shop", SHOP_POLICY, monkeypatch) as guard:
        assert (await guard.call("buy", {"item": "tea", "amount": 40}))["isError"] is False
        assert (await guard.call("buy", {"item": "cake", "amount": 50}))["isError"] is False
        over = await guard.call("buy", {"item": "jam", "amount": 20})
        capped = await guard.call("buy", {"item": "caviar", "amount": 61})
        unpriced = await guard.call("refund")

    refused = denial(over)
    assert refused["rule"] == "budgets.per-session"
    assert (refused["remaining"], refused["unit"]) == (10, "sat")
    assert "(rule budgets.per-session; 10 sat left)" in over["content"][0]["text"]
    assert denial(capped)["rule"] == "tools.buy.max_price"
    assert denial(unpriced)["rule"] == "default"
    with read_ledger(tmp_path) as ledger:
        holds = ledger.open_holds()
        spent = [e.call.spent.value for e in ledger.calls(last=100) if e.call.spent is not None]
    assert holds == []
    assert sum(spent) == guard.upstream.shop_paid() == 90


async def test_an_upstream_json_rpc_error_voids_the_hold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with guarded(tmp_path, "shop", SHOP_POLICY, monkeypatch) as guard:
        with pytest.raises(UpstreamError, match="shop refuses this request"):
            await guard.call("refuse", {"amount": 30})

    with read_ledger(tmp_path) as ledger:
        assert ledger.open_holds() == []
        [event] = [e for e in ledger.calls(last=10) if e.call.tool == "refuse"]
        assert event.call.decision == "error"
        assert ledger.hold(event.call.hold_id or 0).phase == "voided"


async def test_rate_limits_outlive_the_guard_that_counted_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with guarded(tmp_path, "shop", SHOP_POLICY, monkeypatch) as first:
        assert (await first.call("browse"))["isError"] is False
        assert (await first.call("browse"))["isError"] is False
    async with guarded(tmp_path, "shop", SHOP_POLICY, monkeypatch) as second:  # the ledger opened again
        refused = denial(await second.call("browse"))
    assert refused["rule"] == "tools.browse.rate_limit"
    assert refused["reason"] == "rate limit reached: 2 calls per minute for browse (per session)"
    assert refused["remaining"] == 0 and refused["unit"] == "calls"
    assert 0 < refused["retry_after_s"] <= 60


IDENTITY_POLICY = """\
version: 1
default: deny
budgets:
  - name: per-session
    limit: 50 sat
    scope: session
tools:
  buy:
    pays: true
    price_from: args.amount
    price_unit: sat
  browse:
    rate_limit: {limit: 3/minute, scope: identity}
"""


async def test_identity_limits_span_sessions_and_session_budgets_do_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sessions = {
        "alice-1": Session("a1", identity="alice"),
        "alice-2": Session("a2", identity="alice"),
        "bob": Session("b1", identity="bob"),
    }
    results: dict[str, list[JSON]] = {who: [] for who in sessions}
    async with guarded(tmp_path, "shop", IDENTITY_POLICY, monkeypatch) as guard:
        for who, session in sessions.items():
            for _ in range(2):
                results[who].append(await guard.call("browse", session=session))
            results[who].append(await guard.call("buy", {"item": "tea", "amount": 30}, session=session))
            results[who].append(await guard.call("buy", {"item": "jam", "amount": 30}, session=session))

    # alice's two sessions share her 3 browses a minute; bob has his own.
    assert [denied(r) for r in results["alice-1"][:2] + results["alice-2"][:2]] == [False, False, False, True]
    assert [denied(r) for r in results["bob"][:2]] == [False, False]
    # Each session has its own 50 sat: one 30 sat purchase each, the second refused.
    for who in results:
        assert [denied(r) for r in results[who][2:]] == [False, True], who
    assert guard.upstream.shop_paid() == 90
