"""The policy gate: the relay's one interception point, filled with the policy, the money decision and
the ledger.

For each `tools/call`, a checklist in this order: the first refusal wins, and nothing after it runs.
Each step is one line of `PolicyGate._admit` (then `call_tool`), calling the room that owns its rule:

  1. an operator's freeze (`guard freeze`)    the ledger's freezes, read at most 1 s stale: every call, or
                                                a tool the policy says pays (the reserve re-reads them)
  2. default deny, hidden, `action: deny`      `Policy.refusal`
  3. argument conditions                        `Policy.failed_condition`
  4. a human's approval (`action: approve`)     the ledger's approvals: single-use, the exact arguments
  5. rate limits and quotas, read only          the ledger, before guard asks the upstream anything
  6. the money: price, cap, budgets, balances   `Payments.bound`
  7. the reserve                                the ledger, in one transaction: the freezes, the repeat
                                                limit (the same purchase per session), budgets and rate
                                                limits (a call that does not pay only counts against its
  8. the approval used up                       rate limits), the approval used up, and the hold marked
  9. the hold marked forwarded                  forwarded: born `forwarded`, so a crash after it leaves
                                                the payment in doubt (never voided silently)
 10. forward                                    the relay
 11. settle                                     `Payments.settle` (an answer): the hold, what the answer
                                                reveals and the call event in one transaction;
                                                `Payments.unanswered` (none)

A paying call so costs two durable writes: one before it is forwarded (7-9), one after (11).

Every decision becomes a call event (`AuditTrail`: told to the watchers, written in batches). A denial is
the tool result `answers.denial_result`; guard's own `guard-budget` tool is answered here, never forwarded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial

import anyio

from guard.core import JSON, Forward, Session, SessionLink, ToolCall, off_loop
from guard.errors import PriceUnknown, UpstreamError
from guard.gate.answers import BUDGET_TOOL, BUDGET_TOOL_DEFINITION, budget_result, denial_result
from guard.gate.audit import AuditTrail, CallWatcher
from guard.payments.decision import Bound
from guard.payments.payments import Payments
from guard.payments.settlement import Settled
from guard.policy.arguments import args_digest
from guard.policy.model import seconds
from guard.policy.rules import Denial, Limit, Policy, Who
from guard.policy.source import PolicySource
from guard.redact import redact_arguments
from ledgers import (
    AlreadyPaid,
    ApprovalError,
    CallRecord,
    Freeze,
    Frozen,
    Ledger,
    PaymentInFlight,
    RateLimited,
    Refused,
    Reserved,
)

logger = logging.getLogger("guard.gate")

# How stale step 1's view of the freezes may be: a `guard freeze` stops every guard's calls within this.
FREEZE_STALENESS_S = 1.0


class _Denied(Exception):
    """A checklist step refused the call: the first refusal ends the checklist."""

    def __init__(self, denial: Denial) -> None:
        self.denial = denial


@dataclass(frozen=True)
class _Admitted:
    hold: int | None
    money: Bound
    would_deny: Denial | None = None  # the first denial a shadowed rule would have made (shadow mode)


class PolicyGate:
    """Implements `Gate` with a policy (reloadable through its `PolicySource`), payments and a ledger.
    `audit.write` must run as a background task of the front."""

    def __init__(
        self,
        source: PolicySource,
        ledger: Ledger,
        server: str,
        payments: Payments | None = None,
        watchers: Sequence[CallWatcher] = (),
    ) -> None:
        self._source = source
        self._ledger = ledger
        self._server = server
        self._payments = payments or Payments(ledger, ())
        self.audit = AuditTrail(ledger, watchers)
        # Per client session: the upstream's tool names last listed, and how to reach the session.
        self._listed: dict[str, list[str]] = {}
        self._links: dict[str, SessionLink] = {}
        # The ledger's freezes as last read, and when (monotonic): step 1 reads them at most once a second.
        self._freezes: tuple[float, tuple[Freeze, ...]] = (-math.inf, ())
        source.on_change(self._policy_changed)
        _warn_of_shadows(source.policy)

    # the Gate protocol

    async def call_tool(self, call: ToolCall, forward: Forward) -> JSON:
        started = time.perf_counter_ns()
        policy = self._source.policy
        who = Who(call.session.id, call.session.identity, self._server)
        digest = args_digest(call.arguments)
        record = partial(
            CallRecord,
            tool=call.name,
            session=call.session.id,
            identity=call.session.identity,
            args_digest=digest[:16],
            server=self._server,
            arguments=_kept_arguments(policy, call),
        )
        if call.name == BUDGET_TOOL and policy.spec.expose_budget_tool:
            # guard's own tool: answered here, never forwarded, paying nothing.
            states = await off_loop(self._ledger.states, policy.caller_budgets(who))
            self.audit.note(record(decision="allow", reason="answered by guard"))
            return budget_result(states)
        admitted = await self._admit(policy, call, who, digest)
        if isinstance(admitted, Denial):
            logger.info("denied %s: %s (rule %s)", call.name, admitted.reason, admitted.rule)
            self.audit.note(
                record(
                    decision="deny",
                    rule=admitted.rule,
                    reason=admitted.reason,
                    kind=admitted.kind,
                    balance_key=admitted.balance_key,
                    price=admitted.price,
                )
            )
            return denial_result(admitted)
        hold, price, would = admitted.hold, admitted.money.price, admitted.would_deny
        if would is not None:
            logger.info("shadow: would deny %s: %s (rule %s)", call.name, would.reason, would.rule)
        forwarded = time.perf_counter()
        try:
            result = await forward()
        except UpstreamError as exc:
            if hold is not None:
                await self._payments.unanswered(hold, call.name, not_run=exc.not_run)
            error = record(decision="error", reason="upstream error", price=price, hold_id=hold)
            if would is not None:  # the would-deny is kept: the error's reason says the upstream failed
                error = replace(error, rule=would.rule, kind=would.kind)
            self.audit.note(error, time.perf_counter() - forwarded)
            raise
        except BaseException:
            # Cancelled after forwarding (the client gave up, the guard is stopping): the payment may
            # have left, so the hold stays counted until someone resolves it.
            if hold is not None:
                with anyio.CancelScope(shield=True):
                    await self._payments.unanswered(hold, call.name)
            raise
        upstream_s = time.perf_counter() - forwarded

        def allowed(settled: Settled) -> CallRecord:
            """The call's event, written with its settlement (the latency up to that write)."""
            latency = (time.perf_counter_ns() - started) // 1000
            flagged = f"flagged: {settled.problem}" if settled.problem else None
            event = record(
                decision="allow", reason=flagged, price=price, hold_id=hold, spent=settled.spent, latency_us=latency
            )
            if would is None:
                return event
            return replace(
                event,
                decision="would_deny",
                rule=would.rule,
                kind=would.kind,
                reason=would.reason if flagged is None else f"{would.reason}; {flagged}",
                balance_key=would.balance_key,
            )

        try:
            settled = await self._payments.settle(policy, call, who, admitted.money, result, hold, allowed)
        except BaseException:
            if hold is not None:  # the answer came, but the guard could not finish: keep it counted
                with anyio.CancelScope(shield=True):
                    await self._payments.unanswered(hold, call.name)
            raise
        assert settled.event is not None
        self.audit.note(settled.event, upstream_s, written=settled.recorded)
        return result

    async def list_tools(self, session: Session, result: JSON) -> JSON:
        tools = result.get("tools")
        if not isinstance(tools, list):
            return result
        names = [t["name"] for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)]
        self._listed[session.id] = names
        policy = self._source.policy
        visible = [t for t in tools if isinstance(t, dict) and policy.visible(str(t.get("name")))]
        if policy.spec.expose_budget_tool:
            # guard's own tool replaces an upstream tool of the same name (calls to that name never reach it).
            visible = [t for t in visible if t.get("name") != BUDGET_TOOL] + [BUDGET_TOOL_DEFINITION]
        return {**result, "tools": visible}

    def call_refused(self, session: Session, tool: str, reason: str) -> None:
        self.audit.note(
            CallRecord(
                tool=tool,
                decision="deny",
                session=session.id,
                identity=session.identity,
                rule="wire",
                reason=reason,
                server=self._server,
                kind="wire",
            )
        )

    def subscribe(self, session: Session, link: SessionLink) -> Callable[[], None]:
        self._links[session.id] = link

        def unsubscribe() -> None:
            self._links.pop(session.id, None)
            self._listed.pop(session.id, None)

        return unsubscribe

    def links(self) -> list[SessionLink]:
        """The live sessions' links: how guard's own calls off any call's path (a scheduled balance
        refresh) reach the upstream."""
        return list(self._links.values())

    # the checklist

    async def _admit(self, policy: Policy, call: ToolCall, who: Who, digest: str) -> _Admitted | Denial:
        """Steps 1 to 9 of the module's checklist: the call admitted (with its hold, born forwarded, if it
        pays), or the first denial. A denial the policy shadows (`Policy.shadowed`) does not stop the checklist: the
        first one is kept, and the call goes ahead as a would-deny."""
        name, link = call.name, self._links.get(call.session.id)
        shadowed: list[Denial] = []
        unless = partial(_unless, policy, shadowed)
        try:
            await self._not_frozen(policy, name, who)  # 1 (never shadowed)
            unless(policy.refusal(name))  # 2
            unless(policy.failed_condition(name, call.arguments))  # 3
            approval = await self._approval(policy, call, who, digest)  # 4
            limits = _rate_limits(policy, call, who)
            shadow = policy.shadow_keys((), limits)
            await self._within_rate_limits([lim for lim in limits if lim.rate.key not in shadow])  # 5
            money = _unless_denied(await self._payments.bound(policy, call, who, link))  # 6
            unless(money.would_deny)
            hold = await self._reserve(policy, money, limits, who, name, digest, shadowed, approval)  # 7, 8, 9
            if hold is None:
                await self._use_approval(approval, money)  # 8
        except _Denied as denied:
            return denied.denial
        return _Admitted(hold, money, shadowed[0] if shadowed else None)

    async def _not_frozen(self, policy: Policy, tool: str, who: Who) -> None:
        """Denied when an operator froze every call of the caller's scope, or its paying calls and the policy
        says this tool pays. Read at most 1 s stale (one ledger read per second, not per call); a paying
        call the policy does not name is caught by the reserve, which reads the freezes in its transaction."""
        read_at, freezes = self._freezes
        if time.monotonic() - read_at > FREEZE_STALENESS_S:
            read_at = time.monotonic()
            freezes = tuple(await off_loop(self._ledger.freezes))
            self._freezes = (read_at, freezes)
        scopes = _frozen_scopes(who)
        freeze = next((f for scope in scopes for f in freezes if f.scope == scope), None)
        if freeze is not None and (freeze.all_tools or policy.pays(tool)):
            raise _Denied(Denial(f"freeze.{freeze.scope}", freeze.refusal, kind="freeze"))

    async def _approval(self, policy: Policy, call: ToolCall, who: Who, digest: str) -> str | None:
        """The approval this call goes ahead under (None: it needs none); denied while it is pending or
        when the operator refused it."""
        where = policy.needs_approval(call.name)
        if where is None:
            return None
        approval = await off_loop(
            partial(
                self._ledger.request_approval,
                who.key("session"),
                call.name,
                digest,
                identity=who.identity,
                expire_after_s=seconds(policy.spec.approvals.expire_after),
            )
        )
        if approval.state == "pending":
            reason = (
                f"{call.name} needs a human's approval: ask the operator to run"
                f" `guard approvals approve {approval.id}`, then retry the same call"
            )
            raise _Denied(Denial(where, reason, approval_id=approval.id, kind="approval"))
        if approval.state == "denied":
            reason = f"the operator denied this call to {call.name}"
            raise _Denied(Denial(where, reason, approval_id=approval.id, kind="approval"))
        return approval.id

    async def _within_rate_limits(self, limits: list[Limit]) -> None:
        """Whether one more call fits the rate limits, counting nothing: a rate-limited client cannot make
        guard ask the upstream for a price or a balance on its behalf. (The reserve counts it.)"""
        if limits:
            try:
                await off_loop(self._ledger.check_rates, [limit.rate for limit in limits])
            except Refused as exc:
                raise _Denied(_refused(exc, limits)) from None

    async def _reserve(
        self,
        policy: Policy,
        money: Bound,
        limits: list[Limit],
        who: Who,
        tool: str,
        digest: str,
        shadowed: list[Denial],
        approval: str | None,
    ) -> int | None:
        """One ledger transaction: a paying call is refused if its scope is frozen, then its repeat limit,
        budgets and rate limits reserve together, converted into the budgets' units with the rates of the
        policy that priced it, its `approval` is used up, and its hold is written forwarded (the hold id;
        the call is sent next). A free call only counts against its rate limits (None; its approval is
        used after). The budgets and limits the policy shadows reserve and count even over their limits:
        their refusal is added to `shadowed` (the money moves all the same, so the ledger counts it)."""
        try:
            if money.price is None:
                if limits:
                    shadow = policy.shadow_keys((), limits)
                    would = await off_loop(self._ledger.hit, [limit.rate for limit in limits], shadow)
                    if would is not None:
                        shadowed.append(_refused(would, limits))
                return None
            # The loop breaker counts purchases: what is bought is its URL, else its payment, else the call.
            repeat = policy.repeat_limit(tool, money.resource or money.payment_id or digest, who)
            limits = limits if repeat is None else [*limits, repeat]
            rates = [limit.rate for limit in limits]
            reserve = partial(
                self._ledger.reserve_shadowed,
                money.budgets,
                money.price,
                shadow=policy.shadow_keys(money.budgets, limits),
                idempotency_key=money.payment_id,
                balance_key=money.balance_key,
                rate_limits=rates,
                session=who.session,
                identity=who.identity,
                tool=tool,
                server=who.server,
                resource=money.resource,
                priced_by=money.priced_by,
                rates=policy.rates,
                frozen_scopes=_frozen_scopes(who),
                forwarded=True,
                approval=approval,
            )
            reserved = await self._reserved(reserve)
            if reserved.would_refuse is not None:
                shadowed.append(replace(_refused(reserved.would_refuse, limits), price=money.price))
            return reserved.hold
        except Refused as exc:
            raise _Denied(replace(_refused(exc, limits), price=money.price)) from None
        except ApprovalError as exc:
            raise _Denied(_approval_used(exc, approval, money)) from None

    async def _reserved(self, reserve: Callable[[], Reserved]) -> Reserved:
        """The reservation, written in a worker thread. A call cancelled meanwhile (its client gave up, the
        guard is stopping) is never sent: once the thread has committed its hold, the hold is voided, not
        left `forwarded` to become in doubt. (A cancelled hand-off does not wait for its thread under
        anyio's runner, so the write runs as a task of its own, shielded from the call's cancellation.)"""
        writing = asyncio.ensure_future(off_loop(reserve))
        try:
            return await asyncio.shield(writing)
        except asyncio.CancelledError:
            with anyio.CancelScope(shield=True):
                await asyncio.wait([writing])
                if not writing.cancelled() and writing.exception() is None:
                    await off_loop(self._ledger.void, writing.result().hold)
            raise

    async def _use_approval(self, approval: str | None, money: Bound) -> None:
        """Use the approval of a call that holds nothing up (it is single-use): denied when another call
        used it first. (A paying call's is used in its reservation's transaction.)"""
        if approval is None:
            return
        try:
            await off_loop(self._ledger.use_approval, approval)
        except ApprovalError as exc:
            raise _Denied(_approval_used(exc, approval, money)) from None

    # reloads

    async def _policy_changed(self, old: Policy, new: Policy) -> None:
        if new.shadows != old.shadows:
            _warn_of_shadows(new)
        for session_id, names in list(self._listed.items()):
            before = [n for n in names if old.visible(n)] + [BUDGET_TOOL] * old.spec.expose_budget_tool
            after = [n for n in names if new.visible(n)] + [BUDGET_TOOL] * new.spec.expose_budget_tool
            link = self._links.get(session_id)
            if before != after and link is not None:
                try:
                    await link.tools_changed()
                except Exception:  # a client that went away must not stop the others hearing of it
                    logger.debug("could not tell session %s that its tools changed", session_id, exc_info=True)


def _warn_of_shadows(policy: Policy) -> None:
    """Shadow mode lets through what the policy would deny: say so, loudly, whenever it starts."""
    if policy.shadows:
        logger.warning(
            "shadow mode: %s only record what they would deny (would_deny) and let it through;"
            " freezes and 'no price, no pay' still refuse",
            ", ".join(policy.shadows),
        )


def _unless(policy: Policy, shadowed: list[Denial], denial: Denial | None) -> None:
    """Stop the checklist at this denial, if there is one, unless the policy shadows it (then it is added
    to `shadowed`, and the checklist goes on)."""
    if denial is None:
        return
    if not policy.shadowed(denial):
        raise _Denied(denial)
    shadowed.append(denial)


def _unless_denied(money: Bound | Denial) -> Bound:
    """The money decision, unless it is a denial (then the checklist stops)."""
    if isinstance(money, Denial):
        raise _Denied(money)
    return money


def _rate_limits(policy: Policy, call: ToolCall, who: Who) -> list[Limit]:
    """The rate limits and quotas this call counts against; denied when a quota's `increment_from`
    argument is not a whole number."""
    try:
        return policy.rate_limits(call.name, call.arguments, who)
    except PriceUnknown as exc:
        raise _Denied(Denial(f"tools.{call.name}", f"no price, no pay: {exc}", kind="quota")) from None


def _kept_arguments(policy: Policy, call: ToolCall) -> str | None:
    """The call's arguments for its call event, secrets removed, when the policy asks (`audit.arguments`)."""
    if policy.spec.audit.arguments != "redacted":
        return None
    return json.dumps(redact_arguments(call.arguments), sort_keys=True, ensure_ascii=False, default=str)


def _approval_used(exc: ApprovalError, approval: str | None, money: Bound) -> Denial:
    """The denial of a call whose approval another call used first (or that expired meanwhile)."""
    return Denial("approvals", str(exc), approval_id=approval, kind="approval", price=money.price)


def _frozen_scopes(who: Who) -> tuple[str, ...]:
    """The scopes whose freeze stops this caller, broadest first."""
    return ("global", who.key("identity"), who.key("session"))


def _refused(exc: Refused, limits: list[Limit]) -> Denial:
    """The ledger's refusal in the policy's words: which rule, what is left, when to retry."""
    retry = None if exc.retry_after_s is None else float(max(1, math.ceil(exc.retry_after_s)))
    if isinstance(exc, Frozen):
        return Denial(f"freeze.{exc.rule}", str(exc), kind="freeze")
    if isinstance(exc, RateLimited):
        limit = next((limit for limit in limits if limit.rate.key == exc.rule), None)
        if limit is not None:
            what = "repeat limit" if limit.kind == "repeat_limit" else "rate limit"
            reason = f"{what} reached: {limit.text}"
            return Denial(limit.rule, reason, exc.remaining, "calls", retry, kind=limit.kind)
    if isinstance(exc, PaymentInFlight | AlreadyPaid):
        return Denial("idempotency", str(exc), kind="idempotency")
    return Denial(f"budgets.{exc.rule}", str(exc), exc.remaining, exc.unit, retry, kind="budget")
