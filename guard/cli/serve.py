"""Serving: what `guard run` builds once its flags are checked and its ledger is open. The gate (policy,
ledger, adapters, watchers), the background tasks, handed to the stdio or HTTP front; and a 402-mcp
upstream's own cap on what it pays by itself.

Only `guard run` imports this module: it loads the MCP SDK and the serving stack, which the operators'
commands (`guard budget show`, `guard report`) start without."""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

import anyio

from guard._version import __version__
from guard.cli.exits import Status, fail
from guard.core import Background, Gate, Session, off_loop
from guard.errors import PriceUnknown
from guard.gate.audit import CallWatcher
from guard.gate.gate import PolicyGate
from guard.operators.alerts import Alerter
from guard.operators.schedule import NightlyReport, run_schedule
from guard.operators.trace_switch import traces_wanted
from guard.payments.adapters import family_adapters, x402_adapter
from guard.payments.payments import Payments
from guard.policy.rules import Policy, Who
from guard.policy.source import PolicySource
from guard.proxy.limits import DEFAULT_LIMITS, Limits
from guard.proxy.sharing import Sharing
from guard.proxy.upstream import StdioUpstream, UpstreamSpec
from ledgers import DEFAULT_LEASE_S, Amount, Ledger, LedgerError, UnitMismatch

if TYPE_CHECKING:
    from guard.operators.traces import Traces

logger = logging.getLogger("guard")

HEARTBEAT_S = DEFAULT_LEASE_S / 3
# 402-mcp's own cap on each payment it makes by itself (an env var of its process), and its tools that pay.
AUTO_PAY_CAP = "MAX_AUTO_PAY_SATS"
AUTO_PAYING_TOOLS = ("l402-fetch", "l402-pay", "l402-buy-credits", "l402-redeem-cashu")


def serve(
    spec: UpstreamSpec,
    source: PolicySource,
    ledger: Ledger,
    *,
    address: tuple[str, int] | None,
    tokens: dict[str, str],
    session: str | None,
    identity: str | None,
    limits: Limits = DEFAULT_LIMITS,
    sharing: Sharing | None = None,
    json_answers: bool = False,
) -> None:
    """Serve until the client goes away or the guard is stopped; a stdio upstream that dies ends it with
    exit status 1 and the upstream's story.

    Raises:
        UpstreamStartError: the upstream cannot be started or reached."""
    spec = with_auto_pay_cap(spec, source.policy)
    written = source.policy.spec  # as at start: a reload changes neither the adapters nor the server
    server = written.server or spec.name
    payments = Payments(ledger, family_adapters(written.preset), x402_adapter(written.assets), server)
    alerter = Alerter(source, ledger, server)  # always: a reload may add `alerts:`
    watchers: list[CallWatcher] = [alerter]
    metrics = None
    if address is not None:  # HTTP mode serves Prometheus metrics at /metrics
        from guard.operators.metrics import PrometheusMetrics

        metrics = PrometheusMetrics(ledger)
        watchers.append(metrics)
    traces = _traces()
    if traces is not None:
        watchers.append(traces.facts)
    gate = PolicyGate(source, ledger, server, payments, watchers=watchers)
    front: Gate = gate if traces is None else traces.gate(gate)
    background: list[Background] = [
        gate.audit.write,
        source.watch,
        partial(_heartbeat, ledger),
        partial(run_schedule, source, NightlyReport(ledger), payments, gate.links),
        alerter.run,
    ]
    try:
        if address is None:
            _run_stdio(spec, front, session, identity, background, limits)
        else:
            from guard.proxy.http import serve_http  # starlette and uvicorn: only HTTP mode loads them

            serve_http(
                spec,
                front,
                address[0],
                address[1],
                tokens,
                identity,
                background,
                metrics,
                limits,
                sharing,
                json_answers,
            )
    finally:
        if traces is not None:
            traces.close()  # the spans still in the batch


def _traces() -> Traces | None:
    """Spans by OTLP when the environment asks for them (README "Traces"); None, importing nothing, when not."""
    if not traces_wanted(os.environ):
        return None
    try:
        from guard.operators.traces import Traces
    except ImportError as exc:
        logger.warning(
            "the environment asks for traces (OTEL_*), but the otel extra is not installed (%s): "
            "pip install 'guard-mcp[otel]'; running without traces",
            exc.name,
        )
        return None
    logger.info("traces: a span per tools/call, exported by OTLP as the OTEL_* environment says")
    return Traces()


def with_auto_pay_cap(spec: UpstreamSpec, policy: Policy) -> UpstreamSpec:
    """A 402-mcp that guard starts itself (stdio; the policy's preset is 402-mcp, or the command is) gets
    its own per-payment cap `MAX_AUTO_PAY_SATS` no higher than the policy's: the lower of what the
    environment says and `largest_auto_payment(policy)`. Defence in depth: should a price change between
    guard's quote and the payment, 402-mcp itself refuses what no call of the policy may spend. (Set at
    start: a policy reloaded later does not change it.)"""
    if not isinstance(spec, StdioUpstream):
        return spec
    if policy.spec.preset != "402-mcp" and spec.name.split("@")[0] != "402-mcp":  # npx 402-mcp@4.2.1 too
        return spec
    cap, why = largest_auto_payment(policy), "the largest payment the policy admits"
    inherited = os.environ.get(AUTO_PAY_CAP, "").strip()
    if inherited.isdigit() and int(inherited) < cap:
        cap, why = int(inherited), "as the environment says (the policy admits more)"
    logger.info("upstream 402-mcp starts with %s=%d: %s", AUTO_PAY_CAP, cap, why)
    return replace(spec, env={**spec.env, AUTO_PAY_CAP: str(cap)})


def largest_auto_payment(policy: Policy) -> int:
    """The most one payment 402-mcp makes by itself may cost under `policy`, in whole sats: the largest,
    over its paying tools, of what one call may spend (a denied tool: nothing; else at most its max_price,
    its fixed price, and each budget covering it). 402-mcp has one cap for all of them, so the tool the
    policy lets spend most sets it: give the paying tools one max_price (or deny those not used) for the
    tightest cap."""
    anyone = Who("", None, "")
    largest = 0
    for tool in AUTO_PAYING_TOOLS:
        if policy.refusal(tool) is not None:
            continue
        try:
            bounds = [policy.max_price(tool), policy.fixed_price(tool, {})]
        except PriceUnknown:
            continue  # caps that do not compare: every call to it is refused
        budgets = [_sats(budget.limit, policy) for budget in policy.budgets(tool, anyone)]
        if not any(b is not None for b in budgets):
            continue  # no budget counts sats: every payment is refused
        caps = [_sats(b, policy) for b in bounds if b is not None]
        most = min(sats for sats in [*caps, *budgets] if sats is not None)
        largest = max(largest, most)
    return largest


def _sats(amount: Amount, policy: Policy) -> int | None:
    """`amount` in whole sats (rounded down: 402-mcp compares whole sats), through the policy's rates (a
    usd budget with a written sat rate caps it too); None when no rate converts it."""
    try:
        return amount.to("sat", rates=policy.rates, rounding="down").value
    except UnitMismatch:
        return None


async def _heartbeat(ledger: Ledger) -> None:
    """Tell guards sharing the ledger that this one is alive (they recover a silent one's holds)."""
    while True:
        await anyio.sleep(HEARTBEAT_S)
        try:
            await off_loop(ledger.heartbeat)
        except LedgerError as exc:
            logger.warning("ledger heartbeat failed: %s", exc)


def _run_stdio(
    spec: UpstreamSpec,
    gate: Gate,
    session_name: str | None,
    identity: str | None,
    background: list[Background],
    limits: Limits,
) -> None:
    from guard.proxy.stdio import serve_stdio

    session = Session(id=session_name or uuid.uuid4().hex[:16], identity=identity, transport="stdio")
    logger.info("guard %s: session %s%s", __version__, session.id, f", identity {identity}" if identity else "")
    failure = anyio.run(serve_stdio, spec, gate, session, background, limits)
    if failure is not None:  # the upstream died: its story, and a status a supervisor notices
        fail(Status.FAILED, failure)
