"""What turns traces on: the standard OpenTelemetry environment variables, read without importing OpenTelemetry."""

from __future__ import annotations

import subprocess
import sys

import pytest

from guard.operators.trace_switch import traces_wanted
from tests.conftest import ROOT


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "  "}, False),
        ({"OTEL_SERVICE_NAME": "guard"}, False),
    ],
)
def test_traces_are_on_only_when_the_otel_environment_asks_for_an_otlp_export(
    environ: dict[str, str], wanted: bool
) -> None:
    assert traces_wanted(environ) is wanted


def test_serving_without_traces_loads_neither_guards_tracing_nor_the_opentelemetry_sdk() -> None:
    """Off costs nothing: `guard run`'s serving modules load without guard's tracing or the OpenTelemetry SDK.

    Surprise: the MCP SDK 2.3 itself depends on `opentelemetry-api` and imports it (`mcp/shared/_otel.py`:
    its dispatcher injects `traceparent` into `_meta`), so the API is loaded whatever guard does; it is a
    no-op until a tracer provider is set, and guard never sets the global one."""
    code = (
        "import sys, guard.cli.serve, guard.proxy.relay, guard.proxy.stdio, guard.gate.gate; "
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter', "
        "'guard.operators.traces'))))"
    )
    found = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "[]"
