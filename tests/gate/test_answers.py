"""The answers guard gives itself: a denial the agent can read and act on (a first line, and the same as
fields), and the `guard-budget` tool's."""

from __future__ import annotations

from datetime import UTC, datetime

from guard.gate.answers import NO_BUDGETS, budget_result, denial_result
from guard.policy.rules import Denial
from ledgers import Amount, Budget, BudgetState, Window

DENIAL_FIELDS = {"denied", "rule", "reason", "remaining", "unit", "retry_after_s", "approval_id"}


def test_a_denial_is_an_error_result_with_a_readable_first_line_and_machine_fields() -> None:
    answer = denial_result(Denial("tools.buy.when[0]", "items are lower-case words", kind="condition"))
    assert answer["isError"] is True
    assert answer["content"] == [
        {"type": "text", "text": "Denied by guard: items are lower-case words (rule tools.buy.when[0])"}
    ]
    assert answer["structuredContent"] == {
        "denied": True,
        "rule": "tools.buy.when[0]",
        "reason": "items are lower-case words",
        "remaining": None,
        "unit": None,
        "retry_after_s": None,
        "approval_id": None,
    }


def test_a_denial_says_what_is_left_when_to_retry_and_which_approval() -> None:
    budget = Denial("budgets.per-session", "over budget", 10, "sat", 3720.0, kind="budget")
    calls = Denial("tools.browse.rate_limit", "rate limit reached", 0, "calls", 42.0, kind="rate_limit")
    approval = Denial("tools.ask", "needs approval", approval_id="ap_123", kind="approval")
    texts = [denial_result(d)["content"][0]["text"] for d in (budget, calls, approval)]
    assert texts == [
        "Denied by guard: over budget (rule budgets.per-session; 10 sat left; retry after 1h 2m)",
        "Denied by guard: rate limit reached (rule tools.browse.rate_limit; 0 calls left; retry after 42s)",
        "Denied by guard: needs approval (rule tools.ask; approval ap_123)",
    ]
    assert set(denial_result(budget)["structuredContent"]) == DENIAL_FIELDS


def test_the_budget_tool_answers_a_line_per_budget_and_the_same_as_data() -> None:
    day = Budget("daily", Amount(1000, "sat"), "global", Window.calendar("day"))
    state = BudgetState(
        day,
        spent=300,
        held=20,
        in_doubt=10,
        window_start=datetime(2026, 11, 21, tzinfo=UTC),
        resets_at=datetime(2026, 11, 22, tzinfo=UTC),
        last_used=None,
    )
    answer = budget_result([state])
    assert answer["isError"] is False
    assert answer["content"][0]["text"] == (
        "daily (global, per day (UTC)): 670 sat left of 1000 sat; spent 300 sat, held 30 sat;"
        " resets at 2026-11-22T00:00:00+00:00"
    )
    [fields] = answer["structuredContent"]["budgets"]
    assert (fields["name"], fields["remaining"], fields["unit"]) == ("daily", 670, "sat")


def test_with_no_budgets_the_budget_tool_says_paying_tools_are_denied() -> None:
    assert budget_result([])["content"][0]["text"] == NO_BUDGETS
