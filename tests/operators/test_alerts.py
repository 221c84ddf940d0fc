"""Threshold alerts: POSTed once per budget, threshold and window period (and once per hold in doubt, and
once per approval waiting for a human) to a real HTTP receiver on 127.0.0.1, retried with backoff, never in
a tool call's way, once among guards sharing a ledger (SQLite file and PostgreSQL), signed the Standard
Webhooks way and verified by the reference library (`standardwebhooks`), not by guard's code."""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from guard.core import Session, ToolCall
from guard.errors import ConfigError
from guard.gate.gate import PolicyGate
from guard.operators.alerts import OVER_RESERVATION_LOOKBACK_S, Alerter
from guard.policy.files import parse
from guard.policy.source import PolicySource
from ledgers import Amount, Budget, Ledger, Window
from tests.conftest import GUARD, ROOT, WAIT_S, FakeClock, free_port
from tests.ledgers.helpers import query
from tests.operators.webhook import SECRET_PATH, Received, Receiver
from tests.rawguard import RawGuard

JSON = dict[str, Any]
SAT = "sat"
DAILY = Budget("daily", Amount(100, SAT), "global", Window.calendar("day"))


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver()
    yield running
    running.close()


@pytest.fixture
def ledger(ledger_url: str, clock: FakeClock) -> Iterator[Ledger]:
    opened = Ledger.open(ledger_url, clock=clock)
    yield opened
    opened.close()


# A Standard Webhooks secret (`whsec_` + base64 of 32 bytes), given to guard in this environment variable.
SECRET_ENV = "GUARD_TEST_WEBHOOK_SECRET"
SECRET = "whsec_" + base64.b64encode(b"planted webhook signing key, 32B").decode()
OTHER_SECRET = "whsec_" + base64.b64encode(b"another webhook signing key, 32B").decode()
SIGNED = f"  secret_env: {SECRET_ENV}\n"


def policy_text(
    webhook: str | None,
    *,
    window: str = "day",
    scope: str = "global",
    thresholds: str = "[0.5, 0.8, 1.0]",
    alerts_extra: str = "",
) -> str:
    alerts = f"alerts:\n  webhook: '{webhook}'\n  thresholds: {thresholds}\n{alerts_extra}" if webhook else ""
    return f"""\
version: 1
budgets:
  - name: daily
    limit: 100 sat
    scope: {scope}
    window: {window}
{alerts}tools:
  buy:
    pays: true
    price_from: args.amount
    price_unit: sat
  browse:
    action: approve
"""


def source_for(webhook: str | None, **options: Any) -> PolicySource:
    policy, _ = parse(policy_text(webhook, **options))
    return PolicySource(policy)


def alerter(source: PolicySource, ledger: Ledger, clock: FakeClock, **options: Any) -> Alerter:
    options.setdefault("retry_delays_s", (0, 0, 0, 0))
    return Alerter(source, ledger, "shop", clock=clock, **options)


def spend(ledger: Ledger, sats: int, budget: Budget = DAILY) -> int:
    hold = ledger.reserve([budget], Amount(sats, SAT), session="s1", tool="buy")
    ledger.settle(hold, Amount(sats, SAT))
    return hold


def in_doubt(ledger: Ledger, sats: int) -> int:
    hold = ledger.reserve([DAILY], Amount(sats, SAT), session="s1", tool="buy", resource="https://shop.example/item")
    ledger.mark_forwarded(hold)
    ledger.mark_in_doubt(hold)
    return hold


def alert_rows(url: str) -> list[tuple[Any, ...]]:
    """(key, kind, state, attempts) of every alert claimed in the ledger, read behind its back."""
    return [tuple(row) for row in query(url, "SELECT key, kind, state, attempts FROM ledger_alerts ORDER BY key")]


def thresholds(events: list[JSON]) -> list[str]:
    return [event["threshold"] for event in events]


def verified(received: Received, secret: str = SECRET) -> JSON:
    """The event, once the Standard Webhooks reference library has verified its signature (and that its
    timestamp is within its five minutes of now) over the exact bytes received."""
    event: JSON = Webhook(secret).verify(received.body, received.headers)
    return event


def ask_approval(ledger: Ledger, session: str = "s1", digest: str = "d" * 64) -> str:
    """What the gate does for a call to a tool with `action: approve`: a pending approval; its id."""
    return ledger.request_approval(f"session:{session}", "browse", digest, identity="alice", expire_after_s=3600).id


# once per budget, threshold and period


@pytest.mark.anyio
async def test_each_threshold_alerts_once_per_day_and_again_the_next_day(
    ledger: Ledger, receiver: Receiver, clock: FakeClock
) -> None:
    alerts = alerter(source_for(receiver.url), ledger, clock)

    spend(ledger, 40)
    assert await alerts.sweep() == []
    spend(ledger, 10)
    assert len(await alerts.sweep()) == 1
    [half] = receiver.taken()
    assert half == {
        "event": "budget.threshold",
        "text": "guard: budget daily (global) passed 50% of its limit: 50 sat of 100 sat used",
        "budget": "daily",
        "scope": "global",
        "threshold": "0.5",
        "used": 50,
        "limit": 100,
        "remaining": 50,
        "spent": 50,
        "held": 0,
        "in_doubt": 0,
        "unit": "sat",
        "window": "day",
        "timezone": "UTC",
        "period_start": "2026-11-21T00:00:00+00:00",
        "resets_at": "2026-11-22T00:00:00+00:00",
        "at": "2026-11-21T12:00:00+00:00",
        "server": "shop",
    }

    spend(ledger, 10)  # 60%: still past 50% only, which was said
    assert await alerts.sweep() == []
    spend(ledger, 25)  # 85%
    await alerts.sweep()
    spend(ledger, 15)  # 100%
    await alerts.sweep()
    await alerts.sweep()
    assert thresholds(receiver.taken()) == ["0.8", "1"]

    clock.advance(12 * 3600 + 1)  # past midnight: a new day, a new period
    assert await alerts.sweep() == []  # nothing spent yet today
    spend(ledger, 90)  # 50% and 80% at once: one event each, lowest first
    await alerts.sweep()
    events = receiver.taken()
    assert thresholds(events) == ["0.5", "0.8"]
    assert {e["period_start"] for e in events} == {"2026-11-22T00:00:00+00:00"}
    assert await alerts.sweep() == []
    assert receiver.taken() == []


@pytest.mark.anyio
async def test_thresholds_passed_at_once_are_sent_in_order_beside_other_alerts(
    ledger: Ledger, receiver: Receiver, clock: FakeClock
) -> None:
    every_tenth = "[" + ", ".join(f"0.{n}" for n in range(1, 10)) + ", 1.0]"
    alerts = alerter(source_for(receiver.url, thresholds=every_tenth), ledger, clock)
    spend(ledger, 95)
    in_doubt(ledger, 5)  # ten thresholds at once, and a hold in doubt
    receiver.hang = True
    async with anyio.create_task_group() as tg:
        tg.start_soon(alerts.sweep)
        # While the first threshold hangs, the next waits for it; the in-doubt alert does not.
        first_two = [await receiver.next_async() for _ in range(2)]
        assert sorted((e["event"], e.get("threshold")) for e in first_two) == [
            ("budget.threshold", "0.1"),
            ("hold.in_doubt", None),
        ]
        receiver.release.set()
        rest = [await receiver.next_async() for _ in range(9)]
    assert thresholds(rest) == ["0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "1"]
    assert receiver.taken() == []


@pytest.mark.anyio
async def test_a_sliding_window_alerts_at_most_once_per_bucket_of_its_length(
    ledger: Ledger, receiver: Receiver, clock: FakeClock
) -> None:
    hourly = Budget("daily", Amount(100, SAT), "global", Window.sliding("1h"))
    alerts = alerter(source_for(receiver.url, window="1h"), ledger, clock)
    spend(ledger, 60, hourly)
    await alerts.sweep()
    clock.advance(30 * 60)  # 12:30: the same hour-long bucket
    spend(ledger, 5, hourly)
    await alerts.sweep()
    assert thresholds(receiver.taken()) == ["0.5"]

    clock.advance(3600)  # 13:30: what was spent by 12:30 left the window; a new bucket
    spend(ledger, 50, hourly)
    await alerts.sweep()
    [again] = receiver.taken()
    assert (again["threshold"], again["used"], again["window"]) == ("0.5", 50, "1h")
    assert (again["period_start"], again["resets_at"]) == ("2026-11-21T12:30:00.000001+00:00", None)


@pytest.mark.anyio
async def test_a_session_budget_alerts_once_for_the_whole_session(
    ledger: Ledger, receiver: Receiver, clock: FakeClock
) -> None:
    per_session = Budget("daily", Amount(100, SAT), "session:s1", Window.session())
    alerts = alerter(source_for(receiver.url, window="session", scope="session"), ledger, clock)
    spend(ledger, 50, per_session)
    await alerts.sweep()
    clock.advance(12 * 3600 + 1)  # a new day changes nothing for a session
    spend(ledger, 10, per_session)
    await alerts.sweep()
    [event] = receiver.taken()
    assert (event["scope"], event["window"], event["period_start"]) == ("session:s1", "session", None)


@pytest.mark.anyio
async def test_alerts_follow_the_policy_as_reloaded(
    tmp_path: Path, ledger: Ledger, receiver: Receiver, clock: FakeClock
) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(policy_text(None))
    source = PolicySource.from_file(path)
    alerts = alerter(source, ledger, clock)
    spend(ledger, 60)
    spend(ledger, 100, Budget("elsewhere", Amount(100, SAT)))  # a budget this policy does not name
    assert await alerts.sweep() == []  # no `alerts:` yet

    path.write_text(policy_text(receiver.url, thresholds="[0.25]"))
    assert await source.reload()
    await alerts.sweep()
    assert [(e["budget"], e["threshold"]) for e in receiver.taken()] == [("daily", "0.25")]

    path.write_text(policy_text(None))
    assert await source.reload()
    spend(ledger, 40)
    assert await alerts.sweep() == []
    assert receiver.taken() == []


# sending: retries, refusals, secrets


@pytest.mark.anyio
async def test_server_errors_are_retried_until_delivered_once(
    ledger_url: str, ledger: Ledger, receiver: Receiver, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # httpx logs each request's URL at this level
    receiver.statuses = [500, 500]
    spend(ledger, 50)
    await alerter(source_for(receiver.url), ledger, clock).sweep()
    events = receiver.taken()
    assert len(events) == 3 and all(e == events[0] for e in events)
    assert alert_rows(ledger_url) == [
        ("budget.threshold:budget:daily@global:0.5:2026-11-21T00:00:00+00:00", "budget.threshold", "sent", 3)
    ]
    assert f"{receiver.origin}: HTTP 500; retrying" in caplog.text
    assert "s3cr3t" not in caplog.text and "q-secret" not in caplog.text


@pytest.mark.anyio
async def test_too_many_requests_is_retried(ledger: Ledger, receiver: Receiver, clock: FakeClock) -> None:
    receiver.statuses = [429]
    spend(ledger, 50)
    await alerter(source_for(receiver.url), ledger, clock).sweep()
    assert len(receiver.taken()) == 2


@pytest.mark.anyio
async def test_a_refusal_is_not_retried_and_is_logged_by_origin_only(
    ledger_url: str, ledger: Ledger, receiver: Receiver, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    receiver.statuses = [400]
    spend(ledger, 50)
    await alerter(source_for(receiver.url), ledger, clock).sweep()
    assert len(receiver.taken()) == 1
    assert [row[2:] for row in alert_rows(ledger_url)] == [("failed", 1)]
    assert f"alert budget.threshold to {receiver.origin} refused (HTTP 400); not retried" in caplog.text
    assert "s3cr3t" not in caplog.text and "q-secret" not in caplog.text


@pytest.mark.anyio
async def test_an_unreachable_webhook_is_given_up_after_every_attempt(
    ledger_url: str, ledger: Ledger, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    nobody = f"http://127.0.0.1:{free_port()}{SECRET_PATH}"
    spend(ledger, 50)
    await alerter(source_for(nobody), ledger, clock, retry_delays_s=(0, 0)).sweep()
    assert [row[2:] for row in alert_rows(ledger_url)] == [("failed", 3)]
    assert "not delivered after 3 attempts (ConnectError)" in caplog.text
    assert "s3cr3t" not in caplog.text


# in doubt


@pytest.mark.anyio
async def test_a_hold_in_doubt_alerts_once(ledger: Ledger, receiver: Receiver, clock: FakeClock) -> None:
    alerts = alerter(source_for(receiver.url), ledger, clock)
    hold = in_doubt(ledger, 30)
    clock.advance(5)
    await alerts.sweep()
    await alerts.sweep()
    [event] = receiver.taken()
    assert event == {
        "event": "hold.in_doubt",
        "text": "guard: a payment of 30 sat by buy is in doubt (hold 1): it may have been paid;"
        " resolve it with `guard holds resolve`",
        "hold_id": hold,
        "amount": 30,
        "unit": "sat",
        "tool": "buy",
        "session": "s1",
        "identity": None,
        "server": None,
        "resource": "https://shop.example/item",
        "since": "2026-11-21T12:00:00+00:00",
        "at": "2026-11-21T12:00:05+00:00",
    }


@pytest.mark.anyio
async def test_a_payment_above_its_reservation_alerts_once_while_it_is_recent(
    ledger: Ledger, receiver: Receiver, clock: FakeClock
) -> None:
    big = Budget("daily", Amount(10_000, SAT), "global", Window.calendar("day"))  # no threshold passed
    alerts = alerter(source_for(receiver.url), ledger, clock)
    hold = ledger.reserve([big], Amount(10, SAT), session="s1", tool="buy", priced_by="quote")
    ledger.settle(hold, Amount(50, SAT))
    clock.advance(5)
    await alerts.sweep()
    await alerts.sweep()
    [event] = receiver.taken()
    assert event == {
        "event": "payment.over_reservation",
        "text": "guard: a payment by buy of 50 sat was 40 sat more than the 10 sat reserved for it (hold 1);"
        " the ledger counts all of it",
        "hold_id": hold,
        "reserved": 10,
        "paid": 50,
        "excess": 40,
        "unit": "sat",
        "priced_by": "quote",
        "tool": "buy",
        "session": "s1",
        "identity": None,
        "server": None,
        "resource": None,
        "since": "2026-11-21T12:00:00+00:00",
        "at": "2026-11-21T12:00:05+00:00",
    }
    # A day later it is no longer looked for: another one made now is.
    clock.advance(OVER_RESERVATION_LOOKBACK_S)
    later = ledger.reserve([big], Amount(10, SAT), session="s1", tool="buy")
    ledger.settle(later, Amount(11, SAT))
    await alerts.sweep()
    assert [e["hold_id"] for e in receiver.taken()] == [later]


@pytest.mark.anyio
async def test_holds_in_doubt_are_not_alerted_when_the_policy_says_so(
    ledger: Ledger, receiver: Receiver, clock: FakeClock
) -> None:
    policy, _ = parse(policy_text(receiver.url).replace("alerts:\n", "alerts:\n  in_doubt: false\n"))
    in_doubt(ledger, 30)
    assert await alerter(PolicySource(policy), ledger, clock).sweep() == []
    assert receiver.taken() == []


# once among guards


@pytest.mark.anyio
async def test_guards_sharing_a_ledger_send_each_alert_once_and_a_restart_sends_none(
    ledger_url: str, ledger: Ledger, receiver: Receiver, clock: FakeClock
) -> None:
    other = Ledger.open(ledger_url, clock=clock)  # another guard's connection to the same ledger
    try:
        spend(ledger, 70)
        in_doubt(ledger, 30)
        source = source_for(receiver.url)
        first, second = alerter(source, ledger, clock), alerter(source, other, clock)
        async with anyio.create_task_group() as tg:
            for alerts in (first, second, first, second):
                tg.start_soon(alerts.sweep)
        events = receiver.taken()
        assert sorted(str(e.get("threshold", e["event"])) for e in events) == ["0.5", "0.8", "1", "hold.in_doubt"]
        assert {row[2:] for row in alert_rows(ledger_url)} == {("sent", 1)}
    finally:
        other.close()

    restarted = Ledger.open(ledger_url, clock=clock)
    try:
        assert await alerter(source_for(receiver.url), restarted, clock).sweep() == []
    finally:
        restarted.close()
    assert receiver.taken() == []


# never in a tool call's way


@pytest.mark.anyio
async def test_a_hanging_webhook_delays_no_tool_call_and_no_other_alert(
    ledger: Ledger, receiver: Receiver, clock: FakeClock
) -> None:
    receiver.hang = True
    source = source_for(receiver.url)
    alerts = alerter(source, ledger, clock, sweep_every_s=3600, sweep_gap_s=0)  # only calls wake it here
    gate = PolicyGate(source, ledger, "shop", watchers=[alerts])

    async def forward() -> JSON:
        return {"content": [{"type": "text", "text": "bought"}]}

    async def buy(amount: int) -> JSON:
        call = ToolCall(Session("s1"), amount, "buy", {"item": "tea", "amount": amount}, None)
        return await gate.call_tool(call, forward)

    async with anyio.create_task_group() as tg:
        tg.start_soon(alerts.run)
        assert not (await buy(60)).get("isError")
        assert (await receiver.next_async())["threshold"] == "0.5"  # ...and the receiver holds it

        # While that alert hangs: the next paying call answers, and its alert is sent beside it.
        assert not (await buy(25)).get("isError")
        assert (await receiver.next_async())["threshold"] == "0.8"
        assert not receiver.release.is_set()
        receiver.release.set()
        tg.cancel_scope.cancel()


# end to end


SHOP = [sys.executable, str(ROOT / "tests/upstreams/shop.py")]


def test_guard_run_posts_an_alert_when_paying_passes_half_a_budget(tmp_path: Path, receiver: Receiver) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text(receiver.url, scope="session", window="session"))
    guard = RawGuard(tmp_path, policy, upstream=SHOP, env={"SHOP_RECORD": str(tmp_path / "shop.jsonl")})
    try:
        assert not guard.call("buy", item="tea", amount=40).get("isError")
        assert not guard.call("buy", item="jam", amount=20).get("isError")
        event = receiver.next()
    finally:
        guard.stop()
    assert {k: event[k] for k in ("event", "budget", "scope", "threshold", "used", "limit", "unit", "server")} == {
        "event": "budget.threshold",
        "budget": "daily",
        "scope": "session:s1",
        "threshold": "0.5",
        "used": 60,
        "limit": 100,
        "unit": "sat",
        "server": "shop",
    }
    assert receiver.taken() == []
    assert "s3cr3t" not in "\n".join(guard.stderr)


# signed, the Standard Webhooks way


@pytest.mark.anyio
async def test_a_signed_alert_is_verified_by_the_standard_webhooks_library(
    ledger: Ledger, receiver: Receiver, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    spend(ledger, 50)
    await alerter(source_for(receiver.url, alerts_extra=SIGNED), ledger, clock).sweep()
    [received] = receiver.taken_requests()
    assert verified(received)["threshold"] == "0.5"
    assert received.headers["webhook-id"].startswith("msg_")
    assert abs(int(received.headers["webhook-timestamp"]) - time.time()) < WAIT_S
    assert received.headers["webhook-signature"].startswith("v1,")
    assert received.headers["content-type"] == "application/json"


@pytest.mark.anyio
async def test_a_wrong_secret_or_a_changed_body_fails_verification(
    ledger: Ledger, receiver: Receiver, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    spend(ledger, 50)
    await alerter(source_for(receiver.url, alerts_extra=SIGNED), ledger, clock).sweep()
    [received] = receiver.taken_requests()
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        verified(received, OTHER_SECRET)
    changed = Received(received.path, received.headers, received.body.replace(b'"used":50', b'"used":5'))
    assert changed.body != received.body
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        verified(changed)
    other_id = Received(received.path, {**received.headers, "webhook-id": "msg_other"}, received.body)
    with pytest.raises(WebhookVerificationError, match="No matching signature"):
        verified(other_id)


@pytest.mark.anyio
async def test_retries_of_an_event_keep_its_webhook_id_and_each_attempt_verifies(
    ledger: Ledger, receiver: Receiver, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    receiver.statuses = [500, 503]
    spend(ledger, 50)
    await alerter(source_for(receiver.url, alerts_extra=SIGNED), ledger, clock).sweep()
    attempts = receiver.taken_requests()
    assert len(attempts) == 3
    assert len({attempt.headers["webhook-id"] for attempt in attempts}) == 1
    assert all(verified(attempt)["threshold"] == "0.5" for attempt in attempts)


@pytest.mark.anyio
async def test_each_event_has_a_webhook_id_of_its_own(
    ledger: Ledger, receiver: Receiver, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    spend(ledger, 100)
    await alerter(source_for(receiver.url, alerts_extra=SIGNED), ledger, clock).sweep()
    sent = receiver.taken_requests()
    assert [verified(r)["threshold"] for r in sent] == ["0.5", "0.8", "1"]
    assert len({r.headers["webhook-id"] for r in sent}) == 3


@pytest.mark.anyio
async def test_without_secret_env_alerts_carry_an_id_and_timestamp_but_no_signature(
    ledger: Ledger, receiver: Receiver, clock: FakeClock
) -> None:
    spend(ledger, 50)
    await alerter(source_for(receiver.url), ledger, clock).sweep()
    [received] = receiver.taken_requests()
    assert received.headers["webhook-id"].startswith("msg_") and received.headers["webhook-timestamp"].isdigit()
    assert "webhook-signature" not in received.headers


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (None, "which is not set"),
        ("", "which is not set"),
        ("c2VjcmV0LXdpdGhvdXQtcHJlZml4LXRoaXJ0eS10d28h", "does not start with whsec_"),
        ("whsec_Zq7!*secret-but-bad$", "is not base64"),
        ("whsec_" + base64.b64encode(b"sixteen-byte-key").decode(), "is 16 bytes: use 24 to 64 random bytes"),
    ],
)
def test_an_unusable_signing_secret_stops_the_alerter_at_start_without_quoting_it(
    ledger: Ledger, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, value: str | None, says: str
) -> None:
    if value is None:
        monkeypatch.delenv(SECRET_ENV, raising=False)
    else:
        monkeypatch.setenv(SECRET_ENV, value)
    with pytest.raises(ConfigError, match=f"alerts.secret_env names {SECRET_ENV}, .*{says}") as raised:
        alerter(source_for("http://127.0.0.1:9/hook", alerts_extra=SIGNED), ledger, clock)
    assert not value or value.removeprefix("whsec_")[:8] not in str(raised.value)


@pytest.mark.anyio
async def test_a_reload_naming_an_unset_secret_sends_nothing_unsigned_until_it_is_set(
    ledger: Ledger,
    receiver: Receiver,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.delenv(SECRET_ENV, raising=False)
    source = source_for(receiver.url)
    alerts = alerter(source, ledger, clock)
    source.policy = source_for(receiver.url, alerts_extra=SIGNED).policy  # as a reload would
    spend(ledger, 50)
    assert await alerts.sweep() == []
    assert await alerts.sweep() == []
    assert receiver.taken() == []
    assert caplog.text.count("alerts not sent until the policy or the environment is fixed: alerts.secret_env") == 1

    monkeypatch.setenv(SECRET_ENV, SECRET)
    assert len(await alerts.sweep()) == 1
    assert verified(receiver.next_request())["threshold"] == "0.5"


# approval.requested


@pytest.mark.anyio
async def test_a_pending_approval_is_announced_once_with_the_command_that_approves_it(
    ledger: Ledger, receiver: Receiver, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    alerts = alerter(source_for(receiver.url, alerts_extra=SIGNED), ledger, clock)
    approval = ask_approval(ledger, digest="9f86d081884c7d65" + "0" * 48)
    clock.advance(1)
    await alerts.sweep()
    await alerts.sweep()
    [received] = receiver.taken_requests()
    event = verified(received)
    assert event == {
        "event": "approval.requested",
        "text": (
            f"guard: a call to browse (session s1, identity alice) waits for your approval:"
            f" run `guard approvals approve {approval}` before 2026-11-21T13:00:00+00:00"
        ),
        "approval_id": approval,
        "tool": "browse",
        "session": "s1",
        "identity": "alice",
        "args_digest": "9f86d081884c7d65",
        "command": f"guard approvals approve {approval}",
        "deny_command": f"guard approvals deny {approval}",
        "since": "2026-11-21T12:00:00+00:00",
        "expires": "2026-11-21T13:00:00+00:00",
        "at": "2026-11-21T12:00:01+00:00",
    }


@pytest.mark.anyio
async def test_decided_and_expired_approvals_are_not_announced(
    ledger: Ledger, receiver: Receiver, clock: FakeClock
) -> None:
    ledger.decide_approval(ask_approval(ledger, "s1"), approve=True)
    ledger.decide_approval(ask_approval(ledger, "s2"), approve=False)
    ask_approval(ledger, "s3")
    clock.advance(3600)
    assert await alerter(source_for(receiver.url), ledger, clock).sweep() == []
    assert receiver.taken() == []


@pytest.mark.anyio
async def test_approvals_are_not_announced_when_the_policy_says_so(
    ledger: Ledger, receiver: Receiver, clock: FakeClock
) -> None:
    ask_approval(ledger)
    assert await alerter(source_for(receiver.url, alerts_extra="  approvals: false\n"), ledger, clock).sweep() == []
    assert receiver.taken() == []


@pytest.mark.anyio
async def test_two_guards_on_one_ledger_announce_an_approval_once(
    ledger_url: str, ledger: Ledger, receiver: Receiver, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    other = Ledger.open(ledger_url, clock=clock)  # another guard's connection to the same ledger
    try:
        approval = ask_approval(ledger)
        source = source_for(receiver.url, alerts_extra=SIGNED)
        first, second = alerter(source, ledger, clock), alerter(source, other, clock)
        async with anyio.create_task_group() as tg:
            for alerts in (first, second, first, second):
                tg.start_soon(alerts.sweep)
    finally:
        other.close()
    assert [verified(r)["approval_id"] for r in receiver.taken_requests()] == [approval]
    assert alert_rows(ledger_url) == [(f"approval.requested:{approval}", "approval.requested", "sent", 1)]


@pytest.mark.anyio
async def test_a_call_waiting_for_approval_wakes_the_sweeper(
    ledger: Ledger, receiver: Receiver, clock: FakeClock
) -> None:
    source = source_for(receiver.url)
    alerts = alerter(source, ledger, clock, sweep_every_s=3600, sweep_gap_s=0)  # only calls wake it here
    gate = PolicyGate(source, ledger, "shop", watchers=[alerts])

    async def forward() -> JSON:
        raise AssertionError("a call waiting for approval is never forwarded")

    spend(ledger, 50)
    async with anyio.create_task_group() as tg:
        tg.start_soon(alerts.run)
        assert (await receiver.next_async())["threshold"] == "0.5"  # the sweep at start is done: it waits
        denied = await gate.call_tool(ToolCall(Session("s1"), 1, "browse", {"q": "tea"}, None), forward)
        assert (await receiver.next_async())["approval_id"] == denied["structuredContent"]["approval_id"]
        tg.cancel_scope.cancel()


def test_guard_run_announces_a_call_waiting_for_approval_signed_and_the_command_in_it_lets_the_call_through(
    tmp_path: Path, receiver: Receiver
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text(receiver.url, alerts_extra=SIGNED))
    guard = RawGuard(tmp_path, policy, upstream=SHOP, env={SECRET_ENV: SECRET})
    try:
        denied = guard.call("browse", q="tea")
        event = verified(receiver.next_request())
        assert event["approval_id"] == denied["structuredContent"]["approval_id"]
        approve = subprocess.run(
            [*GUARD, *event["command"].split()[1:], "--ledger", str(guard.ledger)],
            capture_output=True,
            text=True,
            timeout=WAIT_S,
            stdin=subprocess.DEVNULL,
        )
        assert approve.returncode == 0, approve.stderr
        assert not guard.call("browse", q="tea").get("isError")
    finally:
        guard.stop()
    assert receiver.taken() == []
    assert SECRET.removeprefix("whsec_")[:12] not in "\n".join(guard.stderr)


def test_guard_run_refuses_to_start_when_the_signing_secret_is_unset(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text("http://127.0.0.1:9/hook", alerts_extra=SIGNED))
    env = {k: v for k, v in os.environ.items() if k != SECRET_ENV}
    done = subprocess.run(
        [*GUARD, "run", "--policy", str(policy), "--ledger", str(tmp_path / "l.db"), "--", *SHOP],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    assert done.returncode == 2, done.stderr
    assert f"alerts.secret_env names {SECRET_ENV}, which is not set" in done.stderr
    assert not (tmp_path / "shop.jsonl").exists()
