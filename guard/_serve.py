"""Serving: `guard run` once its flags are checked and its ledger is open. Builds the gate (policy, ledger,
adapters, watchers), the background tasks, and hands them to the stdio or HTTP front.

Kept apart from the CLI so that the operators' commands (`guard budget show`, `guard report`) start without
loading the MCP SDK and the serving stack."""

from __future__ import annotations

import logging
import uuid
from functools import partial

import anyio
import anyio.to_thread
import typer

from guard import _upstream
from guard._alerts import Alerter
from guard._gate import CallWatcher, PolicyGate
from guard._limits import DEFAULT_LIMITS, Limits
from guard._payments import Payments
from guard._policy_source import PolicySource
from guard._relay import Background, Gate, Session
from guard._schedule import NightlyReport, run_schedule
from guard._version import __version__
from guard.adapters import family_adapters, x402_adapter
from ledgers import DEFAULT_LEASE_S, Ledger, LedgerError

logger = logging.getLogger("guard")

HEARTBEAT_S = DEFAULT_LEASE_S / 3


def serve(
    spec: _upstream.UpstreamSpec,
    source: PolicySource,
    ledger: Ledger,
    *,
    address: tuple[str, int] | None,
    tokens: dict[str, str],
    session: str | None,
    identity: str | None,
    limits: Limits = DEFAULT_LIMITS,
) -> int:
    """Serve until the client or the upstream goes away; the exit status."""
    spec_ = source.policy.spec
    server = spec_.server or spec.name
    payments = Payments(ledger, family_adapters(spec_.preset), x402_adapter(spec_.assets), server)
    alerter = Alerter(source, ledger, server)  # always: a reload may add `alerts:`
    watchers: list[CallWatcher] = [alerter]
    metrics = None
    if address is not None:  # HTTP mode serves Prometheus metrics at /metrics
        from guard._metrics import PrometheusMetrics

        metrics = PrometheusMetrics(ledger)
        watchers.append(metrics)
    gate = PolicyGate(source, ledger, server, payments, watchers=watchers)
    background: list[Background] = [
        gate.write_audit,
        source.watch,
        partial(_heartbeat, ledger),
        partial(run_schedule, gate, source, NightlyReport(ledger)),
        alerter.run,
    ]
    if address is None:
        return _run_stdio(spec, gate, session, identity, background, limits)
    from guard._http_front import serve_http  # starlette and uvicorn: only HTTP mode loads them

    serve_http(spec, gate, address[0], address[1], tokens, identity, background, metrics, limits)
    return 0


async def _heartbeat(ledger: Ledger) -> None:
    """Tell guards sharing the ledger that this one is alive (they recover a silent one's holds)."""
    while True:
        await anyio.sleep(HEARTBEAT_S)
        try:
            await anyio.to_thread.run_sync(ledger.heartbeat)
        except LedgerError as exc:
            logger.warning("ledger heartbeat failed: %s", exc)


def _run_stdio(
    spec: _upstream.UpstreamSpec,
    gate: Gate,
    session_name: str | None,
    identity: str | None,
    background: list[Background],
    limits: Limits,
) -> int:
    from guard._stdio_front import serve_stdio

    session = Session(id=session_name or uuid.uuid4().hex[:16], identity=identity, transport="stdio")
    logger.info("guard %s: session %s%s", __version__, session.id, f", identity {identity}" if identity else "")
    failure = anyio.run(serve_stdio, spec, gate, session, background, limits)
    if failure is not None:
        typer.echo(f"guard: error: {failure}", err=True)
        return 1
    return 0
