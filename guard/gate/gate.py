"""The policy gate: the relay's interception point filled with policy decisions backed by the ledger.

For each `tools/call`, in this order (the first refusal wins, and nothing after it runs):

1. default deny, hidden, `action: deny`       (`Policy.refusal`)
2. argument conditions                          (`Policy.failed_condition`)
3. approval, for `action: approve`              (the ledger's approvals: single-use, exact arguments)
4. price and `max_price`, for paying tools      (`Payments.price`: the call's, the policy's, a quote
                                                 (asked of the upstream when none is live), else
                                                 `max_price`; no price, no pay)
5. rate limits and quotas, and for paying tools the budget reserve: one ledger transaction
6. forward; then settle the hold, void it (the upstream refused the request), or keep it in doubt
   (no answer: the payment may have left)

Every decision is written to the ledger as a call event (the audit trail), arguments only as a digest,
by `write_audit` in batches (it must run as a background task of the front).
A denial is a tool result with `isError: true` (`denial_result`), so the model can read and act on it.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol, TypeVar

import anyio
import anyio.to_thread

from guard.core import JSON, Forward, Session, SessionLink, ToolCall
from guard.errors import PriceUnknown, UpstreamError
from guard.operators.budget_view import budget_fields
from guard.payments.payments import Payments, Reading
from guard.policy.rules import Denial, Limit, Policy, Who, args_digest, seconds
from guard.policy.source import PolicySource
from ledgers import (
    Amount,
    AmountError,
    ApprovalError,
    Budget,
    BudgetState,
    CallRecord,
    HoldStateError,
    Ledger,
    LedgerError,
    Refused,
    UnitMismatch,
)

logger = logging.getLogger("guard.gate")
AUDIT_GATHER_S = 0.05
T = TypeVar("T")


class CallWatcher(Protocol):
    """Told of every decided call as it is recorded (metrics, alerts). Must not block or raise."""

    def call_done(self, call: CallRecord, upstream_s: float | None) -> None:
        """`upstream_s`: how long the upstream took to answer (None when the call was not forwarded)."""
        ...


@dataclass(frozen=True)
class _Admitted:
    hold_id: int | None
    price: Amount | None
    reading: Reading


class PolicyGate:
    """Implements `Gate` with a policy (reloadable through its `PolicySource`) and a ledger."""

    def __init__(
        self,
        source: PolicySource,
        ledger: Ledger,
        server: str,
        payments: Payments | None = None,
        watchers: Sequence[CallWatcher] = (),
    ) -> None:
        self._source = source
        self._watchers = list(watchers)
        self._ledger = ledger
        self._server = server
        self._payments = payments or Payments(ledger, ())
        # Per client session: the upstream's tool names last listed, and how to tell the client that
        # the visible set changed.
        self._listed: dict[str, list[str]] = {}
        self._links: dict[str, SessionLink] = {}
        # Call events wait here for `write_audit`, which writes them in batches off the call's path.
        self._audit: asyncio.Queue[CallRecord] = asyncio.Queue()
        source.on_change(self._policy_changed)

    async def write_audit(self) -> None:
        """Write call events as they come, a batch per transaction, until cancelled; then the rest.
        (A background task of the front: the audit trail costs a call no disk sync of its own.)"""
        taken: list[CallRecord] = []  # out of the queue, not yet written
        try:
            while True:
                taken = [await self._audit.get()]
                # Gather what else comes in a moment: one write (one disk sync, one turn of the SQLite
                # write lock that paying calls also need) for many events.
                await anyio.sleep(AUDIT_GATHER_S)
                while not self._audit.empty():
                    taken.append(self._audit.get_nowait())
                batch, taken = taken, []
                await self._write_batch(batch)  # a worker thread: once started it finishes, cancelled or not
        finally:
            with anyio.CancelScope(shield=True):
                while not self._audit.empty():
                    taken.append(self._audit.get_nowait())
                await self._write_batch(taken)

    async def _write_batch(self, batch: list[CallRecord]) -> None:
        try:
            await self._db(self._ledger.record_many, batch)
        except LedgerError:
            logger.exception("could not write %d call events to the audit trail", len(batch))

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
        )
        if call.name == BUDGET_TOOL and policy.spec.expose_budget_tool:
            # guard's own tool: answered here, never forwarded, paying nothing.
            states = await self._db(self._ledger.states, policy.caller_budgets(who))
            self._note(record(decision="allow", reason="answered by guard"))
            return budget_result(states)
        decision = await self._admit(policy, call, who, digest)
        if isinstance(decision, Denial):
            logger.info("denied %s: %s (rule %s)", call.name, decision.reason, decision.rule)
            self._note(record(decision="deny", rule=decision.rule, reason=decision.reason))
            return denial_result(decision)
        hold, price = decision.hold_id, decision.price
        forwarded = time.perf_counter()
        try:
            result = await forward()
        except UpstreamError as exc:
            if hold is not None:
                await self._unanswered(hold, call.name, not_run=exc.not_run)
            error = record(decision="error", reason="upstream error", price=price, hold_id=hold)
            self._note(error, time.perf_counter() - forwarded)
            raise
        except BaseException:
            # Cancelled after forwarding (the client gave up, the guard is stopping): the payment may
            # have left, so the hold stays counted until someone resolves it.
            if hold is not None:
                with anyio.CancelScope(shield=True):
                    await self._unanswered(hold, call.name)
            raise
        upstream_s = time.perf_counter() - forwarded
        try:
            settled = await self._payments.settle(policy, call, decision.reading, result, hold, price)
        except BaseException:
            if hold is not None:  # the answer came, but the guard could not finish: keep it counted
                with anyio.CancelScope(shield=True):
                    await self._unanswered(hold, call.name)
            raise
        latency = (time.perf_counter_ns() - started) // 1000
        flagged = f"flagged: {settled.problem}" if settled.problem else None
        allowed = record(
            decision="allow", reason=flagged, price=price, hold_id=hold, spent=settled.spent, latency_us=latency
        )
        self._note(allowed, upstream_s)
        return result

    def _note(self, call: CallRecord, upstream_s: float | None = None) -> None:
        """Queue a call event for the audit trail, and tell the watchers."""
        self._audit.put_nowait(call)
        for watcher in self._watchers:
            try:
                watcher.call_done(call, upstream_s)
            except Exception:  # a watcher's bug must not fail the call it watches
                logger.exception("a call watcher failed")

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
        self._note(
            CallRecord(
                tool=tool,
                decision="deny",
                session=session.id,
                identity=session.identity,
                rule="wire",
                reason=reason,
                server=self._server,
            )
        )

    def subscribe(self, session: Session, link: SessionLink) -> Callable[[], None]:
        self._links[session.id] = link

        def unsubscribe() -> None:
            self._links.pop(session.id, None)
            self._listed.pop(session.id, None)

        return unsubscribe

    # the decision

    async def _admit(self, policy: Policy, call: ToolCall, who: Who, digest: str) -> _Admitted | Denial:
        name, arguments = call.name, call.arguments
        denial = policy.refusal(name) or policy.failed_condition(name, arguments)
        if denial is not None:
            return denial
        approval_id = None
        if (where := policy.needs_approval(name)) is not None:
            approval = await self._db(
                partial(
                    self._ledger.request_approval,
                    who.key("session"),
                    name,
                    digest,
                    identity=who.identity,
                    expire_after_s=seconds(policy.spec.approvals.expire_after),
                )
            )
            if approval.state == "pending":
                reason = (
                    f"{name} needs a human's approval: ask the operator to run"
                    f" `guard approvals approve {approval.id}`, then retry the same call"
                )
                return Denial(where, reason, approval_id=approval.id)
            if approval.state == "denied":
                return Denial(where, f"the operator denied this call to {name}", approval_id=approval.id)
            approval_id = approval.id
        reading = self._payments.read(call)
        if reading.prepared is not None and reading.prepared.refuse is not None and reading.adapter is not None:
            return Denial(f"adapters.{reading.adapter.name}", reading.prepared.refuse)
        pays = reading.pays if reading.pays is not None else policy.pays(name)
        link = self._links.get(call.session.id)
        try:
            limits = policy.rate_limits(name, arguments, who)
            price = budgets = priced_by = None
            if pays:
                if limits:  # a rate-limited call must not make guard ask the upstream for a price first
                    await self._db(self._ledger.check_rates, [limit.rate for limit in limits])
                priced = await self._payments.price(policy, call, reading, link)
                price, priced_by = priced.amount, priced.by
                budgets, denial = self._budgets_for(policy, name, who, price)
                if denial is not None:
                    return denial
        except PriceUnknown as exc:
            return Denial(f"tools.{name}", f"no price, no pay: {exc}")
        except Refused as exc:
            return _refused(exc, limits)
        if price is not None:
            denial = await self._payments.check_balances(policy, call, reading, price, link)
            if denial is not None:
                return denial
        payment_id = reading.prepared.payment_id if reading.prepared is not None else None
        depends_on = reading.prepared.depends_on if reading.prepared is not None else ()
        balance_key = depends_on[0] if depends_on else None  # the balance this payment draws on
        try:
            if price is not None and budgets is not None:
                hold: int | None = await self._db(
                    partial(
                        self._ledger.reserve,
                        budgets,
                        price,
                        idempotency_key=payment_id,
                        balance_key=balance_key,
                        rate_limits=[limit.rate for limit in limits],
                        session=who.session,
                        identity=who.identity,
                        tool=name,
                        server=who.server,
                        resource=reading.prepared.paid_for if reading.prepared is not None else None,
                        priced_by=priced_by,
                    )
                )
            else:
                hold = None
                if limits:
                    await self._db(self._ledger.hit, [limit.rate for limit in limits])
        except Refused as exc:
            return _refused(exc, limits)
        if approval_id is not None:
            try:
                await self._db(self._ledger.use_approval, approval_id)
            except ApprovalError as exc:
                if hold is not None:
                    await self._db(self._ledger.void, hold)
                return Denial("approvals", str(exc), approval_id=approval_id)
        if hold is not None:
            await self._db(self._ledger.mark_forwarded, hold)
        return _Admitted(hold, price, reading)

    def _budgets_for(self, policy: Policy, name: str, who: Who, price: Amount) -> tuple[list[Budget], Denial | None]:
        cap = policy.max_price(name)
        if cap is not None:
            try:
                over = price.to(cap.unit, rounding="up").value > cap.value
            except UnitMismatch:
                return [], Denial(f"tools.{name}.max_price", f"the price is in {price.unit}, max_price in {cap.unit}")
            if over:
                return [], Denial(f"tools.{name}.max_price", f"the price {price} is over the per-call cap of {cap}")
        budgets = []
        for budget in policy.budgets(name, who):
            try:
                price.to(budget.limit.unit, rounding="up")
            except UnitMismatch:
                continue  # a budget in another currency does not count this payment
            budgets.append(budget)
        if not budgets:
            return [], Denial("budgets", f"no budget covers payments in {price.unit}: paying tools need one")
        return budgets, None

    async def _unanswered(self, hold: int, tool: str, *, not_run: bool = False) -> None:
        """A forwarded payment got no result: void when the tool did not run (the upstream's own error proves
        it, or guard never sent the call), else in doubt (it may have paid: a tool error, no answer in time,
        the upstream gone, the call cancelled)."""
        try:
            if not_run:
                await self._db(self._ledger.void, hold)
            else:
                logger.warning("payment by %s is in doubt (hold %d): no result from the upstream", tool, hold)
                await self._db(self._ledger.mark_in_doubt, hold)
        except HoldStateError:
            pass  # already settled or voided: the answer was read before the failure

    # schedules

    async def refresh_balances(self) -> int:
        """Ask the upstream again for every known balance older than `refresh_every` (a scheduled job)."""
        try:
            done = await self._payments.refresh_stale(self._source.policy, lambda: list(self._links.values()))
        except Exception:  # a failed run is logged; the next one tries again
            logger.exception("scheduled balance refresh failed")
            return 0
        if done:
            logger.info("refreshed %d balance%s", done, "" if done == 1 else "s")
        return done

    # reloads

    async def _policy_changed(self, old: Policy, new: Policy) -> None:
        for session_id, names in list(self._listed.items()):
            before = [n for n in names if old.visible(n)] + [BUDGET_TOOL] * old.spec.expose_budget_tool
            after = [n for n in names if new.visible(n)] + [BUDGET_TOOL] * new.spec.expose_budget_tool
            link = self._links.get(session_id)
            if before != after and link is not None:
                try:
                    await link.tools_changed()
                except Exception:  # a client that went away must not stop the others hearing of it
                    logger.debug("could not tell session %s that its tools changed", session_id, exc_info=True)

    async def _db(self, function: Callable[..., T], *args: Any) -> T:
        """Run a (synchronous) ledger call off the event loop."""
        return await anyio.to_thread.run_sync(function, *args)


BUDGET_TOOL = "guard-budget"
BUDGET_TOOL_DEFINITION: JSON = {
    "name": BUDGET_TOOL,
    "title": "Your budgets (guard)",
    "description": (
        "Read-only, free. The spending budgets guard enforces for you: for each, what is left, spent and held,"
        " in which unit, and when it resets. Call it before paying to plan what you can afford."
    ),
    "inputSchema": {"type": "object", "properties": {}, "additionalProperties": False},
    "annotations": {"readOnlyHint": True, "destructiveHint": False, "idempotentHint": True, "openWorldHint": False},
}


NO_BUDGETS = "No budgets apply to you: guard denies paying tools without one."


def budget_result(states: list[BudgetState]) -> JSON:
    """The `guard-budget` answer: a line per budget the model can read, and the same as data."""
    lines = [
        f"{s.budget.name} ({s.budget.scope}, per {s.budget.window}): {_quantity(s.remaining, s.budget.limit.unit)}"
        f" left of {s.budget.limit}; spent {_quantity(s.spent, s.budget.limit.unit)},"
        f" held {_quantity(s.held + s.in_doubt, s.budget.limit.unit)}"
        + (f"; resets at {s.resets_at.isoformat(timespec='seconds')}" if s.resets_at else "")
        for s in states
    ]
    return {
        "content": [{"type": "text", "text": "\n".join(lines) or NO_BUDGETS}],
        "structuredContent": {"budgets": [budget_fields(s) for s in states]},
        "isError": False,
    }


def _refused(exc: Refused, limits: list[Limit]) -> Denial:
    retry = _whole_seconds(exc.retry_after_s)
    limit = next((limit for limit in limits if limit.rate.key == exc.rule), None)
    if limit is not None:
        return Denial(limit.rule, f"rate limit reached: {limit.text}", exc.remaining, "calls", retry)
    if exc.rule == "idempotency":
        return Denial("idempotency", str(exc))
    return Denial(f"budgets.{exc.rule}", str(exc), exc.remaining, exc.unit, retry)


def _whole_seconds(seconds: float | None) -> float | None:
    return None if seconds is None else float(max(1, math.ceil(seconds)))


def denial_result(denial: Denial) -> JSON:
    """The tool result the agent sees: a first line it can act on, and machine-readable fields."""
    details = [f"rule {denial.rule}"]
    if denial.remaining is not None:
        details.append(f"{_quantity(denial.remaining, denial.unit)} left")
    if denial.retry_after_s is not None:
        details.append(f"retry after {_human(denial.retry_after_s)}")
    if denial.approval_id is not None:
        details.append(f"approval {denial.approval_id}")
    text = f"Denied by guard: {denial.reason} ({'; '.join(details)})"
    return {
        "content": [{"type": "text", "text": text}],
        "isError": True,
        "structuredContent": {
            "denied": True,
            "rule": denial.rule,
            "reason": denial.reason,
            "remaining": denial.remaining,
            "unit": denial.unit,
            "retry_after_s": denial.retry_after_s,
            "approval_id": denial.approval_id,
        },
    }


def _quantity(value: int, unit: str | None) -> str:
    try:
        return str(Amount(value, unit)) if unit else str(value)
    except AmountError:  # not money: calls, say
        return f"{value} {unit}"


def _human(seconds: float) -> str:
    """42s, 3m 20s, 2h 5m, 1d 4h."""
    whole = max(1, math.ceil(seconds))
    for size, small, big, small_name in ((86_400, 3_600, "d", "h"), (3_600, 60, "h", "m"), (60, 1, "m", "s")):
        if whole >= size:
            major, rest = divmod(whole, size)
            return f"{major}{big}" + (f" {rest // small}{small_name}" if rest // small else "")
    return f"{whole}s"
