"""The gate's checklist (`PolicyGate.call_tool`) with a fake forward in place of the relay: the first
refusal wins and nothing after it runs; a forwarded paying call is reserved, marked forwarded before it is
sent, and settled; no answer voids only a call that did not run; every decision is a call event with its
rule's kind. Also what the gate shows (tools/list, guard-budget) and tells (tools/list_changed)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from guard.core import JSON, Session, ToolCall
from guard.errors import UpstreamError
from guard.gate.gate import PolicyGate
from guard.payments.adapters import family_adapters
from guard.payments.adapters._facts import Outcome, Prepared
from guard.payments.payments import Payments
from guard.policy.rules import Policy
from guard.policy.source import PolicySource
from ledgers import Amount, Approval, BalanceObservation, Budget, CallRecord
from tests.conftest import WAIT_S, FakeClock
from tests.payments.doubles import FakeLink, RecordingLedger, StubAdapter, policy, text_result

pytestmark = pytest.mark.anyio

SHOP = """\
version: 1
default: deny
budgets:
  - {name: per-session, limit: 100 sat}
tools:
  buy:
    pays: true
    price_from: amount
    price_unit: sat
    max_price: 60 sat
    when: [{arg: item, matches: '^[a-z]+$', reason: items are lower-case words}]
  browse: {rate_limit: 2/minute}
  ask: {action: approve}
  count: {quotas: [{counter: things, max: 10, window: day, increment_from: n}]}
"""
PER_SESSION = Budget("per-session", Amount(100, "sat"), "session:s1")


class Watcher:
    """A `CallWatcher` keeping every call event the gate emits, as emitted."""

    def __init__(self) -> None:
        self.events: list[CallRecord] = []

    def call_done(self, call: CallRecord, upstream_s: float | None) -> None:
        self.events.append(call)


class Upstream:
    """A fake `forward`: answers `result` (or raises `error`), and notes the phase of the call's hold as
    it was when the call was sent."""

    def __init__(self, ledger: RecordingLedger, result: JSON | None = None, error: BaseException | None = None) -> None:
        self.ledger = ledger
        self.result = result if result is not None else text_result({"bought": True})
        self.error = error
        self.sent: list[str | None] = []  # the hold's phase at each call sent

    def forward(self) -> Callable[[], Awaitable[JSON]]:
        async def send() -> JSON:
            open_holds = self.ledger.open_holds()
            self.sent.append(open_holds[-1].phase if open_holds else None)
            if self.error is not None:
                raise self.error
            return self.result

        return send


class Shop:
    """A gate over `policy` with a ledger, a watcher and an upstream, for one session."""

    def __init__(self, ledger: RecordingLedger, rules: Policy, payments: Payments | None = None) -> None:
        self.ledger = ledger
        self.watcher = Watcher()
        self.source = PolicySource(rules)
        self.gate = PolicyGate(self.source, ledger, "shop", payments, watchers=[self.watcher])
        self.upstream = Upstream(ledger)

    async def call(self, name: str, session: str = "s1", **arguments: Any) -> JSON:
        call = ToolCall(Session(session, identity="alice"), 1, name, arguments, None)
        return await self.gate.call_tool(call, self.upstream.forward())

    def denied(self, result: JSON) -> JSON:
        assert result["isError"] is True and result["structuredContent"]["denied"] is True, result
        return result["structuredContent"]  # type: ignore[no-any-return]

    @property
    def last(self) -> CallRecord:
        return self.watcher.events[-1]


@pytest.fixture
def shop(ledger: RecordingLedger) -> Shop:
    return Shop(ledger, policy(SHOP))


# --- the first refusal wins --------------------------------------------------------------------------------


async def test_a_tool_the_policy_does_not_name_is_denied_by_default_and_never_forwarded(shop: Shop) -> None:
    denied = shop.denied(await shop.call("refund"))
    assert (denied["rule"], denied["reason"]) == ("default", "refund is not allowed by the policy (default: deny)")
    assert shop.upstream.sent == []
    assert (shop.last.decision, shop.last.rule, shop.last.kind) == ("deny", "default", "default")


async def test_a_failed_condition_refuses_before_any_price_or_budget_is_looked_at(shop: Shop) -> None:
    denied = shop.denied(await shop.call("buy", item="Tea", amount=999))  # over max_price too: the condition wins
    assert (denied["rule"], denied["reason"]) == ("tools.buy.when[0]", "items are lower-case words")
    assert (shop.upstream.sent, shop.ledger.open_holds(), shop.last.kind) == ([], [], "condition")
    assert shop.last.price is None  # refused before it was priced


async def test_a_rate_limited_paying_call_makes_guard_ask_the_upstream_nothing(ledger: RecordingLedger) -> None:
    rules = policy(
        """\
        version: 1
        budgets: [{name: b, limit: 1000 sat}]
        tools:
          l402-fetch: {pays: true, max_price: 50 sat, rate_limit: 1/minute}
        """
    )
    shop = Shop(ledger, rules, Payments(ledger, family_adapters()))
    link = FakeLink({"l402-fetch-preview": text_result({"status": "free", "endpoint": "https://x.example/a"})})
    shop.gate.subscribe(Session("s1", identity="alice"), link)
    assert (await shop.call("l402-fetch", url="https://x.example/a", autoPay=True))["isError"] is False
    denied = shop.denied(await shop.call("l402-fetch", url="https://x.example/b", autoPay=True))
    assert (denied["rule"], denied["unit"], denied["remaining"]) == ("tools.l402-fetch.rate_limit", "calls", 0)
    assert 0 < denied["retry_after_s"] <= 60
    assert [url["url"] for _, url in link.calls] == ["https://x.example/a"]  # no preview for the refused call
    assert shop.last.kind == "rate_limit"


async def test_a_free_call_counts_against_its_rate_limit(shop: Shop) -> None:
    assert (await shop.call("browse"))["isError"] is False
    assert (await shop.call("browse"))["isError"] is False
    denied = shop.denied(await shop.call("browse"))
    assert denied["reason"] == "rate limit reached: 2 calls per minute for browse (per session)"
    assert len(shop.upstream.sent) == 2
    assert (await shop.call("browse", session="s2"))["isError"] is False  # per session


async def test_a_quota_is_a_quota_denial_and_an_unreadable_increment_refuses_the_call(shop: Shop) -> None:
    assert (await shop.call("count", n=10))["isError"] is False
    used_up = shop.denied(await shop.call("count", n=1))
    assert (used_up["rule"], shop.last.kind) == ("tools.count.quotas[0]", "quota")
    unreadable = shop.denied(await shop.call("count", n="lots"))
    assert (unreadable["rule"], shop.last.kind) == ("tools.count", "quota")
    assert unreadable["reason"] == "no price, no pay: argument n must be a whole number from 0 to 1000000000"


async def test_over_the_budget_a_paying_call_is_refused_with_what_is_left(shop: Shop) -> None:
    assert (await shop.call("buy", item="tea", amount=40))["isError"] is False
    assert (await shop.call("buy", item="cake", amount=50))["isError"] is False
    denied = shop.denied(await shop.call("buy", item="jam", amount=20))
    assert (denied["rule"], denied["remaining"], denied["unit"]) == ("budgets.per-session", 10, "sat")
    assert (shop.last.kind, len(shop.upstream.sent)) == ("budget", 2)
    assert shop.ledger.usage(PER_SESSION).spent == 90
    assert shop.last.price == Amount(20, "sat")  # the denial's event keeps the price asked


async def test_a_call_over_its_max_price_is_refused_and_its_event_keeps_the_price_asked(shop: Shop) -> None:
    denied = shop.denied(await shop.call("buy", item="tea", amount=61))
    assert (denied["rule"], shop.last.kind, shop.last.price) == ("tools.buy.max_price", "price", Amount(61, "sat"))


async def test_a_payment_already_in_doubt_is_not_paid_again(ledger: RecordingLedger) -> None:
    payment = "ab" * 32
    adapter = StubAdapter(Prepared(pays=True, price=Amount(5, "sat"), payment_id=payment), Outcome("unknown"))
    rules = policy("version: 1\nbudgets: [{name: b, limit: 100 sat}]\ntools: {buy: {pays: true}}\n")
    shop = Shop(ledger, rules, Payments(ledger, [adapter]))
    assert (await shop.call("buy"))["isError"] is False
    denied = shop.denied(await shop.call("buy"))
    assert (denied["rule"], shop.last.kind) == ("idempotency", "idempotency")
    assert denied["reason"] == f"payment {payment} is already in doubt: paying again could pay twice"
    assert len(shop.upstream.sent) == 1


async def test_a_stale_balance_denial_is_recorded_with_its_kind_and_balance(
    ledger: RecordingLedger, clock: FakeClock
) -> None:
    rules = policy(
        """\
        version: 1
        balances: {stale_after: 1m, on_stale: deny}
        budgets: [{name: wallet, limit: 1000 sat}]
        tools: {fetch_l402: {pays: true, max_price: 500 sat}}
        """
    )
    ledger.observe(BalanceObservation("get_balance", "wallet:alby", Amount(10_000, "sat"), money=True))
    clock.advance(3600)
    shop = Shop(ledger, rules, Payments(ledger, family_adapters("alby")))
    denied = shop.denied(await shop.call("fetch_l402", url="https://x.example"))
    assert denied["rule"] == "balances.stale_after"
    assert (shop.last.kind, shop.last.balance_key, shop.last.rule) == (
        "stale_balance",
        "wallet:alby",
        "balances.stale_after",
    )
    assert shop.last.price == Amount(500, "sat")  # priced at its cap before the balance was looked at


# --- approvals ---------------------------------------------------------------------------------------------


async def test_an_approval_is_asked_once_used_once_and_bound_to_the_exact_arguments(shop: Shop) -> None:
    first = shop.denied(await shop.call("ask", q="shoes"))
    again = shop.denied(await shop.call("ask", q="shoes"))
    assert first["approval_id"] == again["approval_id"] and first["approval_id"].startswith("ap_")
    assert first["reason"] == (
        f"ask needs a human's approval: ask the operator to run `guard approvals approve {first['approval_id']}`,"
        " then retry the same call"
    )
    assert shop.last.kind == "approval"
    shop.ledger.decide_approval(first["approval_id"], approve=True)
    other = shop.denied(await shop.call("ask", q="hats"))
    assert other["approval_id"] != first["approval_id"]
    assert (await shop.call("ask", q="shoes"))["isError"] is False
    used = shop.denied(await shop.call("ask", q="shoes"))
    assert used["approval_id"] not in (None, first["approval_id"])
    assert len(shop.upstream.sent) == 1


async def test_a_denied_approval_refuses_the_retry(shop: Shop) -> None:
    asked = shop.denied(await shop.call("ask", q="shoes"))
    shop.ledger.decide_approval(asked["approval_id"], approve=False)
    retried = shop.denied(await shop.call("ask", q="shoes"))
    assert (retried["reason"], retried["approval_id"]) == ("the operator denied this call to ask", asked["approval_id"])


async def test_an_approval_used_by_another_call_first_is_denied_and_writes_no_hold(
    ledger: RecordingLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The approval is used up in the reservation's transaction: when another call used it between the
    check (step 4) and the reservation, the reservation refuses and nothing is held or sent."""
    rules = policy(
        "version: 1\nbudgets: [{name: b, limit: 100 sat}]\ntools: {buy: {pays: true, price: 5 sat, action: approve}}\n"
    )
    shop = Shop(ledger, rules)
    asked = shop.denied(await shop.call("buy"))
    ledger.decide_approval(asked["approval_id"], approve=True)
    checked = ledger.request_approval

    def then_used_by_another_call(*args: Any, **kwargs: Any) -> Approval:
        approval = checked(*args, **kwargs)
        ledger.use_approval(approval.id)
        return approval

    monkeypatch.setattr(ledger, "request_approval", then_used_by_another_call)
    denied = shop.denied(await shop.call("buy"))
    assert (denied["rule"], denied["reason"], shop.last.kind) == (
        "approvals",
        f"approval {asked['approval_id']} is not approved, was used already, or expired",
        "approval",
    )
    assert ledger.open_holds() == [] and shop.upstream.sent == []
    assert shop.last.price == Amount(5, "sat")


# --- budgets across currencies ------------------------------------------------------------------------------


DOLLAR_SHOP = """\
version: 1
budgets: [{name: dollars, limit: 1 usd}]
rates: {sat: 0.001 usd}
tools: {buy: {pays: true, price_from: amount, price_unit: sat}, pay: {pays: true, price_from: amount, price_unit: usdc}}
"""
DOLLARS = Budget("dollars", Amount(1_000_000, "usd_micro"), "session:s1")


async def test_one_usd_budget_counts_sats_and_usdc_through_the_rates(ledger: RecordingLedger) -> None:
    shop = Shop(ledger, policy(DOLLAR_SHOP))
    assert (await shop.call("buy", amount=300))["isError"] is False  # $0.30
    assert (await shop.call("pay", amount="0.5"))["isError"] is False  # $0.50
    assert ledger.usage(DOLLARS).spent == 800_000
    denied = shop.denied(await shop.call("buy", amount=201))  # $0.201 > $0.20 left
    assert (denied["rule"], denied["remaining"], denied["unit"]) == ("budgets.dollars", 200_000, "usd_micro")
    assert shop.last.price == Amount(201, "sat")


async def test_a_rate_edit_applies_to_later_payments_and_never_to_what_was_counted(
    ledger: RecordingLedger, tmp_path: Path
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(DOLLAR_SHOP)
    shop = Shop(ledger, policy(DOLLAR_SHOP))
    shop.source = PolicySource.from_file(path)
    shop.gate = PolicyGate(shop.source, ledger, "shop", watchers=[shop.watcher])
    assert (await shop.call("buy", amount=100))["isError"] is False  # $0.10 at 0.001
    path.write_text(DOLLAR_SHOP.replace("0.001 usd", "0.002 usd"))
    assert await shop.source.reload()
    assert (await shop.call("buy", amount=100))["isError"] is False  # $0.20 at 0.002
    assert ledger.usage(DOLLARS).spent == 300_000


async def test_a_price_no_rate_converts_into_the_budgets_unit_is_refused_naming_the_rate(
    ledger: RecordingLedger,
) -> None:
    shop = Shop(ledger, policy(DOLLAR_SHOP.replace("rates: {sat: 0.001 usd}\n", "")))
    denied = shop.denied(await shop.call("buy", amount=10))
    assert denied["rule"] == "budgets" and "write one in the policy, such as `rates: {sat:" in denied["reason"]
    assert (shop.upstream.sent, ledger.open_holds(), shop.last.price) == ([], [], Amount(10, "sat"))


# --- forwarding and settling -------------------------------------------------------------------------------


async def test_a_paying_call_is_reserved_marked_forwarded_before_it_is_sent_and_settled(shop: Shop) -> None:
    result = await shop.call("buy", item="tea", amount=40)
    assert result == shop.upstream.result
    assert shop.upstream.sent == ["forwarded"]
    allowed = shop.last
    assert (allowed.decision, allowed.price, allowed.spent, allowed.kind) == (
        "allow",
        Amount(40, "sat"),
        Amount(40, "sat"),
        None,
    )
    assert allowed.hold_id is not None and shop.ledger.hold(allowed.hold_id).phase == "settled"
    assert (allowed.session, allowed.identity, allowed.server) == ("s1", "alice", "shop")
    assert allowed.args_digest is not None and len(allowed.args_digest) == 16
    assert allowed.latency_us is not None


async def test_without_a_price_argument_a_paying_call_reserves_its_max_price(shop: Shop) -> None:
    assert (await shop.call("buy", item="tea"))["isError"] is False
    assert shop.last.price == Amount(60, "sat")
    assert shop.denied(await shop.call("buy", item="jam", amount=50))["remaining"] == 40


async def test_an_answer_the_adapter_flags_is_allowed_and_flagged(ledger: RecordingLedger) -> None:
    adapter = StubAdapter(Prepared(pays=True, price=Amount(5, "sat")), Outcome("paid", problem="satsPaid is a string"))
    rules = policy("version: 1\nbudgets: [{name: b, limit: 100 sat}]\ntools: {buy: {pays: true}}\n")
    shop = Shop(ledger, rules, Payments(ledger, [adapter]))
    await shop.call("buy")
    assert (shop.last.decision, shop.last.reason) == ("allow", "flagged: satsPaid is a string")


@pytest.mark.parametrize(("not_run", "phase"), [(True, "voided"), (False, "in_doubt")])
async def test_an_upstream_error_voids_the_hold_only_when_the_tool_did_not_run(
    shop: Shop, not_run: bool, phase: str
) -> None:
    shop.upstream.error = UpstreamError(-32603, "shop refuses this request", not_run=not_run)
    with pytest.raises(UpstreamError):
        await shop.call("buy", item="tea", amount=30)
    [event] = shop.watcher.events
    assert (event.decision, event.reason, event.price) == ("error", "upstream error", Amount(30, "sat"))
    assert event.hold_id is not None and shop.ledger.hold(event.hold_id).phase == phase


async def test_a_call_cancelled_after_it_was_sent_leaves_its_payment_in_doubt(shop: Shop) -> None:
    sent = anyio.Event()

    async def never_answers() -> JSON:
        sent.set()
        await anyio.sleep_forever()
        raise AssertionError("unreachable")

    call = ToolCall(Session("s1"), 1, "buy", {"item": "tea", "amount": 30}, None)
    with anyio.fail_after(WAIT_S):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(shop.gate.call_tool, call, never_answers)
            await sent.wait()
            tasks.cancel_scope.cancel()
    [hold] = shop.ledger.open_holds()
    assert (hold.phase, hold.amount) == ("in_doubt", Amount(30, "sat"))
    assert shop.watcher.events == []


async def test_an_answer_the_guard_cannot_finish_with_keeps_the_payment_in_doubt(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any) -> None:
        raise RuntimeError("the ledger went away")

    monkeypatch.setattr(Payments, "settle", broken)
    with pytest.raises(RuntimeError):
        await shop.call("buy", item="tea", amount=30)
    [hold] = shop.ledger.open_holds()
    assert hold.phase == "in_doubt"


async def test_a_watcher_that_fails_never_fails_the_call(shop: Shop) -> None:
    class Broken:
        def call_done(self, call: CallRecord, upstream_s: float | None) -> None:
            raise RuntimeError("watcher bug")

    gate = PolicyGate(shop.source, shop.ledger, "shop", watchers=[Broken(), shop.watcher])
    call = ToolCall(Session("s1"), 1, "browse", {}, None)
    assert (await gate.call_tool(call, shop.upstream.forward()))["isError"] is False
    assert [e.decision for e in shop.watcher.events] == ["allow"]


async def test_a_call_the_relay_refused_is_recorded_as_a_wire_denial(shop: Shop) -> None:
    shop.gate.call_refused(Session("s1", identity="alice"), "buy", "request id 7 is already in flight")
    assert (shop.last.decision, shop.last.rule, shop.last.kind, shop.last.reason) == (
        "deny",
        "wire",
        "wire",
        "request id 7 is already in flight",
    )


async def test_every_event_reaches_the_ledgers_audit_trail(shop: Shop) -> None:
    async with anyio.create_task_group() as tasks:
        tasks.start_soon(shop.gate.audit.write)
        await shop.call("buy", item="tea", amount=5)
        await shop.call("buy", item="Tea", amount=5)
        tasks.cancel_scope.cancel()
    stored = [(e.call.tool, e.call.decision, e.call.rule) for e in shop.ledger.calls(last=10)]
    assert stored == [("buy", "allow", None), ("buy", "deny", "tools.buy.when[0]")]


def count_writes(ledger: RecordingLedger, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Notes each write transaction (one durable commit) as it begins: which ledger step asked for it."""
    begun: list[str] = []
    write = ledger._store.write

    def counted(*args: Any, **kwargs: Any) -> Any:
        begun.append("write")
        return write(*args, **kwargs)

    monkeypatch.setattr(ledger._store, "write", counted)
    return begun


async def test_a_paying_call_costs_two_writes_one_before_it_is_sent_and_one_after(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes = count_writes(shop.ledger, monkeypatch)
    assert (await shop.call("buy", item="tea", amount=30))["isError"] is False
    assert shop.upstream.sent == ["forwarded"]  # forwarded already when the upstream got it
    assert len(writes) == 2
    # The call's event went with the settlement: in the ledger with no audit batch written.
    [recorded] = shop.ledger.calls()
    assert (recorded.call.decision, recorded.call.spent) == ("allow", Amount(30, "sat"))
    assert shop.ledger.hold(recorded.call.hold_id or 0).phase == "settled"
    assert shop.last.hold_id == recorded.call.hold_id  # and the watchers were told


async def test_a_call_cancelled_while_its_hold_is_written_is_never_sent_and_its_hold_is_voided(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Surprise: under anyio's runner a plain asyncio `Task.cancel` raises out of `to_thread.run_sync` at
    once, while the thread still writes (under `asyncio.run` it waits for the thread). The gate writes the
    reservation as a task of its own, so the committed hold is known, and released."""
    entered, release = threading.Event(), threading.Event()
    reserve = shop.ledger.reserve_shadowed

    def slow_reserve(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        release.wait(WAIT_S)
        return reserve(*args, **kwargs)

    monkeypatch.setattr(shop.ledger, "reserve_shadowed", slow_reserve)
    task = asyncio.get_running_loop().create_task(shop.call("buy", item="tea", amount=30))
    await anyio.to_thread.run_sync(entered.wait, WAIT_S)
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    [hold] = query_holds(shop.ledger)
    assert hold.phase == "voided" and shop.upstream.sent == []


def query_holds(ledger: RecordingLedger) -> list[Any]:
    """Every hold, whatever its phase (`open_holds` leaves the voided out)."""
    with ledger._store.read() as conn:
        return [ledger.hold(row[0]) for row in conn.exec_driver_sql("SELECT id FROM ledger_holds").all()]


async def test_an_allowed_call_without_a_counter_writes_nothing_on_its_path(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules = policy("version: 1\ntools: {look: {}}\n")
    shop = Shop(shop.ledger, rules)
    writes = count_writes(shop.ledger, monkeypatch)
    assert (await shop.call("look"))["isError"] is False
    assert writes == [] and shop.ledger.calls() == []  # its event waits for the audit trail's batch
    assert shop.last.decision == "allow"


# --- guard-budget, tools/list and reloads ------------------------------------------------------------------


async def test_guard_budget_is_answered_by_guard_free_and_never_forwarded(ledger: RecordingLedger) -> None:
    shop = Shop(ledger, policy(SHOP.replace("default: deny\n", "default: deny\nexpose_budget_tool: true\n")))
    await shop.call("buy", item="tea", amount=30)
    answer = await shop.call("guard-budget")
    assert answer["structuredContent"]["budgets"][0]["remaining"] == 70
    assert len(shop.upstream.sent) == 1
    assert (shop.last.tool, shop.last.decision, shop.last.reason) == ("guard-budget", "allow", "answered by guard")


async def test_without_expose_budget_tool_guard_budget_is_a_tool_like_any_other(shop: Shop) -> None:
    assert shop.denied(await shop.call("guard-budget"))["rule"] == "default"


async def test_tools_list_shows_only_what_the_policy_lets_through_and_guard_budget_when_exposed(
    ledger: RecordingLedger,
) -> None:
    listing = {"tools": [{"name": name} for name in ("buy", "refund", "guard-budget", "browse")], "nextCursor": "c"}
    plain = Shop(ledger, policy(SHOP))
    exposed = Shop(ledger, policy(SHOP.replace("default: deny\n", "default: deny\nexpose_budget_tool: true\n")))
    shown = await plain.gate.list_tools(Session("s1"), listing)
    assert ([t["name"] for t in shown["tools"]], shown["nextCursor"]) == (["buy", "browse"], "c")
    with_budget = await exposed.gate.list_tools(Session("s1"), listing)
    assert [t["name"] for t in with_budget["tools"]] == ["buy", "browse", "guard-budget"]
    assert with_budget["tools"][-1]["annotations"]["readOnlyHint"] is True


async def test_a_reload_that_changes_what_a_session_sees_tells_its_client(
    ledger: RecordingLedger, tmp_path: Path
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(SHOP)
    source = PolicySource.from_file(path)
    gate = PolicyGate(source, ledger, "shop")
    seen, unseen = FakeLink(), FakeLink()
    gate.subscribe(Session("s1"), seen)
    gate.subscribe(Session("s2"), unseen)
    await gate.list_tools(Session("s1"), {"tools": [{"name": "browse"}, {"name": "buy"}]})
    await gate.list_tools(Session("s2"), {"tools": [{"name": "buy"}]})

    path.write_text(SHOP.replace("  browse: {rate_limit: 2/minute}\n", "  browse: {action: deny}\n"))
    assert await source.reload()
    assert (seen.changed, unseen.changed) == (1, 0)
    assert gate.links() == [seen, unseen]
