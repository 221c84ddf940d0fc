"""guard between the official x402 SDK's MCP client and a paid MCP server made with the same SDK (x402 2.25.0:
`x402MCPSession` + `ExactEvmClientScheme`; `create_payment_wrapper`, its resource server, facilitator and
`exact` EVM scheme), only the chain faked (tests/x402/sdk_server.py). Real processes: the SDK's client
starts `guard run`, which starts the SDK's server.

What the SDK does that our reading did not expect is named where a test relies on it."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from tests.x402.sdk import Shop

POLICY = """\
version: 1
default: deny
budgets:
  - name: wallet
    limit: {limit}
    scope: session
tools:
  get_weather: {{}}
  summarize: {{}}
  translate: {{}}
  ping: {{}}
"""


def holds(shop: Shop) -> list[tuple[str, str, int, int | None, str]]:
    """Every hold: (tool, phase, reserved, settled, payment id), in order."""
    with sqlite3.connect(shop.ledger) as db:
        rows = db.execute("SELECT tool, phase, amount, settled, idempotency_key FROM ledger_holds ORDER BY id")
        return [tuple(row) for row in rows]  # type: ignore[misc]


def test_the_sdk_client_pays_three_prices_through_guard_and_the_ledger_counts_exactly_what_moved(
    tmp_path: Path,
) -> None:
    """The SDK's receipt names no amount (`{success, payer, transaction, network}`): the price is the
    payment's `accepted.amount`, which is what the authorization moves."""
    shop = Shop(tmp_path, POLICY.format(limit="1 usdc"))
    plan = [
        {"call": "get_weather", "arguments": {"city": "Oslo"}},
        {"call": "summarize", "arguments": {"text": "a long text"}},
        {"call": "translate", "arguments": {"text": "hello"}},
    ]
    answers = shop.client(plan)

    assert [(a["is_error"], a["payment_made"], a["payment_response"]["success"]) for a in answers] == [
        (False, True, True)
    ] * 3
    assert all("amount" not in a["payment_response"] for a in answers)
    moved = {entry["value"] for entry in shop.chain()["used"].values()}
    assert moved == {10_000, 25_000, 3_000}
    assert [(tool, phase, settled) for tool, phase, _, settled, _ in holds(shop)] == [
        ("get_weather", "settled", 10_000),
        ("summarize", "settled", 25_000),
        ("translate", "settled", 3_000),
    ]
    assert {key for *_, key in holds(shop)} == set(shop.chain()["used"])


def test_an_over_budget_signed_payment_is_refused_before_it_reaches_the_server(tmp_path: Path) -> None:
    shop = Shop(tmp_path, POLICY.format(limit="0.02 usdc"))
    weather, summary = shop.client(
        [{"call": "get_weather", "arguments": {"city": "Oslo"}}, {"call": "summarize", "arguments": {"text": "x"}}]
    )

    assert weather["payment_response"]["success"] is True
    # The SDK's client sees guard's denial as the paid retry's answer: an error, no receipt.
    assert summary["is_error"] is True and summary["payment_response"] is None
    assert summary["text"].startswith("Denied by guard: ")
    assert summary["structured"]["rule"].startswith("budgets")
    arrived = [entry["tool"] for entry in shop.chain()["arrived"]]
    assert arrived == ["get_weather"]  # the signed summarize payment never reached the server
    assert [entry["value"] for entry in shop.chain()["used"].values()] == [10_000]
    assert [(tool, phase) for tool, phase, *_ in holds(shop)] == [("get_weather", "settled")]


def test_the_unpaid_payment_required_answer_passes_through_unchanged_and_uncounted(tmp_path: Path) -> None:
    shop = Shop(tmp_path, POLICY.format(limit="1 usdc"))
    step = [{"raw": "summarize", "arguments": {"text": "x"}}]
    [direct] = shop.client(step, through_guard=False)
    [guarded] = shop.client(step)

    assert guarded == direct
    # The SDK's PaymentRequired: a tool result (no JSON-RPC error 402, though its README names one), its
    # JSON in the text as `json.dumps` writes it (", " and ": "), maxTimeoutSeconds 300.
    assert guarded["is_error"] is True
    assert guarded["structured"]["accepts"][0]["amount"] == "25000"
    assert guarded["text"].startswith('{"x402Version": 2, "accepts": [{"scheme": "exact"')
    assert holds(shop) == []


def test_a_replayed_nonce_is_refused_by_guard_and_never_reaches_the_server_again(tmp_path: Path) -> None:
    shop = Shop(tmp_path, POLICY.format(limit="1 usdc"))
    paid, replay = shop.client([{"call": "get_weather", "arguments": {"city": "Oslo"}}, {"replay": 0}])

    assert paid["payment_response"]["success"] is True
    assert replay["is_error"] is True and replay["structured"]["rule"] == "idempotency"
    assert len(shop.chain()["arrived"]) == 1
    assert [(tool, phase) for tool, phase, *_ in holds(shop)] == [("get_weather", "settled")]


def test_each_settlement_failure_is_counted_as_what_it_proves(tmp_path: Path) -> None:
    """The SDK's wrapper reports a failed settlement in `structuredContent["x402/payment-response"]`
    (not `_meta`) with `transaction: ""`, and a tool that raised after verification as `Tool execution
    error: …` with no x402 field at all (it does not settle)."""
    outcomes = {"summarize": "pending", "translate": "revert", "get_weather": "tool_fails"}
    shop = Shop(tmp_path, POLICY.format(limit="1 usdc"), chain={"outcomes": outcomes})
    pending, reverted, failed = shop.client(
        [
            {"call": "summarize", "arguments": {"text": "x"}},
            {"call": "translate", "arguments": {"text": "x"}},
            {"call": "get_weather", "arguments": {"city": "Oslo"}},
        ]
    )

    assert pending["structured"]["x402/payment-response"]["errorReason"] == "settlement_pending"
    assert reverted["structured"]["x402/payment-response"]["errorReason"] == "transaction_failed"
    assert failed["text"].startswith("Tool execution error: ") and failed["structured"] is None
    assert [(tool, phase) for tool, phase, *_ in holds(shop)] == [
        ("summarize", "in_doubt"),  # the transfer landed; its receipt was lost: counted
        ("translate", "voided"),  # reverted: nothing moved
        ("get_weather", "in_doubt"),  # not settled, but its authorization is usable until validBefore
    ]
    assert [entry["value"] for entry in shop.chain()["used"].values()] == [25_000]


def test_pays_true_on_an_sdk_tool_holds_only_its_first_unpaid_call_ever_and_pays_x402_none(tmp_path: Path) -> None:
    """The SDK's client always calls first without a payment and pays on the PaymentRequired (its
    `resource.url` is `mcp://tool/<name>`). `pays: true` (needed for a `max_price`) holds that very first
    unpaid call at the cap and voids it; guard then knows x402 pays the tool. `pays: x402` holds none."""
    policy = POLICY.format(limit="1 usdc").replace(
        "  get_weather: {}\n  summarize: {}\n",
        "  get_weather:\n    pays: true\n    max_price: 0.05 usdc\n  summarize:\n    pays: x402\n",
    )
    shop = Shop(tmp_path, policy)
    plan = [
        {"call": "get_weather", "arguments": {"city": "Oslo"}},
        {"call": "get_weather", "arguments": {"city": "Rome"}},
        {"call": "summarize", "arguments": {"text": "x"}},
    ]
    answers = shop.client(plan)

    assert [a["payment_response"]["success"] for a in answers] == [True] * 3
    assert [(tool, phase, reserved) for tool, phase, reserved, *_ in holds(shop)] == [
        ("get_weather", "voided", 50_000),  # the first unpaid call ever: priced by max_price, voided
        ("get_weather", "settled", 10_000),
        ("get_weather", "settled", 10_000),  # its unpaid call was not held: x402 pays this tool
        ("summarize", "settled", 25_000),
    ]
    assert sorted(entry["value"] for entry in shop.chain()["used"].values()) == [10_000, 10_000, 25_000]
