"""Test doubles for the money path, in process: a session link whose upstream answers from a table, an
adapter whose reading and answer a test decides, and small builders (calls, policies, text results)."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from guard.core import Session, ToolCall
from guard.errors import UpstreamError
from guard.payments.adapters._facts import Outcome, Prepared, Refresh
from guard.policy.files import parse
from guard.policy.rules import Policy, Who
from ledgers import Amount, AnswerStep, BalanceObservation, CallRecord, Ledger, NamedQuote

JSON = dict[str, Any]
WHO = Who("s1", "alice", "shop")

Answer = JSON | UpstreamError | Callable[[JSON], JSON]


class FakeLink:
    """A `SessionLink` to an upstream that answers guard's own calls from `answers` (tool → a result, an
    `UpstreamError` to raise, or a function of the arguments); a tool it has no answer for is unknown."""

    def __init__(self, answers: dict[str, Answer] | None = None) -> None:
        self.answers: dict[str, Answer] = dict(answers or {})
        self.calls: list[tuple[str, JSON]] = []
        self.changed = 0

    async def tools_changed(self) -> None:
        self.changed += 1

    async def call(self, name: str, arguments: JSON) -> JSON:
        self.calls.append((name, arguments))
        answer = self.answers.get(name)
        if answer is None:
            raise UpstreamError(-32602, f"Unknown tool: {name}", not_run=True)
        if isinstance(answer, UpstreamError):
            raise answer
        return answer(arguments) if callable(answer) else answer


@dataclass
class StubAdapter:
    """An upstream family of `tools` whose reading of a call (`prepared`) and of its answer (`answer`,
    or an exception it raises) the test decides; it refreshes the balances in `refreshes`."""

    prepared: Prepared = field(default_factory=lambda: Prepared(pays=True))
    answer: Outcome | Exception = field(default_factory=lambda: Outcome("paid"))
    tools: frozenset[str] = frozenset({"buy"})
    refreshes: dict[str, Refresh] = field(default_factory=dict)
    name: str = "stub"

    def knows(self, tool: str) -> bool:
        return tool in self.tools

    def prepare(self, tool: str, arguments: JSON, meta: JSON | None) -> Prepared:
        return self.prepared

    def outcome(self, tool: str, arguments: JSON, meta: JSON | None, result: JSON) -> Outcome:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def refresh(self, key: str) -> Refresh | None:
        return self.refreshes.get(key)


class RecordingLedger(Ledger):
    """A real ledger that also keeps every call event written through it, as written: with the fields the
    schema does not store (yet), such as `kind` and `balance_key`."""

    @property
    def events(self) -> list[CallRecord]:
        kept: list[CallRecord] = self.__dict__.setdefault("_events", [])
        return kept

    def record(self, call: CallRecord) -> int:
        self._keep(call)
        return super().record(call)

    def record_many(self, calls: Sequence[CallRecord]) -> None:
        for call in calls:
            self._keep(call)
        super().record_many(calls)

    def resolve(self, hold_id: int, actual: Amount, event: CallRecord | None = None) -> None:
        if event is not None:
            self._keep(event)
        super().resolve(hold_id, actual, event=event)

    def conclude(
        self,
        hold_id: int | None,
        step: AnswerStep | None = None,
        paid: Amount | None = None,
        *,
        payment_id: str | None = None,
        observations: Sequence[BalanceObservation] = (),
        quotes: Sequence[NamedQuote] = (),
        event: CallRecord | None = None,
    ) -> bool:
        named = super().conclude(
            hold_id, step, paid, payment_id=payment_id, observations=observations, quotes=quotes, event=event
        )
        if event is not None:  # kept once written (a refused conclusion writes nothing)
            self._keep(event)
        return named

    def _keep(self, call: CallRecord) -> None:
        if all(kept is not call for kept in self.events):
            self.events.append(call)


def call(name: str, arguments: JSON | None = None, meta: JSON | None = None, *, session: str = "s1") -> ToolCall:
    return ToolCall(Session(session, identity="alice"), 1, name, arguments or {}, meta)


def policy(text: str) -> Policy:
    """A policy from YAML text, read the way a file is."""
    parsed, kind = parse(textwrap.dedent(text), "test.yaml")
    assert kind == "guard"
    return parsed


def text_result(data: Any, *, error: bool = False) -> JSON:
    """A tool result holding `data` as JSON text, as the payment servers answer."""
    return {"content": [{"type": "text", "text": json.dumps(data)}], "isError": error}
