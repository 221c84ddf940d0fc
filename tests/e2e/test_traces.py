"""Traces end to end: a real `guard run` (OTLP/HTTP by the standard environment variables) in front of a tiny
stdio upstream that echoes the `_meta` it was sent, exporting to a tiny OTLP/HTTP receiver on 127.0.0.1 that
decodes each export with `opentelemetry-proto`. The client's `_meta.traceparent` is continued: the span that
arrives has the client's trace id, and the upstream was sent guard's span as its parent."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.conftest import WAIT_S
from tests.rawguard import RawGuard

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{CLIENT_TRACE}-00f067aa0ba902b7-01"

# A stdio MCP server in raw JSON-RPC: one tool, `echo`, whose answer is the `_meta` its call was sent with.
ECHO_UPSTREAM = """\
import json, sys
for line in sys.stdin:
    message = json.loads(line)
    if "id" not in message:
        continue
    method, params = message["method"], message.get("params") or {}
    if method == "initialize":
        result = {"protocolVersion": params["protocolVersion"], "capabilities": {"tools": {}},
                  "serverInfo": {"name": "echo", "version": "1"}}
    elif method == "tools/list":
        result = {"tools": [{"name": "echo", "inputSchema": {"type": "object"}}]}
    elif method == "tools/call":
        result = {"content": [{"type": "text", "text": json.dumps(params.get("_meta") or {})}]}
    else:
        result = {}
    sys.stdout.write(json.dumps({"jsonrpc": "2.0", "id": message["id"], "result": result}) + "\\n")
    sys.stdout.flush()
"""
POLICY = "version: 1\ndefault: deny\ntools:\n  echo: {}\n"


class Receiver:
    """An OTLP/HTTP trace receiver: keeps every span it is sent, and says when one came."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.arrived = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                export = ExportTraceServiceRequest.FromString(body)
                for resource in export.resource_spans:
                    for scope in resource.scope_spans:
                        receiver.spans.extend(scope.spans)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)
                if self.path == "/v1/traces" and receiver.spans:
                    receiver.arrived.set()

            def log_message(self, format: str, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    opened = Receiver()
    yield opened
    opened.close()


def test_a_tools_call_through_guard_run_exports_a_span_continuing_the_clients_trace(
    tmp_path: Path, receiver: Receiver
) -> None:
    (tmp_path / "policy.yaml").write_text(POLICY)
    (tmp_path / "echo.py").write_text(ECHO_UPSTREAM)
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "50",  # export within 50 ms, not the default 5 s
        "OTEL_SERVICE_NAME": "guard-e2e",
    }
    guard = RawGuard(tmp_path, tmp_path / "policy.yaml", upstream=[sys.executable, str(tmp_path / "echo.py")], env=env)
    try:
        result = guard.call("echo", {}, meta={"traceparent": TRACEPARENT})
        assert receiver.arrived.wait(WAIT_S), "no span reached the OTLP receiver"
    finally:
        guard.stop()
    (span,) = receiver.spans
    assert span.trace_id.hex() == CLIENT_TRACE
    assert span.name == "tools/call echo"
    facts = {a.key: a.value for a in span.attributes}
    assert facts["guard.decision"].string_value == "allow"
    sent = json.loads(result["content"][0]["text"])
    assert sent["traceparent"] == f"00-{CLIENT_TRACE}-{span.span_id.hex()}-01", "the upstream's parent is guard's span"
