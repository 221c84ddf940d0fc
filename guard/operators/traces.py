"""Traces (the `otel` extra, `pip install 'guard-mcp[otel]'`): a span per `tools/call`, exported by OTLP.

Imported only when `trace_switch.traces_wanted` says the environment asks for traces. `TracedGate` wraps
the gate: the span continues the client's W3C trace context (`params._meta.traceparent` / `tracestate`: MCP
carries per-request metadata in `_meta`) and passes its own on to the upstream in the forwarded request's
`_meta`. `SpanFacts`, a watcher of the gate's audit trail, puts the decision's facts on the current span.
Attributes are structured facts only: never arguments, reasons, sessions or secrets."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from guard._version import __version__
from guard.core import JSON, Forward, Gate, Session, SessionLink, ToolCall
from ledgers import CallRecord

logger = logging.getLogger("guard.traces")

PROPAGATOR = TraceContextTextMapPropagator()
CARRIED = ("traceparent", "tracestate")  # the W3C trace context's entries, read from and written to `_meta`


def client_context(meta: JSON | None) -> Context | None:
    """The client's trace context from a request's `_meta`; None when it sends none (the span is a root)."""
    if not isinstance(meta, dict):
        return None
    carrier = {key: meta[key] for key in CARRIED if isinstance(meta.get(key), str)}
    return PROPAGATOR.extract(carrier) if carrier else None


class TracedGate:
    """A `Gate` that runs `inner` inside a span per `tools/call`; everything else goes straight to `inner`."""

    def __init__(self, inner: Gate, tracer: Tracer) -> None:
        self._inner = inner
        self._tracer = tracer

    async def call_tool(self, call: ToolCall, forward: Forward) -> JSON:
        with self._tracer.start_as_current_span(
            f"tools/call {call.name}",
            context=client_context(call.meta),
            kind=SpanKind.SERVER,
            attributes={"mcp.method.name": "tools/call", "gen_ai.tool.name": call.name},
            record_exception=False,  # an exception's message may quote the upstream: only its type is kept
            set_status_on_exception=False,
        ) as span:

            async def traced_forward(meta: JSON | None = None) -> JSON:
                carrier: dict[str, str] = {}
                PROPAGATOR.inject(carrier)  # this span, as the upstream's parent
                return await forward({**(meta or {}), **carrier})

            try:
                return await self._inner.call_tool(call, traced_forward)
            except BaseException as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise

    async def list_tools(self, session: Session, result: JSON) -> JSON:
        return await self._inner.list_tools(session, result)

    def subscribe(self, session: Session, link: SessionLink) -> Callable[[], None]:
        return self._inner.subscribe(session, link)

    def call_refused(self, session: Session, tool: str, reason: str) -> None:
        self._inner.call_refused(session, tool, reason)


class SpanFacts:
    """A `CallWatcher`: the decided call's facts as attributes of the span it was decided in (the gate tells
    its watchers inside `call_tool`, so the current span is `TracedGate`'s)."""

    def call_done(self, call: CallRecord, upstream_s: float | None) -> None:
        span = trace.get_current_span()
        if not span.is_recording():  # a call the relay refused before any span, or traces off
            return
        facts: dict[str, str | int] = {"guard.decision": call.decision}
        if call.rule is not None:
            facts["guard.rule"] = call.rule
        if call.kind is not None:
            facts["guard.rule.kind"] = call.kind
        if call.price is not None:
            facts["guard.price.value"], facts["guard.price.unit"] = call.price.value, call.price.unit
        if call.spent is not None:
            facts["guard.spent.value"], facts["guard.spent.unit"] = call.spent.value, call.spent.unit
        if call.hold_id is not None:
            facts["guard.hold.id"] = call.hold_id
        if upstream_s is not None:
            facts["guard.upstream.latency_us"] = round(upstream_s * 1_000_000)
        span.set_attributes(facts)


def otlp_exporter(environ: Mapping[str, str]) -> SpanExporter:
    """The OTLP span exporter the environment names: gRPC when its protocol says `grpc`, else HTTP/protobuf
    (the OpenTelemetry default). Each reads its endpoint, headers and timeout from the environment itself."""
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    if protocol.strip() == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter()


class Traces:
    """Spans exported in batches by OTLP, as the environment says; `close` sends what is left."""

    def __init__(self, exporter: SpanExporter | None = None, environ: Mapping[str, str] = os.environ) -> None:
        service = environ.get("OTEL_SERVICE_NAME", "").strip() or "guard"
        self._provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service}))
        self._provider.add_span_processor(BatchSpanProcessor(exporter or otlp_exporter(environ)))
        self.tracer = self._provider.get_tracer("guard", __version__)
        self.facts = SpanFacts()  # a watcher for the gate

    def gate(self, inner: Gate) -> TracedGate:
        return TracedGate(inner, self.tracer)

    def close(self) -> None:
        self._provider.shutdown()
