"""Prometheus metrics: `PrometheusMetrics` fed call records directly (on a real SQLite file and a real
PostgreSQL ledger), and `GET /metrics` of a real `guard run --listen` in front of the fake shop, after
calls made by a real MCP client over streamable HTTP."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import httpx
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from guard.operators.metrics import OTHER, PrometheusMetrics
from ledgers import Amount, Budget, CallRecord, Ledger
from tests.conftest import ROOT, WAIT_S, Spawned

SHOP = [sys.executable, str(ROOT / "tests/upstreams/shop.py")]
TOKEN = "metrics-token-0123456789abcdef"
BOUNDED_LABELS = {"tool", "decision", "rule", "unit", "state", "le"}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(exposition: str) -> Samples:
    """Every sample of a text exposition, keyed by sample name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(exposition)
        for sample in family.samples
    }


def series(samples: Samples, name: str) -> dict[frozenset[tuple[str, str]], float]:
    """The samples called `name`, by their labels."""
    return {labels: value for (sample, labels), value in samples.items() if sample == name}


def labels(**pairs: str) -> frozenset[tuple[str, str]]:
    return frozenset(pairs.items())


# the Metrics class, fed directly


@pytest.fixture
def ledger(ledger_url: str) -> Iterator[Ledger]:
    opened = Ledger.open(ledger_url)
    yield opened
    opened.close()


def test_calls_denials_spend_and_upstream_latency_are_counted_by_tool_rule_decision_and_unit(ledger: Ledger) -> None:
    metrics = PrometheusMetrics(ledger)
    who = {"session": "session-7f3a", "identity": "alice", "server": "shop"}
    metrics.call_done(CallRecord("buy", "allow", spent=Amount(30, "sat"), **who), 0.02)
    metrics.call_done(CallRecord("buy", "allow", spent=Amount(12, "sat"), **who), 0.3)
    metrics.call_done(CallRecord("buy", "deny", rule="tools.buy.when[0]", reason="lower-case", **who), None)
    metrics.call_done(CallRecord("sell", "deny", rule="default", **who), None)
    metrics.call_done(CallRecord("buy", "error", reason="upstream error", **who), 7.0)
    metrics.call_done(CallRecord("quote", "allow", spent=Amount(2_500_000, "usd_micro"), **who), 0.004)

    exposition = metrics.exposition().decode()
    samples = parse(exposition)

    assert series(samples, "guard_calls_total") == {
        labels(tool="buy", decision="allow"): 2,
        labels(tool="buy", decision="deny"): 1,
        labels(tool="buy", decision="error"): 1,
        labels(tool="sell", decision="deny"): 1,
        labels(tool="quote", decision="allow"): 1,
    }
    assert series(samples, "guard_denials_total") == {labels(rule="tools.buy.when[0]"): 1, labels(rule="default"): 1}
    assert series(samples, "guard_spent_total") == {labels(unit="sat"): 42, labels(unit="usd_micro"): 2_500_000}
    assert series(samples, "guard_upstream_seconds_count") == {labels(tool="buy"): 3, labels(tool="quote"): 1}
    assert series(samples, "guard_upstream_seconds_sum")[labels(tool="buy")] == pytest.approx(7.32)
    buckets = series(samples, "guard_upstream_seconds_bucket")
    assert buckets[labels(tool="buy", le="0.001")] == 0
    assert buckets[labels(tool="buy", le="0.025")] == 1
    assert buckets[labels(tool="buy", le="0.5")] == 2
    assert buckets[labels(tool="buy", le="60.0")] == 3
    assert buckets[labels(tool="quote", le="0.005")] == 1
    assert "smallest whole units" in exposition  # the HELP text says what a spent unit is
    # Never labelled by session, identity or server: only bounded labels.
    assert {name for _, pairs in samples for name, _ in pairs} <= BOUNDED_LABELS
    assert "session-7f3a" not in exposition and "alice" not in exposition


def test_payments_settled_above_their_reservation_are_counted_with_their_excess_by_unit(ledger: Ledger) -> None:
    metrics = PrometheusMetrics(ledger)
    metrics.call_done(CallRecord("fetch", "allow", price=Amount(10, "sat"), spent=Amount(50, "sat")), 0.1)
    metrics.call_done(CallRecord("fetch", "allow", price=Amount(20_500, "msat"), spent=Amount(21, "sat")), 0.1)
    metrics.call_done(CallRecord("fetch", "allow", price=Amount(30, "sat"), spent=Amount(30, "sat")), 0.1)
    metrics.call_done(CallRecord("fetch", "allow", price=Amount(30, "sat"), spent=Amount(5, "sat")), 0.1)
    metrics.call_done(CallRecord("chat", "allow", price=Amount(100, "usdc"), spent=Amount(101, "usdc")), 0.1)
    metrics.call_done(CallRecord("fetch", "resolve", spent=Amount(70, "sat")), None)  # no reservation named

    samples = parse(metrics.exposition().decode())
    assert series(samples, "guard_over_reservation_payments_total") == {
        labels(unit="sat"): 1,
        labels(unit="msat"): 1,
        labels(unit="usdc"): 1,
    }
    # In the reservation's unit: 21 sat on 20 500 msat is 500 msat over.
    assert series(samples, "guard_over_reservation_total") == {
        labels(unit="sat"): 40,
        labels(unit="msat"): 500,
        labels(unit="usdc"): 1,
    }


def test_holds_are_read_from_the_ledger_by_state_at_each_scrape(ledger: Ledger) -> None:
    metrics = PrometheusMetrics(ledger)
    budget = Budget("total", Amount(1000, "sat"))
    assert series(parse(metrics.exposition().decode()), "guard_holds") == {
        labels(state=state): 0 for state in ("reserved", "forwarded", "settled", "voided", "in_doubt")
    }

    settled, voided, doubtful, _reserved = (ledger.reserve([budget], Amount(10, "sat")) for _ in range(4))
    ledger.settle(settled, Amount(10, "sat"))
    ledger.void(voided)
    ledger.mark_forwarded(doubtful)
    ledger.mark_in_doubt(doubtful)

    assert series(parse(metrics.exposition().decode()), "guard_holds") == {
        labels(state="reserved"): 1,
        labels(state="forwarded"): 0,
        labels(state="settled"): 1,
        labels(state="voided"): 1,
        labels(state="in_doubt"): 1,
    }


def test_a_scrape_answers_without_holds_when_the_ledger_cannot_be_read(
    ledger: Ledger, ledger_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = PrometheusMetrics(ledger)
    metrics.call_done(CallRecord("buy", "allow", spent=Amount(5, "sat")), 0.01)
    behind_its_back = create_engine(ledger_url)
    with behind_its_back.begin() as conn:
        conn.execute(
            text("DROP TABLE ledger_holds CASCADE" if ledger_url.startswith("postgres") else "DROP TABLE ledger_holds")
        )
    behind_its_back.dispose()

    with caplog.at_level(logging.WARNING, logger="guard.metrics"):
        samples = parse(metrics.exposition().decode())

    assert series(samples, "guard_holds") == {}
    assert series(samples, "guard_calls_total") == {labels(tool="buy", decision="allow"): 1}
    assert series(samples, "guard_spent_total") == {labels(unit="sat"): 5}
    assert [r.getMessage() for r in caplog.records if "guard_holds left out" in r.getMessage()] != []


def test_tool_names_beyond_the_cap_are_counted_together_so_a_client_cannot_grow_the_series(
    ledger: Ledger, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = PrometheusMetrics(ledger, max_label_values=3)
    with caplog.at_level(logging.WARNING, logger="guard.metrics"):
        for n in range(6):
            metrics.call_done(CallRecord(f"tool-{n}", "deny", rule="default"), None)
        metrics.call_done(CallRecord("tool-0", "allow"), 0.01)

    calls = series(parse(metrics.exposition().decode()), "guard_calls_total")
    assert calls == {
        labels(tool="tool-0", decision="deny"): 1,
        labels(tool="tool-0", decision="allow"): 1,
        labels(tool="tool-1", decision="deny"): 1,
        labels(tool="tool-2", decision="deny"): 1,
        labels(tool=OTHER, decision="deny"): 3,
    }
    assert len([r for r in caplog.records if "distinct tool values" in r.getMessage()]) == 1


def test_two_guards_in_one_process_keep_separate_counts(ledger: Ledger) -> None:
    first, second = PrometheusMetrics(ledger), PrometheusMetrics(ledger)
    first.call_done(CallRecord("buy", "allow"), 0.01)

    assert series(parse(first.exposition().decode()), "guard_calls_total") == {labels(tool="buy", decision="allow"): 1}
    assert series(parse(second.exposition().decode()), "guard_calls_total") == {}


# GET /metrics of a real guard

POLICY = """\
version: 1
default: deny
budgets:
  - name: total
    limit: 100 sat
tools:
  buy:
    pays: true
    price_from: args.amount
    price_unit: sat
    when:
      - arg: item
        matches: '^[a-z]+$'
        reason: items are lower-case words
"""


@pytest.fixture
def policy(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY)
    return path


def metrics_url(guard: Spawned) -> str:
    return guard.url.removesuffix("/mcp") + "/metrics"


@pytest.mark.anyio
async def test_metrics_over_http_need_the_token_and_count_what_the_client_did(
    http_guard: Callable[..., Spawned], tmp_path: Path, policy: Path
) -> None:
    record = tmp_path / "shop-record.jsonl"
    guard = http_guard(
        ["--token", TOKEN, "--policy", str(policy), "--ledger", str(tmp_path / "ledger.db"), "--", *SHOP],
        env={"SHOP_RECORD": str(record)},
    )
    with anyio.fail_after(WAIT_S):
        async with httpx.AsyncClient(timeout=WAIT_S) as http:
            missing = await http.get(metrics_url(guard))
            wrong = await http.get(metrics_url(guard), headers={"Authorization": "Bearer not-the-token"})

        mcp_http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=WAIT_S)
        async with mcp_http, Client(streamable_http_client(guard.url, http_client=mcp_http), mode="legacy") as client:
            bought = await client.call_tool("buy", {"item": "tea", "amount": 30})
            refused = await client.call_tool("buy", {"item": "Tea", "amount": 10})

        async with httpx.AsyncClient(timeout=WAIT_S, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
            scraped = await http.get(metrics_url(guard))

    assert missing.status_code == 401 and "guard_calls" not in missing.text
    assert wrong.status_code == 401 and "guard_calls" not in wrong.text
    assert not bought.is_error and refused.is_error
    assert scraped.status_code == 200
    assert scraped.headers["content-type"] == CONTENT_TYPE_LATEST
    samples = parse(scraped.text)
    paid_by_shop = sum(json.loads(line)["amount"] for line in record.read_text().splitlines())
    assert paid_by_shop == 30
    assert series(samples, "guard_calls_total") == {
        labels(tool="buy", decision="allow"): 1,
        labels(tool="buy", decision="deny"): 1,
    }
    assert series(samples, "guard_denials_total") == {labels(rule="tools.buy.when[0]"): 1}
    assert series(samples, "guard_spent_total") == {labels(unit="sat"): paid_by_shop}
    assert series(samples, "guard_upstream_seconds_count") == {labels(tool="buy"): 1}
    assert series(samples, "guard_holds")[labels(state="settled")] == 1
    assert {name for _, pairs in samples for name, _ in pairs} <= BOUNDED_LABELS
    assert TOKEN not in guard.stderr


@pytest.mark.anyio
async def test_on_loopback_without_tokens_metrics_are_open_to_get_only_and_check_the_host(
    http_guard: Callable[..., Spawned], tmp_path: Path, policy: Path
) -> None:
    guard = http_guard(
        ["--policy", str(policy), "--ledger", str(tmp_path / "ledger.db"), "--", *SHOP],
        env={"SHOP_RECORD": str(tmp_path / "shop-record.jsonl")},
    )
    with anyio.fail_after(WAIT_S):
        async with httpx.AsyncClient(timeout=WAIT_S) as http:
            got = await http.get(metrics_url(guard))
            posted = await http.post(metrics_url(guard), content=b"")
            rebound = await http.get(metrics_url(guard), headers={"Host": "attacker.example"})

    assert got.status_code == 200
    assert series(parse(got.text), "guard_holds")[labels(state="settled")] == 0
    assert posted.status_code == 405 and posted.headers["allow"] == "GET"
    # DNS rebinding: a page on another origin must not read the metrics through the loopback guard.
    assert rebound.status_code == 421
