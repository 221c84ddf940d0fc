"""`guard policy simulate` end to end: a day of mixed calls made through two real `guard run` processes
(sessions s1 and s2, one ledger: a SQLite file, and PostgreSQL) in front of the fake 402-mcp
(tests/upstreams/fake_402mcp.py), then `guard policy simulate stricter.yaml --day TODAY` as an operator runs
it. The flips and the money are worked out by hand below, call by call; the ledger is the same, byte for
byte (SQLite) or row for row (PostgreSQL), after the simulation as before it.

Every wait is bounded (WAIT_S, or a poll with a deadline); no fixed sleeps.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from ledgers import Ledger
from tests.conftest import GUARD, ROOT, WAIT_S
from tests.e2e.helpers import body, site
from tests.rawguard import JSON, RawGuard

FAKE = ROOT / "tests" / "upstreams" / "fake_402mcp.py"

# The policy the day was recorded under: arguments kept (redacted), so conditions can be replayed.
RECORDED = """\
version: 1
default: deny
audit: {arguments: redacted}
budgets:
  - {name: daily, limit: 1000 sat, scope: global, window: day}
tools:
  l402-fetch-preview: {rate_limit: 2/minute}
  l402-fetch: {pays: true, max_price: 50 sat}
"""
# The candidate: a daily budget of 60 sat, one preview a minute, fetches of shop1 to shop5 only (up to
# 100 sat each), and l402-config allowed.
STRICTER = """\
version: 1
default: deny
budgets:
  - {name: daily, limit: 60 sat, scope: global, window: day}
tools:
  l402-config: {}
  l402-fetch-preview: {rate_limit: 1/minute}
  l402-fetch:
    pays: true
    max_price: 100 sat
    when: [{arg: url, matches: "^https://shop[1-5]\\\\."}]
"""
PRICES = {"prices": {site(1): 10, site(2): 20, site(3): 30, site(4): 40, site(5): 80, site(6): 10}}


class Guard(RawGuard):
    def __init__(self, tmp: Path, ledger: str, session: str) -> None:
        policy = tmp / "recorded.yaml"
        policy.write_text(RECORDED)
        state = tmp / "fake-state.json"
        if not state.exists():
            state.write_text(json.dumps(PRICES))
        env = {"FAKE_STATE": str(state)}
        super().__init__(tmp, policy, upstream=[sys.executable, str(FAKE)], session=session, env=env, ledger=ledger)

    def fetch(self, url: str) -> JSON:
        return self.call("l402-fetch", {"url": url, "autoPay": True})


def denied(result: JSON) -> bool:
    return bool((result.get("structuredContent") or {}).get("denied"))


def events_written(ledger_url: str, count: int) -> None:
    """Wait (bounded) until the ledger holds `count` call events: guards write theirs in batches."""
    deadline = time.monotonic() + WAIT_S
    while True:
        with Ledger.open(ledger_url, read_only=True) as ledger:
            if len(ledger.calls(last=1000)) >= count:
                return
        assert time.monotonic() < deadline, f"fewer than {count} call events after {WAIT_S} s"


def snapshot(ledger_url: str) -> object:
    """What the ledger holds: a SQLite file's bytes (and its write-ahead log's size), or every PostgreSQL
    ledger table's rows."""
    if not ledger_url.startswith("postgresql"):
        path = Path(ledger_url.removeprefix("sqlite:///"))
        # A read-only SQLite connection may leave an empty write-ahead log beside the file (it cannot remove
        # what it cannot write): nothing in it.
        wal = path.with_name(path.name + "-wal")
        return hashlib.sha256(path.read_bytes()).hexdigest(), wal.stat().st_size if wal.exists() else 0
    engine = create_engine(ledger_url)
    try:
        with engine.connect() as conn:
            tables = sorted(t for t in inspect(conn).get_table_names() if t.startswith("ledger_"))
            return {t: sorted(map(tuple, conn.execute(text(f"SELECT * FROM {t}")).all()), key=repr) for t in tables}
    finally:
        engine.dispose()


@pytest.fixture
def recorded_day(ledger_url: str, tmp_path: Path) -> Iterator[str]:
    """Ten calls of two sessions through two guards; the day they were made (UTC)."""
    day = datetime.now(UTC).date().isoformat()
    first = Guard(tmp_path, ledger_url, "s1")
    second = Guard(tmp_path, ledger_url, "s2")
    try:
        assert body(first.fetch(site(1)))["satsPaid"] == 10
        assert body(first.fetch(site(2)))["satsPaid"] == 20
        assert body(first.fetch(site(6)))["satsPaid"] == 10
        for _ in range(2):
            assert not denied(first.call("l402-fetch-preview", {"url": site(3)}))
        assert denied(first.call("l402-fetch-preview", {"url": site(3)}))  # 2/minute used up
        assert denied(first.call("l402-config", {}))  # default deny
        first.stop()  # its events written before the second guard's calls
        events_written(ledger_url, 7)
        assert body(second.fetch(site(3)))["satsPaid"] == 30
        assert body(second.fetch(site(4)))["satsPaid"] == 40
        assert denied(second.fetch(site(5)))  # 80 sat, over max_price
        second.stop()
    finally:
        first.stop()
        second.stop()
    assert datetime.now(UTC).date().isoformat() == day, "the day ended during the test: run it again"
    yield day


def simulate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GUARD, "policy", "simulate", *args], capture_output=True, text=True, timeout=WAIT_S, check=False
    )


def test_a_stricter_candidate_on_a_recorded_day_flips_exactly_the_calls_and_money_worked_out_by_hand(
    recorded_day: str, ledger_url: str, tmp_path: Path
) -> None:
    candidate = tmp_path / "stricter.yaml"
    candidate.write_text(STRICTER)
    before = snapshot(ledger_url)
    ran = simulate(str(candidate), "--day", recorded_day, "--ledger", ledger_url, "--format", "json")
    assert ran.returncode == 0, ran.stderr
    doc = json.loads(ran.stdout)
    assert snapshot(ledger_url) == before  # read, never written

    # The replay, in the order the calls were recorded, against the candidate:
    #   s1 fetch shop1   10 sat   daily 10 of 60                   allowed, as recorded
    #   s1 fetch shop2   20 sat   daily 30 of 60                   allowed, as recorded
    #   s1 fetch shop6   10 sat   url fails the condition          allow → deny (keeps 10 sat)
    #   s1 preview #1             1/minute                         allowed, as recorded
    #   s1 preview #2             over 1/minute                    allow → deny
    #   s1 preview #3             over 1/minute                    denied, as recorded (by 2/minute)
    #   s1 l402-config            allowed by the candidate         deny → allow (free)
    #   s2 fetch shop3   30 sat   daily 60 of 60                   allowed, as recorded
    #   s2 fetch shop4   40 sat   100 > 60                         allow → deny (keeps 40): daily runs out
    #   s2 fetch shop5   80 sat   under 100 now, but 140 > 60      denied, as recorded (by max_price)
    assert (doc["calls"], doc["replayed"], doc["unchanged"], doc["skipped"]) == (10, 10, 6, {})
    flips = {(f["direction"], f["rule"]): (f["kind"], f["calls"], f["money"]) for f in doc["flips"]}
    assert flips == {
        ("allow_to_deny", "tools.l402-fetch.when[0]"): ("condition", 1, {"sat": 10}),
        ("allow_to_deny", "tools.l402-fetch-preview.rate_limit"): ("rate_limit", 1, {}),
        ("allow_to_deny", "budgets.daily"): ("budget", 1, {"sat": 40}),
        ("deny_to_allow", "default"): ("default", 1, {}),
    }
    assert doc["allow_to_deny"] == {"calls": 3, "money": {"sat": 50}, "money_unknown": 0}
    assert doc["deny_to_allow"] == {"calls": 1, "money": {}, "money_unknown": 0}
    [daily] = doc["budgets"]
    assert (daily["name"], daily["unit"], daily["limit"]) == ("daily", "sat", 60)
    assert (daily["not_spent"], daily["more_spent"], daily["refused"]) == (50, 0, 2)
    assert (daily["ran_out"]["session"], daily["ran_out"]["tool"]) == ("s2", "l402-fetch")
    with Ledger.open(ledger_url, read_only=True) as ledger:
        shop4 = [e for e in ledger.calls(last=100) if e.call.spent is not None and e.call.spent.value == 40]
    assert daily["ran_out"]["at"] == shop4[0].at.isoformat()
    assert doc["not_evaluable"] == []  # the arguments were kept

    markdown = simulate(str(candidate), "--day", recorded_day, "--ledger", ledger_url)
    assert markdown.returncode == 0, markdown.stderr
    assert "## Allowed, would be denied: 3" in markdown.stdout
    assert "Money that would not have been spent: 50 sat." in markdown.stdout
    assert "## Denied, would be allowed: 1" in markdown.stdout
