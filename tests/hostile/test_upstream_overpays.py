"""An upstream that pays more than guard's price bound (402-mcp pays any invoice up to its own
MAX_AUTO_PAY_SATS): a real `guard run` over stdio, spoken to in raw JSON-RPC lines, in front of the fake
402-mcp (tests/upstreams/fake_402mcp.py), whose FAKE_STATE `payments` records what left its wallet.

- Before paying an unknown price guard learns it (an `l402-fetch-preview` of its own) and refuses a call
  over `max_price` or the budget before anything is paid.
- When the price changes after the quote, the ledger counts exactly what left (never the reservation),
  flags the call, alerts once and lets the budget show it is over its limit; every further reservation
  against that budget is refused.
- A 402-mcp guard starts itself gets its own cap, MAX_AUTO_PAY_SATS, no higher than the policy's: it
  then refuses by itself a payment above it.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from ledgers import Amount, Budget, Ledger
from tests.conftest import GUARD, ROOT, WAIT_S
from tests.operators.webhook import Receiver
from tests.rawguard import RawGuard

JSON = dict[str, Any]
FAKE = ROOT / "tests" / "upstreams" / "fake_402mcp.py"

POLICY = """\
version: 1
default: deny
budgets:
  - name: per-session
    limit: 30 sat
    scope: session
tools:
  l402-config: {}
  l402-fetch-preview: {}
  l402-fetch:
    pays: true
    max_price: 10 sat
"""
# The same l402-fetch rule on the 402-mcp preset, with its other paying tools denied: its cap is then 10.
PRESET_POLICY = """\
version: 1
preset: 402-mcp
budgets:
  - name: per-session
    limit: 30 sat
    scope: session
tools:
  l402-config: {}
  l402-fetch-preview: {}
  l402-fetch:
    pays: true
    max_price: 10 sat
  l402-pay: {action: deny}
  l402-buy-credits: {action: deny}
  l402-redeem-cashu: {action: deny}
"""


def site(n: int) -> str:
    """A paid resource on an origin of its own (402-mcp reuses a credential per origin for free)."""
    return f"https://shop{n}.example/item"


class Guard(RawGuard):
    """A guard in `tmp` in front of the fake 402-mcp (or `command`, a launcher of it), with its state file."""

    def __init__(
        self,
        tmp: Path,
        policy: str,
        state: JSON,
        *,
        command: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        policy_file = tmp / "policy.yaml"
        policy_file.write_text(policy)
        self.state_file = tmp / "fake-402mcp-state.json"
        self.state_file.write_text(json.dumps(state))
        upstream = command or [sys.executable, str(FAKE)]
        super().__init__(tmp, policy_file, upstream=upstream, env={"FAKE_STATE": str(self.state_file), **(env or {})})

    def state(self) -> JSON:
        return json.loads(self.state_file.read_text())  # type: ignore[no-any-return]

    def edit_state(self, **changes: Any) -> None:
        """Change the fake's state between calls (atomically, as the fake writes it)."""
        edited = self.state_file.with_suffix(".edit")
        edited.write_text(json.dumps({**self.state(), **changes}))
        os.replace(edited, self.state_file)

    def fetch(self, url: str, tool: str = "l402-fetch") -> JSON:
        return self.call(tool, {"url": url, "autoPay": True})


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Guard]]:
    started: list[Guard] = []

    def begin(policy: str, state: JSON, **options: Any) -> Guard:
        guard = Guard(tmp_path, policy, state, **options)
        started.append(guard)
        return guard

    yield begin
    for guard in started:
        guard.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


def body(result: JSON) -> Any:
    return json.loads(result["content"][0]["text"])


def denial(result: JSON) -> JSON:
    assert result["isError"] is True and result["content"][0]["text"].startswith("Denied by guard: "), result
    return result["structuredContent"]  # type: ignore[no-any-return]


def cli(*args: str) -> Any:
    done = subprocess.run([*GUARD, *args], capture_output=True, text=True, timeout=WAIT_S, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    return done.stdout


def wait_for_event(receiver: Receiver, name: str) -> JSON:
    """The first webhook event called `name` (others, such as budget thresholds, are passed over)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        event = receiver.next()
        if event["event"] == name:
            return event
    raise AssertionError(f"no {name} event within {WAIT_S}s")


@pytest.mark.parametrize(
    ("tool", "env"), [("l402-fetch", {}), ("l402_fetch", {"FAKE_SNAKE_CASE": "1"})], ids=["v4", "before v3.14"]
)
def test_ten_fetches_of_a_50_sat_resource_under_a_10_sat_max_price_are_refused_before_anything_is_paid(
    start: Callable[..., Guard], tool: str, env: dict[str, str]
) -> None:
    urls = [site(n) for n in range(10)]
    guard = start(POLICY.replace("30 sat", "1000 sat"), {"prices": dict.fromkeys(urls, 50)}, env=env)
    results = [guard.fetch(url, tool) for url in urls]
    guard.stop()

    for result in results:
        refused = denial(result)
        assert refused["rule"] == f"tools.{tool}.max_price"
        assert refused["reason"] == "the price 50 sat is over the per-call cap of 10 sat"
    state = guard.state()
    assert state["payments"] == [] and state["attempts"] == []  # nothing left, nothing was even tried
    assert len(state["challenges"]) == 10  # each price was learnt from a preview guard made itself
    with Ledger.open(guard.ledger, recover=False) as ledger:
        assert ledger.usage(Budget("per-session", Amount(1000, "sat"), "session:s1")).spent == 0
        assert ledger.open_holds() == []
        found = ledger.quote(site(0))
    assert found is not None and found.amount == Amount(50, "sat")


def test_a_rate_limited_fetch_is_refused_before_guard_asks_the_upstream_for_its_price(
    start: Callable[..., Guard],
) -> None:
    # Each fetch names a URL guard has no quote for: without the rate check first, every refused call would
    # still make guard preview its price upstream (and the paid server behind it).
    urls = [site(n) for n in range(6)]
    policy = POLICY.replace("30 sat", "1000 sat").replace(
        "max_price: 10 sat", "max_price: 10 sat\n    rate_limit: 2/minute"
    )
    guard = start(policy, {"prices": dict.fromkeys(urls, 5)})
    results = [guard.fetch(url) for url in urls]
    guard.stop()

    assert [r["isError"] for r in results] == [False, False, True, True, True, True]
    assert {denial(r)["rule"] for r in results[2:]} == {"tools.l402-fetch.rate_limit"}
    state = guard.state()
    assert len(state["challenges"]) == 2  # two previews, for the two admitted calls only
    assert sum(p["amount"] for p in state["payments"]) == 10


def test_a_price_raised_after_the_quote_is_counted_whole_flagged_alerted_and_blocks_the_budget(
    start: Callable[..., Guard], receiver: Receiver
) -> None:
    alerts = f"alerts:\n  webhook: '{receiver.url}'\n"
    guard = start(POLICY + alerts, {"prices": {site(1): 10, site(2): 5}})
    assert body(guard.call("l402-fetch-preview", {"url": site(1)}))["costSats"] == 10  # the quote: 10 sat
    guard.edit_state(prices={site(1): 50, site(2): 5})  # the upstream's price changes before the fetch
    paid = guard.fetch(site(1))
    event = wait_for_event(receiver, "payment.over_reservation")
    after = guard.fetch(site(2))  # the budget is over its limit: refused, whatever the price
    guard.stop()

    assert body(paid)["satsPaid"] == 50
    payments = guard.state()["payments"]
    assert [(p["url"], p["amount"]) for p in payments] == [(site(1), 50)]
    refused = denial(after)
    assert (refused["rule"], refused["remaining"]) == ("budgets.per-session", 0)
    with Ledger.open(guard.ledger, recover=False) as ledger:
        usage = ledger.usage(Budget("per-session", Amount(30, "sat"), "session:s1"))
        [allowed] = [e.call for e in ledger.calls(last=100) if e.call.hold_id is not None]
        hold = ledger.hold(allowed.hold_id or 0)
    # The ledger counts exactly what left the wallet, not the 10 sat it reserved.
    assert usage.spent == sum(p["amount"] for p in payments) == 50
    assert (hold.amount, hold.settled, hold.over_reservation, hold.priced_by) == (
        Amount(10, "sat"),
        Amount(50, "sat"),
        Amount(40, "sat"),
        "quote",
    )
    assert (allowed.price, allowed.spent) == (Amount(10, "sat"), Amount(50, "sat"))
    assert allowed.reason == "flagged: over reservation: the upstream paid 50 sat, 40 sat more than the 10 sat reserved"
    assert {k: event[k] for k in ("hold_id", "reserved", "paid", "excess", "unit", "priced_by", "tool")} == {
        "hold_id": hold.id,
        "reserved": 10,
        "paid": 50,
        "excess": 40,
        "unit": "sat",
        "priced_by": "quote",
        "tool": "l402-fetch",
    }
    assert (event["session"], event["resource"]) == ("s1", site(1))
    # Sent once: the alert's key is claimed in the ledger.
    with Ledger.open(guard.ledger, recover=False) as ledger, ledger._store.write() as conn:
        claims = conn.exec_driver_sql("SELECT key, state FROM ledger_alerts WHERE kind = 'payment.over_reservation'")
        assert claims.all() == [(f"payment.over_reservation:{hold.id}", "sent")]
    # Operators see it: the budget over its limit, the payment in the report.
    view = json.loads(cli("budget", "show", "--json", "--ledger", str(guard.ledger)))
    [budget] = view["budgets"]
    assert (budget["limit"], budget["spent"], budget["remaining"], budget["percent_used"]) == (30, 50, 0, 166)
    report = json.loads(cli("report", "--format", "json", "--ledger", str(guard.ledger)))
    [over] = report["over_reservations"]
    assert (over["hold"], over["reserved"], over["paid"], over["excess"]) == (hold.id, 10, 50, 40)


def launcher(directory: Path) -> list[str]:
    """An executable called `402-mcp` that runs the fake: a command guard recognises by its name."""
    directory.mkdir()
    script = directory / "402-mcp"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE}" "$@"\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return [str(script)]


@pytest.mark.parametrize(
    ("policy", "env", "by_name", "cap"),
    [
        (PRESET_POLICY, {}, False, 10),
        (PRESET_POLICY, {"MAX_AUTO_PAY_SATS": "5"}, False, 5),  # the environment's lower cap stays
        (PRESET_POLICY, {"MAX_AUTO_PAY_SATS": "5000"}, False, 10),
        ("version: 1\npreset: 402-mcp\n", {}, False, 1000),  # the preset's tools all admit 1000 sat a call
        (POLICY.replace("max_price: 10 sat", "max_price: 25 sat"), {}, True, 25),  # no preset: the command's name
        (POLICY, {}, False, None),  # neither: guard leaves the server alone (the fake's default, 1000)
    ],
    ids=["preset", "lower environment", "higher environment", "preset alone", "command name", "not 402-mcp"],
)
def test_a_402_mcp_guard_starts_gets_max_auto_pay_sats_no_higher_than_its_policy(
    start: Callable[..., Guard], tmp_path: Path, policy: str, env: dict[str, str], by_name: bool, cap: int | None
) -> None:
    command = launcher(tmp_path / "bin") if by_name else None
    guard = start(policy, {}, command=command, env=env)
    config = body(guard.call("l402-config", {}))
    guard.stop()

    assert config["maxAutoPaySats"] == (cap if cap is not None else 1000)
    logged = [line for line in guard.stderr if "MAX_AUTO_PAY_SATS=" in line]
    assert len(logged) == (cap is not None)
    if cap is not None:
        assert f"MAX_AUTO_PAY_SATS={cap}" in logged[0]


def test_with_its_cap_402_mcp_itself_refuses_a_price_raised_above_max_price_after_the_quote(
    start: Callable[..., Guard],
) -> None:
    guard = start(PRESET_POLICY, {"prices": {site(1): 10}})
    guard.call("l402-fetch-preview", {"url": site(1)})
    guard.edit_state(prices={site(1): 50})
    refused = guard.fetch(site(1))
    guard.stop()

    answer = body(refused)
    assert (answer["status"], answer["message"]) == (
        402,
        "Payment of 50 sats required. Exceeds MAX_AUTO_PAY_SATS (10).",
    )
    assert guard.state()["payments"] == []
    with Ledger.open(guard.ledger, recover=False) as ledger:
        [event] = [e.call for e in ledger.calls(last=100) if e.call.hold_id is not None]
        assert ledger.hold(event.hold_id or 0).phase == "voided"
        assert ledger.usage(Budget("per-session", Amount(30, "sat"), "session:s1")).spent == 0


def test_quotes_are_keyed_without_credentials_query_or_fragment_and_nothing_secret_reaches_the_ledger(
    start: Callable[..., Guard],
) -> None:
    secret_url = "https://agent:hunter2@shop7.example/item?api_key=sk-live-4242#token=frag-9"
    guard = start(POLICY, {"prices": {secret_url: 8}})
    assert body(guard.call("l402-fetch-preview", {"url": secret_url}))["costSats"] == 8
    paid = guard.fetch(secret_url)  # priced by that quote, found under the URL's public form
    guard.stop()

    assert body(paid)["satsPaid"] == 8
    with Ledger.open(guard.ledger, recover=False) as ledger:
        [event] = [e.call for e in ledger.calls(last=100) if e.call.hold_id is not None]
        assert ledger.hold(event.hold_id or 0).priced_by == "quote"
        quote = ledger.quote("https://shop7.example/item")
    assert quote is not None and quote.amount == Amount(8, "sat")
    with closing(sqlite3.connect(guard.ledger)) as conn:
        dump = "\n".join(conn.iterdump())
    for secret in ("hunter2", "sk-live-4242", "frag-9", "api_key"):
        assert secret not in dump
