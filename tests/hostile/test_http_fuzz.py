"""Hypothesis against the HTTP front of a real `guard run --listen`, in both protocol eras.

Each example is one hostile request: a method, headers (content type, Accept, bearer token, Host, Origin,
session id, protocol version) and a body (JSON-RPC messages with any id, method, params and progress token;
bodies around the size limit; deep nesting; batches; bytes that are not JSON) — most of them close to what an
honest client sends, so they reach past the first check. Behind the guard is the fake 402-mcp with a paying
tool, and some examples pay. After every example:

- the guard answers a ping in a session the attacker cannot reach (another identity's), and a 2026-07-28
  `server/discover`;
- no hold is lost: nothing is left reserved or forwarded, and the ledger counts at least what the fake says
  left its wallet.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from ledgers import Amount, Budget, Ledger
from tests.hostile.http_guard import ENVELOPE, FAKE_402MCP, HEADERS, HttpGuard, answers

JSON = dict[str, Any]
LIMIT = 64 * 1024
ALICE, BOB = "alice-token-0123456789abcdef", "bob-token-0123456789abcdefgh"
SITES = [f"https://shop{n}.example/item" for n in range(40)]
POLICY = """\
version: 1
default: allow
budgets:
  - name: all
    limit: 1000000 sat
    scope: global
tools:
  l402-fetch:
    pays: true
    max_price: 50 sat
"""
FUZZ = settings(
    max_examples=120, deadline=None, database=None, suppress_health_check=list(HealthCheck), report_multiple_bugs=False
)

# --- what an attacker sends --------------------------------------------------------------------------------

# (h11, on the client side, sends no header value with surrounding whitespace)
VISIBLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=24).map(str.strip)
IDS = st.one_of(
    st.integers(),
    st.text(max_size=12),
    st.none(),
    st.integers(min_value=2**63),
    st.floats(),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
METHODS = st.one_of(
    st.sampled_from(
        [
            "ping",
            "initialize",
            "tools/call",
            "tools/list",
            "server/discover",
            "resources/list",
            "logging/setLevel",
            "notifications/initialized",
            "notifications/cancelled",
            "notifications/progress",
            "no/such/method",
        ]
    ),
    st.text(max_size=20),
)


@st.composite
def params(draw: st.DrawFn, modern: bool) -> Any:
    """A call of one of the fake's tools (a paying one among them), cancellation targets, or anything."""
    call = st.fixed_dictionaries(
        {
            "name": st.sampled_from(["l402-fetch", "l402-fetch", "l402-config", "l402-balance", "nope"]),
            "arguments": st.fixed_dictionaries({"url": st.sampled_from(SITES), "autoPay": st.booleans()}),
        },
        optional={"_meta": st.fixed_dictionaries({}, optional={"progressToken": IDS})},
    )
    chosen = draw(
        st.one_of(
            call,
            call,
            st.fixed_dictionaries({"requestId": IDS}),
            st.none(),
            st.dictionaries(st.text(max_size=6), st.integers() | st.text(max_size=6) | st.none(), max_size=3),
            st.integers(),
            st.text(max_size=10),
        )
    )
    if modern and isinstance(chosen, dict) and draw(st.booleans()):
        chosen = {**chosen, "_meta": {**chosen.get("_meta", {}), **ENVELOPE}}
    return chosen


@st.composite
def messages(draw: st.DrawFn, modern: bool) -> JSON:
    method = draw(st.one_of(st.just("tools/call"), METHODS))
    message: JSON = {"jsonrpc": draw(st.sampled_from(["2.0", "2.0", "2.0", "1.0"])), "method": method}
    if draw(st.integers(0, 4)):
        message["id"] = draw(IDS)
    if draw(st.integers(0, 4)):
        message["params"] = draw(params(modern))
    return message


@st.composite
def payments(draw: st.DrawFn, modern: bool) -> JSON:
    """A paying call as an honest client makes it, but for its id and progress token."""
    meta = {"progressToken": draw(IDS)} if draw(st.booleans()) else {}
    params = {"name": "l402-fetch", "arguments": {"url": draw(st.sampled_from(SITES)), "autoPay": True}}
    if meta or modern:
        params["_meta"] = {**meta, **(ENVELOPE if modern else {})}
    return {"jsonrpc": "2.0", "id": draw(IDS), "method": "tools/call", "params": params}


def padded_ping(delta: int) -> bytes:
    """A valid ping padded with JSON whitespace to `LIMIT + delta` bytes."""
    ping = b'{"jsonrpc":"2.0","id":"padded","method":"ping"}'
    return ping + b" " * (LIMIT + delta - len(ping))


def bodies(modern: bool) -> st.SearchStrategy[bytes]:
    return st.one_of(
        payments(modern).map(lambda m: json.dumps(m).encode()),
        payments(modern).map(lambda m: json.dumps(m).encode()),
        messages(modern).map(lambda m: json.dumps(m).encode()),
        messages(modern).map(lambda m: json.dumps(m).encode()),
        messages(modern).map(lambda m: json.dumps(m).encode()),
        st.binary(max_size=200),
        st.integers(-8, 8).map(padded_ping),
        st.integers(1, 30_000).map(lambda n: b"[" * n + b"]" * n),
        st.lists(messages(modern), max_size=3).map(lambda batch: json.dumps(batch).encode()),
    )


@dataclass(frozen=True)
class Hostile:
    method: str
    headers: dict[str, str | None]  # None: leave the honest header out
    body: bytes


# Placeholders the sender fills in: a session id only the guard knows, the guard's own Host/Origin.
VICTIM, CONTROL, SELF = "<victim>", "<control>", "<self>"


# Headers an attacker varies (a few at a time: the others stay honest, so most requests reach past the first check).
HEADER_VALUES: dict[str, st.SearchStrategy[str | None]] = {
    "content-type": st.one_of(
        st.none(),
        st.sampled_from(["application/json; charset=utf-8", "Application/JSON", "text/plain", ""]),
        st.sampled_from(["application/json-seq", "multipart/form-data; boundary=x"]),
        VISIBLE,
    ),
    "accept": st.one_of(st.none(), st.sampled_from(["application/json", "text/event-stream", "*/*", ""]), VISIBLE),
    "authorization": st.one_of(st.none(), st.sampled_from([f"Bearer {ALICE}x", "Bearer", f"Basic {ALICE}"]), VISIBLE),
    "host": st.sampled_from(["evil.example", "localhost", SELF]),
    "origin": st.sampled_from(["http://evil.example", "null", SELF]),
    "mcp-session-id": st.one_of(st.none(), st.sampled_from([VICTIM, CONTROL, "", "x" * 300]), VISIBLE),
    "mcp-protocol-version": st.one_of(
        st.none(), st.sampled_from(["2025-11-25", "2024-11-05", "2026-07-28", "1999-01-01"]), VISIBLE
    ),
}


@st.composite
def hostile(draw: st.DrawFn, modern: bool) -> Hostile:
    varied = draw(st.lists(st.sampled_from(sorted(HEADER_VALUES)), max_size=3, unique=True))
    headers = {name: draw(HEADER_VALUES[name]) for name in varied}
    method = draw(st.sampled_from(["POST"] * 8 + ["GET", "DELETE", "OPTIONS", "PUT", "PATCH"]))
    return Hostile(method, headers, draw(bodies(modern)))


# --- the guard under fire ----------------------------------------------------------------------------------


@dataclass
class Target:
    guard: HttpGuard
    state: Path
    victim: str  # alice's session: the attacker holds her token
    control: str  # bob's session: out of the attacker's reach

    def honest(self, modern: bool, token: str = ALICE) -> dict[str, str]:
        version = {"mcp-protocol-version": "2026-07-28"} if modern else {"mcp-session-id": self.victim}
        return {**HEADERS, "authorization": f"Bearer {token}", **version}

    def send(self, attack: Hostile, modern: bool) -> int:
        """Send the attack; the HTTP status it got."""
        headers = self.honest(modern)
        for name, value in attack.headers.items():
            filled = {VICTIM: self.victim, CONTROL: self.control, SELF: f"127.0.0.1:{self.guard.port}"}.get(
                value or "", value
            )
            if name == "origin" and value == SELF:
                filled = f"http://127.0.0.1:{self.guard.port}"
            if filled is None:
                headers.pop(name, None)
            else:
                headers[name] = filled
        http = self.guard.http
        with http.stream(attack.method, self.guard.url, content=attack.body, headers=headers) as response:
            if not (attack.method == "GET" and response.headers.get("content-type") == "text/event-stream"):
                response.read()  # (the server's own stream never ends: hang up on it)
        opened = response.headers.get("mcp-session-id")
        if response.status_code == 200 and opened not in (None, self.victim, self.control):
            # The attack opened a session (a valid initialize): close it, so sessions do not pile up.
            http.delete(self.guard.url, headers={"authorization": f"Bearer {ALICE}", "mcp-session-id": opened})
            self.guard.wait_for_stderr(f"session {opened} closed")
        return response.status_code

    def still_serving(self) -> None:
        """The guard answers both eras; the victim's session was closed only by a DELETE (then reopened)."""
        assert self.guard.process.poll() is None
        self.guard.ping(self.control, headers={"authorization": f"Bearer {BOB}"})
        self.guard.discover(headers={"authorization": f"Bearer {BOB}"})
        alice = {"authorization": f"Bearer {ALICE}"}
        pinged = self.guard.post({"jsonrpc": "2.0", "id": "alive", "method": "ping"}, self.victim, alice)
        if pinged.status_code == 404:
            self.victim = self.guard.initialize(alice)
        else:
            assert answers(pinged) == [{"jsonrpc": "2.0", "id": "alive", "result": {}}], pinged.text

    def no_hold_lost(self) -> int:
        """How many payments left the wallet so far (checking the ledger counts them all)."""
        payments = json.loads(self.state.read_text())["payments"]
        paid = sum(p["amount"] for p in payments)
        with Ledger.open(self.guard.ledger, read_only=True) as ledger:
            usage = ledger.usage(Budget("all", Amount(1_000_000, "sat"), "global"))
            unresolved = ledger.open_holds("reserved") + ledger.open_holds("forwarded")
        assert unresolved == []
        assert usage.spent + usage.held >= paid
        return len(payments)


def unusable_id(body: bytes) -> bool:
    """A request (it has a method and an id) whose id is not a string or an integer."""
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        return False
    if not isinstance(message, dict) or "method" not in message or "id" not in message:
        return False
    request_id = message["id"]
    return not (isinstance(request_id, str) or (isinstance(request_id, int) and not isinstance(request_id, bool)))


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Target]:
    policy, state, tokens = tmp_path / "policy.yaml", tmp_path / "fake.json", tmp_path / "tokens.json"
    policy.write_text(POLICY)
    state.write_text(json.dumps({"prices": dict.fromkeys(SITES, 5)}))
    tokens.write_text(json.dumps({"alice": ALICE, "bob": BOB}))
    guard = HttpGuard(
        tmp_path,
        ["--policy", str(policy), "--tokens", str(tokens), "--max-message-size", f"{LIMIT}B", "--max-sessions", "8"],
        FAKE_402MCP,
        env={"FAKE_STATE": str(state)},
    )
    try:
        victim = guard.initialize({"authorization": f"Bearer {ALICE}"})
        control = guard.initialize({"authorization": f"Bearer {BOB}"})
        # Each identity's 2026-07-28 channel speaks that era from its first request on.
        guard.discover(headers={"authorization": f"Bearer {ALICE}"})
        yield Target(guard, state, victim, control)
        assert not [line for line in guard.stderr if "Exception in ASGI application" in line or "crashed" in line]
    finally:
        guard.stop()


@pytest.mark.parametrize("era", ["handshake", "2026-07-28"])
def test_hostile_requests_never_stop_the_guard_nor_lose_a_hold(target: Target, era: str) -> None:
    modern = era == "2026-07-28"
    pay = {"name": "l402-fetch", "arguments": {"url": SITES[0], "autoPay": True}}
    honest_payment = {"jsonrpc": "2.0", "id": "pay", "method": "tools/call", "params": pay}
    if modern:
        honest_payment["params"] = {**pay, "_meta": ENVELOPE}
    # A payment made honestly first: the ledger check below has something to compare.
    target.send(Hostile("POST", {}, json.dumps(honest_payment).encode()), modern)
    assert json.loads(target.state.read_text())["payments"], "the honest payment was not made"

    @FUZZ
    @given(hostile(modern))
    def attack(request: Hostile) -> None:
        status = target.send(request, modern)
        assert status != 500
        if request.method == "POST" and unusable_id(request.body):  # (only POST bodies are read)
            assert status >= 400  # never forwarded as a notification
        # Two sessions and two 2026-07-28 channels (one per identity): a refused request started no upstream.
        assert len(target.guard.upstreams()) <= 4
        target.still_serving()
        payments = target.no_hold_lost()
        event(f"HTTP {status}")  # (pytest --hypothesis-show-statistics)
        event(f"{payments} payments so far")

    attack()
