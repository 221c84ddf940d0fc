"""Threshold alerts: with `alerts:` in the policy, `guard run` POSTs a JSON event to a webhook when a
budget passes a fraction of its limit, when a payment is newly in doubt, when a payment was settled
above its reservation, and when a call waits for a human's approval; signed the Standard Webhooks way
when the policy names a secret.

When: a sweep reads the ledger after each call that held or moved money (`call_done` only wakes the
sweeper: a tool call never waits for it; a busy guard sweeps at most once per `SWEEP_GAP_S`) and every
`SWEEP_EVERY_S`, which also catches holds put in doubt by recovery or by other guards sharing a
PostgreSQL ledger.

Once: each alert has a key, claimed in the ledger (`Ledger.claim_alert`) before it is sent, so guards
sharing a ledger send it once between them and a restarted guard does not send it again. How sending
ended (sent or failed, and after how many attempts) is recorded in `ledger_alerts`. A guard stopped
while sending leaves its claim `sending`: that alert is not sent again.

- `budget.threshold`: once per budget (name and scope), threshold and window period, when
  used / limit ≥ threshold, where used = spent + held + in doubt (exact integer arithmetic; a budget
  with nothing used never alerts). The period of a calendar window (`day`, `week`, `month`) is the
  one that began at `period_start`; a session window has one period, the session's whole life; a
  sliding window (`24h`) has no periods of its own, so its alerts repeat at most once per bucket of
  the window's length (buckets counted from the Unix epoch in UTC: a `24h` window's bucket is a UTC
  day). Only budgets the current policy names are watched. Passing several thresholds at once sends
  one event per threshold, lowest first.
- `hold.in_doubt`: once per hold in doubt (any hold of the ledger), unless `in_doubt: false`.
- `payment.over_reservation`: once per hold settled at more than it reserved (the upstream paid more
  than the guard's price bound: the ledger counts all of it, the budget may be over its limit), for
  holds settled within `OVER_RESERVATION_LOOKBACK_S` (`guard report` lists every one).
- `approval.requested`: once per pending approval (any approval of the ledger, while it is pending and
  not expired), unless `approvals: false`. The gate only writes the approval; a call denied for one wakes
  the sweeper, so the event leaves within `SWEEP_GAP_S` and never delays the call.

Signing (https://www.standardwebhooks.com/): every POST carries `webhook-id` (`msg_` + random, made once
per event: retries of the event send the same id, so a receiver can drop duplicates) and
`webhook-timestamp` (integer Unix seconds of the attempt); with `secret_env`, also `webhook-signature`:
`v1,` + base64 HMAC-SHA256, keyed by the secret's base64-decoded bytes, of `{id}.{timestamp}.{body}`
over the body's exact bytes. The secret (`whsec_` + base64 of 24 to 64 bytes) is read from that
environment variable: `guard run` refuses to start without it (`signing_key`, exit 2); a reload naming an
unusable one sends nothing (logged once), never an unsigned event.

Sending: one task per alert, except that thresholds of one budget passed at once are sent one after
another, lowest first (a chat channel must not read "passed 80%" before "passed 50%"); so a slow webhook
delays no other alert. At most `MAX_SENDING` posts at a time;
POST with httpx, each attempt under `TIMEOUT_S`; network errors, timeouts, 5xx and 429 are retried
after `RETRY_DELAYS_S` (five attempts in all); any other answer that is not 2xx is final. A webhook's
path and query often are its secret (Slack's are): logs name a webhook by scheme://host[:port] only.

The events (stable; fields may be added, never renamed). Amounts are integers in `unit` (the
ledger's units: sat, msat, usd_micro, ...), times ISO 8601 in UTC; `text` is a one-line summary for
chat webhooks (Slack, Mattermost) that show it as is:

    {"event": "budget.threshold", "text": "...", "budget": "daily", "scope": "global",
     "threshold": "0.8", "used": 800, "limit": 1000, "remaining": 200, "spent": 700, "held": 50,
     "in_doubt": 50, "unit": "sat", "window": "day", "timezone": "UTC",
     "period_start": "2026-11-21T00:00:00+00:00", "resets_at": "2026-11-22T00:00:00+00:00",
     "at": "2026-11-21T12:00:00+00:00", "server": "shop"}

    {"event": "hold.in_doubt", "text": "...", "hold_id": 7, "amount": 60, "unit": "sat",
     "tool": "buy", "session": "s1", "identity": null, "server": "shop",
     "resource": "https://api.example/item", "since": "2026-11-21T12:00:00+00:00",
     "at": "2026-11-21T12:00:05+00:00"}

    {"event": "payment.over_reservation", "text": "...", "hold_id": 8, "reserved": 10, "paid": 50,
     "excess": 40, "unit": "sat", "priced_by": "quote", "tool": "l402-fetch", "session": "s1",
     "identity": null, "server": "402-mcp", "resource": "https://api.example/item",
     "since": "2026-11-21T12:00:00+00:00", "at": "2026-11-21T12:00:05+00:00"}

    {"event": "approval.requested", "text": "...", "approval_id": "ap_0123456789", "tool": "buy",
     "session": "s1", "identity": "alice", "args_digest": "9f86d081884c7d65",
     "command": "guard approvals approve ap_0123456789", "deny_command": "guard approvals deny ap_0123456789",
     "since": "2026-11-21T12:00:00+00:00", "expires": "2026-11-21T13:00:00+00:00",
     "at": "2026-11-21T12:00:01+00:00"}

`period_start` is null for session windows; `resets_at` is null but for calendar windows; `since` is
when the hold was made; `priced_by` what bounded the reservation (call, policy, quote, max_price). No
call arguments, payment credentials or webhook URLs are ever in an event: an approval names its arguments by
`args_digest` (the audit trail's 16 hex digits of their digest), as `guard audit tail` does.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from urllib.parse import urlsplit

import anyio
import anyio.abc
import httpx

from guard.core import JSON, off_loop
from guard.errors import ConfigError
from guard.policy.model import AlertsSpec
from guard.policy.source import PolicySource
from ledgers import Amount, Approval, BudgetState, CallRecord, Clock, HoldInfo, Ledger, SystemClock

logger = logging.getLogger("guard.alerts")

SWEEP_EVERY_S = 30.0
SWEEP_GAP_S = 1.0
TIMEOUT_S = 10.0
RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0)
MAX_SENDING = 4
# How far back a sweep looks for payments settled above their reservation.
OVER_RESERVATION_LOOKBACK_S = 86_400.0

BUDGET_EVENT = "budget.threshold"
IN_DOUBT_EVENT = "hold.in_doubt"
OVER_RESERVATION_EVENT = "payment.over_reservation"
APPROVAL_EVENT = "approval.requested"

SECRET_PREFIX = "whsec_"
# Standard Webhooks: secrets of 24 to 64 bytes. A shorter one is refused rather than trusted.
SECRET_BYTES = (24, 64)
MAKE_SECRET = 'echo "whsec_$(openssl rand -base64 32)"'

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Alert:
    """One alert due: its once-only key, its kind (the event's name), the event itself, and its thread:
    alerts of one thread are sent one after another, in the order they were due."""

    key: str
    kind: str
    event: JSON
    thread: str


class Alerter:
    """Sends the policy's alerts (see the module doc). A `CallWatcher` of the `PolicyGate`; `run` is a
    background task of the front."""

    def __init__(
        self,
        source: PolicySource,
        ledger: Ledger,
        server: str,
        *,
        clock: Clock | None = None,
        sweep_every_s: float = SWEEP_EVERY_S,
        sweep_gap_s: float = SWEEP_GAP_S,
        timeout_s: float = TIMEOUT_S,
        retry_delays_s: Sequence[float] = RETRY_DELAYS_S,
    ) -> None:
        self._source = source
        self._ledger = ledger
        self._server = server
        self._clock = clock or SystemClock()
        self._sweep_every_s = sweep_every_s
        self._sweep_gap_s = sweep_gap_s
        self._timeout_s = timeout_s
        self._retry_delays_s = tuple(retry_delays_s)
        self._wake = anyio.Event()
        # Keys due at the last sweep that are claimed (by this guard or another): not claimed again,
        # which would cost a ledger write per alert per sweep. Keys no longer due are forgotten.
        self._claimed: set[str] = set()
        self._sending = anyio.CapacityLimiter(MAX_SENDING)
        self._hide = _HideWebhooks()
        # The last reason no alert could be signed (logged once, not at every sweep).
        self._unsigned: str | None = None
        signing_key(source.policy.spec.alerts)  # at start: a policy naming an unusable secret stops the guard

    def call_done(self, call: CallRecord, upstream_s: float | None) -> None:
        """Wake the sweeper when a call held or moved money, or waits for a human's approval (someone should
        hear of it now). Never blocks (called on the event loop)."""
        if call.hold_id is not None or call.kind == "approval":
            self._wake.set()

    async def run(self) -> None:
        """Sweep at once, then on every wake-up and every `sweep_every_s`, until cancelled. Alerts being
        sent when cancelled are recorded as failed."""
        async with self._client() as client, anyio.create_task_group() as sending:
            while True:
                await self._sweep(client, sending)
                # Reading every budget's use is not free: paying calls in a burst share one sweep.
                await anyio.sleep(self._sweep_gap_s)
                with anyio.move_on_after(self._sweep_every_s):
                    await self._wake.wait()
                # Calls done while the sweep below runs set the new event: they get a sweep of their own.
                self._wake = anyio.Event()

    async def sweep(self) -> list[Alert]:
        """One sweep; returns once the alerts it claimed were sent or given up on. (The CLI uses `run`.)"""
        async with self._client() as client, anyio.create_task_group() as sending:
            claimed = await self._sweep(client, sending)
        return claimed

    async def _sweep(self, client: _LazyClient, sending: anyio.abc.TaskGroup) -> list[Alert]:
        """Claim the alerts that are due and start sending each; the claimed ones."""
        spec = self._source.policy.spec
        if spec.alerts is None:
            self._claimed.clear()
            return []
        try:
            key = signing_key(spec.alerts)
        except ConfigError as exc:  # a reload named an unusable secret: nothing is sent unsigned
            if str(exc) != self._unsigned:
                logger.error("alerts not sent until the policy or the environment is fixed: %s", exc)
            self._unsigned = str(exc)
            return []
        self._unsigned = None
        try:
            due = await self._due(spec.alerts, {b.name for b in spec.budgets})
        except Exception:  # an alert's trouble must never stop the guard
            logger.exception("alerts: could not read the ledger")
            return []
        claimed: list[Alert] = []
        threads: dict[str, list[Alert]] = {}
        still_claimed: set[str] = set()
        for alert in due:
            if alert.key in self._claimed:
                still_claimed.add(alert.key)
                continue
            try:
                mine = await off_loop(self._ledger.claim_alert, alert.key, alert.kind)
            except Exception:
                logger.exception("alerts: could not claim an alert in the ledger; trying again at the next sweep")
                continue
            still_claimed.add(alert.key)
            if mine:
                claimed.append(alert)
                threads.setdefault(alert.thread, []).append(alert)
        for thread in threads.values():
            sending.start_soon(self._deliver_in_order, client, spec.alerts.webhook, key, thread)
        self._claimed = still_claimed
        return claimed

    async def _due(self, alerts: AlertsSpec, budget_names: set[str]) -> list[Alert]:
        states = await off_loop(self._ledger.budget_states)
        doubted = await off_loop(self._ledger.open_holds, "in_doubt") if alerts.in_doubt else []
        now = self._clock.now().astimezone(UTC)
        over = await off_loop(self._ledger.over_reservations, now - timedelta(seconds=OVER_RESERVATION_LOOKBACK_S))
        pending = await off_loop(self._ledger.approvals, "pending") if alerts.approvals else []
        at = now.isoformat()
        due = [
            _threshold_alert(state, threshold, at, self._server)
            for state in states
            if state.budget.name in budget_names
            for threshold in sorted(set(alerts.thresholds))
            if _reached(state, threshold)
        ]
        return (
            due
            + [_in_doubt_alert(hold, at) for hold in doubted]
            + [_over_alert(hold, at) for hold in over]
            + [_approval_alert(approval, at) for approval in pending]
        )

    async def _deliver_in_order(
        self, client: _LazyClient, webhook: str, key: bytes | None, alerts: list[Alert]
    ) -> None:
        for alert in alerts:
            await self._deliver(client, webhook, key, alert)

    async def _deliver(self, client: _LazyClient, webhook: str, key: bytes | None, alert: Alert) -> None:
        sent, attempts = False, 0
        try:
            async with self._sending:
                sent, attempts = await self._post(await client.get(), webhook, key, alert)
        except Exception as exc:  # a bug or a broken TLS setup must not stop the guard; never str(exc)
            logger.error("alert %s to %s not sent: %s", alert.kind, _origin(webhook), type(exc).__name__)
        finally:
            # Shielded: a guard stopping mid-send still records that this alert was not sent.
            with anyio.CancelScope(shield=True):
                try:
                    await off_loop(partial(self._ledger.alert_done, alert.key, sent=sent, attempts=attempts))
                except Exception:
                    logger.exception("alerts: could not record how sending %s ended", alert.kind)

    async def _post(self, client: httpx.AsyncClient, webhook: str, key: bytes | None, alert: Alert) -> tuple[bool, int]:
        """POST until delivered or given up, every attempt under the event's one id and signed anew (its
        timestamp is the attempt's); (delivered, attempts made)."""
        origin = _origin(webhook)
        self._hide.add(webhook, origin)
        body = json.dumps(alert.event, separators=(",", ":")).encode()
        message_id = "msg_" + secrets.token_urlsafe(18)
        delays = (*self._retry_delays_s, None)
        for attempt, delay in enumerate(delays, 1):
            try:
                headers = webhook_headers(key, message_id, int(time.time()), body)
                response = await client.post(webhook, content=body, headers=headers)
            except httpx.HTTPError as exc:  # never str(exc): some name the URL
                problem = f"{type(exc).__name__}"
            else:
                if response.is_success:
                    return True, attempt
                problem = f"HTTP {response.status_code}"
                if response.status_code != 429 and response.status_code < 500:
                    logger.warning("alert %s to %s refused (%s); not retried", alert.kind, origin, problem)
                    return False, attempt
            if delay is None:
                logger.warning(
                    "alert %s to %s not delivered after %d attempts (%s)", alert.kind, origin, attempt, problem
                )
                return False, attempt
            logger.info("alert %s to %s: %s; retrying in %gs", alert.kind, origin, problem, delay)
            await anyio.sleep(delay)
        raise AssertionError("unreachable: the last delay is None")

    @asynccontextmanager
    async def _client(self) -> AsyncIterator[_LazyClient]:
        httpx_logger = logging.getLogger("httpx")
        httpx_logger.addFilter(self._hide)
        client = _LazyClient(self._timeout_s)
        try:
            yield client
        finally:
            with anyio.CancelScope(shield=True):
                await client.aclose()
            httpx_logger.removeFilter(self._hide)


def _reached(state: BudgetState, threshold: Decimal) -> bool:
    """used / limit ≥ threshold, exactly (no floats)."""
    numerator, denominator = threshold.as_integer_ratio()
    return state.used > 0 and state.used * denominator >= state.budget.limit.value * numerator


def _threshold_alert(state: BudgetState, threshold: Decimal, at: str, server: str) -> Alert:
    budget, window = state.budget, state.budget.window
    fraction = _decimal_text(threshold)
    limit = budget.limit
    event: JSON = {
        "event": BUDGET_EVENT,
        "text": (
            f"guard: budget {budget.name} ({budget.scope}) passed {_decimal_text(threshold * 100)}% of its limit:"
            f" {Amount(state.used, limit.unit)} of {limit} used"
        ),
        "budget": budget.name,
        "scope": budget.scope,
        "threshold": fraction,
        "used": state.used,
        "limit": limit.value,
        "remaining": state.remaining,
        "spent": state.spent,
        "held": state.held,
        "in_doubt": state.in_doubt,
        "unit": limit.unit,
        "window": window.text,
        "timezone": window.timezone,
        "period_start": _iso(state.window_start),
        "resets_at": _iso(state.resets_at),
        "at": at,
        "server": server,
    }
    thread = f"{BUDGET_EVENT}:{budget.key}"
    return Alert(f"{thread}:{fraction}:{_period(state)}", BUDGET_EVENT, event, thread)


def _period(state: BudgetState) -> str:
    """Which window period the budget's use is in (see the module doc)."""
    window, start = state.budget.window, state.window_start
    if window.kind == "session" or start is None:
        return "session"
    if window.kind == "calendar":
        return start.isoformat()
    # A sliding window's start is `now - length + 1µs`: bucket `now` by the window's length.
    length = timedelta(microseconds=window.length_us)
    now = start + length - timedelta(microseconds=1)
    return (_EPOCH + (now - _EPOCH) // length * length).isoformat()


def _in_doubt_alert(hold: HoldInfo, at: str) -> Alert:
    event: JSON = {
        "event": IN_DOUBT_EVENT,
        "text": (
            f"guard: a payment of {hold.amount}{f' by {hold.tool}' if hold.tool else ''} is in doubt"
            f" (hold {hold.id}): it may have been paid; resolve it with `guard holds resolve`"
        ),
        "hold_id": hold.id,
        "amount": hold.amount.value,
        "unit": hold.amount.unit,
        "tool": hold.tool,
        "session": hold.session,
        "identity": hold.identity,
        "server": hold.server,
        "resource": hold.resource,
        "since": hold.created.isoformat(),
        "at": at,
    }
    key = f"{IN_DOUBT_EVENT}:{hold.id}"
    return Alert(key, IN_DOUBT_EVENT, event, thread=key)


def _over_alert(hold: HoldInfo, at: str) -> Alert:
    paid, excess = hold.settled, hold.over_reservation
    assert paid is not None and excess is not None  # over_reservations() lists only such holds
    event: JSON = {
        "event": OVER_RESERVATION_EVENT,
        "text": (
            f"guard: a payment{f' by {hold.tool}' if hold.tool else ''} of {paid} was {excess} more than the"
            f" {hold.amount} reserved for it (hold {hold.id}); the ledger counts all of it"
        ),
        "hold_id": hold.id,
        "reserved": hold.amount.value,
        "paid": paid.value,
        "excess": excess.value,
        "unit": hold.amount.unit,
        "priced_by": hold.priced_by,
        "tool": hold.tool,
        "session": hold.session,
        "identity": hold.identity,
        "server": hold.server,
        "resource": hold.resource,
        "since": hold.created.isoformat(),
        "at": at,
    }
    key = f"{OVER_RESERVATION_EVENT}:{hold.id}"
    return Alert(key, OVER_RESERVATION_EVENT, event, thread=key)


def _approval_alert(approval: Approval, at: str) -> Alert:
    command = f"guard approvals approve {approval.id}"
    session = approval.subject.removeprefix("session:")
    event: JSON = {
        "event": APPROVAL_EVENT,
        "text": (
            f"guard: a call to {approval.action} (session {session}"
            f"{f', identity {approval.identity}' if approval.identity else ''}) waits for your approval:"
            f" run `{command}` before {approval.expires.isoformat(timespec='seconds')}"
        ),
        "approval_id": approval.id,
        "tool": approval.action,
        "session": session,
        "identity": approval.identity,
        "args_digest": approval.digest[:16],
        "command": command,
        "deny_command": f"guard approvals deny {approval.id}",
        "since": approval.created.isoformat(),
        "expires": approval.expires.isoformat(),
        "at": at,
    }
    key = f"{APPROVAL_EVENT}:{approval.id}"
    return Alert(key, APPROVAL_EVENT, event, thread=key)


def signing_key(alerts: AlertsSpec | None, environ: Mapping[str, str] = os.environ) -> bytes | None:
    """The key that signs alerts: the base64-decoded bytes of the `whsec_` secret in the environment
    variable `alerts.secret_env` names (None: the policy asks for no signature).

    Raises:
        ConfigError: the variable is unset, or its value is not a Standard Webhooks secret (never quoted)."""
    if alerts is None or alerts.secret_env is None:
        return None
    name = alerts.secret_env
    where = f"alerts.secret_env names {name}"
    secret = environ.get(name, "").strip()
    if not secret:
        raise ConfigError(f"{where}, which is not set: set it to the webhook's signing secret ({MAKE_SECRET})")
    if not secret.startswith(SECRET_PREFIX):
        raise ConfigError(f"{where}, whose value does not start with {SECRET_PREFIX} (a Standard Webhooks secret)")
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{where}, whose value after {SECRET_PREFIX} is not base64") from None
    low, high = SECRET_BYTES
    if not low <= len(key) <= high:
        raise ConfigError(
            f"{where}, whose secret is {len(key)} bytes: use {low} to {high} random bytes"
            f" (make one with: {MAKE_SECRET})"
        )
    return key


def webhook_headers(key: bytes | None, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt: id and timestamp, and with a key the signature of
    `{id}.{timestamp}.{body}`."""
    headers = {"content-type": "application/json", "webhook-id": message_id, "webhook-timestamp": str(timestamp)}
    if key is not None:
        mac = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
        headers["webhook-signature"] = "v1," + base64.b64encode(mac).decode()
    return headers


def _decimal_text(number: Decimal) -> str:
    """0.50 → "0.5", 1.0 → "1", 50.0 → "50"."""
    return f"{number.normalize():f}"


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def _origin(url: str) -> str:
    """scheme://host[:port]: how logs name a webhook (its path and query may be its secret)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # not a number: httpx will refuse the URL; the log still names the host
        port = ""
    return f"{parts.scheme}://{host}{port}"


class _LazyClient:
    """The HTTP client, made when the first alert is sent: most guards never send one, and making it
    loads the CA bundle, which takes long enough to be kept off the event loop (tool calls run there)."""

    def __init__(self, timeout_s: float) -> None:
        self._timeout_s = timeout_s
        self._client: httpx.AsyncClient | None = None
        self._lock = anyio.Lock()

    async def get(self) -> httpx.AsyncClient:
        async with self._lock:
            if self._client is None:
                tls = await off_loop(httpx.create_ssl_context)
                self._client = httpx.AsyncClient(timeout=self._timeout_s, verify=tls, follow_redirects=False)
            return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()


class _HideWebhooks(logging.Filter):
    """httpx logs every request's full URL (shown with --log-level debug): show a webhook's origin only."""

    def __init__(self) -> None:
        super().__init__()
        self._origins: dict[str, str] = {}

    def add(self, webhook: str, origin: str) -> None:
        self._origins[str(httpx.URL(webhook))] = origin

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(str(arg) in self._origins for arg in record.args):
            record.args = tuple(self._origins.get(str(arg), arg) for arg in record.args)
        return True
