"""The attacks on a stdio guard, in raw JSON-RPC against a real `guard run`, each shown to fail.

In front of the fake 402-mcp (tests/upstreams/fake_402mcp.py: it records every payment that left its wallet)
the ledger is compared with what the fake was paid; in front of a hand-written upstream that runs whatever it
is sent (tests/hostile/raw_upstream.py) its record of tool runs tells what got through.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ledgers import Amount, Ledger
from tests.e2e.helpers import body, site
from tests.hostile.stdio_guard import FAKE_402MCP, L402_POLICY, RAW_UPSTREAM, StdioGuard

MIB = 1024 * 1024
WAITS = "fake_402mcp: l402-fetch waits"  # the fake started a slow payment: the call is in flight upstream

RAW_POLICY = """\
version: 1
default: deny
budgets:
  - name: per-session
    limit: 100 sat
    scope: session
tools:
  late: {}
  huge: {}
  fail:
    pays: true
    max_price: 10 sat
"""


def test_a_reused_request_id_cannot_void_a_payment_in_flight(tmp_path: Path) -> None:
    """15 paid fetches of 10 sat on a 100 sat budget, each followed, while its payment is in flight, by another
    request under the same id (the upstream answers that one at once, with an error)."""
    urls = [site(n) for n in range(15)]
    state = {"prices": dict.fromkeys(urls, 10), "delays": dict.fromkeys(urls, 0.5)}
    guard = StdioGuard(tmp_path, L402_POLICY, FAKE_402MCP, state=state)
    reused = []
    for url in urls:
        forwarded = guard.stderr_count(WAITS)
        call = guard.call("l402-fetch", {"url": url, "autoPay": True})
        guard.wait_until(lambda: bool(guard.answers(call)) or guard.stderr_count(WAITS) > forwarded)  # noqa: B023
        if not guard.answers(call):
            guard.send_request("resources/list", request_id=call)
            guard.wait_until(lambda: len(guard.answers(call)) == 2)  # noqa: B023
            reused.append(call)
    guard.ping()
    guard.stop()

    paid, counted = guard.paid_sat(), guard.counted_sat()
    assert paid == counted == 100
    assert len(reused) == 10
    for call in reused:
        refusal, fetched = guard.answers(call)
        assert refusal["error"] == {
            "code": -32600,
            "message": "Invalid request: a request with this id is already in flight",
        }
        assert body(fetched["result"])["satsPaid"] == 10
    print(
        f"id reuse: {len(urls)} paid fetches attempted, {len(reused)} admitted; paid {paid} sat, counted {counted} sat"
    )


@pytest.mark.parametrize("kind", ["tools/call", "ping"])
def test_a_request_without_a_usable_id_is_never_forwarded(tmp_path: Path, kind: str) -> None:
    """`launch` is denied by the policy; the upstream would run any tools/call it is sent, id or not."""
    guard = StdioGuard(tmp_path, RAW_POLICY, RAW_UPSTREAM)
    params = {"name": "launch", "arguments": {}} if kind == "tools/call" else {}
    bad_ids: list[Any] = [None, 1.5, True, [1], {}]
    guard.send({"jsonrpc": "2.0", "method": kind, "params": params})  # no id at all
    for bad in bad_ids:
        guard.send({"jsonrpc": "2.0", "id": bad, "method": kind, "params": params})
    control = guard.answer(guard.send_request(kind, params))  # with a usable id
    guard.ping()
    guard.stop()

    assert guard.runs() == []
    refusals = [m for m in guard.out if isinstance(m, dict) and "id" in m and m["id"] is None]
    expected = {"code": -32600, "message": "Invalid request: the id must be a string or an integer"}
    assert [r["error"] for r in refusals] == [expected] * len(bad_ids)
    if kind == "ping":
        assert control["result"] == {}
        return
    assert control["result"]["structuredContent"]["rule"] == "default"
    with Ledger.open(guard.ledger, read_only=True) as ledger:
        events = [(e.call.tool, e.call.decision, e.call.rule) for e in ledger.calls(last=100)]
    assert events == [("launch", "deny", "wire")] * (1 + len(bad_ids)) + [("launch", "deny", "default")]


def test_killer_messages_leave_the_guard_answering_and_the_payment_in_flight_answered(tmp_path: Path) -> None:
    state = {"prices": {site(0): 10}, "delays": {site(0): 2}}
    guard = StdioGuard(tmp_path, L402_POLICY, FAKE_402MCP, state=state)
    paying = guard.call("l402-fetch", {"url": site(0), "autoPay": True})
    guard.wait_until(lambda: guard.stderr_count(WAITS) == 1)

    guard.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": [paying]}})
    guard.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": {"id": paying}}})
    list_token = guard.send_request("ping", {"_meta": {"progressToken": [1]}})
    object_token = guard.send_request(
        "tools/call", {"name": "l402-fetch", "arguments": {"url": site(1)}, "_meta": {"progressToken": {"t": 1}}}
    )
    over_64_mib = b'{"jsonrpc":"2.0","id":7,"method":"ping","params":{"pad":"' + b"x" * (65 * MIB) + b'"}}\n'
    guard.write(over_64_mib)
    guard.ping()
    fetched = guard.answer(paying)
    guard.stop()

    assert body(fetched["result"])["satsPaid"] == 10
    assert guard.paid_sat() == guard.counted_sat() == 10
    token_refusal = {"code": -32600, "message": "Invalid request: _meta.progressToken must be a string or an integer"}
    assert guard.answer(list_token)["error"] == guard.answer(object_token)["error"] == token_refusal
    assert guard.answers(7) == []
    [too_large] = [m for m in guard.out if isinstance(m, dict) and m.get("id", 0) is None]
    assert too_large["error"] == {"code": -32600, "message": "message too large: the limit is 16777216 bytes"}


def test_a_wedged_upstream_times_out_and_the_payment_stays_counted_in_doubt(tmp_path: Path) -> None:
    state = {"prices": {site(0): 10}, "delays": {site(0): 3600}}
    guard = StdioGuard(tmp_path, L402_POLICY, FAKE_402MCP, state=state, extra=("--request-timeout", "1s"))
    paying = guard.call("l402-fetch", {"url": site(0), "autoPay": True})
    error = guard.answer(paying)["error"]
    guard.ping()
    guard.stop()

    assert error == {
        "code": -32001,
        "message": "the upstream did not answer tools/call within 1 s; guard cancelled it",
    }
    with Ledger.open(guard.ledger, read_only=True) as ledger:
        [hold] = ledger.open_holds()
    assert (hold.phase, hold.amount) == ("in_doubt", Amount(10, "sat"))
    assert guard.paid_sat() == 0 and guard.counted_sat() == 10


def test_late_repeated_and_stray_upstream_answers_are_dropped(tmp_path: Path) -> None:
    """`late` answers only after guard cancelled it, twice, and once more under an id guard never sent."""
    guard = StdioGuard(tmp_path, RAW_POLICY, RAW_UPSTREAM, extra=("--request-timeout", "1s"))
    late = guard.call("late", {}, request_id="guard-1")
    timed_out = guard.answer(late)
    guard.wait_until(lambda: guard.stderr_count("that answers no request in flight") == 3)
    guard.ping()  # the raw upstream answers in order: anything relayed from the three came before this
    guard.stop()

    assert guard.answers("guard-1") == [timed_out]
    assert timed_out["error"]["code"] == -32001
    # The upstream saw guard's own id (and the cancellation named it: that is what made it answer).
    [run] = guard.runs()
    assert run["tool"] == "late" and isinstance(run["id"], int)


def test_an_upstream_line_over_64_mib_is_skipped_and_the_link_lives_on(tmp_path: Path) -> None:
    guard = StdioGuard(tmp_path, RAW_POLICY, RAW_UPSTREAM, extra=("--request-timeout", "2s"))
    huge = guard.answer(guard.call("huge", {}))
    guard.ping()
    guard.stop()

    assert huge["error"]["code"] == -32001  # its answer was skipped: it never came
    assert guard.stderr_count("wrote a message over 67108864 bytes: skipped it") == 1
    assert not [line for line in guard.err if "xxxx" in line]


def test_only_the_upstreams_own_not_run_errors_void_a_payment(tmp_path: Path) -> None:
    codes = {-32602: "voided", -32601: "voided", -32603: "in_doubt", -32001: "in_doubt", 402: "in_doubt"}
    guard = StdioGuard(tmp_path, RAW_POLICY, RAW_UPSTREAM)
    answers = [guard.answer(guard.call("fail", {"code": code})) for code in codes]
    guard.stop()

    assert [a["error"]["code"] for a in answers] == list(codes)
    with Ledger.open(guard.ledger, read_only=True) as ledger:
        holds = [e.call.hold_id for e in ledger.calls(last=100) if e.call.tool == "fail"]
        phases = [ledger.hold(hold).phase for hold in holds if hold is not None]
    assert phases == list(codes.values())
