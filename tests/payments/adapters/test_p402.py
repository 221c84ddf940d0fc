"""P402: a chat pays what the router reports (rounded up), sessions are observed, the session key never leaks.

Shapes are the P402 MCP server's (`@p402/mcp-server`): text content holding JSON, USD as floats."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guard.payments.adapters._facts import Outcome, Prepared, Refresh
from guard.payments.adapters.p402 import P402
from ledgers import Amount, BalanceObservation

JSON = dict[str, Any]
SID = "sess_0123456789abcdef01234567"
SECRET = "sk_sess_9f8e7d6c5b4a39281706f5e4d3c2b1a0"

ADAPTER = P402()


def text(body: str, *, error: bool = False) -> JSON:
    result: JSON = {"content": [{"type": "text", "text": body}]}
    if error:
        result["isError"] = True
    return result


def chat(cost: str, extra: str = "") -> JSON:
    """A documented p402_chat answer with `metadata.cost_usd` written as the JSON literal `cost`."""
    return text(
        '{"response": "Hello!", "metadata": {"cost_usd": ' + cost + ', "model": "gpt-4o-mini", '
        '"provider": "openai", "input_tokens": 12, "output_tokens": 3}' + extra + "}"
    )


def session(status: str = "active", budget: str | None = None, sid: str = SID, extra: str = "") -> JSON:
    budget = budget or '{"total_usd": 10, "used_usd": 2.5, "remaining_usd": 7.5, "utilization_percent": 25}'
    return text(
        f'{{"id": "{sid}", "status": "{status}", "budget": {budget}, "expires_at": "2026-11-22T12:00:00.000Z"{extra}}}'
    )


def usd(micro: int) -> Amount:
    return Amount(micro, "usd_micro")


def observed(amount: Amount | None, status: str | None, sid: str = SID) -> tuple[BalanceObservation, ...]:
    return (BalanceObservation("p402", f"p402:{sid}", amount=amount, status=status, money=True),)


@pytest.mark.parametrize(
    ("tool", "known"),
    [
        ("p402_chat", True),
        ("p402-chat", True),
        ("p402_create_session", True),
        ("p402-get-session", True),
        ("p402_list_models", True),
        ("p402_compare_providers", True),
        ("p402_health", True),
        ("p402_agent_status", True),
        ("chat", False),
        ("p402_delete_everything", False),
        ("l402-fetch", False),
    ],
)
def test_the_adapter_knows_the_p402_tools_in_snake_and_kebab_case(tool: str, known: bool) -> None:
    assert ADAPTER.knows(tool) is known


@pytest.mark.parametrize(
    ("tool", "arguments", "prepared"),
    [
        pytest.param(
            "p402_chat",
            {"message": "hi", "session_id": SID},
            Prepared(pays=True, depends_on=(f"p402:{SID}",)),
            id="a chat in a session pays, unpriced, and depends on that session",
        ),
        pytest.param(
            "p402-chat",
            {"message": "hi", "session_id": SID},
            Prepared(pays=True, depends_on=(f"p402:{SID}",)),
            id="a kebab-case chat is the same chat",
        ),
        pytest.param("p402_chat", {"message": "hi"}, Prepared(pays=True), id="a chat without a session pays, unpriced"),
        pytest.param(
            "p402_chat",
            {"message": "hi", "session_id": ""},
            Prepared(pays=True),
            id="an empty session id names no session",
        ),
        pytest.param(
            "p402_chat", {"message": "hi", "session_id": 7}, Prepared(pays=True), id="a non-text session id is ignored"
        ),
        pytest.param(
            "p402_create_session",
            {"budget_usd": 5},
            Prepared(pays=False),
            id="creating a session allocates a cap and pays nothing",
        ),
        pytest.param("p402_get_session", {"session_id": SID}, Prepared(pays=False), id="reading a session is free"),
        pytest.param("p402_list_models", {}, Prepared(pays=False), id="listing models is free"),
        pytest.param("p402_health", {}, Prepared(pays=False), id="a health check is free"),
    ],
)
def test_only_a_chat_pays_and_it_depends_on_its_session(tool: str, arguments: JSON, prepared: Prepared) -> None:
    assert ADAPTER.prepare(tool, arguments, None) == prepared


@pytest.mark.parametrize(
    ("cost", "spent"),
    [
        pytest.param("0.0042", usd(4200), id="a float cost becomes exact micro-dollars"),
        pytest.param("0.0000001", usd(1), id="a cost below a micro-dollar rounds up to one"),
        pytest.param("1.0000001", usd(1_000_001), id="a fractional micro-dollar rounds up"),
        pytest.param("0.000123456789012345678901234567890123", usd(124), id="a long fraction rounds up exactly"),
        pytest.param('"0.25"', usd(250_000), id="a cost written as a string is read"),
        pytest.param("2", usd(2_000_000), id="a whole-dollar cost is read"),
        pytest.param("0", usd(0), id="a free chat spent nothing"),
        pytest.param("1e-3", usd(1000), id="an exponent is read"),
    ],
)
def test_a_chat_settles_at_the_reported_cost_rounded_up(cost: str, spent: Amount) -> None:
    outcome = ADAPTER.outcome("p402_chat", {"message": "hi"}, None, chat(cost))
    assert outcome == Outcome("paid", spent=spent)


@pytest.mark.parametrize(
    "cost",
    [
        pytest.param("-0.01", id="negative"),
        pytest.param("NaN", id="NaN"),
        pytest.param('"NaN"', id="NaN as a string"),
        pytest.param("Infinity", id="infinite"),
        pytest.param('"Infinity"', id="infinite as a string"),
        pytest.param("1e30", id="huge"),
        pytest.param("1e999999999", id="astronomically huge"),
        pytest.param('"abc"', id="not a number"),
        pytest.param('""', id="an empty string"),
        pytest.param("true", id="a boolean"),
        pytest.param("null", id="null"),
        pytest.param("[1]", id="a list"),
        pytest.param('"' + "1" * 200 + '"', id="an absurdly long string"),
    ],
)
def test_a_chat_with_an_unreadable_cost_is_paid_at_the_reserved_amount(cost: str) -> None:
    outcome = ADAPTER.outcome("p402_chat", {"message": "hi"}, None, chat(cost))
    assert outcome.state == "paid"
    assert outcome.spent is None
    assert outcome.problem is not None and "metadata.cost_usd" in outcome.problem


@pytest.mark.parametrize(
    "result",
    [
        pytest.param(text("{not json"), id="malformed JSON"),
        pytest.param(text('["a", "list"]'), id="JSON that is not an object"),
        pytest.param(text('{"response": "hi"}'), id="no metadata"),
        pytest.param(text('{"response": "hi", "metadata": "cheap"}'), id="metadata that is not an object"),
        pytest.param({"content": []}, id="no content"),
        pytest.param({"content": [{"type": "image", "data": "AAAA"}]}, id="no text content"),
        pytest.param({}, id="an empty result"),
    ],
)
def test_a_chat_answer_that_cannot_be_read_is_paid_at_the_reserved_amount(result: JSON) -> None:
    outcome = ADAPTER.outcome("p402_chat", {"message": "hi"}, None, result)
    assert (outcome.state, outcome.spent) == ("paid", None)
    assert outcome.problem is not None


@pytest.mark.parametrize(
    ("result", "state"),
    [
        pytest.param(
            text(f"Error: Session {SID} not found", error=True), "not_paid", id="an unknown session charged nothing"
        ),
        pytest.param(
            text("Error: Session budget exhausted", error=True), "not_paid", id="a refused session charged nothing"
        ),
        pytest.param(
            text("Error: upstream provider timed out", error=True), "unknown", id="any other error may have charged"
        ),
        pytest.param({"isError": True}, "unknown", id="an error without text may have charged"),
    ],
)
def test_a_chat_error_is_not_paid_only_when_the_session_refused_it(result: JSON, state: str) -> None:
    outcome = ADAPTER.outcome("p402-chat", {"message": "hi", "session_id": SID}, None, result)
    assert (outcome.state, outcome.spent, outcome.observations) == (state, None, ())
    assert (outcome.problem is not None) is (state == "unknown")


@pytest.mark.parametrize(
    ("extra", "credits"),
    [
        pytest.param(', "credits_spent": 1, "credits_remaining": 42', 42, id="credits remaining at the top level"),
        pytest.param(', "credits_remaining": "17.9"', 17, id="a fractional credit balance rounds down"),
    ],
)
def test_a_chat_reports_the_credit_balance_when_the_router_names_it(extra: str, credits: int) -> None:
    outcome = ADAPTER.outcome("p402_chat", {"message": "hi"}, None, chat("0.01", extra))
    assert outcome == Outcome(
        "paid",
        spent=usd(10_000),
        observations=(BalanceObservation("p402", "p402-credits", Amount(credits, "credits:p402")),),
    )


def test_a_chat_reads_the_credit_balance_from_the_metadata_too() -> None:
    result = text('{"response": "ok", "metadata": {"cost_usd": 0.02, "credits_spent": 2, "credits_balance": 98}}')
    outcome = ADAPTER.outcome("p402_chat", {}, None, result)
    assert outcome.observations == (BalanceObservation("p402", "p402-credits", Amount(98, "credits:p402")),)
    assert outcome.spent == usd(20_000)


def test_an_unreadable_credit_balance_is_flagged_but_the_cost_still_counts() -> None:
    outcome = ADAPTER.outcome("p402_chat", {}, None, chat("0.01", ', "credits_remaining": -3'))
    assert (outcome.state, outcome.spent, outcome.observations) == ("paid", usd(10_000), ())
    assert outcome.problem is not None and "credits_remaining" in outcome.problem


@pytest.mark.parametrize(
    ("result", "observations"),
    [
        pytest.param(session(), observed(usd(7_500_000), "active"), id="an active session's remaining budget"),
        pytest.param(
            session("exhausted", '{"total_usd": 1, "used_usd": 1, "remaining_usd": 0, "utilization_percent": 100}'),
            observed(usd(0), "exhausted"),
            id="an exhausted session has nothing left",
        ),
        pytest.param(
            session("expired"), observed(usd(7_500_000), "expired"), id="an expired session keeps its figures"
        ),
        pytest.param(session("ended"), observed(usd(7_500_000), "ended"), id="an ended session"),
        pytest.param(session("revoked"), observed(usd(7_500_000), "revoked"), id="a revoked session"),
        pytest.param(
            session(budget='{"total_usd": 1, "used_usd": 0.9999981, "remaining_usd": 0.0000019}'),
            observed(usd(1), "active"),
            id="a remaining budget rounds down to the micro-dollar",
        ),
        pytest.param(
            session(budget='{"total_usd": "10", "used_usd": "6.75", "remaining_usd": "3.25"}'),
            observed(usd(3_250_000), "active"),
            id="budget figures written as strings are read",
        ),
        pytest.param(
            session(budget='{"total_usd": 10, "used_usd": 2.5}'),
            observed(usd(7_500_000), "active"),
            id="a missing remaining budget is total minus used",
        ),
        pytest.param(
            session(budget='{"total_usd": 1, "used_usd": 1.5}'),
            observed(usd(0), "active"),
            id="an overspent session has nothing left, never a negative",
        ),
    ],
)
def test_reading_a_session_observes_its_remaining_budget_and_status(
    result: JSON, observations: tuple[BalanceObservation, ...]
) -> None:
    outcome = ADAPTER.outcome("p402_get_session", {"session_id": SID}, None, result)
    assert outcome == Outcome("no_payment", observations=observations)
    assert all(o.upstream_time is None for o in outcome.observations)


@pytest.mark.parametrize(
    ("result", "observations", "flagged"),
    [
        pytest.param(
            session(budget='{"total_usd": 10, "used_usd": 2.5, "remaining_usd": -1}'),
            observed(usd(7_500_000), "active"),
            None,
            id="a negative remaining budget falls back to total minus used",
        ),
        pytest.param(
            session(budget='{"remaining_usd": -1}'),
            observed(None, "active"),
            "remaining_usd",
            id="a negative remaining budget with nothing to fall back on has no amount",
        ),
        pytest.param(
            session(budget='{"remaining_usd": NaN, "total_usd": 10}'),
            observed(None, "active"),
            "used_usd",
            id="a NaN budget with no used figure has no amount",
        ),
        pytest.param(
            session(budget='{"remaining_usd": 1e300}'),
            observed(None, "active"),
            "too large",
            id="a huge remaining budget has no amount",
        ),
        pytest.param(
            session(budget='"lots"'), observed(None, "active"), "no budget", id="a budget that is not an object"
        ),
        pytest.param(session("paused"), observed(usd(7_500_000), "paused"), "paused", id="an undocumented status"),
        pytest.param(
            text(f'{{"id": "{SID}", "budget": {{"remaining_usd": 1}}}}'),
            observed(usd(1_000_000), None),
            "status",
            id="a missing status",
        ),
        pytest.param(
            text('{"status": "active", "budget": {"remaining_usd": 1}}'),
            observed(usd(1_000_000), "active"),
            "no id",
            id="a session without an id is the one asked for",
        ),
        pytest.param(
            session(sid="sess_ffffffffffffffffffffffff"),
            (),
            "not the one asked for",
            id="another session's figures never vouch for this one",
        ),
        pytest.param(text("{not json"), (), "not JSON", id="malformed JSON"),
        pytest.param(text("[]"), (), "not a JSON object", id="JSON that is not an object"),
        pytest.param(text("Error: upstream 500", error=True), (), "error", id="an error that is not a lookup"),
    ],
)
def test_a_session_answer_that_cannot_be_read_as_documented_is_flagged(
    result: JSON, observations: tuple[BalanceObservation, ...], flagged: str | None
) -> None:
    outcome = ADAPTER.outcome("p402_get_session", {"session_id": SID}, None, result)
    assert (outcome.state, outcome.observations) == ("no_payment", observations)
    if flagged is None:
        assert outcome.problem is None
    else:
        assert outcome.problem is not None and flagged in outcome.problem


@pytest.mark.parametrize("tool", ["p402_get_session", "p402-get-session"])
def test_a_session_the_router_does_not_find_is_observed_as_not_found(tool: str) -> None:
    result = text(f"Error: Session {SID} not found", error=True)
    outcome = ADAPTER.outcome(tool, {"session_id": SID}, None, result)
    assert outcome == Outcome("no_payment", observations=observed(None, "not-found"))


def test_a_not_found_answer_without_a_session_id_to_key_it_observes_nothing() -> None:
    outcome = ADAPTER.outcome("p402_get_session", {}, None, text("Error: Session undefined not found", error=True))
    assert (outcome.state, outcome.observations) == ("no_payment", ())
    assert outcome.problem is not None


@pytest.mark.parametrize(
    ("budget", "remaining"),
    [
        pytest.param(
            '{"total_usd": 5, "used_usd": 0, "remaining_usd": 5, "utilization_percent": 0}',
            usd(5_000_000),
            id="its full budget",
        ),
        pytest.param('{"total_usd": 5}', usd(5_000_000), id="its total when nothing else is named"),
        pytest.param('{"total_usd": 0.123456789}', usd(123_456), id="a total rounded down"),
    ],
)
def test_a_new_session_is_observed_with_its_budget_and_its_key_is_never_kept(budget: str, remaining: Amount) -> None:
    result = session(budget=budget, extra=f', "session_key": "{SECRET}"')
    outcome = ADAPTER.outcome("p402_create_session", {"budget_usd": 5}, None, result)
    assert outcome == Outcome("no_payment", observations=observed(remaining, "active"))
    assert SECRET not in repr(outcome)


@pytest.mark.parametrize(
    ("result", "flagged"),
    [
        pytest.param(text("Error: invalid budget", error=True), False, id="a refused creation observes nothing"),
        pytest.param(
            text(f'{{"status": "active", "session_key": "{SECRET}", "budget": {{"total_usd": 5}}}}'),
            True,
            id="a new session without an id observes nothing",
        ),
        pytest.param(text(f'{{"session_key": "{SECRET}", "broken"'), True, id="malformed JSON observes nothing"),
    ],
)
def test_a_session_creation_that_cannot_be_read_observes_nothing_and_leaks_nothing(result: JSON, flagged: bool) -> None:
    outcome = ADAPTER.outcome("p402-create-session", {"budget_usd": 5}, None, result)
    assert (outcome.state, outcome.observations) == ("no_payment", ())
    assert (outcome.problem is not None) is flagged
    assert SECRET not in repr(outcome)


@pytest.mark.parametrize("tool", ["p402_list_models", "p402_health", "p402_compare_providers", "p402_agent_status"])
def test_the_read_only_tools_pay_nothing(tool: str) -> None:
    assert ADAPTER.outcome(tool, {}, None, text('{"ok": true}')) == Outcome("no_payment")


@pytest.mark.parametrize(
    ("key", "refresh"),
    [
        (f"p402:{SID}", Refresh("p402_get_session", {"session_id": SID})),
        ("p402:", None),
        ("p402-credits", None),
        (f"tokens:{SID}", None),
        ("wallet:alby", None),
    ],
)
def test_a_session_observation_is_refreshed_by_reading_the_session(key: str, refresh: Refresh | None) -> None:
    assert ADAPTER.refresh(key) == refresh


KEYS = ["id", "status", "budget", "remaining_usd", "total_usd", "used_usd", "metadata", "cost_usd", "session_key"]
KEYS += ["credits_remaining", "credits_balance"]

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["NaN", "-1", "1e400", "0.0000001", SID, "active"]),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(KEYS),
            children,
            max_size=5,
        )
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    tool=st.sampled_from(["p402_chat", "p402_get_session", "p402_create_session", "p402_health"]),
    body=JSON_VALUES,
    as_text=st.booleans(),
    error=st.booleans(),
)
def test_no_answer_makes_the_adapter_raise(tool: str, body: object, as_text: bool, error: bool) -> None:
    if as_text:
        try:
            result: JSON = text(json.dumps(body), error=error)
        except ValueError:
            result = text("{", error=error)
    else:
        result = {"content": body, "isError": error}
    outcome = ADAPTER.outcome(tool, {"session_id": SID}, None, result)
    assert outcome.state in ("paid", "not_paid", "unknown", "no_payment")
    assert (outcome.state == "no_payment") is (tool != "p402_chat")
