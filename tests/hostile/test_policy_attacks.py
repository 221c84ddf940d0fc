"""Attacks on the policy and the ledger's connections, through a real `guard run` over stdio spoken to in
raw JSON-RPC (tests/rawguard.py), in front of the fake 402-mcp (tests/upstreams/fake_402mcp.py).

- a `matches` pattern that backtracks exponentially in Python's `re` (`^(a+)+$`) against a 40-character
  argument: answered at once, and the guard answers the next request too;
- tool names that differ from a denied or paying tool only in case, width, dashes or spaces: refused;
- eight guards on one PostgreSQL server at its default `max_connections = 100`: every call completes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

import ledgers._store
from ledgers import DEFAULT_POOL, Amount, Budget, Ledger, StorageError
from tests.conftest import GUARD, ROOT, WAIT_S, reset_postgres
from tests.rawguard import JSON, RawGuard

FAKE_402MCP = [sys.executable, str(ROOT / "tests" / "upstreams" / "fake_402mcp.py")]


def start_guard(
    tmp: Path, policy: str, *, state: JSON | None = None, extra: tuple[str, ...] = (), **kw: Any
) -> RawGuard:
    """`guard run` in `tmp` (its policy file, SQLite ledger and the fake's state file) before the fake 402-mcp."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "policy.yaml").write_text(policy)
    (tmp / "state.json").write_text(json.dumps(state or {}))
    return RawGuard(
        tmp, tmp / "policy.yaml", upstream=FAKE_402MCP, extra=extra, env={"FAKE_STATE": str(tmp / "state.json")}, **kw
    )


@pytest.fixture
def guards() -> Iterator[list[RawGuard]]:
    """Guards a test starts: every one is stopped after it."""
    started: list[RawGuard] = []
    yield started
    for guard in started:
        guard.stop()


def denial(result: JSON) -> JSON:
    assert result["isError"] is True and result["content"][0]["text"].startswith("Denied by guard: "), result
    return result["structuredContent"]  # type: ignore[no-any-return]


# --- a pattern Python's `re` takes exponential time on ----------------------------------------------------

REDOS_POLICY = """\
version: 1
default: deny
tools:
  l402-search:
    when:
      - arg: query
        matches: ^(a+)+$
"""


def test_a_backtracking_pattern_is_answered_at_once_and_the_guard_keeps_answering(
    tmp_path: Path, guards: list[RawGuard]
) -> None:
    guard = start_guard(tmp_path, REDOS_POLICY)
    guards.append(guard)
    # 39 a's and a '!': Python's `re` tries 2^39 ways to split the a's before it gives up.
    started = time.perf_counter()
    refused = guard.call("l402-search", {"query": "a" * 39 + "!"})
    answered = time.perf_counter()
    pong = guard.request("ping")
    ponged = time.perf_counter()
    allowed = guard.call("l402-search", {"query": "a" * 40})

    assert denial(refused)["rule"] == "tools.l402-search.when[0]"
    assert "must match '^(a+)+$'" in refused["content"][0]["text"]
    assert pong["result"] == {}
    assert allowed["isError"] is False, allowed
    print(f"40-char argument answered in {answered - started:.4f} s, the ping after it in {ponged - answered:.4f} s")


# --- tool names that are variants of a named tool ---------------------------------------------------------

NAMES_POLICY = """\
version: 1
default: allow
budgets:
  - name: per-session
    limit: 1000 sat
tools:
  l402-pay:
    action: deny
    reason: paying invoices is not allowed
  l402-fetch:
    pays: true
    max_price: 50 sat
"""


@pytest.mark.parametrize(
    ("called", "named", "why"),
    [
        ("L402-PAY", "l402-pay", "paying invoices is not allowed"),
        (" l402-pay", "l402-pay", "paying invoices is not allowed"),
        ("l402\u2010pay", "l402-pay", "paying invoices is not allowed"),  # U+2010 HYPHEN
        ("\uff4c\uff14\uff10\uff12\uff0d\uff50\uff41\uff59", "l402-pay", "paying invoices is not allowed"),  # fullwidth
        ("l402-pay\u200b", "l402-pay", "paying invoices is not allowed"),  # zero-width space
        ("L402_Pay", "l402-pay", "paying invoices is not allowed"),
        ("L402-FETCH", "l402-fetch", "refused as ambiguous; call the tool by its exact name"),
        ("l402\u2013fetch", "l402-fetch", "refused as ambiguous; call the tool by its exact name"),  # en dash
    ],
    ids=[
        "upper",
        "leading-space",
        "unicode-hyphen",
        "fullwidth",
        "zero-width",
        "mixed-case-snake",
        "paying-upper",
        "en-dash",
    ],
)
def test_a_variant_of_a_denied_or_paying_tool_name_is_refused_and_the_reason_names_the_tool(
    tmp_path: Path, guards: list[RawGuard], called: str, named: str, why: str
) -> None:
    guard = start_guard(tmp_path, NAMES_POLICY, state={"prices": {"https://shop.example/item": 10}})
    guards.append(guard)
    result = guard.call(called, {"url": "https://shop.example/item", "autoPay": True, "invoice": "lnbc1"})
    exact = guard.call("l402-fetch", {"url": "https://shop.example/item", "autoPay": True})
    guard.stop()

    refused = denial(result)
    assert refused["rule"] == f"tools.{named}"
    assert result["content"][0]["text"].startswith(
        f"Denied by guard: {called!a} differs from {named!r} only in case, width, dashes or spaces: {why}"
    )
    # The exact name still works, and it is the only payment that left the fake's wallet.
    assert exact["isError"] is False, exact
    state = json.loads((tmp_path / "state.json").read_text())
    assert [(p["tool"], p["amount"]) for p in state["payments"]] == [("l402-fetch", 10)]


UNNAMED_POLICY = """\
version: 1
default: allow
budgets:
  - name: per-session
    limit: 1000 sat
"""


@pytest.mark.parametrize(
    "called", ["L402-FETCH", "l402\u2011fetch", "\uff4c402-fetch"], ids=["upper", "nb-hyphen", "fullwidth"]
)
def test_a_variant_of_a_paying_tool_no_rule_names_is_refused_by_its_adapter_not_forwarded_unpriced(
    tmp_path: Path, guards: list[RawGuard], called: str
) -> None:
    # No rule names l402-fetch, and the default allows: only the 402-mcp adapter knows the name pays.
    guard = start_guard(tmp_path, UNNAMED_POLICY, state={"prices": {"https://shop.example/item": 10}})
    guards.append(guard)
    result = guard.call(called, {"url": "https://shop.example/item", "autoPay": True})
    guard.stop()

    refused = denial(result)
    assert refused["rule"] == "adapters.402-mcp"
    assert "is a variant of 402-mcp's tool 'l402-fetch'" in refused["reason"]
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["payments"] == [] and state["attempts"] == []


# --- eight guards on one PostgreSQL server ----------------------------------------------------------------

GUARDS = 8
CALLS = 20  # concurrent paying calls per guard
PRICE = 10  # sat, each URL on an origin of its own (402-mcp reuses a credential per origin)
POSTGRES_DEFAULT_MAX_CONNECTIONS = 100
POOL_POLICY = """\
version: 1
default: deny
budgets:
  - name: per-session
    limit: 10000 sat
tools:
  l402-fetch:
    pays: true
    max_price: 50 sat
"""


def site(guard: int, n: int) -> str:
    return f"https://g{guard}-shop{n}.example/item"


def named_url(url: str, name: str) -> str:
    """`url` with PostgreSQL's application_name set, so pg_stat_activity tells whose connection is whose."""
    return make_url(url).update_query_dict({"application_name": name}).render_as_string(hide_password=False)


def connections_by_application(url: str) -> dict[str, int]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT application_name, count(*) FROM pg_stat_activity"
                    " WHERE datname = current_database() GROUP BY application_name"
                )
            ).all()
    finally:
        engine.dispose()
    return {str(row[0]): int(row[1]) for row in rows}


@pytest.fixture
def server_at_default_size(postgres_url: str) -> Iterator[str]:
    """The test server with as many connection slots as PostgreSQL's default `max_connections = 100`
    leaves: a larger server has the difference taken by idle connections held for the test."""
    reset_postgres(postgres_url)
    with psycopg.connect(dsn(postgres_url)) as probe:
        row = probe.execute("SHOW max_connections").fetchone()
    assert row is not None
    size = int(row[0])
    if size < POSTGRES_DEFAULT_MAX_CONNECTIONS:
        pytest.fail(f"the test PostgreSQL has max_connections = {size}, below PostgreSQL's default of 100")
    held = [psycopg.connect(dsn(postgres_url)) for _ in range(size - POSTGRES_DEFAULT_MAX_CONNECTIONS)]
    try:
        yield postgres_url
    finally:
        for conn in held:
            conn.close()


def test_eight_guards_on_one_postgresql_server_at_its_default_size_complete_every_call(
    tmp_path: Path, guards: list[RawGuard], server_at_default_size: str
) -> None:
    url = server_at_default_size
    for number in range(GUARDS):
        ledger_url = named_url(url, f"guard-{number}")
        state = {"prices": {site(number, n): PRICE for n in range(CALLS)}}
        guards.append(
            start_guard(
                tmp_path / f"g{number}", POOL_POLICY, state=state, session=f"g{number}", extra=("--ledger", ledger_url)
            )
        )

    def fetch_all(number: int) -> list[JSON]:
        calls = [("l402-fetch", {"url": site(number, n), "autoPay": True}) for n in range(CALLS)]
        return guards[number].call_all(calls)

    with ThreadPoolExecutor(max_workers=GUARDS) as pool:
        results = list(pool.map(fetch_all, range(GUARDS)))
    # A pool keeps the connections it opened (none beyond its size): what each guard holds now is the
    # most it ever had open at once.
    connections = connections_by_application(url)
    for guard in guards:
        guard.stop()

    print("connections per guard:", {f"guard-{n}": connections.get(f"guard-{n}", 0) for n in range(GUARDS)})
    for number, answers in enumerate(results):
        failed = [a for a in answers if a.get("isError")]
        assert failed == [], (number, failed[:1], "\n".join(guards[number].stderr[-5:]))
        assert all(json.loads(a["content"][0]["text"])["satsPaid"] == PRICE for a in answers)
        assert 1 <= connections.get(f"guard-{number}", 0) <= DEFAULT_POOL
    with Ledger.open(url, recover=False) as ledger:
        assert ledger.open_holds() == []
        for number in range(GUARDS):
            paid = json.loads((tmp_path / f"g{number}" / "state.json").read_text())["payments"]
            usage = ledger.usage(Budget("per-session", Amount(10_000, "sat"), f"session:g{number}"))
            assert (usage.spent, usage.held) == (sum(p["amount"] for p in paid), 0) == (CALLS * PRICE, 0)


def dsn(url: str) -> str:
    """A SQLAlchemy URL as psycopg takes it."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def fill_server(url: str) -> Callable[[], None]:
    """Take every connection slot the server has left for ordinary roles; returns how to give them back."""
    held: list[psycopg.Connection[Any]] = []
    while len(held) < 1000:
        try:
            held.append(psycopg.connect(dsn(url)))
        except psycopg.OperationalError as exc:
            assert "too many clients already" in str(exc) or "reserved" in str(exc), exc
            break

    def release() -> None:
        for conn in held:
            conn.close()

    return release


def test_a_guard_whose_postgresql_server_has_no_free_connection_slot_does_not_start_and_says_what_to_change(
    tmp_path: Path, postgres_url: str
) -> None:
    reset_postgres(postgres_url)
    (tmp_path / "policy.yaml").write_text(POOL_POLICY)
    release = fill_server(postgres_url)
    try:
        ran = subprocess.run(
            [*GUARD, "run", "--policy", str(tmp_path / "policy.yaml"), "--ledger", postgres_url, "--", *FAKE_402MCP],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
            timeout=WAIT_S,
        )
    finally:
        release()
    assert ran.returncode == 4, ran.stderr
    assert "has no free connection slots (its max_connections is reached): each guard keeps up to 4" in ran.stderr
    assert "(guard run --ledger-pool N)" in ran.stderr and "raise max_connections" in ran.stderr


def test_a_ledger_operation_that_waits_too_long_for_a_pooled_connection_fails_with_a_storage_error(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reset_postgres(postgres_url)
    monkeypatch.setattr(ledgers._store, "POOL_TIMEOUT_S", 0.2)
    budget = Budget("shared", Amount(100, "sat"))
    with Ledger.open(postgres_url, pool=1) as ledger, psycopg.connect(dsn(postgres_url)) as other_guard:
        ledger.void(ledger.reserve([budget], Amount(1, "sat")))  # the budget's lock row now exists
        # Another guard holds the budget's lock: a reservation waits for it, holding the only connection.
        other_guard.execute("SELECT key FROM ledger_locks WHERE key = %s FOR UPDATE", [budget.key])
        waiting = threading.Thread(target=ledger.reserve, args=([budget], Amount(1, "sat")))
        waiting.start()
        deadline = time.monotonic() + WAIT_S
        while not other_guard.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone() == (1,):
            assert time.monotonic() < deadline, "the reservation never waited for the lock"
        with pytest.raises(StorageError) as refused:
            ledger.usage(budget)
        other_guard.rollback()
        waiting.join(WAIT_S)
    assert str(refused.value) == (
        "the ledger could not be read: all 1 of its connections stayed busy for 0.2 s"
        " (guard run --ledger-pool N allows more)"
    )
