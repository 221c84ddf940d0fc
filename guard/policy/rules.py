"""The decisions a policy makes by itself, needing no storage: which rule covers a tool (and whether a name
is a variant of one), whether its argument conditions hold, its fixed price and cap, which budgets and
rate limits count a call, and a denial's words.

The file's model is `guard.policy.model`; pricing a call in order and checking balances is
`guard.payments.decision`; the ledger work is `guard.gate`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from guard.core import JSON
from guard.errors import PriceUnknown
from guard.names import folded, spelling
from guard.policy.arguments import MISSING, describe, holds, lookup, price_at, too_long, whole_number_at
from guard.policy.model import (
    MONEY_WORDS,
    RATE,
    RATE_WINDOW,
    BudgetSpec,
    PolicySpec,
    ToolRule,
    exchange_rates,
    repeat_parts,
)
from ledgers import Amount, Budget, RateLimit, Rates, RuleKind, UnitMismatch, Window


@dataclass(frozen=True)
class Denial:
    """Why a call is refused (`guard.gate.answers` turns it into the tool result the agent sees). `rule` names
    the rule as the policy file does (`tools.buy.max_price`); `kind` says what kind of rule it is, for the
    audit trail, reports and alerts; `balance_key` names the balance a balance rule looked at; `price`, the
    price the call asked, when it was refused after it was priced (its call event keeps it)."""

    rule: str
    reason: str
    remaining: int | None = None
    unit: str | None = None
    retry_after_s: float | None = None
    approval_id: str | None = None
    kind: RuleKind = field(kw_only=True)
    balance_key: str | None = field(default=None, kw_only=True)
    price: Amount | None = field(default=None, kw_only=True)


@dataclass(frozen=True)
class Limit:
    """A rate limit, quota or repeat limit as the ledger counts it, with the rule that set it, in words."""

    rate: RateLimit
    rule: str
    text: str
    kind: Literal["rate_limit", "quota", "repeat_limit"]


@dataclass(frozen=True)
class Who:
    """Whose call it is: the scope keys budgets and rate limits count under."""

    session: str
    identity: str | None
    server: str

    def key(self, scope: str) -> str:
        if scope == "session":
            return f"session:{self.session}"
        if scope == "identity":
            return f"identity:{self.identity or 'anonymous'}"
        if scope == "server":
            return f"server:{self.server}"
        return "global"


class Policy:
    """A validated policy, ready to decide. Immutable: a reload builds a new one."""

    def __init__(self, spec: PolicySpec, source: str = "<policy>") -> None:
        self.spec = spec
        self.source = source
        # What one unit of money is worth in another (`rates:` and the stablecoin defaults), every pair.
        self.rates: Rates = exchange_rates(spec.rates)
        self._wildcard = spec.tools.get("*")
        named = [name for name in spec.tools if name != "*"]
        self._by_spelling = {spelling(name): name for name in named}
        self._by_folding = {folded(name): name for name in named}

    def rule_for(self, tool: str) -> tuple[str, ToolRule] | None:
        """The rule naming `tool` (kebab and snake case alike), or None."""
        name = self._by_spelling.get(spelling(tool))
        return (f"tools.{name}", self.spec.tools[name]) if name is not None else None

    def visible(self, tool: str) -> bool:
        """Whether `tools/list` shows `tool`: hidden and denied tools are not shown, unless shadowed (shadow
        mode must not change what agents see)."""
        refusal = self.refusal(tool)
        return refusal is None or self.shadowed(refusal)

    def refusal(self, tool: str) -> Denial | None:
        """The denial that needs no arguments: a variant of a named tool, default deny, hidden, action
        deny (own rule or `"*"`)."""
        named = self.rule_for(tool)
        if named is None and (variant := self._by_folding.get(folded(tool))) is not None:
            return self._variant(tool, variant)
        for where, rule in ((named or (None, None)), ("tools.*", self._wildcard)):
            if rule is not None and where is not None and (rule.hidden or rule.action == "deny"):
                return Denial(where, rule.reason or f"the policy denies {tool}", kind="tool")
        if named is None and self.spec.default == "deny":
            return Denial("default", f"{tool} is not allowed by the policy (default: deny)", kind="default")
        return None

    def _variant(self, tool: str, name: str) -> Denial:
        """`tool` is `name` but for case, width, dashes or spaces: an upstream that normalises names may
        run it as `name`, so it is refused, whatever `name`'s rule says (never let through unpriced)."""
        rule = self.spec.tools[name]
        seen = f"{tool!a} differs from {name!r} only in case, width, dashes or spaces"
        if rule.hidden or rule.action == "deny":
            return Denial(f"tools.{name}", f"{seen}: {rule.reason or f'the policy denies {name}'}", kind="tool")
        return Denial(f"tools.{name}", f"{seen}: refused as ambiguous; call the tool by its exact name", kind="tool")

    def rules(self, tool: str) -> list[tuple[str, ToolRule]]:
        """Every rule that applies to `tool`: its own, then `"*"`."""
        found = [self.rule_for(tool), ("tools.*", self._wildcard) if self._wildcard else None]
        return [r for r in found if r is not None]

    def failed_condition(self, tool: str, arguments: JSON) -> Denial | None:
        for where, rule in self.rules(tool):
            for index, condition in enumerate(rule.when):
                if not holds(condition, arguments):
                    reason = too_long(condition, arguments) or condition.reason or rule.reason or describe(condition)
                    return Denial(f"{where}.when[{index}]", reason, kind="condition")
        return None

    def needs_approval(self, tool: str) -> str | None:
        """The rule asking for a human's approval, if any."""
        return next((where for where, rule in self.rules(tool) if rule.action == "approve"), None)

    def rate_limits(self, tool: str, arguments: JSON, who: Who) -> list[Limit]:
        """The durable counters this call adds to. Keys name the tool (or `*`, shared by every tool),
        the window and the scope, never the limit: editing a limit keeps its count.

        Raises:
            PriceUnknown: a quota's `increment_from` argument is not a whole number."""
        limits: dict[str, Limit] = {}
        for where, rule in self.rules(tool):
            subject = "*" if where == "tools.*" else where.removeprefix("tools.")
            for spec in _as_list(rule.rate_limit):
                text, scope = (spec, "session") if isinstance(spec, str) else (spec.limit, spec.scope)
                match = RATE.match(text)
                assert match is not None  # validated
                count, per = int(match.group(1)), match.group(2)
                key = f"calls:{subject}/{RATE_WINDOW[per]}@{who.key(scope)}"
                if key not in limits or limits[key].rate.limit > count:
                    described = (
                        f"{count} calls per {per} for {'all tools' if subject == '*' else subject} (per {scope})"
                    )
                    rate = RateLimit(key, count, Window.sliding(RATE_WINDOW[per]))
                    limits[key] = Limit(rate, f"{where}.rate_limit", described, "rate_limit")
            for index, quota in enumerate(rule.quotas):
                window = RATE_WINDOW.get(quota.window, quota.window)
                key = f"counter:{quota.counter}/{window}@{who.key(quota.scope)}"
                increment = quota.increment
                if quota.increment_from is not None:
                    increment = whole_number_at(lookup(arguments, quota.increment_from), quota.increment_from)
                described = f"counter {quota.counter} at most {quota.max} per {quota.window} (per {quota.scope})"
                rate = RateLimit(key, quota.max, Window.sliding(window), cost=increment)
                limits[key] = Limit(rate, f"{where}.quotas[{index}]", described, "quota")
        return list(limits.values())

    def repeat_limit(self, tool: str, resource: str, who: Who) -> Limit | None:
        """The loop breaker for a paying call: at most N purchases of `resource` (what identifies the thing
        bought: a URL, a payment hash, an argument digest) per window, per session; the strictest rule's.
        Counted like a rate limit, under a key naming the tool, a digest of the resource and the window,
        never N (editing N keeps the count)."""
        found: Limit | None = None
        for where, rule in self.rules(tool):
            if rule.repeat_limit is None:
                continue
            count, window = repeat_parts(rule.repeat_limit)
            if found is not None and found.rate.limit <= count:
                continue
            subject = "*" if where == "tools.*" else where.removeprefix("tools.")
            digest = hashlib.sha256(resource.encode()).hexdigest()[:16]
            key = f"repeat:{subject}:{digest}/{window}@{who.key('session')}"
            described = f"the same purchase at most {count} times per {window} (per session)"
            rate = RateLimit(key, count, Window.sliding(window))
            found = Limit(rate, f"{where}.repeat_limit", described, "repeat_limit")
        return found

    def shadowed(self, denial: Denial) -> bool:
        """Whether the policy only watches this denial (shadow mode: the call goes ahead, recorded as a
        would-deny): the whole policy's `mode: shadow`, or `shadow: true` on the rule that denied. Never a
        freeze, an approval, an adapter's or a balance's refusal, an idempotency key; of the price denials
        only `max_price` ("no price, no pay" refuses: with no bound nothing can be reserved, and the ledger
        would say less than what left); of the budget denials only a named budget's."""
        if denial.kind in ("price", "budget"):
            if not (
                denial.rule.endswith(".max_price") or (denial.kind == "budget" and denial.rule.startswith("budgets."))
            ):
                return False
        elif denial.kind not in ("default", "tool", "condition", "rate_limit", "quota", "repeat_limit"):
            return False
        return self.spec.mode == "shadow" or self._shadow_rule(denial.rule)

    def shadow_keys(self, budgets: Iterable[Budget], limits: Iterable[Limit]) -> frozenset[str]:
        """The ledger keys of the budgets and limits the policy shadows (`Ledger.reserve_shadowed`, `hit`)."""
        keys = {b.key for b in budgets if self.spec.mode == "shadow" or self._shadow_rule(f"budgets.{b.name}")}
        keys |= {lim.rate.key for lim in limits if self.spec.mode == "shadow" or self._shadow_rule(lim.rule)}
        return frozenset(keys)

    @property
    def shadows(self) -> list[str]:
        """What the policy shadows, in words (guard run warns of it at start)."""
        if self.spec.mode == "shadow":
            return ["the whole policy (mode: shadow)"]
        return [f"tools.{n}" for n, r in self.spec.tools.items() if r.shadow] + [
            f"budgets.{b.name}" for b in self.spec.budgets if b.shadow
        ]

    def _shadow_rule(self, rule: str) -> bool:
        """Whether the tool rule or budget `rule` names (`tools.NAME...`, `budgets.NAME`) says `shadow: true`."""
        if rule.startswith("budgets."):
            return any(b.shadow and b.name == rule.removeprefix("budgets.") for b in self.spec.budgets)
        # A max_price denial names the tool as called (`l402_fetch`), others as the rule does: both spellings.
        named = spelling(rule.removeprefix("tools."))
        names = [n for n in self.spec.tools if named == spelling(n) or named.startswith(f"{spelling(n)}.")]
        return bool(names) and self.spec.tools[max(names, key=len)].shadow

    def pays(self, tool: str) -> bool:
        return any(rule.pays for _, rule in self.rules(tool))

    def paid_by_x402(self, tool: str) -> bool:
        """The policy says only x402 pays this tool (`pays: x402`, and no rule for it says `pays: true`): a call
        without an x402 payment moves nothing."""
        paying = [rule.pays for _, rule in self.rules(tool) if rule.pays]
        return bool(paying) and all(pays == "x402" for pays in paying)

    def fixed_price(self, tool: str, arguments: JSON) -> Amount | None:
        """The price the policy sets (`price`, or the argument at `price_from`), if any.

        Raises:
            PriceUnknown: the `price_from` argument is there but not an amount."""
        for _, rule in self.rules(tool):
            if rule.price is not None:
                return Amount.parse(rule.price)
            if rule.price_from is not None and rule.price_unit is not None:
                value = lookup(arguments, rule.price_from)
                if value is not MISSING:
                    return price_at(value, rule.price_from, rule.price_unit)
        return None

    def max_price(self, tool: str) -> Amount | None:
        """The strictest per-call cap of the tool's rules and `"*"`.

        Raises:
            PriceUnknown: two caps in units that do not compare (sat and usd, say)."""
        caps = [Amount.parse(rule.max_price) for _, rule in self.rules(tool) if rule.max_price is not None]
        if not caps:
            return None
        try:
            strictest = caps[0]
            for cap in caps[1:]:
                if cap.to(strictest.unit, rates=self.rates, rounding="up").value <= strictest.value:
                    strictest = cap
            return strictest
        except UnitMismatch:
            raise PriceUnknown(f"the max_price caps for {tool} are in units that do not compare") from None

    def external_budgets(self, who: Who) -> list[Budget]:
        """Budgets that count spend seen only in balances (`include_external`), scoped to `who`; a
        session-scoped one needs a session."""
        return [
            self._scoped(b, who)
            for b in self.spec.budgets
            if b.include_external and (b.scope != "session" or who.session)
        ]

    def budgets(self, tool: str, who: Who) -> list[Budget]:
        """Every budget covering `tool`, scoped to this caller."""
        return [
            self._scoped(b, who)
            for b in self.spec.budgets
            if b.tools is None or spelling(tool) in {spelling(name) for name in b.tools}
        ]

    def caller_budgets(self, who: Who) -> list[Budget]:
        """Every budget, scoped to this caller (what the `guard-budget` tool shows)."""
        return [self._scoped(b, who) for b in self.spec.budgets]

    def _scoped(self, spec: BudgetSpec, who: Who) -> Budget:
        return Budget(
            spec.name, Amount.parse(spec.limit), who.key(spec.scope), Window.parse(spec.window, self.spec.timezone)
        )


def counting(budgets: Iterable[Budget], payment: Amount, rates: Rates) -> list[Budget]:
    """The budgets that count `payment`: those in a unit it converts to, by itself (sat, msat) or through
    `rates` (a budget in a currency no rate reaches does not count it)."""
    counted = []
    for budget in budgets:
        try:
            payment.to(budget.limit.unit, rates=rates, rounding="up")
        except UnitMismatch:
            continue
        counted.append(budget)
    return counted


def missing_rate(budgets: Iterable[Budget], payment: Amount) -> str:
    """Why no budget counts `payment`, and how to write the rate that would let one."""
    units = sorted({_word(b.limit.unit) for b in budgets})
    unit = _word(payment.unit)
    if not units:
        return f"no budget covers payments in {payment.unit}: paying tools need one"
    if unit not in MONEY_WORDS or any(u not in MONEY_WORDS for u in units):
        return f"no budget counts payments in {unit} (the budgets covering it count {', '.join(units)}): add one"
    to = "usd" if "usd" in units else units[0]
    return (
        f"no budget counts payments in {unit}: the budgets covering it count {', '.join(units)}, and no rate"
        f" converts {unit} to {to}; write one in the policy, such as `rates: {{{unit}: <what one {unit} is"
        f" worth> {to}}}`, or add a budget in {unit}"
    )


def _word(unit: str) -> str:
    """A unit as policies write it (`usd`, not `usd_micro`)."""
    return "usd" if unit == "usd_micro" else unit


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]
