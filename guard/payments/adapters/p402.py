"""P402 (`@p402/mcp-server`): an LLM router that settles in USDC or credits, with capped sessions.

`p402_chat` spends; its price is only known afterwards (`metadata.cost_usd`), so the gate bounds it by
the policy's max_price and settles at the cost the router reports (rounded up to the micro-dollar).
A chat naming a `session_id` depends on that session's observation `p402:<id>` (remaining budget in
usd_micro, status), read from `p402_get_session` and `p402_create_session`. Results are text content
holding JSON, budget figures are USD floats: read as exact decimals, never trusted to be well-formed.

`p402_create_session` returns a `session_key`: a secret, never copied anywhere.
"""

from __future__ import annotations

from typing import Literal

from guard.core import JSON
from guard.names import known
from guard.payments.adapters._facts import Outcome, Prepared, Refresh
from guard.payments.adapters._json import Unreadable, amount, as_dict, dig, parse_json, short, text_of
from ledgers import Amount, BalanceObservation

SOURCE = "p402"
KEY_PREFIX = "p402:"
CREDITS_KEY = "p402-credits"
CREDITS_UNIT = "credits:p402"  # P402 credits as a count ($0.01 each upstream; not converted here)
STATUSES = frozenset({"active", "exhausted", "expired", "ended", "revoked"})
NOT_FOUND = "not-found"

TOOLS = frozenset(
    {
        "p402_chat",
        "p402_create_session",
        "p402_get_session",
        "p402_list_models",
        "p402_compare_providers",
        "p402_health",
        "p402_agent_status",
    }
)


def _session_id(arguments: JSON, key: str = "session_id") -> str | None:
    value = arguments.get(key)
    return value if isinstance(value, str) and value else None


def _usd(value: object, what: str, rounding: Literal["up", "down"]) -> Amount:
    """A USD figure (a JSON float, or a number as a string) in usd_micro."""
    return amount(value, what, "usd_micro", decimals=6, rounding=rounding)


def _problems(problems: list[str]) -> str | None:
    return "; ".join(problems) if problems else None


class P402:
    """The P402 MCP server's tools (snake case; kebab case matches too)."""

    name = "p402"

    tools = TOOLS

    def knows(self, tool: str) -> bool:
        return known(tool, TOOLS) is not None

    def prepare(self, tool: str, arguments: JSON, meta: JSON | None) -> Prepared:
        if known(tool, TOOLS) != "p402_chat":
            return Prepared(pays=False)
        session = _session_id(arguments)
        # No quote exists for a chat: the policy's max_price bounds it.
        return Prepared(pays=True, depends_on=(KEY_PREFIX + session,) if session else ())

    def outcome(self, tool: str, arguments: JSON, meta: JSON | None, result: JSON) -> Outcome:
        name = known(tool, TOOLS)
        if name == "p402_chat":
            return self._chat(result)
        if name == "p402_get_session":
            return self._get_session(arguments, result)
        if name == "p402_create_session":
            return self._create_session(result)
        return Outcome("no_payment")

    def refresh(self, key: str) -> Refresh | None:
        if key.startswith(KEY_PREFIX) and len(key) > len(KEY_PREFIX):
            return Refresh("p402_get_session", {"session_id": key[len(KEY_PREFIX) :]})
        return None

    def _chat(self, result: JSON) -> Outcome:
        text = text_of(result) or ""
        if result.get("isError") is True:
            if text.startswith("Error: Session"):
                # The router refused the session before routing anything: nothing was charged.
                return Outcome("not_paid")
            return Outcome("unknown", problem="p402_chat answered with an error: the router may have charged")
        try:
            body = as_dict(parse_json(text))
            if body is None:
                raise Unreadable("the result's text is not a JSON object")
        except Unreadable as e:
            return Outcome("paid", problem=f"p402_chat: {e}: settled at the amount reserved")
        problems: list[str] = []
        spent: Amount | None = None
        try:
            spent = _usd(dig(body, "metadata", "cost_usd"), "metadata.cost_usd", "up")
        except Unreadable as e:
            problems.append(f"p402_chat: {e}: settled at the amount reserved")
        observations = []
        credits = body.get("credits_remaining")
        what = "credits_remaining"
        if credits is None:
            credits, what = dig(body, "metadata", "credits_balance"), "metadata.credits_balance"
        if credits is not None:
            try:
                observations.append(
                    BalanceObservation(
                        SOURCE, CREDITS_KEY, amount(credits, what, CREDITS_UNIT, rounding="down"), status=None
                    )
                )
            except Unreadable as e:
                problems.append(f"p402_chat: {e}")
        return Outcome("paid", spent=spent, observations=tuple(observations), problem=_problems(problems))

    def _get_session(self, arguments: JSON, result: JSON) -> Outcome:
        asked = _session_id(arguments)
        text = text_of(result) or ""
        if result.get("isError") is True:
            if text.startswith("Error: Session") and asked is not None:
                # Unknown session, or any HTTP failure on the router's side (the server cannot tell).
                gone = BalanceObservation(SOURCE, KEY_PREFIX + asked, status=NOT_FOUND, money=True)
                return Outcome("no_payment", observations=(gone,))
            return Outcome("no_payment", problem="p402_get_session answered with an error")
        observation, problems = _read_session(text, asked, created=False)
        return Outcome(
            "no_payment",
            observations=(observation,) if observation else (),
            problem=_problems([f"p402_get_session: {p}" for p in problems]),
        )

    def _create_session(self, result: JSON) -> Outcome:
        if result.get("isError") is True:
            return Outcome("no_payment")
        observation, problems = _read_session(text_of(result) or "", None, created=True)
        return Outcome(
            "no_payment",
            observations=(observation,) if observation else (),
            problem=_problems([f"p402_create_session: {p}" for p in problems]),
        )


def _read_session(text: str, asked: str | None, *, created: bool) -> tuple[BalanceObservation | None, list[str]]:
    """A Session's observation: `{id, status, budget: {total_usd, used_usd, remaining_usd}, …}`.

    Only `id`, `status` and `budget` are read: the `session_key` of a new session is never touched."""
    try:
        session = as_dict(parse_json(text))
    except Unreadable as e:
        return None, [str(e)]
    if session is None:
        return None, ["the result's text is not a JSON object"]
    problems: list[str] = []
    sid = session.get("id")
    if not isinstance(sid, str) or not sid:
        if asked is None:
            return None, ["the session has no id"]
        problems.append("the session has no id: the id asked for is used")
        sid = asked
    elif asked is not None and sid != asked:
        # Never let one session's figures vouch for another's.
        return None, ["the session returned is not the one asked for"]

    status = session.get("status")
    if not isinstance(status, str) or not status:
        problems.append(f"status is not readable: {short(status)}")
        status = None
    elif status not in STATUSES:
        problems.append(f"unknown status {short(status)}")
        status = status[:40]

    remaining: Amount | None = None
    budget = as_dict(session.get("budget"))
    if budget is None:
        problems.append("the session has no budget")
    else:
        remaining, why = _remaining(budget, created=created)
        if why:
            problems.append(why)
    observation = BalanceObservation(SOURCE, KEY_PREFIX + sid, amount=remaining, status=status, money=True)
    return observation, problems


def _remaining(budget: JSON, *, created: bool) -> tuple[Amount | None, str | None]:
    """`remaining_usd` rounded down to the micro-dollar; else `max(0, total - used)` (the router's own
    formula); for a session just created, else its total."""
    try:
        return _usd(budget.get("remaining_usd"), "budget.remaining_usd", "down"), None
    except Unreadable as e:
        first = str(e)
    try:
        total = _usd(budget.get("total_usd"), "budget.total_usd", "down")
    except Unreadable as e:
        return None, f"{first}; {e}"
    if created and budget.get("used_usd") is None:
        return total, None
    try:
        used = _usd(budget.get("used_usd"), "budget.used_usd", "up")
    except Unreadable as e:
        return None, f"{first}; {e}"
    return Amount(max(0, total.value - used.value), "usd_micro"), None
