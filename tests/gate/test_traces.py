"""Traces in process: `TracedGate` around a real `PolicyGate` (a SQLite ledger, a fake forward), spans kept by
the OpenTelemetry SDK's in-memory exporter. A span per tools/call carries the decision's structured facts
(never arguments), continues the client's W3C trace context from `_meta`, and passes its own to the upstream."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from guard.core import JSON, Session, ToolCall
from guard.errors import UpstreamError
from guard.gate.gate import PolicyGate
from guard.operators.traces import SpanFacts, TracedGate
from guard.policy.source import PolicySource
from tests.payments.doubles import RecordingLedger, policy, text_result

pytestmark = pytest.mark.anyio

SHOP = """\
version: 1
default: deny
budgets:
  - {name: per-session, limit: 100 sat}
tools:
  buy: {pays: true, price_from: amount, price_unit: sat, max_price: 60 sat}
"""
CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
SECRET = "preimage-0123456789abcdef"  # an argument value that must appear in no attribute


class Upstream:
    """A fake forward keeping the `_meta` entries each forwarded call was sent with."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.sent: list[JSON | None] = []
        self.error = error

    async def forward(self, meta: JSON | None = None) -> JSON:
        self.sent.append(meta)
        if self.error is not None:
            raise self.error
        return text_result({"bought": True})


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    yield exporter
    exporter.shutdown()


class Traced:
    def __init__(self, ledger: RecordingLedger, exporter: InMemorySpanExporter) -> None:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        gate = PolicyGate(PolicySource(policy(SHOP)), ledger, "shop", watchers=[SpanFacts()])
        self.gate = TracedGate(gate, provider.get_tracer("test"))
        self.exporter = exporter

    async def call(self, name: str, upstream: Upstream, meta: JSON | None = None, **arguments: Any) -> JSON:
        call = ToolCall(Session("s1", identity="alice"), 1, name, arguments, meta)
        return await self.gate.call_tool(call, upstream.forward)

    def span(self) -> ReadableSpan:
        (span,) = self.exporter.get_finished_spans()
        return span


@pytest.fixture
def traced(ledger: RecordingLedger, spans: InMemorySpanExporter) -> Traced:
    return Traced(ledger, spans)


async def test_an_allowed_paying_call_has_one_span_with_its_decision_price_hold_and_upstream_latency(
    traced: Traced,
) -> None:
    await traced.call("buy", Upstream(), amount=50, note=SECRET)
    span = traced.span()
    facts = dict(span.attributes or {})
    assert span.name == "tools/call buy"
    assert facts["gen_ai.tool.name"] == "buy" and facts["mcp.method.name"] == "tools/call"
    assert (facts["guard.decision"], facts["guard.price.value"], facts["guard.price.unit"]) == ("allow", 50, "sat")
    assert isinstance(facts["guard.hold.id"], int) and isinstance(facts["guard.upstream.latency_us"], int)
    assert facts["guard.spent.value"] == 50 and facts["guard.spent.unit"] == "sat"
    assert span.status.status_code == StatusCode.UNSET
    assert not any(SECRET in str(value) for value in facts.values()), "arguments never reach a span"


async def test_a_denied_call_has_a_span_naming_its_rule_and_kind_and_nothing_is_forwarded(traced: Traced) -> None:
    upstream = Upstream()
    await traced.call("buy", upstream, amount=99)
    facts = dict(traced.span().attributes or {})
    assert (facts["guard.decision"], facts["guard.rule"], facts["guard.rule.kind"]) == (
        "deny",
        "tools.buy.max_price",
        "price",
    )
    assert "guard.hold.id" not in facts and "guard.upstream.latency_us" not in facts
    assert upstream.sent == []


async def test_the_span_continues_the_clients_trace_context_from_meta(traced: Traced) -> None:
    await traced.call("buy", Upstream(), {"traceparent": TRACEPARENT, "progressToken": 7}, amount=5)
    span = traced.span()
    assert span.context is not None and span.parent is not None
    assert format(span.context.trace_id, "032x") == CLIENT_TRACE
    assert format(span.parent.span_id, "016x") == CLIENT_SPAN and span.parent.is_remote


async def test_a_call_without_a_trace_context_starts_a_trace_of_its_own(traced: Traced) -> None:
    await traced.call("buy", Upstream(), {"traceparent": "not a traceparent"}, amount=5)
    span = traced.span()
    assert span.parent is None and span.context is not None and span.context.trace_id != int(CLIENT_TRACE, 16)


async def test_the_upstream_gets_the_guards_span_as_its_parent_in_meta(traced: Traced) -> None:
    upstream = Upstream()
    await traced.call("buy", upstream, {"traceparent": TRACEPARENT, "tracestate": "shop=1"}, amount=5)
    span = traced.span()
    assert span.context is not None
    (meta,) = upstream.sent
    assert meta is not None
    assert meta["traceparent"] == f"00-{CLIENT_TRACE}-{format(span.context.span_id, '016x')}-01"
    assert meta["tracestate"] == "shop=1"


async def test_an_upstream_error_marks_the_span_an_error_without_the_upstreams_words(traced: Traced) -> None:
    with pytest.raises(UpstreamError):
        await traced.call("buy", Upstream(UpstreamError(-32603, f"boom {SECRET}")), amount=5)
    span = traced.span()
    assert span.status.status_code == StatusCode.ERROR and span.status.description == "UpstreamError"
    assert dict(span.attributes or {})["guard.decision"] == "error"
    assert span.events == () or not any(SECRET in str(e.attributes) for e in span.events)
