"""Hostile HTTP clients against a real `guard run --listen`, in raw HTTP (httpx, raw sockets; no MCP SDK client).

Each test reproduces an attack on the HTTP front and shows it fails: bodies past the size limit, requests that
would start upstream processes before being refused, unusable or duplicate request ids, too many sessions,
sessions that never end, connections that never finish a request, floods of bad connections in the log. Where
money is involved, the ledger is compared with what the fake 402-mcp says left its wallet.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from guard.proxy.http import LogFloodFilter
from ledgers import Amount, Budget, Ledger, Window
from tests.conftest import INITIALIZE, WAIT_S
from tests.hostile.http_guard import (
    DUAL_ERA,
    FAKE_402MCP,
    HEADERS,
    PAUSED_402MCP,
    HttpGuard,
    answers,
    error_of,
    modern_headers,
    modern_request,
    read_until_closed,
)

JSON = dict[str, Any]
INVALID_REQUEST = -32600


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., HttpGuard]]:
    """`start(args, upstream=DUAL_ERA, env=None)`: a listening guard, stopped after the test. Its upstreams are
    per session (`--upstream-sessions per-session`), so counting them counts what each request started; a shared
    upstream starts with the guard (tests/proxy/test_reaping.py)."""
    started: list[HttpGuard] = []

    def begin(args: list[str], upstream: list[str] = DUAL_ERA, env: dict[str, str] | None = None) -> HttpGuard:
        guard = HttpGuard(tmp_path, ["--upstream-sessions", "per-session", *args], upstream, env)
        started.append(guard)
        return guard

    yield begin
    for guard in started:
        guard.stop()


def raw_exchange(guard: HttpGuard, request: bytes) -> bytes:
    """Send raw bytes on a new connection; everything the guard answers before it closes the connection."""
    with guard.raw() as connection:
        connection.sendall(request)
        return read_until_closed(connection)


def sse_messages(response: httpx.Response) -> Iterator[JSON]:
    """The JSON-RPC messages of a streamed SSE response, as they arrive."""
    return (json.loads(line[5:]) for line in response.iter_lines() if line.startswith("data:") and line[5:])


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def json_body(response: bytes) -> JSON:
    return json.loads(response.split(b"\r\n\r\n", 1)[1])  # type: ignore[no-any-return]


# --- the body limit ----------------------------------------------------------------------------------------


def test_a_content_length_past_the_limit_is_refused_413_before_a_byte_of_the_body_is_sent(
    start: Callable[..., HttpGuard],
) -> None:
    guard = start(["--max-message-size", "1MiB"])
    head = (
        f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{guard.port}\r\nContent-Type: application/json\r\n"
        "Accept: application/json, text/event-stream\r\nContent-Length: 104857600\r\n\r\n"
    )
    # Only the headers: the guard must answer from Content-Length alone, and hang up.
    response = raw_exchange(guard, head.encode())

    assert status_of(response) == 413
    assert b"connection: close" in response.lower()
    error = json_body(response)["error"]
    assert error == {
        "code": INVALID_REQUEST,
        "message": "Payload Too Large: the limit is 1048576 bytes (--max-message-size)",
    }
    assert guard.upstreams() == []


@pytest.mark.parametrize("era", ["legacy", "2026-07-28"])
def test_a_chunked_body_past_the_limit_is_refused_413_as_soon_as_it_passes_it(
    start: Callable[..., HttpGuard], era: str
) -> None:
    guard = start(["--max-message-size", "1MiB"])
    chunk, total = b"x" * 65536, 64 * 1024 * 1024
    sent = 0

    def body() -> Iterator[bytes]:  # no length known up front: Transfer-Encoding: chunked
        nonlocal sent
        while sent < total:
            sent += len(chunk)
            yield chunk

    headers = HEADERS if era == "legacy" else modern_headers("ping")
    refused = guard.http.post(guard.url, content=body(), headers=headers)

    assert refused.status_code == 413
    assert error_of(refused)["message"] == "Payload Too Large: the limit is 1048576 bytes (--max-message-size)"
    # The guard stopped reading and hung up: the client could not push the rest (64 MiB) into it.
    assert sent < total // 4
    guard.ping(guard.initialize())


# --- every check before any upstream starts ----------------------------------------------------------------


def test_forty_refused_requests_start_no_upstream_process(start: Callable[..., HttpGuard]) -> None:
    guard = start(["--max-message-size", "64KiB"])
    evil = {"Origin": "http://evil.example"}
    ping = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    bad_initialize = {**INITIALIZE, "params": {"protocolVersion": 2025}}
    attempts: list[Callable[[], httpx.Response]] = [
        lambda: guard.post(INITIALIZE, headers={"Host": "evil.example"}),  # DNS rebinding
        lambda: guard.post(INITIALIZE, headers=evil),  # a web page's POST
        lambda: guard.http.options(guard.url, headers={**evil, "Access-Control-Request-Method": "POST"}),
        lambda: guard.http.options(guard.url, headers={"Origin": f"http://127.0.0.1:{guard.port}"}),
        lambda: guard.http.get(guard.url, headers={"Accept": "text/event-stream"}),
        lambda: guard.http.delete(guard.url),
        lambda: guard.http.put(guard.url, json=INITIALIZE),
        lambda: guard.post(INITIALIZE, headers={"Content-Type": "text/plain"}),  # a "simple" cross-site POST
        lambda: guard.post(INITIALIZE, headers={"Accept": "application/json"}),
        lambda: guard.http.post(guard.url, content=b"{" * 70_000, headers=HEADERS),  # past 64KiB
        lambda: guard.post({**INITIALIZE, "id": None}),
        lambda: guard.post(ping),  # no session, not an initialize
        lambda: guard.post({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        lambda: guard.post(bad_initialize),
        lambda: guard.http.post(guard.url, content=b"not json", headers=HEADERS),
        lambda: guard.post([INITIALIZE]),  # a batch
        lambda: guard.post(INITIALIZE, session="no-such-session"),
    ]
    refused = [attempts[n % len(attempts)]() for n in range(40)]

    assert guard.upstreams() == []
    assert not [line for line in guard.stderr if "relaying to" in line]
    assert all(400 <= answer.status_code < 500 for answer in refused), [a.status_code for a in refused]
    rebound, preflight = refused[0], refused[3]
    assert (rebound.status_code, rebound.text) == (421, "Invalid Host header")  # the SDK's own answer
    assert preflight.status_code == 405 and preflight.headers["allow"] == "GET, POST, DELETE"
    assert not [name for name in preflight.headers if name.startswith("access-control-")]
    guard.initialize()  # and the count is real: one session, one upstream
    assert len(guard.upstreams()) == 1


# --- request ids -------------------------------------------------------------------------------------------

UNUSABLE_IDS = [None, 1.5, True, [1], {}]


@pytest.mark.parametrize("bad_id", UNUSABLE_IDS, ids=json.dumps)
def test_a_request_with_an_unusable_id_is_refused_in_both_eras_not_forwarded_as_a_notification(
    start: Callable[..., HttpGuard], bad_id: Any
) -> None:
    guard = start([])
    session = guard.initialize()
    call = {"name": "echo", "arguments": {"text": "undecided"}}

    legacy = guard.post({"jsonrpc": "2.0", "id": bad_id, "method": "tools/call", "params": call}, session)
    modern = guard.http.post(
        guard.url, json=modern_request(bad_id, "tools/call", call), headers=modern_headers("tools/call")
    )

    for refused in (legacy, modern):
        assert refused.status_code == 400, refused.text
        error = error_of(refused)
        assert error["code"] == INVALID_REQUEST
        assert error["message"] == "Invalid request: the id must be a string or an integer"
    guard.ping(session)
    calls = guard.post({"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": {"name": "calls"}}, session)
    assert answers(calls)[-1]["result"]["content"][0]["text"] == "0"  # the upstream never ran the echo


def test_an_id_in_flight_is_refused_and_the_first_request_still_gets_its_answer(
    start: Callable[..., HttpGuard],
) -> None:
    guard = start([])
    session = guard.initialize()
    ask = {"jsonrpc": "2.0", "id": 5, "method": "tools/call", "params": {"name": "ask", "arguments": {}}}
    listen = {"Accept": "text/event-stream", "mcp-session-id": session}
    with (
        guard.http.stream("GET", guard.url, headers=listen) as server_stream,
        guard.http.stream("POST", guard.url, json=ask, headers={**HEADERS, "mcp-session-id": session}) as first,
    ):
        # The upstream asks the client something (elicitation, on the server's stream): request 5 is in flight.
        elicitation = next(sse_messages(server_stream))
        assert elicitation["method"] == "elicitation/create"

        duplicates = [
            guard.post({"jsonrpc": "2.0", "id": 5, "method": "ping"}, session),
            guard.post({"jsonrpc": "2.0", "id": "5", "method": "ping"}, session),  # the SDK keys streams by str(id)
        ]
        reply = {"jsonrpc": "2.0", "id": elicitation["id"], "result": {"action": "accept", "content": {"ok": True}}}
        assert guard.post(reply, session).status_code == 202
        answer = next(sse_messages(first))

    for duplicate in duplicates:
        assert duplicate.status_code == 400
        assert error_of(duplicate)["code"] == INVALID_REQUEST
        assert "is already in flight in this session" in error_of(duplicate)["message"]
    assert answer["id"] == 5
    assert answer["result"]["content"][0]["text"] == "accept {'ok': True}"
    guard.ping(session, request_id=5)  # answered: the id is free again


PAYING_POLICY = """\
version: 1
default: deny
budgets:
  - name: per-session
    limit: 100 sat
    scope: session
tools:
  l402-fetch:
    pays: true
    max_price: 50 sat
"""


def test_a_reused_id_cannot_answer_for_a_paying_call_in_flight_and_void_its_hold(
    start: Callable[..., HttpGuard], tmp_path: Path
) -> None:
    policy, state, pause = tmp_path / "policy.yaml", tmp_path / "fake.json", tmp_path / "pause"
    policy.write_text(PAYING_POLICY)
    state.write_text(json.dumps({"prices": {"https://shop.example/item": 30}}))
    os.mkfifo(pause)
    guard = start(
        ["--policy", str(policy)], upstream=PAUSED_402MCP, env={"FAKE_STATE": str(state), "FAKE_PAUSE": str(pause)}
    )
    session = guard.initialize()
    fetch = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {
            "name": "l402-fetch",
            "arguments": {"url": "https://shop.example/item", "autoPay": True},
            "_meta": {"progressToken": "fetch"},
        },
    }
    with guard.http.stream("POST", guard.url, json=fetch, headers={**HEADERS, "mcp-session-id": session}) as paying:
        events = sse_messages(paying)
        assert next(events)["method"] == "notifications/progress"  # the upstream holds the payment
        # A quick request with the same id: its answer must not settle or void the paying call's hold.
        quick = guard.post({"jsonrpc": "2.0", "id": 7, "method": "ping"}, session)
        with open(pause, "w") as release:
            release.write("go\n")
        answer = next(events)

    assert quick.status_code == 400 and "already in flight" in error_of(quick)["message"]
    assert answer["id"] == 7
    assert json.loads(answer["result"]["content"][0]["text"])["satsPaid"] == 30
    payments = json.loads(state.read_text())["payments"]
    assert [p["amount"] for p in payments] == [30]
    with Ledger.open(guard.ledger, read_only=True) as ledger:
        usage = ledger.usage(Budget("per-session", Amount(100, "sat"), f"session:{session}"))
        assert ledger.open_holds() == []
    assert (usage.spent, usage.held) == (30, 0)


# --- sessions ----------------------------------------------------------------------------------------------


def test_sessions_past_max_sessions_are_refused_503_with_retry_after_before_any_upstream_starts(
    start: Callable[..., HttpGuard],
) -> None:
    guard = start(["--max-sessions", "3"])
    attempts = [guard.post(INITIALIZE) for _ in range(12)]
    discover = modern_request(1, "server/discover")
    modern = guard.http.post(guard.url, json=discover, headers=modern_headers("server/discover"))

    opened = [a.headers["mcp-session-id"] for a in attempts if a.status_code == 200]
    refused = [a for a in attempts if a.status_code != 200] + [modern]
    assert len(opened) == 3 and len(refused) == 10
    for answer in refused:
        assert answer.status_code == 503
        assert answer.headers["retry-after"] == "10"
        assert "3 sessions are open, the most allowed (--max-sessions)" in error_of(answer)["message"]
    assert len(guard.upstreams()) == 3

    # A session that ends makes room (its upstream is stopped first).
    assert guard.http.delete(guard.url, headers={"mcp-session-id": opened[0]}).status_code == 200
    guard.wait_for_stderr(f"session {opened[0]} closed")
    guard.discover()
    assert len(guard.upstreams()) == 3


def test_idle_sessions_of_both_eras_are_closed_with_their_upstreams_and_the_next_request_opens_a_new_one(
    start: Callable[..., HttpGuard],
) -> None:
    guard = start(["--session-idle", "2s", "--identity", "alice"])
    session = guard.initialize()
    guard.discover()
    [opened] = guard.wait_for_stderr("session alice/2026/")
    channel = opened.split()[4]  # "guard INFO guard.http: session <id> (identity alice) relaying to ..."

    guard.wait_for_stderr(f"session {session} closed after 2s without a request (--session-idle)")
    guard.wait_for_stderr(f"session {channel} closed after 2s without a request (--session-idle)")
    assert guard.upstreams() == []
    gone = guard.post({"jsonrpc": "2.0", "id": 2, "method": "ping"}, session)
    assert gone.status_code == 404
    guard.discover()
    channels = {line.split()[4] for line in guard.wait_for_stderr("(identity alice) relaying to", count=3)}
    assert len(channels) == 3 and {session, channel} < channels  # a new session, with a new id


def site(n: int) -> str:
    return f"https://shop{n}.example/item"


BOTH_BUDGETS_POLICY = """\
version: 1
default: deny
budgets:
  - name: per-session
    limit: 40 sat
    scope: session
  - name: per-day
    limit: 70 sat
    scope: identity
    window: day
tools:
  l402-fetch:
    pays: true
    max_price: 30 sat
"""


def test_a_2026_era_session_budget_starts_afresh_after_idle_and_a_daily_identity_budget_still_caps_the_day(
    start: Callable[..., HttpGuard], tmp_path: Path
) -> None:
    policy, state = tmp_path / "policy.yaml", tmp_path / "fake.json"
    policy.write_text(BOTH_BUDGETS_POLICY)
    state.write_text(json.dumps({"prices": {site(n): 30 for n in range(4)}}))
    guard = start(
        ["--policy", str(policy), "--session-idle", "2s", "--identity", "alice"],
        upstream=FAKE_402MCP,
        env={"FAKE_STATE": str(state)},
    )

    def fetch(n: int) -> JSON:
        params = {"name": "l402-fetch", "arguments": {"url": site(n), "autoPay": True}}
        call = modern_request(n, "tools/call", params)
        answer = guard.http.post(guard.url, json=call, headers=modern_headers("tools/call"))
        return answers(answer)[-1]["result"]  # type: ignore[no-any-return]

    results = [fetch(0), fetch(1)]  # one session: 30 sat, then 30 more would pass its 40
    guard.wait_for_stderr("(--session-idle)", count=1)
    results.append(fetch(2))  # a new session: its budget is fresh; the day has 40 of 70 left
    guard.wait_for_stderr("(--session-idle)", count=2)
    results.append(fetch(3))  # fresh again, but the day would reach 90

    denials = [r["structuredContent"]["rule"] if r.get("isError") else None for r in results]
    assert denials == [None, "budgets.per-session", None, "budgets.per-day"]
    assert [json.loads(results[n]["content"][0]["text"])["satsPaid"] for n in (0, 2)] == [30, 30]
    assert [p["amount"] for p in json.loads(state.read_text())["payments"]] == [30, 30]
    with Ledger.open(guard.ledger, read_only=True) as ledger:
        day = ledger.usage(Budget("per-day", Amount(70, "sat"), "identity:alice", Window.calendar("day")))
    assert (day.spent, day.held) == (60, 0)


CROSSING_POLICY = """\
version: 1
default: deny
budgets:
  - name: per-identity
    limit: 10000 sat
    scope: identity
tools:
  l402-fetch:
    pays: true
    max_price: 50 sat
"""


def test_concurrent_2026_era_requests_with_one_id_and_guards_own_calls_between_them_each_get_their_own_answer(
    start: Callable[..., HttpGuard], tmp_path: Path
) -> None:
    # Twenty self-contained POSTs share one upstream connection, every one with the id 1; each fetch has no
    # quote, so guard also makes a call of its own (a price preview) for each, on the same connection.
    count = 20
    policy, state = tmp_path / "policy.yaml", tmp_path / "fake.json"
    policy.write_text(CROSSING_POLICY)
    # A slow wallet, slowest for the first calls: later calls' fetches go upstream while earlier calls' own
    # previews are still there.
    prices = {site(n): 1 + n for n in range(count)}
    delays = {site(n): round(0.1 * (count - n), 1) for n in range(count)}
    state.write_text(json.dumps({"prices": prices, "delays": delays}))
    guard = start(
        ["--policy", str(policy), "--identity", "alice"], upstream=FAKE_402MCP, env={"FAKE_STATE": str(state)}
    )

    def fetch(n: int) -> JSON:
        call = modern_request(1, "tools/call", {"name": "l402-fetch", "arguments": {"url": site(n), "autoPay": True}})
        with httpx.Client(timeout=WAIT_S) as client:
            [answer] = [
                m for m in answers(client.post(guard.url, json=call, headers=modern_headers("tools/call"))) if "id" in m
            ]
        return answer

    with ThreadPoolExecutor(count) as pool:
        results = list(pool.map(fetch, range(count)))

    for n, answer in enumerate(results):
        assert answer["id"] == 1
        fetched = json.loads(answer["result"]["content"][0]["text"])
        assert (json.loads(fetched["body"])["url"], fetched["satsPaid"]) == (site(n), 1 + n)
    paid = sum(p["amount"] for p in json.loads(state.read_text())["payments"])
    with Ledger.open(guard.ledger, read_only=True) as ledger:
        usage = ledger.usage(Budget("per-identity", Amount(10000, "sat"), "identity:alice"))
        assert ledger.open_holds() == []
    assert usage.spent == paid == sum(1 + n for n in range(count))


# --- connections -------------------------------------------------------------------------------------------


def test_connections_that_never_finish_a_request_are_closed_after_the_read_timeout(
    start: Callable[..., HttpGuard],
) -> None:
    guard = start(["--read-timeout", "1s"])
    baseline = guard.open_fds()
    partial = f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{guard.port}\r\nContent-Type: appl".encode()
    slow_body = (
        f"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1:{guard.port}\r\nContent-Type: application/json\r\n"
        'Accept: application/json, text/event-stream\r\nContent-Length: 200\r\n\r\n{"jsonrpc":'
    ).encode()
    stalled = []
    for n in range(30):
        connection = guard.raw()
        connection.sendall([b"", partial, slow_body][n % 3])  # silent, headers cut short, body cut short
        stalled.append(connection)

    for connection in stalled:
        with connection:
            read_until_closed(connection)  # the guard hangs up (within WAIT_S, or the socket times out)
    assert guard.open_fds() < baseline + 10  # (the ledger may have opened a connection meanwhile)
    guard.ping(guard.initialize())


def test_connections_past_max_connections_are_answered_503_and_closed_at_once(
    start: Callable[..., HttpGuard],
) -> None:
    guard = start(["--max-connections", "4", "--read-timeout", "60s"])
    held = [guard.raw() for _ in range(4)]
    try:
        with guard.raw() as extra:
            response = read_until_closed(extra)
        assert status_of(response) == 503
        assert b"retry-after: 10" in response.lower()
        # The connections within the cap are served.
        request = f"GET /nowhere HTTP/1.1\r\nHost: 127.0.0.1:{guard.port}\r\nConnection: close\r\n\r\n"
        held[0].sendall(request.encode())
        assert status_of(read_until_closed(held[0])) == 404
    finally:
        for connection in held:
            connection.close()


def test_a_flood_of_bad_connections_and_requests_is_logged_a_few_lines_a_minute(
    start: Callable[..., HttpGuard],
) -> None:
    guard = start(["--read-timeout", "1s"])
    before = guard.log_bytes

    def garbage(n: int) -> None:
        for _ in range(n):
            raw_exchange(guard, b"\x16\x03\x01 not http at all\r\n\r\n")

    flooders = [threading.Thread(target=garbage, args=(50,)) for _ in range(4)]
    for flooder in flooders:
        flooder.start()
    for _ in range(100):
        guard.post(INITIALIZE, headers={"Host": "evil.example"})
    for _ in range(100):
        guard.http.get(guard.url.replace("/mcp", "/wp-login.php"))
    for flooder in flooders:
        flooder.join(WAIT_S)
    guard.initialize()  # an info line after the flood: everything before it has been read
    guard.wait_for_stderr("relaying to")
    flood_bytes = guard.log_bytes - before

    invalid = [line for line in guard.stderr if "Invalid HTTP request received" in line]
    refused = [line for line in guard.stderr if "guard.http: refused" in line]
    host = [line for line in guard.stderr if "Invalid Host header" in line and "transport_security" in line]
    # 200 garbage connections, 200 refused requests: each call site logs at most 10 lines a minute (20 if the
    # flood straddles a minute).
    assert 1 <= len(invalid) <= 20
    assert 1 <= len(refused) <= 20
    assert 1 <= len(host) <= 20
    assert flood_bytes < 20_000, flood_bytes


def test_the_log_flood_filter_passes_ten_warnings_a_minute_per_call_site_then_says_how_many_it_held_back() -> None:
    now = [0.0]
    flood = LogFloodFilter(clock=lambda: now[0])

    def record(line: int, level: int = logging.WARNING) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.error", level, "h11_impl.py", line, "bad request from %s", ("x",), None)

    passed = [flood.filter(record(1)) for _ in range(25)]
    elsewhere = flood.filter(record(2))  # another call site has its own count
    info = [flood.filter(record(1, logging.INFO)) for _ in range(25)]
    now[0] = 61.0
    later = record(1)

    assert passed == [True] * 10 + [False] * 15
    assert elsewhere and all(info)
    assert flood.filter(later)
    assert later.getMessage() == "bad request from x (15 earlier ones like this were not logged)"
