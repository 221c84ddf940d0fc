"""The operators' controls end to end: real `guard run` processes in front of the fake 402-mcp
(tests/upstreams/fake_402mcp.py), spoken to over stdio in raw JSON-RPC, and `guard freeze` / `guard unfreeze`
run as commands of their own.

- The kill switch: two guards on one ledger (a SQLite file, and PostgreSQL); `guard freeze` from the command
  line; the other guard's next paying call is refused at once (its reservation reads the freezes in its
  transaction), its free calls within a second of an `--all-tools` freeze (its view of the freezes is at
  most a second old), and it pays again after `guard unfreeze`.
- The loop breaker: with `repeat_limit: 3/10m`, the fourth purchase of one URL in a session is refused; a
  different URL is not.

Every wait is bounded: an answer by WAIT_S, a poll by its deadline; no fixed sleeps.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from guard.gate.gate import FREEZE_STALENESS_S
from ledgers import Ledger
from tests.conftest import GUARD, ROOT, WAIT_S
from tests.e2e.helpers import body, site
from tests.rawguard import JSON, RawGuard

FAKE = ROOT / "tests" / "upstreams" / "fake_402mcp.py"
# How late a freeze may reach a guard's free calls: its view's staleness, plus slack for a call's round trip
# on a loaded test machine.
FREEZE_DEADLINE_S = FREEZE_STALENESS_S + 0.5

POLICY = """\
version: 1
default: deny
budgets:
  - {name: per-session, limit: 1000 sat, scope: session}
tools:
  l402-fetch-preview: {}
  l402-fetch:
    pays: true
    max_price: 50 sat
    repeat_limit: 3/10m
"""
PRICES = {"prices": {site(n): 10 for n in range(1, 10)}}


class Guard(RawGuard):
    """`guard run --policy P --ledger L --session S -- python tests/upstreams/fake_402mcp.py`; guards in one
    tmp share the policy and the fake's state file (`state=None` keeps it as it is)."""

    def __init__(self, tmp: Path, ledger: str, session: str, state: JSON | None) -> None:
        policy = tmp / "policy.yaml"
        policy.write_text(POLICY)
        self.state_file = tmp / "fake-state.json"
        if state is not None:
            self.state_file.write_text(json.dumps(state))
        super().__init__(
            tmp,
            policy,
            upstream=[sys.executable, str(FAKE)],
            session=session,
            env={"FAKE_STATE": str(self.state_file)},
            ledger=ledger,
        )

    def fetch(self, url: str) -> JSON:
        return self.call("l402-fetch", {"url": url, "autoPay": True})

    def state(self) -> JSON:
        return json.loads(self.state_file.read_text())  # type: ignore[no-any-return]

    def forget_credentials(self) -> None:
        """The paid server's credentials are single-use: the next fetch of a URL buys it again (the state
        file is read by the fake before every call)."""
        state = self.state()
        state["credentials"] = {}
        self.state_file.write_text(json.dumps(state))


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Guard]]:
    """`start(ledger, session, state=...)`: a Guard in tmp_path, stopped after the test."""
    started: list[Guard] = []

    def begin(ledger: str, session: str, state: JSON | None = None) -> Guard:
        guard = Guard(tmp_path, ledger, session, state)
        started.append(guard)
        return guard

    yield begin
    for guard in started:
        guard.stop()


def guard_command(*args: str) -> subprocess.CompletedProcess[str]:
    """`guard ARGS` as an operator runs it: a process of its own."""
    return subprocess.run([*GUARD, *args], capture_output=True, text=True, timeout=WAIT_S, check=False)


def denied(result: JSON) -> JSON | None:
    """The denial's fields, or None when the call went through."""
    fields = result.get("structuredContent") or {}
    return fields if fields.get("denied") else None  # type: ignore[no-any-return]


def let_through(result: JSON) -> JSON | None:
    """The result of a call that went through, or None when it was denied."""
    return None if denied(result) else result


def until(deadline_s: float, attempt: Callable[[], Any]) -> tuple[Any, float]:
    """Call `attempt` until it returns something truthy, for at most `deadline_s`: (what it returned, after
    how long). Fails the test at the deadline."""
    began = time.monotonic()
    while True:
        outcome = attempt()
        elapsed = time.monotonic() - began
        if outcome:
            return outcome, elapsed
        assert elapsed < deadline_s, f"still not so after {elapsed:.2f} s"


def test_a_freeze_from_the_command_line_stops_a_second_guard_on_the_same_ledger_and_unfreezing_restarts_it(
    ledger_url: str, start: Callable[..., Guard]
) -> None:
    first = start(ledger_url, "s1", state=PRICES)
    second = start(ledger_url, "s2")
    assert denied(first.fetch(site(1))) is None
    assert denied(second.fetch(site(2))) is None

    frozen = guard_command("freeze", "--reason", "invoices look wrong", "--by", "ops-bob", "--ledger", ledger_url)
    assert frozen.returncode == 0, frozen.stderr
    refused = denied(second.fetch(site(3)))  # at once: the reservation reads the freezes in its transaction
    assert refused is not None
    assert refused["rule"] == "freeze.global"
    assert refused["reason"] == "paying calls frozen by ops-bob: invoices look wrong (until `guard unfreeze`)"
    assert body(second.call("l402-fetch-preview", {"url": site(4)}))["costSats"] == 10  # free calls go on

    lifted = guard_command("unfreeze", "--by", "ops-carol", "--ledger", ledger_url)
    assert lifted.returncode == 0, lifted.stderr
    paid, _ = until(FREEZE_DEADLINE_S, lambda: let_through(second.fetch(site(5))))
    assert body(paid)["satsPaid"] == 10
    first.stop()
    second.stop()

    assert [p["url"] for p in second.state()["payments"]] == [site(1), site(2), site(5)]
    with Ledger.open(ledger_url, recover=False) as ledger:
        # Every event: the poll after unfreezing may be denied hundreds of times within the 1 s freeze view.
        trail = [e.call for e in ledger.calls(last=100_000) if e.call.kind == "freeze"]
    # Guards write their call events in batches: the trail's order between guards is not the calls' order.
    assert {c.rule for c in trail} == {"freeze.global"}
    decisions = Counter(c.decision for c in trail)
    assert (decisions["freeze"], decisions["unfreeze"]) == (1, 1)
    assert decisions["deny"] >= 1  # site(3), and any poll within the second after unfreezing
    assert [c.reason for c in trail if c.decision != "deny"] == [
        "frozen by ops-bob: invoices look wrong",
        "unfrozen by ops-carol",
    ]


def test_an_all_tools_freeze_of_one_session_refuses_its_free_calls_within_a_second_and_no_one_elses(
    ledger_url: str, start: Callable[..., Guard]
) -> None:
    watched = start(ledger_url, "s2", state=PRICES)
    other = start(ledger_url, "s3")
    assert body(watched.call("l402-fetch-preview", {"url": site(1)}))["costSats"] == 10  # its view: nothing frozen

    frozen = guard_command("freeze", "--session", "s2", "--all-tools", "--reason", "runaway", "--ledger", ledger_url)
    assert frozen.returncode == 0, frozen.stderr
    refusal, elapsed = until(FREEZE_DEADLINE_S, lambda: denied(watched.call("l402-fetch-preview", {"url": site(1)})))
    assert refusal["rule"] == "freeze.session:s2"
    assert refusal["reason"].startswith("every call frozen for session s2 by ")
    assert refusal["reason"].endswith(": runaway (until `guard unfreeze --session s2`)")
    assert elapsed < FREEZE_DEADLINE_S
    assert body(other.call("l402-fetch-preview", {"url": site(1)}))["costSats"] == 10
    assert denied(other.fetch(site(2))) is None


def test_the_fourth_purchase_of_one_url_in_a_session_is_refused_and_another_url_is_not(
    tmp_path: Path, start: Callable[..., Guard]
) -> None:
    guard = start(str(tmp_path / "ledger.db"), "s1", state=PRICES)
    for _ in range(3):
        assert body(guard.fetch(site(1)))["satsPaid"] == 10
        guard.forget_credentials()  # each fetch buys the URL again, as an agent in a retry loop does
    refused = denied(guard.fetch(site(1)))
    assert refused is not None
    assert refused["rule"] == "tools.l402-fetch.repeat_limit"
    assert refused["reason"] == "repeat limit reached: the same purchase at most 3 times per 10m (per session)"
    assert 0 < refused["retry_after_s"] <= 600
    assert body(guard.fetch(site(2)))["satsPaid"] == 10
    guard.stop()
    assert [p["url"] for p in guard.state()["payments"]] == [site(1)] * 3 + [site(2)]
