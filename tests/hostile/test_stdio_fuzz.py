"""Hypothesis against a real stdio guard in front of the fake 402-mcp: hostile lines interleaved with paying calls.

One `guard run` serves every example of the test. An example is a handful of steps: a paying `l402-fetch`
(1 sat, on an origin of its own), random bytes, invalid UTF-8, deep nesting, a string over the message limit,
a lone surrogate, a number of 5000 digits, a JSON-RPC-shaped object with the wrong types anywhere (jsonrpc,
id, method, params, _meta, progressToken, requestId, result, error), a request reusing a paying call's id,
a cancellation of a paying call or of a random id, a response from the client under a random id. After it:

- the guard still answers a ping, and every paying call it was not told to cancel is answered;
- the fake was paid no more than the ledger counts (spent + held + in doubt);
- no hold waits in `reserved` or `forwarded` beyond the paying calls that were cancelled unanswered
  (a cancelled call's hold goes to in doubt a moment later).
And once the guard has stopped: no hold is left reserved or forwarded, and nothing failed inside the relay.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledgers import Ledger
from tests.e2e.helpers import site
from tests.hostile.stdio_guard import FAKE_402MCP, JSON, StdioGuard

MAX_MESSAGE = 64 * 1024  # a small limit, so lines over it are cheap to send
SITES = 3000
POLICY = """\
version: 1
default: deny
budgets:
  - name: per-session
    limit: 1000000 sat
    scope: session
tools:
  l402-fetch:
    pays: true
    max_price: 5 sat
"""
ALREADY_IN_FLIGHT = {"code": -32600, "message": "Invalid request: a request with this id is already in flight"}

scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
methods = (
    st.sampled_from(
        [
            "ping",
            "tools/list",
            "tools/call",
            "resources/list",
            "initialize",
            "notifications/cancelled",
            "notifications/progress",
            "notifications/initialized",
            "nope",
        ]
    )
    | st.text(max_size=12)
    | values
)
params = values | st.fixed_dictionaries(
    {},
    optional={
        "name": st.sampled_from(["nope", "l402-discover", "guard-budget"]) | values,
        "arguments": values,
        "_meta": st.fixed_dictionaries({}, optional={"progressToken": values}) | values,
        "requestId": values,
    },
)
messages = st.fixed_dictionaries(
    {"jsonrpc": st.just("2.0") | st.just("2.0") | values},
    optional={
        "id": values,
        "method": methods,
        "params": params,
        "result": values,
        "error": st.fixed_dictionaries({"code": st.integers(), "message": st.text(max_size=8)}) | values,
    },
)
junk = st.one_of(
    st.binary(max_size=64),
    st.just(b'{"jsonrpc":"2.0","id":"u","method":"ping","params":{"s":"\xff\xfe"}}'),
    st.just(b'{"jsonrpc":"2.0","id":"s","method":"ping","params":{"s":"\\ud800"}}'),
    st.just(b'{"jsonrpc":"2.0","id":' + b"9" * 5000 + b',"method":"ping"}'),
    st.integers(1, 5000).map(
        lambda n: b'{"jsonrpc":"2.0","id":"d","method":"ping","params":{"a":' + b"[" * n + b"]" * n + b"}}"
    ),
    st.sampled_from([MAX_MESSAGE - 100, MAX_MESSAGE + 1, 4 * MAX_MESSAGE]).map(
        lambda n: b'{"jsonrpc":"2.0","id":"h","method":"ping","params":{"s":"' + b"x" * n + b'"}}'
    ),
)


def is_call_answer(answer: JSON) -> bool:
    """The answer to a paying call itself: not a refusal of a later request under its id, nor the upstream's
    answer to such a request (a ping) once the id was free again."""
    return answer.get("error") != ALREADY_IN_FLIGHT and answer.get("result") != {}


def test_hostile_lines_between_paying_calls_never_lose_a_payment(tmp_path: Path) -> None:
    state = {"prices": {site(n): 1 for n in range(SITES)}}
    extra = ("--max-message-size", str(MAX_MESSAGE), "--request-timeout", "5s")
    guard = StdioGuard(tmp_path, POLICY, FAKE_402MCP, state=state, extra=extra)
    sites, pay_ids = itertools.count(), itertools.count()
    paying: list[str] = []  # every paying call's id, all examples
    cancelled: set[str] = set()

    @settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    def example(data: st.DataObject) -> None:
        mine: list[str] = []
        for _ in range(data.draw(st.integers(1, 10), label="steps")):
            step = data.draw(st.sampled_from(["pay", "junk", "message", "reuse", "cancel", "respond"]), label="step")
            if step == "pay":
                mine.append(f"pay-{next(pay_ids)}")
                paying.append(mine[-1])  # at once: Hypothesis may end an example at any draw
                guard.call("l402-fetch", {"url": site(next(sites) % SITES), "autoPay": True}, request_id=mine[-1])
            elif step == "junk":
                guard.write(data.draw(junk, label="junk") + b"\n")
            elif step == "message":
                guard.write(json.dumps(data.draw(messages, label="message")).encode() + b"\n")
            elif step == "reuse" and mine:
                guard.send_request("ping", request_id=data.draw(st.sampled_from(mine), label="reused"))
            elif step == "cancel":
                target: Any = data.draw(st.sampled_from(mine) if mine else values, label="cancelled")
                if isinstance(target, str):
                    cancelled.add(target)
                guard.send({"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": target}})
            elif step == "respond":
                answer = {"jsonrpc": "2.0", "id": data.draw(values, label="id"), "result": data.draw(values)}
                guard.send(answer)
        guard.ping()
        for call in mine:
            if call not in cancelled:
                guard.wait_until(lambda: any(is_call_answer(a) for a in guard.answers(call)))  # noqa: B023
        paid = guard.paid_sat()  # first: whatever it says left, the ledger must count by now
        assert paid <= guard.counted_sat()
        unanswered = [c for c in paying if not any(is_call_answer(a) for a in guard.answers(c))]
        with Ledger.open(guard.ledger, read_only=True) as ledger:
            waiting = ledger.open_holds("reserved") + ledger.open_holds("forwarded")
        assert len(waiting) <= len(unanswered)

    try:
        example()
    finally:
        status = guard.stop()
    with Ledger.open(guard.ledger, read_only=True) as ledger:
        assert ledger.open_holds("reserved") == ledger.open_holds("forwarded") == []
    assert guard.paid_sat() <= guard.counted_sat()
    assert status == 0
    assert not [line for line in guard.err if "Traceback" in line or "inside the relay" in line]
    paid, counted = guard.paid_sat(), guard.counted_sat()
    print(f"fuzz: {len(paying)} paying calls, {len(cancelled)} cancelled; paid {paid} sat, counted {counted} sat")
