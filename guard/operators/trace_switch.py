"""Whether `guard run` traces: decided by the standard OpenTelemetry environment variables alone, without
importing OpenTelemetry (off, tracing costs nothing: not even the import).

On when the SDK is not disabled (`OTEL_SDK_DISABLED=true`), the traces exporter is not `none`, and either
`OTEL_TRACES_EXPORTER=otlp` or an OTLP endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT`,
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set."""

from __future__ import annotations

from collections.abc import Mapping

ENDPOINTS = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def traces_wanted(environ: Mapping[str, str]) -> bool:
    """True when the environment asks for traces (the module doc says how)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter == "none":
        return False
    return exporter == "otlp" or any(environ.get(name, "").strip() for name in ENDPOINTS)
