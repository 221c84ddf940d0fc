"""Prometheus metrics of a guard serving HTTP (`GET /metrics`).

Counters and the latency histogram are fed by the gate (`PrometheusMetrics` is a `CallWatcher`);
holds by state are read from the ledger at scrape time, so they count every guard sharing it.
Each guard has a registry of its own (never the process-wide default), so several guards, or
tests, in one process do not collide.

Labels are bounded: tools, rules, decisions and units only — never sessions, identities or URLs.
A client names the tools it calls, so tool (and rule) values are capped, the rest counted as
`_other`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from ledgers import CallRecord, Ledger, LedgerError

logger = logging.getLogger("guard.metrics")

CONTENT_TYPE = CONTENT_TYPE_LATEST
# From a cached answer (1 ms) to a slow paid API (a minute).
UPSTREAM_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
MAX_LABEL_VALUES = 200
OTHER = "_other"


class _BoundedLabel:
    """Label values as they come, up to `limit` distinct ones; any further value is `OTHER`."""

    def __init__(self, label: str, limit: int) -> None:
        self._label = label
        self._limit = limit
        self._seen: set[str] = set()
        self._warned = False

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        if len(self._seen) < self._limit:
            self._seen.add(value)
            return value
        if not self._warned:
            self._warned = True
            logger.warning(
                "more than %d distinct %s values: further ones are counted as %s=%r",
                self._limit,
                self._label,
                self._label,
                OTHER,
            )
        return OTHER


class _HoldsCollector:
    """`guard_holds{state}` from the ledger at scrape time; left out (with a warning) when it cannot be read."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield self._family()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            counts = self._ledger.hold_counts()
        except LedgerError as exc:
            logger.warning("metrics: guard_holds left out of this scrape: %s", exc)
            return
        family = self._family()
        for state, count in sorted(counts.items()):
            family.add_metric([state], count)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "guard_holds",
            "Holds in the ledger by state (every guard sharing the ledger), read at scrape time.",
            labels=["state"],
        )


class PrometheusMetrics:
    """A guard's metrics: a `CallWatcher` for the gate, and the exposition `/metrics` serves."""

    content_type = CONTENT_TYPE

    def __init__(self, ledger: Ledger, *, max_label_values: int = MAX_LABEL_VALUES) -> None:
        self._registry = CollectorRegistry()
        self._tool = _BoundedLabel("tool", max_label_values)
        self._rule = _BoundedLabel("rule", max_label_values)
        self._calls = Counter(
            "guard_calls",
            "Tool calls decided by the guard, by tool and decision (allow, deny, error).",
            ["tool", "decision"],
            registry=self._registry,
        )
        self._denials = Counter(
            "guard_denials",
            "Tool calls denied, by the policy rule that denied them.",
            ["rule"],
            registry=self._registry,
        )
        self._spent = Counter(
            "guard_spent",
            "Spent by allowed calls, by unit, in the unit's smallest whole units (sat, msat, usd_micro, ...).",
            ["unit"],
            registry=self._registry,
        )
        self._over = Counter(
            "guard_over_reservation_payments",
            "Payments settled above their reservation (the upstream paid more than the guard's price bound; "
            "the ledger counts all of it), by unit.",
            ["unit"],
            registry=self._registry,
        )
        self._over_amount = Counter(
            "guard_over_reservation",
            "What payments were settled above their reservations, by unit, in the unit's smallest whole units.",
            ["unit"],
            registry=self._registry,
        )
        self._upstream = Histogram(
            "guard_upstream_seconds",
            "How long the upstream took to answer a forwarded tool call, by tool.",
            ["tool"],
            buckets=UPSTREAM_BUCKETS_S,
            registry=self._registry,
        )
        self._registry.register(_HoldsCollector(ledger))

    def call_done(self, call: CallRecord, upstream_s: float | None) -> None:
        tool = self._tool(call.tool)
        self._calls.labels(tool, call.decision).inc()
        if call.decision == "deny":
            self._denials.labels(self._rule(call.rule or "unknown")).inc()
        if call.spent is not None:
            self._spent.labels(call.spent.unit).inc(call.spent.value)
        if (over := call.over_reservation) is not None:
            self._over.labels(over.unit).inc()
            self._over_amount.labels(over.unit).inc(over.value)
        if upstream_s is not None:
            self._upstream.labels(tool).observe(upstream_s)

    def exposition(self) -> bytes:
        """Every metric in the Prometheus text format. Reads the ledger: call it off the event loop."""
        return generate_latest(self._registry)
