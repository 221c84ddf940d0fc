"""Token Pilot: `session_budget` never pays; it observes what is left of a token budget, in `tokens`.

Shape: Token Pilot's `session_budget` answer, text content holding JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guard.payments.adapters._facts import Outcome, Prepared, Refresh
from guard.payments.adapters.token_pilot import TokenPilot
from ledgers import Amount, BalanceObservation

JSON = dict[str, Any]
SID = "6f1c2a9e-3b7d-4e8a-9c0f-123456789abc"
ADAPTER = TokenPilot()


def budget(**fields: object) -> JSON:
    """A documented `session_budget` answer with `fields` replaced (a value of ... drops the field)."""
    body: JSON = {
        "semantics": "burnFraction is hook-suppression pressure, NOT context-window occupancy.",
        "sessionId": SID,
        "savedTokens": 12000,
        "budgetTokens": 50000,
        "burnFraction": 0.24,
        "baseThreshold": 2000,
        "effectiveThreshold": 1700,
        "adaptive": True,
        "eventCount": 8,
        "avgSavedPerEvent": 1500,
        "eventsUntilExhaustion": 25,
        "firstEventMs": 1763726400000,
        "lastEventMs": 1763727000000,
    }
    body.update(fields)
    body = {k: v for k, v in body.items() if v is not ...}
    return {"content": [{"type": "text", "text": json.dumps(body, indent=2)}]}


def tokens(n: int) -> Amount:
    return Amount(n, "tokens")


def observed(amount: Amount | None, status: str | None, sid: str = SID) -> tuple[BalanceObservation, ...]:
    return (BalanceObservation("token-pilot", f"tokens:{sid}", amount=amount, status=status),)


@pytest.mark.parametrize(("tool", "known"), [("session_budget", True), ("session-budget", True), ("budget", False)])
def test_the_adapter_knows_session_budget_in_snake_and_kebab_case(tool: str, known: bool) -> None:
    assert ADAPTER.knows(tool) is known


@pytest.mark.parametrize("tool", ["session_budget", "session-budget"])
def test_reading_a_token_budget_never_pays(tool: str) -> None:
    assert ADAPTER.prepare(tool, {"sessionId": SID}, None) == Prepared(pays=False)


@pytest.mark.parametrize(
    ("result", "observations"),
    [
        pytest.param(budget(), observed(tokens(38000), "active"), id="what is left is the budget minus the saved"),
        pytest.param(
            budget(savedTokens=50000, burnFraction=1, eventsUntilExhaustion=0),
            observed(tokens(0), "exhausted"),
            id="a budget used up is exhausted",
        ),
        pytest.param(
            budget(savedTokens=80000, burnFraction=1, eventsUntilExhaustion=0),
            observed(tokens(0), "exhausted"),
            id="an overrun budget has nothing left, never a negative",
        ),
        pytest.param(
            budget(savedTokens=49000, burnFraction=0.98, eventsUntilExhaustion=0),
            observed(tokens(1000), "exhausted"),
            id="no further event fits: exhausted though tokens remain",
        ),
        pytest.param(
            budget(savedTokens=45000, burnFraction=1.0, eventsUntilExhaustion=3),
            observed(tokens(5000), "exhausted"),
            id="a full burn fraction is exhausted",
        ),
        pytest.param(
            budget(savedTokens=0, burnFraction=0, eventCount=0, avgSavedPerEvent=None, eventsUntilExhaustion=None),
            observed(tokens(50000), "active"),
            id="no events yet is not exhaustion",
        ),
        pytest.param(
            budget(budgetTokens=0, burnFraction=0, eventsUntilExhaustion=None),
            observed(None, "no-budget"),
            id="a zero budget is no budget configured, not an exhausted one",
        ),
        pytest.param(
            budget(savedTokens="12000", budgetTokens="50000", burnFraction="0.24", eventsUntilExhaustion="25"),
            observed(tokens(38000), "active"),
            id="numbers written as strings are read",
        ),
        pytest.param(
            budget(savedTokens=12000.4, budgetTokens=50000.9),
            observed(tokens(37999), "active"),
            id="fractional figures round against the budget",
        ),
        pytest.param(
            budget(sessionId="someone-else"),
            observed(tokens(38000), "active"),
            id="the session asked for keys the observation",
        ),
    ],
)
def test_the_observation_is_the_tokens_left_and_whether_the_budget_is_exhausted(
    result: JSON, observations: tuple[BalanceObservation, ...]
) -> None:
    outcome = ADAPTER.outcome("session_budget", {"sessionId": SID}, None, result)
    assert outcome == Outcome("no_payment", observations=observations)


def test_structured_content_is_read_when_the_server_sends_it() -> None:
    result = {"content": [], "structuredContent": {"savedTokens": 10, "budgetTokens": 100, "burnFraction": 0.1}}
    outcome = ADAPTER.outcome("session-budget", {"sessionId": SID}, None, result)
    assert outcome == Outcome("no_payment", observations=observed(tokens(90), "active"))


def test_the_answer_names_the_session_when_the_call_did_not() -> None:
    outcome = ADAPTER.outcome("session_budget", {}, None, budget())
    assert outcome == Outcome("no_payment", observations=observed(tokens(38000), "active"))


@pytest.mark.parametrize(
    ("result", "observations", "flagged"),
    [
        pytest.param(
            budget(savedTokens=-5), observed(None, "active"), "savedTokens", id="negative saved tokens: no amount"
        ),
        pytest.param(
            budget(budgetTokens="NaN"), observed(None, "active"), "budgetTokens", id="a NaN budget: no amount"
        ),
        pytest.param(budget(budgetTokens=10**30), observed(None, "active"), "too large", id="a huge budget: no amount"),
        pytest.param(
            budget(savedTokens=..., burnFraction=1),
            observed(None, "exhausted"),
            "savedTokens",
            id="a full burn is exhausted even when the figures are missing",
        ),
        pytest.param(
            budget(savedTokens=..., burnFraction=..., eventsUntilExhaustion=...),
            observed(None, None),
            "savedTokens",
            id="nothing readable: no amount, no status",
        ),
        pytest.param(
            budget(burnFraction="lots"),
            observed(tokens(38000), "active"),
            "burnFraction",
            id="an unreadable burn fraction is flagged",
        ),
        pytest.param(
            budget(eventsUntilExhaustion=True),
            observed(tokens(38000), "active"),
            "eventsUntilExhaustion",
            id="a boolean event count is flagged",
        ),
        pytest.param({"content": [{"type": "text", "text": "{oops"}]}, (), "not JSON", id="malformed JSON"),
        pytest.param({"content": [{"type": "text", "text": "42"}]}, (), "not a JSON object", id="not an object"),
        pytest.param({"content": []}, (), "no text", id="no content"),
        pytest.param(
            {"content": [{"type": "text", "text": "sessionId required"}], "isError": True},
            (),
            "error",
            id="an error answer",
        ),
    ],
)
def test_an_answer_that_cannot_be_read_as_documented_is_flagged(
    result: JSON, observations: tuple[BalanceObservation, ...], flagged: str
) -> None:
    outcome = ADAPTER.outcome("session_budget", {"sessionId": SID}, None, result)
    assert (outcome.state, outcome.observations) == ("no_payment", observations)
    assert outcome.problem is not None and flagged in outcome.problem


def test_an_answer_with_no_session_to_key_it_observes_nothing() -> None:
    outcome = ADAPTER.outcome("session_budget", {"sessionId": ""}, None, budget(sessionId=""))
    assert (outcome.state, outcome.observations) == ("no_payment", ())
    assert outcome.problem is not None


@pytest.mark.parametrize(
    ("key", "refresh"),
    [
        (f"tokens:{SID}", Refresh("session_budget", {"sessionId": SID})),
        ("tokens:", None),
        (f"p402:{SID}", None),
    ],
)
def test_a_token_observation_is_refreshed_by_asking_for_the_session_budget(key: str, refresh: Refresh | None) -> None:
    assert ADAPTER.refresh(key) == refresh


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    fields=st.dictionaries(
        st.sampled_from(["sessionId", "savedTokens", "budgetTokens", "burnFraction", "eventsUntilExhaustion"]),
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12) | st.lists(st.integers()),
    ),
    error=st.booleans(),
)
def test_no_answer_makes_the_adapter_raise(fields: JSON, error: bool) -> None:
    result = {"content": [{"type": "text", "text": json.dumps(fields)}], "isError": error}
    outcome = ADAPTER.outcome("session_budget", {"sessionId": SID}, None, result)
    assert outcome.state == "no_payment"
    assert all(o.key == f"tokens:{SID}" for o in outcome.observations)
