"""`guard policy simulate`'s engine: recorded calls (a ledger written by hand, as guards would have written
it) replayed through the real gate against a candidate on a scratch ledger. Every expected number is
worked out in the comments from the recorded calls and the candidate, not read from the code."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest

from guard.gate.simulate import ReplayClock, Replayed, Simulation, as_json, as_markdown, simulate
from guard.policy.files import parse
from ledgers import Amount, CallRecord, Ledger
from tests.conftest import FakeClock

DAY = datetime(2026, 11, 21, tzinfo=UTC)
SAT = "sat"


def at(hours: float) -> datetime:
    return DAY + timedelta(hours=hours)


class Recorder:
    """Writes call events (and the holds of paying calls) as a guard would, each at its own time."""

    def __init__(self, ledger: Ledger, clock: FakeClock) -> None:
        self.ledger, self.clock = ledger, clock

    def paid(self, when: datetime, session: str, price: int, spent: int | None = None, **facts: object) -> None:
        self.clock.moment = when
        hold = self.ledger.reserve(
            [], Amount(price, SAT), session=session, tool="l402-fetch", resource=str(facts.pop("resource", "u"))
        )
        self.ledger.mark_forwarded(hold)
        paid = Amount(price if spent is None else spent, SAT)
        self.ledger.settle(hold, paid)
        self.ledger.record(
            CallRecord("l402-fetch", "allow", session, price=Amount(price, SAT), hold_id=hold, spent=paid, **facts)  # type: ignore[arg-type]
        )

    def call(self, when: datetime, session: str, tool: str, decision: str = "allow", **facts: object) -> None:
        self.clock.moment = when
        self.ledger.record(CallRecord(tool, decision, session, **facts))  # type: ignore[arg-type]


@pytest.fixture
def recorded(tmp_path: Path, clock: FakeClock) -> Iterator[tuple[Ledger, Recorder]]:
    clock.moment = DAY  # a store's times never go back: it opens before the day it records
    with Ledger.open(tmp_path / "live.db", clock=clock) as ledger:
        yield ledger, Recorder(ledger, clock)


def run(ledger: Ledger, candidate: str, tmp_path: Path, start: datetime = DAY, days: int = 1) -> Simulation:
    end = start + timedelta(days=days)
    events = [
        Replayed(e, ledger.hold(e.call.hold_id) if e.call.hold_id else None) for e in ledger.decided_calls(start, end)
    ]
    policy, _ = parse(candidate, "candidate.yaml")
    clock = ReplayClock(start)
    with Ledger.open(tmp_path / "scratch.db", clock=clock, recover=False) as scratch:
        return anyio.run(simulate, events, policy, scratch, clock, start, end)


STRICTER = """\
version: 1
default: deny
budgets:
  - {name: daily, limit: 250 sat, scope: global, window: day}
tools:
  l402-fetch: {pays: true, max_price: 10000 sat}
  weather: {rate_limit: 1/minute}
  search:
    when: [{arg: q, matches: "^lon"}]
"""


def mixed_day(rec: Recorder) -> None:
    rec.paid(at(10), "s1", 100)  # daily: 100 of 250
    rec.paid(at(10.1), "s1", 100)  # 200 of 250
    rec.paid(at(11), "s2", 300)  # 500 > 250: refused by the candidate (keeps 300)
    rec.call(at(12), "s1", "weather")
    rec.call(at(12 + 30 / 3600), "s1", "weather")  # 30 s later: over 1/minute
    rec.call(at(12.5), "s1", "delete-file", "deny", rule="default", kind="default")  # still denied
    rec.call(
        at(13), "s2", "l402-fetch", "deny", rule="tools.l402-fetch.max_price", kind="price", price=Amount(5000, SAT)
    )
    rec.call(at(14), "s1", "search", arguments=json.dumps({"q": "paris"}))  # fails ^lon
    rec.call(at(14.5), "s1", "search", arguments=json.dumps({"q": "london"}))  # holds
    rec.call(at(15), "s3", "search")  # no arguments: not evaluable
    rec.call(at(15.5), "s3", "admin", "deny", rule="freeze.global", kind="freeze")  # the operator's, skipped
    rec.call(at(25), "s1", "weather")  # the next day: out of the period


def test_a_stricter_candidate_flips_the_calls_its_rules_refuse_with_their_money(
    recorded: tuple[Ledger, Recorder], tmp_path: Path
) -> None:
    ledger, rec = recorded
    mixed_day(rec)
    result = run(ledger, STRICTER, tmp_path)
    doc = as_json(result)
    assert (doc["calls"], doc["replayed"], doc["skipped"]) == (11, 10, {"freeze": 1})
    # Unchanged: two fetches within the budget, the first weather, delete-file, the over-cap fetch (still
    # denied: by the budget now), the london search.
    assert doc["unchanged"] == 6
    flips = {(f["direction"], f["rule"]): (f["kind"], f["calls"], f["money"]) for f in doc["flips"]}
    assert flips == {
        ("allow_to_deny", "budgets.daily"): ("budget", 1, {SAT: 300}),
        ("allow_to_deny", "tools.weather.rate_limit"): ("rate_limit", 1, {}),
        ("allow_to_deny", "tools.search.when[0]"): ("condition", 1, {}),
    }
    assert doc["allow_to_deny"] == {"calls": 3, "money": {SAT: 300}, "money_unknown": 0}
    assert doc["deny_to_allow"] == {"calls": 0, "money": {}, "money_unknown": 0}
    [daily] = doc["budgets"]
    assert (daily["not_spent"], daily["more_spent"], daily["refused"]) == (300, 0, 2)
    assert daily["ran_out"] == {"at": at(11).isoformat(), "session": "s2", "identity": None, "tool": "l402-fetch"}
    assert doc["not_evaluable"] == [
        {
            "rule": "tools.search.when[0]",
            "calls": 1,
            "examples": [{"at": at(15).isoformat(), "session": "s3", "identity": None, "tool": "search"}],
        }
    ]


def test_a_looser_candidate_lets_denied_calls_through_at_their_recorded_price(
    recorded: tuple[Ledger, Recorder], tmp_path: Path
) -> None:
    ledger, rec = recorded
    mixed_day(rec)
    looser = """\
version: 1
default: allow
budgets:
  - {name: daily, limit: 100000 sat, scope: global, window: day}
tools:
  l402-fetch: {pays: true}
"""
    doc = as_json(run(ledger, looser, tmp_path))
    flips = {(f["direction"], f["rule"]): (f["calls"], f["money"]) for f in doc["flips"]}
    # delete-file (default deny before) is now allowed, free; the over-cap fetch goes through at 5000 sat.
    assert flips == {
        ("deny_to_allow", "default"): (1, {}),
        ("deny_to_allow", "tools.l402-fetch.max_price"): (1, {SAT: 5000}),
    }
    [daily] = doc["budgets"]
    assert (daily["not_spent"], daily["more_spent"], daily["ran_out"]) == (0, 5000, None)
    assert doc["not_evaluable"] == []  # the looser candidate reads no arguments


def test_a_daily_budget_starts_again_at_the_recorded_midnight(
    recorded: tuple[Ledger, Recorder], tmp_path: Path
) -> None:
    ledger, rec = recorded
    rec.paid(at(23), "s1", 100)
    rec.paid(at(23.5), "s1", 100)  # 200 > 150 on day one: refused
    rec.paid(at(24.5), "s1", 100)  # day two: 100 of 150 again
    candidate = """\
version: 1
budgets: [{name: daily, limit: 150 sat, scope: global, window: day}]
tools: {l402-fetch: {pays: true}}
"""
    doc = as_json(run(ledger, candidate, tmp_path, days=2))
    assert [(f["rule"], f["calls"], f["money"]) for f in doc["flips"]] == [("budgets.daily", 1, {SAT: 100})]
    assert doc["unchanged"] == 2
    assert doc["budgets"][0]["ran_out"]["at"] == at(23.5).isoformat()


def test_the_loop_breaker_counts_purchases_of_the_recorded_resource_per_session(
    recorded: tuple[Ledger, Recorder], tmp_path: Path
) -> None:
    ledger, rec = recorded
    for n in range(4):
        rec.paid(at(10 + n / 60), "s1", 10, resource="https://api.example/a")
    rec.paid(at(10.1), "s1", 10, resource="https://api.example/b")  # another thing: not a repeat
    rec.paid(at(10.2), "s2", 10, resource="https://api.example/a")  # another session
    candidate = """\
version: 1
budgets: [{name: all, limit: 1000000 sat}]
tools: {l402-fetch: {pays: true, repeat_limit: 3/10m}}
"""
    doc = as_json(run(ledger, candidate, tmp_path))
    assert [(f["rule"], f["kind"], f["calls"], f["money"]) for f in doc["flips"]] == [
        ("tools.l402-fetch.repeat_limit", "repeat_limit", 1, {SAT: 10})
    ]
    assert doc["flips"][0]["examples"][0]["at"] == at(10 + 3 / 60).isoformat()


def test_a_payment_above_its_hold_counts_whole_and_a_voided_one_counts_nothing(
    recorded: tuple[Ledger, Recorder], tmp_path: Path, clock: FakeClock
) -> None:
    ledger, rec = recorded
    rec.paid(at(10), "s1", 100, spent=160)  # paid above its hold: 160 left the wallet
    clock.moment = at(10.5)
    voided = ledger.reserve([], Amount(100, SAT), session="s1", tool="l402-fetch")
    ledger.void(voided)
    # It paid nothing, but a reservation of 100 no longer fits (160 + 100 > 200): refused, keeping nothing.
    ledger.record(CallRecord("l402-fetch", "allow", "s1", price=Amount(100, SAT), hold_id=voided))
    rec.paid(at(11), "s1", 50)  # 160 + 50 > 200: refused, keeping 50
    candidate = """\
version: 1
budgets: [{name: daily, limit: 200 sat, scope: global, window: day}]
tools: {l402-fetch: {pays: true}}
"""
    doc = as_json(run(ledger, candidate, tmp_path))
    assert [(f["rule"], f["calls"], f["money"]) for f in doc["flips"]] == [("budgets.daily", 2, {SAT: 50})]
    assert doc["budgets"][0]["not_spent"] == 50


def test_a_candidate_that_needs_a_humans_approval_denies_until_one_answers(
    recorded: tuple[Ledger, Recorder], tmp_path: Path
) -> None:
    ledger, rec = recorded
    rec.call(at(9), "s1", "send-email")
    doc = as_json(run(ledger, "version: 1\ntools: {send-email: {action: approve}}\n", tmp_path))
    assert [(f["rule"], f["kind"]) for f in doc["flips"]] == [("tools.send-email", "approval")]


def test_a_denied_call_without_a_recorded_price_that_the_candidate_lets_pay_has_unknown_money(
    recorded: tuple[Ledger, Recorder], tmp_path: Path
) -> None:
    ledger, rec = recorded
    rec.call(at(9), "s1", "buy", "deny", rule="default", kind="default")
    candidate = """\
version: 1
budgets: [{name: all, limit: 1000 usd}]
tools: {buy: {pays: true, max_price: 2 usd}}
"""
    doc = as_json(run(ledger, candidate, tmp_path))
    assert doc["deny_to_allow"] == {"calls": 1, "money": {}, "money_unknown": 1}


def test_markdown_names_the_flips_the_money_the_budgets_and_what_was_not_evaluable(
    recorded: tuple[Ledger, Recorder], tmp_path: Path
) -> None:
    ledger, rec = recorded
    mixed_day(rec)
    text = as_markdown(run(ledger, STRICTER, tmp_path))
    assert "## Allowed, would be denied: 3" in text
    assert "| budgets.daily | budget | 1 | 300 sat | 2026-11-21T11:00:00+00:00 s2 l402-fetch |" in text
    assert "Money that would not have been spent: 300 sat." in text
    assert (
        "| daily (global, per day) | 250 sat | 300 sat | 0 sat | 2 | 2026-11-21T11:00:00+00:00 (s2, l402-fetch) |"
        in text
    )
    assert "| tools.search.when[0] | 1 | 2026-11-21T15:00:00+00:00 s3 search |" in text


def test_the_replay_writes_nothing_to_the_recorded_ledger(recorded: tuple[Ledger, Recorder], tmp_path: Path) -> None:
    ledger, rec = recorded
    mixed_day(rec)
    before = ledger.calls(last=1000)
    run(ledger, STRICTER, tmp_path)
    assert ledger.calls(last=1000) == before


GOLDEN = Path(__file__).parent.parent / "golden" / "simulate.md"


def test_the_markdown_of_the_mixed_day_matches_its_golden_file(
    recorded: tuple[Ledger, Recorder], tmp_path: Path
) -> None:
    ledger, rec = recorded
    mixed_day(rec)
    text = as_markdown(run(ledger, STRICTER, tmp_path))
    if os.environ.get("GUARD_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "GUARD_UPDATE_GOLDEN=1 rewrites the golden file"


def test_a_condition_on_a_value_the_redaction_replaced_is_not_evaluable_and_one_on_a_kept_value_is(
    recorded: tuple[Ledger, Recorder], tmp_path: Path
) -> None:
    ledger, rec = recorded
    kept = {
        "url": "https://api.example/v1/report",
        "link": "https://x.example/?api_key=[redacted]",
        "token": "[redacted]",
    }
    rec.call(at(9), "s1", "fetch", arguments=json.dumps(kept))
    candidate = """\
version: 1
tools:
  fetch:
    when:
      - {arg: url, matches: "^https://api\\\\.example/"}
      - {arg: token, equals: "t-123"}
      - {arg: link, matches: "^https://x\\\\.example/"}
"""
    doc = as_json(run(ledger, candidate, tmp_path))
    # The URL was kept whole (its condition holds); the token was replaced, and so was a part of the link
    # (a pattern may read that part): both unknown.
    assert [(n["rule"], n["calls"]) for n in doc["not_evaluable"]] == [
        ("tools.fetch.when[1]", 1),
        ("tools.fetch.when[2]", 1),
    ]
    assert (doc["flips"], doc["unchanged"]) == ([], 0)


def test_a_candidate_that_denies_a_tool_outright_flips_it_even_without_its_arguments(
    recorded: tuple[Ledger, Recorder], tmp_path: Path
) -> None:
    ledger, rec = recorded
    rec.call(at(9), "s1", "search")
    doc = as_json(
        run(ledger, "version: 1\ntools: {search: {action: deny, when: [{arg: q, exists: true}]}}\n", tmp_path)
    )
    assert [(f["rule"], f["kind"]) for f in doc["flips"]] == [("tools.search", "tool")]
    assert doc["not_evaluable"] == []
