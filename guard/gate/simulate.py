"""`guard policy simulate`: the calls a ledger recorded, replayed against a candidate policy.

The recorded calls of a period (every guard's on the ledger, every session's) are replayed in the order
they were recorded through the real checklist: a `PolicyGate` with the candidate, over a scratch ledger
whose clock is set to each call's recorded time, so rate limits, quotas, repeat limits and budgets count
and their windows roll over as they would have. Nothing here decides a call: the gate does.

What the replay cannot know, it takes from the record, never from a guess:
- the money: a paying call costs what it cost (`ReplayPayments`): settled at what it paid, voided if it
  paid nothing, kept in doubt if that was unknown; a call the record denied costs the price recorded for
  it, if any (else its money is counted as unknown);
- the answer: a call that failed upstream fails again;
- the arguments: kept only under `audit: {arguments: redacted}`. Without them (or where the rule reads a
  value the redaction replaced), a candidate rule that reads arguments (a `when` condition, a quota's
  `increment_from`) cannot be evaluated: such a call is replayed without those rules (so its money still
  counts), and unless the candidate denies it before its conditions (default deny, a tool rule), it is
  reported as not evaluable, never as a flip.

Freezes and the wire's refusals are the operator's and the transport's, not the policy's: those calls are
counted as skipped. A human's approval cannot be replayed: a call the candidate sends for approval is
denied (kind `approval`), as it would be until a human answered.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Literal

from guard.core import JSON, Session, SessionLink, ToolCall
from guard.errors import UpstreamError
from guard.gate.gate import PolicyGate
from guard.payments.adapters._facts import Prepared
from guard.payments.decision import Bound, priced
from guard.payments.payments import Payments
from guard.payments.reading import NOT_READ, Reading
from guard.payments.settlement import Settled
from guard.policy.arguments import MISSING, lookup
from guard.policy.model import PolicySpec
from guard.policy.rules import Denial, Policy, Who, counting
from guard.policy.source import PolicySource
from guard.redact import REDACTED
from ledgers import Amount, AmountError, CallRecord, HoldInfo, Ledger, RecordedCall, UnitMismatch

Direction = Literal["allow_to_deny", "deny_to_allow"]
# Holds whose payment may have left: counted at what they held.
_MAYBE_PAID = ("reserved", "forwarded", "in_doubt")
# The records that are not the policy's to decide: kept as they were.
_NOT_THE_POLICYS = ("freeze", "wire")
# Denials a candidate makes before it reads any argument: certain even without the arguments.
_BEFORE_ARGUMENTS = ("default", "tool", "adapter", "freeze")
_EXAMPLES = 3


@dataclass(frozen=True)
class Replayed:
    """One recorded call and, if it held money, its hold as the ledger knows it now."""

    event: RecordedCall
    hold: HoldInfo | None = None

    @property
    def allowed(self) -> bool:
        """Whether the recorded call was forwarded (allowed, a would-deny, or failed upstream)."""
        return self.event.call.decision != "deny"

    @property
    def reading(self) -> Reading:
        """The call as its adapter read it, as far as the hold remembers: what it paid for (the loop breaker
        counts purchases by it) and its payment (one hold per payment)."""
        if self.hold is None:
            return NOT_READ
        return Reading(None, Prepared(True, payment_id=self.hold.idempotency_key, resource=self.hold.resource))

    @property
    def paid(self) -> Amount | None:
        """What the call paid, as far as the ledger knows: its settlement, or its hold while in doubt."""
        if self.hold is None:
            return None
        if self.hold.phase == "settled":
            return self.hold.settled or self.hold.amount
        return self.hold.amount if self.hold.phase in _MAYBE_PAID else None


@dataclass(frozen=True)
class Example:
    at: datetime
    session: str | None
    identity: str | None
    tool: str

    def as_json(self) -> dict[str, Any]:
        return {"at": self.at.isoformat(), "session": self.session, "identity": self.identity, "tool": self.tool}


@dataclass
class Flip:
    """Recorded calls the candidate decides the other way, by the candidate's rule (allow→deny) or the
    recorded one (deny→allow). `money`: per unit, what the allow→deny calls paid (the candidate keeps it),
    or the price recorded for the deny→allow calls (the candidate lets it go); `money_unknown`: calls whose
    money the record does not say."""

    direction: Direction
    rule: str
    kind: str | None
    calls: int = 0
    money: dict[str, int] = field(default_factory=dict)
    money_unknown: int = 0
    examples: list[Example] = field(default_factory=list)


@dataclass
class BudgetEffect:
    """A candidate budget over the period (all its scopes together), in its own unit: what the calls the
    candidate refuses would not have spent, what the calls it lets through would have, and the first call
    it refused (when it ran out)."""

    name: str
    unit: str
    limit: int
    window: str
    scope: str
    not_spent: int = 0
    more_spent: int = 0
    refused: int = 0
    ran_out: Example | None = None


@dataclass
class NotEvaluable:
    """Calls a candidate rule needs the arguments of, recorded without them."""

    rule: str
    calls: int = 0
    examples: list[Example] = field(default_factory=list)


@dataclass
class Simulation:
    candidate: str
    start: datetime
    end: datetime
    calls: int = 0
    replayed: int = 0
    unchanged: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    flips: list[Flip] = field(default_factory=list)
    budgets: list[BudgetEffect] = field(default_factory=list)
    not_evaluable: list[NotEvaluable] = field(default_factory=list)

    def total(self, direction: Direction) -> tuple[int, dict[str, int], int]:
        """Calls, money per unit and calls of unknown money of the flips one way."""
        calls, money, unknown = 0, dict[str, int](), 0
        for flip in self.flips:
            if flip.direction == direction:
                calls += flip.calls
                unknown += flip.money_unknown
                for unit, value in flip.money.items():
                    money[unit] = money.get(unit, 0) + value
        return calls, dict(sorted(money.items())), unknown


class ReplayClock:
    """The scratch ledger's clock: the recorded time of the call being replayed."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def now(self) -> datetime:
        return self.at


class ReplayPayments(Payments):
    """The money of the call being replayed (`current`), as the record says: its recorded price through the
    candidate's cap, budgets and balances (`decision.priced`); the answer settles as the call settled."""

    current: Replayed | None = None

    async def bound(self, policy: Policy, call: ToolCall, who: Who, link: SessionLink | None) -> Bound | Denial:
        assert self.current is not None
        recorded = self.current.event.call
        price = recorded.price or (self.current.hold.amount if self.current.hold else None)
        if price is not None:  # money moved, or was asked: it pays, whatever the candidate says
            return await priced(self._ledger, policy, call, self.current.reading, price, "call", who, link)
        if not policy.pays(call.name) or policy.paid_by_x402(call.name):
            return Bound(NOT_READ)  # x402 moves money only with a signed payment, and the record names none
        # The candidate says it pays, and the record names no price: the candidate's own bound, if any.
        fixed = policy.fixed_price(call.name, call.arguments) if call.arguments else None
        bound, by = (fixed, "policy") if fixed is not None else (policy.max_price(call.name), "max_price")
        if bound is None:
            reason = f"no price, no pay: the price of {call.name} is unknown and the candidate sets no max_price for it"
            return Denial(f"tools.{call.name}", reason, kind="price")
        return await priced(self._ledger, policy, call, NOT_READ, bound, by, who, link)  # type: ignore[arg-type]

    async def settle(
        self,
        policy: Policy,
        call: ToolCall,
        who: Who,
        money: Bound,
        result: Any,
        hold: int | None,
        event: Callable[[Settled], CallRecord] | None = None,
    ) -> Settled:
        settled = self._settle_as_recorded(money, hold)
        # The gate's contract: the call's event comes back with the settlement (the audit trail writes it).
        return replace(settled, event=event(settled)) if event is not None else settled

    def _settle_as_recorded(self, money: Bound, hold: int | None) -> Settled:
        assert self.current is not None
        if hold is None:
            return Settled(None, "none")
        if not self.current.allowed:  # never forwarded: it would have paid its price
            assert money.price is not None
            self._ledger.settle(hold, money.price)
            return Settled(money.price, "settled")
        recorded = self.current.hold
        if recorded is not None and recorded.phase == "settled":
            paid = recorded.settled or recorded.amount
            self._ledger.settle(hold, paid)
            return Settled(paid, "settled")
        if recorded is not None and recorded.phase == "voided":
            self._ledger.void(hold)
            return Settled(None, "voided")
        self._ledger.mark_in_doubt(hold)
        return Settled(None, "in_doubt")

    async def unanswered(self, hold: int, tool: str, *, not_run: bool = False) -> None:
        recorded = self.current.hold if self.current is not None else None
        if recorded is not None and recorded.phase == "voided":
            self._ledger.void(hold)
        elif recorded is not None and recorded.phase == "settled":
            self._ledger.settle(hold, recorded.settled or recorded.amount)
        else:
            self._ledger.mark_in_doubt(hold)


class _LastDecision:
    """A call watcher that keeps the gate's last decision."""

    def __init__(self) -> None:
        self.record: CallRecord | None = None

    def call_done(self, call: CallRecord, upstream_s: float | None) -> None:
        self.record = call


def unreadable(policy: Policy, tool: str, arguments: JSON | None) -> list[str]:
    """The candidate's rules for `tool` that read an argument the record does not have (conditions, quotas'
    `increment_from`): every one when the call was recorded without arguments; else those reading a value
    its redaction replaced (what it was is unknown)."""

    def unknown(path: str) -> bool:
        if arguments is None:
            return True
        value = lookup(arguments, path)
        return value is not MISSING and REDACTED in json.dumps(value, default=str)

    found = []
    for where, rule in policy.rules(tool):
        found += [f"{where}.when[{i}]" for i, condition in enumerate(rule.when) if unknown(condition.arg)]
        found += [
            f"{where}.quotas[{i}]"
            for i, quota in enumerate(rule.quotas)
            if quota.increment_from is not None and unknown(quota.increment_from)
        ]
    return found


def without_arguments(policy: Policy) -> Policy:
    """The candidate without the rules that read arguments (to replay the rest of a call recorded without)."""
    tools = {
        name: rule.model_copy(update={"when": [], "quotas": [q for q in rule.quotas if q.increment_from is None]})
        for name, rule in policy.spec.tools.items()
    }
    spec: PolicySpec = policy.spec.model_copy(update={"tools": tools})
    return Policy(spec, policy.source)


async def simulate(
    recorded: Sequence[Replayed], candidate: Policy, scratch: Ledger, clock: ReplayClock, start: datetime, end: datetime
) -> Simulation:
    """Replay `recorded` (in time order) against `candidate` on `scratch`, an empty ledger whose clock is
    `clock`; what would have changed."""
    result = Simulation(candidate.source, start, end, calls=len(recorded))
    payments = ReplayPayments(scratch, ())
    last = _LastDecision()
    blind = without_arguments(candidate)
    gates: dict[tuple[str, bool], PolicyGate] = {}
    flips: dict[tuple[Direction, str], Flip] = {}
    effects = {b.name: _effect(candidate, b.name) for b in candidate.spec.budgets}
    unknown: dict[str, NotEvaluable] = {}
    for number, replayed in enumerate(recorded):
        event, call = replayed.event, replayed.event.call
        if call.kind in _NOT_THE_POLICYS:
            result.skipped[call.kind] = result.skipped.get(call.kind, 0) + 1
            continue
        clock.at = event.at
        arguments = json.loads(call.arguments) if call.arguments is not None else None
        unread = unreadable(candidate, call.tool, arguments)
        key = (call.server or "upstream", bool(unread))
        if key not in gates:
            source = PolicySource(blind if unread else candidate)
            gates[key] = PolicyGate(source, scratch, key[0], payments, watchers=[last])
        session = Session(call.session or "unknown", call.identity)
        tool_call = ToolCall(session, number, call.tool, arguments or {}, None)
        payments.current, last.record = replayed, None
        try:
            await gates[key].call_tool(tool_call, _forward(call))
        except UpstreamError:
            pass  # it failed upstream when it was recorded: it fails again
        decided = last.record
        assert decided is not None  # the gate records every call it decides
        result.replayed += 1
        example = Example(event.at, call.session, call.identity, call.tool)
        _budget_ran_out(effects, decided, example)
        allowed = decided.decision != "deny"
        if unread and not (not allowed and decided.kind in _BEFORE_ARGUMENTS):
            for rule in unread:
                entry = unknown.setdefault(rule, NotEvaluable(rule))
                entry.calls += 1
                _add_example(entry.examples, example)
            continue
        if allowed == replayed.allowed:
            result.unchanged += 1
            continue
        who = Who(session.id, session.identity, key[0])
        if replayed.allowed:  # allow → deny, by the candidate's rule: it keeps what the call paid
            flip = flips.setdefault(
                ("allow_to_deny", decided.rule or "?"), Flip("allow_to_deny", decided.rule or "?", decided.kind)
            )
            money = replayed.paid
            if money is not None:
                _count(effects, candidate, call.tool, who, money, "not_spent")
        else:  # deny → allow, past the recorded rule: the candidate lets its price go
            flip = flips.setdefault(
                ("deny_to_allow", call.rule or "?"), Flip("deny_to_allow", call.rule or "?", call.kind)
            )
            money = call.price
            if money is None and decided.hold_id is not None:
                flip.money_unknown += 1
            if money is not None:
                _count(effects, candidate, call.tool, who, money, "more_spent")
        flip.calls += 1
        if money is not None:
            flip.money[money.unit] = flip.money.get(money.unit, 0) + money.value
        _add_example(flip.examples, example)
    result.flips = sorted(flips.values(), key=lambda f: (f.direction, -f.calls, f.rule))
    result.budgets = list(effects.values())
    result.not_evaluable = sorted(unknown.values(), key=lambda n: (-n.calls, n.rule))
    return result


async def _no_answer() -> JSON:
    return {"content": [], "isError": False}


async def _failed() -> JSON:
    raise UpstreamError(-32603, "it failed upstream when it was recorded")


def _forward(call: CallRecord) -> Any:
    """The upstream as it answered: a call that failed fails again; any other answers (the money is settled
    from the record, not read from an answer)."""
    return _failed if call.decision == "error" else _no_answer


def _effect(policy: Policy, name: str) -> BudgetEffect:
    spec = next(b for b in policy.spec.budgets if b.name == name)
    limit = Amount.parse(spec.limit)
    return BudgetEffect(name, limit.unit, limit.value, str(spec.window), spec.scope)


def _budget_ran_out(effects: dict[str, BudgetEffect], decided: CallRecord, example: Example) -> None:
    """A budget's refusal (or a shadowed budget's would-deny): the first is when it ran out."""
    if decided.kind != "budget" or not (decided.rule or "").startswith("budgets."):
        return
    effect = effects.get((decided.rule or "").removeprefix("budgets."))
    if effect is not None:
        effect.refused += 1
        effect.ran_out = effect.ran_out or example


def _count(
    effects: dict[str, BudgetEffect],
    policy: Policy,
    tool: str,
    who: Who,
    money: Amount,
    what: Literal["not_spent", "more_spent"],
) -> None:
    """Add `money` to each candidate budget that would count it, in the budget's unit (rounded up, as a
    reservation converts)."""
    for budget in counting(policy.budgets(tool, who), money, policy.rates):
        effect = effects.get(budget.name)
        if effect is None:
            continue
        try:
            value = money.to(budget.limit.unit, rates=policy.rates, rounding="up").value
        except (UnitMismatch, AmountError):
            continue
        setattr(effect, what, getattr(effect, what) + value)


def _add_example(examples: list[Example], example: Example) -> None:
    if len(examples) < _EXAMPLES:
        examples.append(example)


def as_json(simulation: Simulation) -> dict[str, Any]:
    """The simulation as one JSON document (keys documented in policies/README.md)."""

    def totals(direction: Direction) -> dict[str, Any]:
        calls, money, unknown = simulation.total(direction)
        return {"calls": calls, "money": money, "money_unknown": unknown}

    return {
        "candidate": simulation.candidate,
        "period": {"start": simulation.start.isoformat(), "end": simulation.end.isoformat()},
        "calls": simulation.calls,
        "replayed": simulation.replayed,
        "unchanged": simulation.unchanged,
        "skipped": dict(sorted(simulation.skipped.items())),
        "allow_to_deny": totals("allow_to_deny"),
        "deny_to_allow": totals("deny_to_allow"),
        "flips": [
            {
                "direction": f.direction,
                "rule": f.rule,
                "kind": f.kind,
                "calls": f.calls,
                "money": dict(sorted(f.money.items())),
                "money_unknown": f.money_unknown,
                "examples": [e.as_json() for e in f.examples],
            }
            for f in simulation.flips
        ],
        "budgets": [
            {
                "name": b.name,
                "unit": b.unit,
                "limit": b.limit,
                "window": b.window,
                "scope": b.scope,
                "not_spent": b.not_spent,
                "more_spent": b.more_spent,
                "refused": b.refused,
                "ran_out": b.ran_out.as_json() if b.ran_out else None,
            }
            for b in simulation.budgets
        ],
        "not_evaluable": [
            {"rule": n.rule, "calls": n.calls, "examples": [e.as_json() for e in n.examples]}
            for n in simulation.not_evaluable
        ],
    }


def as_markdown(simulation: Simulation) -> str:
    """The simulation for people: the flips by rule, the money per unit, each budget, what was not evaluable."""
    s = simulation
    lines = [
        f"# What if: {s.candidate}",
        "",
        f"Recorded calls from {_time(s.start)} to {_time(s.end)}: {s.calls}; replayed {s.replayed},"
        f" unchanged {s.unchanged}"
        + "".join(f", skipped ({kind}) {count}" for kind, count in sorted(s.skipped.items()))
        + ".",
        "",
    ]
    for direction, title, money_words in (
        ("allow_to_deny", "Allowed, would be denied", "would not have been spent"),
        ("deny_to_allow", "Denied, would be allowed", "would have been spent"),
    ):
        calls, money, unknown = s.total(direction)  # type: ignore[arg-type]
        lines += [f"## {title}: {calls}", ""]
        if calls:
            lines += ["| rule | kind | calls | money | examples |", "|---|---|---|---|---|"]
            for f in (f for f in s.flips if f.direction == direction):
                examples = _cell("; ".join(f"{_time(e.at)} {e.session} {e.tool}" for e in f.examples))
                money_cell = _money(f.money, f.money_unknown)
                lines.append(f"| {_cell(f.rule)} | {f.kind or ''} | {f.calls} | {money_cell} | {examples} |")
            lines += ["", f"Money that {money_words}: {_money(money, unknown)}.", ""]
    lines += ["## Budgets", ""]
    if s.budgets:
        lines += [
            "| budget | limit | not spent | spent more | refused | ran out |",
            "|---|---|---|---|---|---|",
        ]
        for b in s.budgets:
            ran_out = _cell(f"{_time(b.ran_out.at)} ({b.ran_out.session}, {b.ran_out.tool})") if b.ran_out else "no"
            lines.append(
                f"| {_cell(b.name)} ({b.scope}, per {b.window}) | {b.limit} {b.unit} | {b.not_spent} {b.unit}"
                f" | {b.more_spent} {b.unit} | {b.refused} | {ran_out} |"
            )
    else:
        lines.append("The candidate has no budgets.")
    lines.append("")
    if s.not_evaluable:
        lines += [
            "## Not evaluable (recorded without arguments: `audit: {arguments: redacted}` keeps them)",
            "",
            "| rule | calls | examples |",
            "|---|---|---|",
        ]
        for n in s.not_evaluable:
            examples = _cell("; ".join(f"{_time(e.at)} {e.session} {e.tool}" for e in n.examples))
            lines.append(f"| {_cell(n.rule)} | {n.calls} | {examples} |")
        lines.append("")
    return "\n".join(lines)


def _cell(text: object) -> str:
    """Text for a Markdown table cell: a session id or tool name may hold a `|`."""
    return str(text).replace("|", "\\|")


def _time(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def _money(money: dict[str, int], unknown: int) -> str:
    parts = [f"{value} {unit}" for unit, value in sorted(money.items())]
    if unknown:
        parts.append(f"{unknown} call{'s' if unknown != 1 else ''} of unknown money")
    return ", ".join(parts) or "none"
