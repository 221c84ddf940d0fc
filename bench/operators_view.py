"""Operators' view: how long do `guard budget show` and `guard report` take on a ledger of 1M rows?

1. GENERATE a ledger of about `--rows` rows (default 1,000,000) covering the 30 days that end now, in the
   ledger's own schema: `Ledger.open(url).close()` creates it (schema v4), then every row goes in through
   SQLAlchemy executemany (Core `insert()` of the reflected tables, 50,000 rows a transaction). Into a fresh
   SQLite file (default: a temp file; `--ledger PATH` or `sqlite:///...`) or PostgreSQL (`--ledger
   postgresql+psycopg://...`): there the ledger lives in its own schema (`--pg-schema`, default
   `operators_view_bench`, dropped and created again first, selected with search_path), so the tables the
   tests reset in the default schema are neither read nor touched. For 1M rows (per 1M, scaled with --rows):
   - ~2,000 sessions over 40 identities and 4 servers (l402 and alby in sat, p402 and x402 in usd_micro),
     each a few minutes to hours long (a few still running now), with heavy-tailed activity;
   - ~360,000 calls in those sessions, one call event each: ~220,000 paid (a hold: 90% settled, 10% voided,
     ~40 in doubt, the last 5 still open; URLs over 50 origins, a payment hash or x402 nonce as idempotency
     key for most, `balance_key` for alby and p402 ones), ~40,000 free calls, ~100,000 denials under the
     rules the guard writes (`default`, `tools.X`, `.when[i]`, `.max_price`, `.rate_limit`, `.quotas[i]`,
     `budgets.NAME`, `balances`, `balances.stale_after`, `idempotency`, `approvals`, `adapters.p402`);
   - their charges, 1 or 2 per hold by tool, against `budget:per-session@session:<id>` (sat, session
     window), `budget:per-session-usd@session:<id>` (usd_micro), `budget:daily@identity:<name>` (sat, day in
     Europe/Berlin) and `budget:usd-day@global` (usd_micro, day), defined in `ledger_budgets`;
   - ~75,000 balance observations over 200 keys (`wallet:alby`, 60 `p402:*` sessions, 35 `credits:<origin>`,
     30 `tokens:*`, 74 `quote:<url>`), money balances falling with use, topped up now and then (a `topup`
     call event), with a few drops seen only in the balance (an external hold + its charge + an `external`
     call event).
   Rate-limit events (`ledger_rate_events`) are left out: neither view reads them. Afterwards SQLite gets
   `PRAGMA wal_checkpoint(TRUNCATE)` and no ANALYZE (the ledger never runs it); PostgreSQL gets `VACUUM
   ANALYZE` per table (what autovacuum does to a ledger that grew slowly). `--reuse` skips all this and times
   the ledger as it is. An existing SQLite file is not overwritten without `--force`, nor a schema holding
   anything but ledger tables (nor `public`) dropped; the temp file or the schema is removed at the end
   unless `--keep` (or `--reuse`) is given.

2. TIME, best and median of `--runs` (default 5), after one unmeasured run, everything imported first:
   - `budget show` in process, as `guard/_budget_command.py` `show` does it: `Ledger.open(url,
     read_only=True)`, `budget_states()`, `observed()`, the view (`guard.operators.budget_view`) as JSON, `close()`;
     each step timed too;
   - `guard budget show --ledger URL --json` end to end, a subprocess. To tell apart what is start-up,
     `python -c pass`, `python -c "import guard.cli.app"`, and the in-process `budget show` run first thing in
     a fresh process that has just imported `guard.cli.app` (cold caches: connecting, first statements) are
     timed too;
   - `report` in process, as `guard/_report_command.py` runs it (`period`, `Ledger.report`,
     `guard.operators.report.render`): the last 24 h and the last 7 days in each format (md, json, csv, html), the
     last 30 days (the whole ledger) in json, to show how it scales with the period;
   - `guard report --since 24h --format json` end to end, a subprocess, and the report run first thing in a
     fresh process.
   Subprocesses run with an empty XDG_CONFIG_HOME and no GUARD_* variables (no policy file is read). The
   verdicts are on the medians; the machine is shared, so the load average is printed at the start, when
   timing begins and at the end.

Run from the repository root:

    .venv/bin/python bench/operators_view.py                                   # SQLite, 1M rows
    .venv/bin/python bench/operators_view.py --ledger "$(cat /tmp/devpg.url)"  # PostgreSQL
    .venv/bin/python bench/operators_view.py --rows 100000 --runs 3            # quicker
    .venv/bin/python bench/operators_view.py --ledger /tmp/ov.db --keep        # then, again and again:
    .venv/bin/python bench/operators_view.py --ledger /tmp/ov.db --reuse --explain
    .venv/bin/python bench/operators_view.py --json                            # machine-readable

`--explain` runs `budget show` and the 24 h report once more with every SQL statement timed (SQLAlchemy
cursor events) and prints the slowest ones, how often each ran, and their plans (EXPLAIN QUERY PLAN on
SQLite, EXPLAIN (ANALYZE, BUFFERS) on PostgreSQL).

Goals (issue 6): `budget show` <= 0.5 s, `report` <= 2 s, both on a 1M-row ledger.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, MetaData, Table, create_engine, event, insert, text
from sqlalchemy.engine import make_url

from guard.operators.budget_view import balance_fields, budget_fields
from guard.policy.model import Balances, seconds
from ledgers import Amount, Ledger

ROOT = Path(__file__).resolve().parent.parent
GOAL_SHOW_S = 0.5
GOAL_REPORT_S = 2.0
US = 1_000_000
DAY_US = 86_400 * US
DAYS = 30
BATCH = 50_000
DEFAULT_PG_SCHEMA = "operators_view_bench"
TABLES = ("ledger_holds", "ledger_charges", "ledger_call_events", "ledger_observations", "ledger_budgets")
FORMATS = ("md", "json", "csv", "html")
Progress = Callable[[str], None]


# --- what the generated ledger holds ---------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """How many of each thing, for a ledger of about `rows` rows (the proportions of the module doc)."""

    rows: int

    def _n(self, per_million: float, least: int = 1) -> int:
        return max(least, round(per_million * self.rows / 1_000_000))

    @property
    def sessions(self) -> int:
        return self._n(2000, 20)

    @property
    def paid(self) -> int:
        return self._n(220_000, 50)

    @property
    def free(self) -> int:
        return self._n(40_000, 10)

    @property
    def denied(self) -> int:
        return self._n(100_000, 20)

    @property
    def in_doubt(self) -> int:
        return self._n(40, 3)

    @property
    def observations(self) -> int:
        return self._n(75_000, 400)


IDENTITIES = [f"agent-{i:02d}" for i in range(40)]
OPEN_HOLDS = 5
ORIGINS = [
    f"https://api{i:02d}.{domain}"
    for i, domain in enumerate(["satsapi.dev", "l402.services", "paywall.news", "geo.tools", "x402.pay"] * 10)
]
L402_ORIGINS, X402_ORIGINS = ORIGINS[:35], ORIGINS[35:]
TOPICS = ["search", "articles", "weather", "maps", "quotes"]
SAT_PRICES = [1, 2, 5, 10, 21, 50, 100, 500]
USD_PRICES = [1_000, 5_000, 10_000, 20_000, 100_000]


@dataclass(frozen=True)
class BudgetDef:
    name: str
    unit: str
    limit: int
    window: str  # as `Window.parse` reads it
    timezone: str
    scope: str  # session, identity or global


PER_SESSION = BudgetDef("per-session", "sat", 20_000, "session", "UTC", "session")
PER_SESSION_USD = BudgetDef("per-session-usd", "usd_micro", 5_000_000, "session", "UTC", "session")
DAILY = BudgetDef("daily", "sat", 200_000, "day", "Europe/Berlin", "identity")
USD_DAY = BudgetDef("usd-day", "usd_micro", 100_000_000, "day", "UTC", "global")


@dataclass(frozen=True)
class Server:
    name: str
    unit: str
    share: float  # of sessions
    paying: tuple[tuple[str, float], ...]  # tool, weight
    free: tuple[str, ...]


SERVERS = [
    Server("l402", "sat", 0.4, (("l402-fetch", 0.9), ("l402-buy-credits", 0.1)), ("l402-balance", "l402-discover")),
    Server("alby", "sat", 0.2, (("fetch_l402", 0.6), ("pay_invoice", 0.4)), ("get_balance", "list_transactions")),
    Server("p402", "usd_micro", 0.2, (("p402_chat", 1.0),), ("p402_list_models", "p402_get_session")),
    Server("x402", "usd_micro", 0.2, (("fetch", 1.0),), ("list_resources",)),
]
TOOL_BUDGETS = {
    "l402-fetch": (PER_SESSION, DAILY),
    "fetch_l402": (PER_SESSION, DAILY),
    "pay_invoice": (DAILY,),
    "l402-buy-credits": (DAILY,),
    "p402_chat": (USD_DAY,),
    "fetch": (PER_SESSION_USD, USD_DAY),
}
# Denials by rule, with their share: rate-limit hits and stale balances are the common ones.
DENIAL_RULES = [
    ("default", 8),
    ("tools.deny", 4),
    ("when", 5),
    ("max_price", 8),
    ("rate_limit", 22),
    ("quota", 7),
    ("budget", 14),
    ("balances", 6),
    ("balances.stale_after", 16),
    ("idempotency", 3),
    ("approvals", 5),
    ("adapters.p402", 2),
]
P402_KEYS = 60
TOKEN_KEYS = 30
QUOTE_KEYS = 74


@dataclass
class Session:
    id: str
    identity: str
    server: Server
    owner: str
    start_us: int
    end_us: int
    p402_key: str | None


@dataclass
class Counts:
    holds: int = 0
    charges: int = 0
    events: int = 0
    observations: int = 0
    budgets: dict[str, tuple[BudgetDef, str, int]] = field(default_factory=dict)  # key: (def, scope, defined)


class Writer:
    """Rows in batches through SQLAlchemy executemany, a transaction per batch."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        meta = MetaData()
        with engine.connect() as conn:
            meta.reflect(conn, only=list(TABLES))
        self.tables: dict[str, Table] = dict(meta.tables)
        self._rows: dict[str, list[dict[str, Any]]] = {name: [] for name in TABLES}

    def add(self, table: str, row: dict[str, Any]) -> None:
        rows = self._rows[table]
        rows.append(row)
        if len(rows) >= BATCH:
            self.flush(table)

    def flush(self, table: str | None = None) -> None:
        for name in [table] if table else list(TABLES):
            rows = self._rows[name]
            if rows:
                with self._engine.begin() as conn:
                    conn.execute(insert(self.tables[name]), rows)
                rows.clear()


class Generator:
    """Writes the ledger of the module doc, in time order, with explicit ids (as an autoincrement would)."""

    def __init__(self, plan: Plan, seed: int, now_us: int, writer: Writer) -> None:
        self.plan = plan
        self.rng = random.Random(seed)
        self.now = now_us
        self.start = now_us - DAYS * DAY_US
        self.out = writer
        self.counts = Counts()
        self.owners = [self._hex(32) for _ in range(30)]
        self.sessions = self._sessions()

    def _hex(self, digits: int) -> str:
        return f"{self.rng.getrandbits(digits * 4):0{digits}x}"

    def _sessions(self) -> list[Session]:
        rng, count = self.rng, self.plan.sessions
        weights = [1 / (i + 1) ** 0.7 for i in range(len(IDENTITIES))]
        sessions = []
        for _ in range(count):
            start = rng.randrange(self.start, self.now - 300 * US)
            length = min(12 * 3600 * US, int(rng.lognormvariate(math.log(45 * 60), 1.0) * US))
            server = rng.choices(SERVERS, [s.share for s in SERVERS])[0]
            p402 = None
            if server.name == "p402":  # one P402 session after another, each used for about half a day
                p402 = f"p402:ps_{(start - self.start) * P402_KEYS // (DAYS * DAY_US):02d}"
            sessions.append(
                Session(
                    id=self._hex(32),
                    identity=rng.choices(IDENTITIES, weights)[0],
                    server=server,
                    owner=rng.choice(self.owners),
                    start_us=start,
                    end_us=min(start + length, self.now - US),
                    p402_key=p402,
                )
            )
        sessions.sort(key=lambda s: s.start_us)
        for live in sessions[-5:]:  # still running: their calls reach up to now
            live.end_us = self.now - rng.randrange(US, 30 * US)
        return sessions

    # calls: holds, charges, call events

    def calls(self) -> None:
        rng, plan = self.rng, self.plan
        activity = [rng.lognormvariate(0, 1.0) for _ in self.sessions]
        total = sum(activity)
        count = plan.paid + plan.free + plan.denied
        kinds = ["paid"] * plan.paid + ["free"] * plan.free + ["deny"] * plan.denied
        rng.shuffle(kinds)
        calls: list[tuple[int, int]] = []
        for index, (session, weight) in enumerate(zip(self.sessions, activity, strict=True)):
            for _ in range(max(1, round(count * weight / total))):
                calls.append((rng.randrange(session.start_us, session.end_us), index))
        calls.sort()
        kinds = (kinds * (len(calls) // len(kinds) + 1))[: len(calls)]
        paid_at = [i for i, kind in enumerate(kinds) if kind == "paid"]
        still_open = set(paid_at[-OPEN_HOLDS:])
        in_doubt = set(rng.sample(paid_at[:-OPEN_HOLDS], min(plan.in_doubt, len(paid_at) - OPEN_HOLDS)))
        for i, ((at, index), kind) in enumerate(zip(calls, kinds, strict=True)):
            session = self.sessions[index]
            if kind == "paid":
                phase = rng.choice(("reserved", "forwarded")) if i in still_open else None
                self._paid(session, at, phase or ("in_doubt" if i in in_doubt else None))
            elif kind == "free":
                tool = "guard-budget" if rng.random() < 0.1 else rng.choice(session.server.free)
                reason = "answered by guard" if tool == "guard-budget" else None
                self._event(session, at, tool, "allow", reason=reason, latency_us=rng.randrange(5_000, 300_000))
            else:
                self._denial(session, at)

    def _paid(self, session: Session, at: int, phase: str | None) -> None:
        rng, server = self.rng, session.server
        tool = rng.choices([t for t, _ in server.paying], [w for _, w in server.paying])[0]
        amount, settled, resource = self._price(tool)
        if phase is None:
            phase = "voided" if rng.random() < 0.10 else "settled"
        latency = int(rng.lognormvariate(math.log(400_000), 0.8))
        updated = {"settled": at + latency, "voided": at + latency, "in_doubt": at + 30 * US}.get(phase, at)
        updated = min(updated, self.now)
        key = None
        if tool != "p402_chat" and rng.random() < 0.9:
            key = self._hex(64)
        balance_key = "wallet:alby" if server.name == "alby" else session.p402_key
        hold = self._hold(
            phase=phase,
            unit=server.unit,
            amount=amount,
            settled=settled if phase == "settled" else None,
            owner=session.owner,
            session=session.id,
            identity=session.identity,
            tool=tool,
            created_us=at,
            updated_us=updated,
            idempotency_key=key,
            balance_key=balance_key,
            server=server.name,
            resource=resource,
        )
        for budget in TOOL_BUDGETS[tool]:
            scope = {"session": f"session:{session.id}", "identity": f"identity:{session.identity}"}.get(
                budget.scope, "global"
            )
            held = amount if phase in ("reserved", "forwarded", "in_doubt") else 0
            self._charge(hold, budget, scope, held, settled if phase == "settled" else 0, at)
        if phase in ("reserved", "forwarded"):
            return  # in flight: its call event is written when it ends
        paid = partial(self._event, session, updated, tool, price=amount, price_unit=server.unit, hold_id=hold)
        if phase == "settled":
            flagged = "flagged: the answer did not say what was paid" if rng.random() < 0.01 else None
            paid("allow", reason=flagged, spent=settled, latency_us=latency)
        elif phase == "voided" and rng.random() < 0.6:
            paid("allow", latency_us=latency)
        else:  # voided on a JSON-RPC error; in doubt: the upstream went away
            paid("error", reason="upstream error")

    def _price(self, tool: str) -> tuple[int, int, str | None]:
        """(amount held, amount settled, URL without query) of one paid call."""
        rng = self.rng
        if tool in ("l402-fetch", "fetch_l402", "fetch"):
            origins = X402_ORIGINS if tool == "fetch" else L402_ORIGINS
            index = min(len(origins) - 1, int(rng.paretovariate(1.2)) - 1)
            origin = origins[index]
            url = f"{origin}/v1/{rng.choice(TOPICS)}/{rng.randrange(20)}"
            prices = USD_PRICES if tool == "fetch" else SAT_PRICES
            price = prices[hash(url) % len(prices)]
            return price, price, url
        if tool == "l402-buy-credits":
            amount = rng.choice((1_000, 5_000, 10_000))
            return amount, amount, f"{rng.choice(L402_ORIGINS)}/credits"
        if tool == "pay_invoice":
            amount = max(1, min(100_000, int(rng.lognormvariate(math.log(500), 1.2))))
            return amount, amount, None
        return 50_000, rng.randrange(500, 50_000), "https://api.p402.io/v1/chat/completions"  # p402_chat

    def _hold(self, **values: Any) -> int:
        self.counts.holds += 1
        defaults = {"idempotency_key": None, "balance_key": None, "resource": None}
        row = {"id": self.counts.holds, "mixed_units": False, "external": False, **defaults, **values}
        self.out.add("ledger_holds", row)
        return self.counts.holds

    def _charge(self, hold: int, budget: BudgetDef, scope: str, held: int, spent: int, at: int) -> None:
        key = f"budget:{budget.name}@{scope}"
        self.counts.budgets.setdefault(key, (budget, scope, at))
        self.counts.charges += 1
        row = {
            "id": self.counts.charges,
            "hold_id": hold,
            "budget": key,
            "unit": budget.unit,
            "held": held,
            "spent": spent,
            "created_us": at,
        }
        self.out.add("ledger_charges", row)

    def _event(
        self,
        session: Session | None,
        at: int,
        tool: str,
        decision: str,
        *,
        server: str | None = None,
        identity: str | None = None,
        rule: str | None = None,
        reason: str | None = None,
        price: int | None = None,
        price_unit: str | None = None,
        hold_id: int | None = None,
        spent: int | None = None,
        latency_us: int | None = None,
    ) -> None:
        self.counts.events += 1
        unit = price_unit or (session.server.unit if session else None)
        row = {
            "id": self.counts.events,
            "at_us": at,
            "session": session.id if session else None,
            "identity": session.identity if session else identity,
            "server": session.server.name if session else server,
            "tool": tool,
            "decision": decision,
            "rule": rule,
            "reason": reason,
            "price": price,
            "price_unit": price_unit,
            "hold_id": hold_id,
            "spent": spent,
            "spent_unit": unit if spent is not None else None,
            "latency_us": latency_us,
            # Decisions on a call carry a digest of its arguments; the ledger's own events none.
            "args_digest": self._hex(16) if session else None,
        }
        self.out.add("ledger_call_events", row)

    def _denial(self, session: Session, at: int) -> None:
        rng, server = self.rng, session.server
        kind = rng.choices([r for r, _ in DENIAL_RULES], [w for _, w in DENIAL_RULES])[0]
        paying = rng.choice(server.paying)[0]
        unit = server.unit
        tool, rule, reason = paying, kind, ""
        if kind == "default":
            tool = rng.choice(("shell_exec", "l402-store-token", "make_invoice", "p402_create_session"))
            reason = f"{tool} is not allowed by the policy (default: deny)"
        elif kind == "tools.deny":
            tool, rule = "l402-redeem-cashu", "tools.l402-redeem-cashu"
            reason = "the policy denies l402-redeem-cashu"
        elif kind == "when":
            rule, reason = f"tools.{paying}.when[0]", "only URLs under the allowed origins may be paid for"
        elif kind == "max_price":
            cap = Amount(1_000 if unit == "sat" else 200_000, unit)
            asked = Amount(cap.value * rng.randrange(2, 10), unit)
            rule, reason = f"tools.{paying}.max_price", f"the price {asked} is over the per-call cap of {cap}"
        elif kind == "rate_limit":
            rule, reason = f"tools.{paying}.rate_limit", "rate limit reached: 30 calls per 1m"
        elif kind == "quota":
            tool = rng.choice(server.free)
            rule, reason = f"tools.{tool}.quotas[0]", "rate limit reached: 1000 calls per 24h"
        elif kind == "budget":
            budget = rng.choice(TOOL_BUDGETS[paying])
            scope = {"session": f"session:{session.id}", "identity": f"identity:{session.identity}"}.get(
                budget.scope, "global"
            )
            per = "per session" if budget.window == "session" else f"per {budget.window}"
            left = rng.randrange(0, budget.limit // 100)
            rule = f"budgets.{budget.name}"
            reason = (
                f"budget {budget.name} ({scope}, {per}): {left + rng.randrange(1, 5000)} {budget.unit} asked, "
                f"{left} {budget.unit} left of {budget.limit}"
            )
        elif kind in ("balances", "balances.stale_after"):
            balance = session.p402_key or ("wallet:alby" if server.name == "alby" else None)
            balance = balance or f"credits:{rng.choice(L402_ORIGINS)}"
            if kind == "balances":
                reason = f"the balance {balance} has {Amount(rng.randrange(0, 50), unit)} left, and this call may cost"
                reason += f" {Amount(rng.randrange(50, 500), unit)}"
            else:
                age = rng.choice(("6m", "14m", "2h", "31m"))
                reason = f"the balance {balance} was seen {age} ago and is stale (older than 5m); the guard will"
                reason += " not pay on it"
        elif kind == "idempotency":
            reason = f"payment {self._hex(64)} is already in progress: paying again could pay twice"
        elif kind == "approvals":
            reason = f"approval needed to call {paying}: ask the operator (`guard approvals list`)"
        else:  # adapters.p402
            tool, reason = "p402_chat", "the P402 session has expired: create a new one"
        self._event(session, at, tool, "deny", rule=rule, reason=reason)

    # balance observations, top-ups, spend seen only in a balance

    def observations(self) -> None:
        rng, plan = self.rng, self.plan
        keys: list[tuple[str, str, str | None, float, int, int]] = []  # key, source, unit, weight, first, last
        keys.append(("wallet:alby", "get_balance", "sat", 0.15, self.start, self.now - 20 * US))
        span = DAYS * DAY_US // P402_KEYS
        for i in range(P402_KEYS):
            first = self.start + i * span
            keys.append((f"p402:ps_{i:02d}", "p402", "usd_micro", 0.25 / P402_KEYS, first, first + span))
        for i, origin in enumerate(L402_ORIGINS):
            last = self.now - (rng.randrange(10, 240) if i < 5 else rng.randrange(600, 20 * 86_400)) * US
            keys.append((f"credits:{origin}", "l402-balance", f"credits:{origin}", 0.3 / 35, self.start, last))
        for _ in range(TOKEN_KEYS):
            first = rng.randrange(self.start, self.now - DAY_US)
            keys.append((f"tokens:{self._hex(12)}", "token-pilot", "tokens", 0.1 / TOKEN_KEYS, first, first + DAY_US))
        urls = [f"{o}/v1/{t}/{k}" for o in L402_ORIGINS for t in TOPICS for k in range(20)]
        for url in rng.sample(urls, QUOTE_KEYS):
            keys.append((f"quote:{url}", "quote", "sat", 0.2 / QUOTE_KEYS, self.start, self.now - 60 * US))
        rows: list[dict[str, Any]] = []
        for key, source, unit, weight, first, last in keys:
            count = max(2, round(plan.observations * weight))
            times = sorted(rng.randrange(first, max(first + 1, min(last, self.now))) for _ in range(count))
            rows += self._series(key, source, unit, times)
        rows.sort(key=lambda r: r["seen_us"])
        for row in rows:
            self.counts.observations += 1
            self.out.add("ledger_observations", {"id": self.counts.observations, **row})

    def _series(self, key: str, source: str, unit: str | None, times: list[int]) -> list[dict[str, Any]]:
        """One key's observations: money falls with use and is topped up; credits fall; quotes stay."""
        rng = self.rng
        money = key.startswith(("wallet:", "p402:"))
        top = {"sat": 2_000_000, "usd_micro": 10_000_000}.get(unit or "", 50_000)
        value = top if not key.startswith("quote:") else rng.choice(SAT_PRICES)
        rows = []
        for n, seen in enumerate(times):
            status = "quote" if source == "quote" else "active"
            if not key.startswith("quote:"):
                value = max(0, value - int(rng.expovariate(1 / (top / 400))))
            if money and value < top // 10 and rng.random() < 0.5:
                rise = top - value
                value = top
                self._event(
                    None,
                    seen,
                    source,
                    "topup",
                    server="alby" if key.startswith("wallet:") else "p402",
                    reason=f"{key} rose by {Amount(rise, unit or 'sat')} (a top-up)",
                )
            elif money and rng.random() < 0.004:
                self._external(key, source, unit or "sat", seen, rng.randrange(1, top // 50))
            if key.startswith("p402:") and n == len(times) - 1 and seen < self.now - DAY_US:
                status = rng.choice(("exhausted", "expired"))
            stale = (rng.random() < 0.05) if source == "l402-balance" else None
            rows.append(
                {
                    "source": source,
                    "key": key,
                    "amount": value,
                    "unit": unit,
                    "status": status,
                    "upstream_us": seen - rng.randrange(0, 60 * US) if source == "l402-balance" else None,
                    "upstream_stale": stale,
                    "seen_us": seen,
                }
            )
        return rows

    def _external(self, key: str, source: str, unit: str, at: int, amount: int) -> None:
        """A drop the guard's payments do not explain: `Ledger.charge` books it as an external hold."""
        server = "alby" if key.startswith("wallet:") else "p402"
        hold = self._hold(
            phase="settled",
            unit=unit,
            amount=amount,
            settled=amount,
            owner=self.rng.choice(self.owners),
            session=None,
            identity=None,
            tool=source,
            created_us=at,
            updated_us=at,
            balance_key=key,
            server=server,
            external=True,
        )
        identity = self.rng.choice(IDENTITIES)
        if unit == "sat":
            self._charge(hold, DAILY, f"identity:{identity}", 0, amount, at)
        else:
            self._charge(hold, USD_DAY, "global", 0, amount, at)
        reason = f"{key} fell by {Amount(amount, unit)}; the guard's payments explain {Amount(0, unit)}: "
        reason += f"{Amount(amount, unit)} was spent another way"
        self._event(
            None, at, source, "external", server=server, identity=identity, reason=reason, hold_id=hold, spent=amount
        )

    def budgets(self) -> None:
        for key, (budget, scope, defined) in sorted(self.counts.budgets.items()):
            row = {
                "key": key,
                "name": budget.name,
                "scope": scope,
                "limit_value": budget.limit,
                "unit": budget.unit,
                "window_spec": budget.window,
                "timezone": budget.timezone,
                "defined_us": defined,
            }
            self.out.add("ledger_budgets", row)


# --- where the ledger lives ----------------------------------------------------------------------------


class Store:
    """A ledger URL, made fresh (or reused), and what it takes to fill it fast and to clean up."""

    def __init__(self, target: str | None, pg_schema: str, keep: bool) -> None:
        self._temp: str | None = None
        self.keep = keep
        if target is None:
            self._temp = tempfile.mkdtemp(prefix="guard-operators-view-")
            target = str(Path(self._temp) / "ledger.db")
        if "://" not in target:
            target = f"sqlite:///{Path(target).resolve()}"
        parsed = make_url(target)
        self.dialect = parsed.get_backend_name()
        self.schema = pg_schema if self.dialect == "postgresql" else None
        if self.schema is not None:
            self.base = parsed
            parsed = parsed.update_query_dict({"options": f"-c search_path={self.schema}"})
        self.url = parsed.render_as_string(hide_password=False)
        self.shown = parsed.render_as_string(hide_password=True)

    @property
    def path(self) -> Path | None:
        return Path(make_url(self.url).database or "") if self.dialect == "sqlite" else None

    def exists(self) -> bool:
        if self.path is not None and not self.path.exists():
            return False  # connecting would create an empty file
        engine = create_engine(self.url)
        try:
            with engine.connect() as conn:
                return set(TABLES) <= set(conn.dialect.get_table_names(conn))
        finally:
            engine.dispose()

    def would_destroy(self) -> str | None:
        """What generating would delete that may not be ours to delete (None: nothing)."""
        if self.path is not None:
            return f"{self.path} exists" if self.path.exists() else None
        engine = create_engine(self.base)
        try:
            with engine.connect() as conn:
                tables = conn.dialect.get_table_names(conn, schema=self.schema)
        finally:
            engine.dispose()
        others = [t for t in tables if not t.startswith("ledger_")]
        return f"schema {self.schema} has tables other than a ledger's ({', '.join(others[:5])})" if others else None

    def fresh(self) -> None:
        if self.path is not None:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            return
        admin = create_engine(self.base)
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))
            conn.execute(text(f'CREATE SCHEMA "{self.schema}"'))
        admin.dispose()

    def filler(self) -> Engine:
        if self.dialect != "sqlite":
            return create_engine(self.url)
        engine = create_engine(self.url)
        # Only the fill skips fsync: a crash would just mean generating again.
        event.listen(engine, "connect", lambda dbapi, _: dbapi.execute("PRAGMA synchronous=OFF"))
        return engine

    def settle(self, engine: Engine) -> None:
        """After the fill: what a ledger that grew slowly would look like to the planner."""
        if self.dialect == "sqlite":
            with engine.connect() as conn:
                conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            return
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            for table in TABLES:
                conn.exec_driver_sql(f"VACUUM ANALYZE {table}")

    def describe(self, engine: Engine) -> str:
        if self.path is not None:
            files = [Path(f"{self.path}{suffix}") for suffix in ("", "-wal")]
            size = sum(f.stat().st_size for f in files if f.exists())
            return f"SQLite {sqlite3.sqlite_version} file {self.path} ({size / 2**20:.0f} MiB)"
        with engine.connect() as conn:
            server = conn.exec_driver_sql("SHOW server_version").scalar()
            pg_size = conn.exec_driver_sql(
                "SELECT SUM(pg_total_relation_size(c.oid)) FROM pg_class c"
                " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = current_schema() AND c.relkind = 'r'"
            ).scalar()
        return f"PostgreSQL {server}, schema {self.schema} of {self.shown} ({int(pg_size or 0) / 2**20:.0f} MiB)"

    def cleanup(self) -> None:
        if self.keep:
            return
        if self._temp is not None:
            shutil.rmtree(self._temp, ignore_errors=True)
        elif self.schema is not None:
            admin = create_engine(self.base)
            with admin.begin() as conn:
                conn.execute(text(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE'))
            admin.dispose()


def generate(store: Store, plan: Plan, seed: int, progress: Progress) -> dict[str, Any]:
    store.fresh()
    Ledger.open(store.url).close()  # the schema, as a guard creates it
    engine = store.filler()
    try:
        begin = time.perf_counter()
        now_us = time.time_ns() // 1000 - US
        gen = Generator(plan, seed, now_us, Writer(engine))
        progress(f"generating about {plan.rows:,} rows ({plan.sessions:,} sessions) into {store.shown}")
        gen.calls()
        gen.observations()
        gen.budgets()
        gen.out.flush()
        if store.dialect == "postgresql":  # explicit ids: move the sequences past them
            with engine.begin() as conn:
                for table in TABLES[:4]:
                    conn.exec_driver_sql(
                        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM {table}))"
                    )
        filled = time.perf_counter()
        progress("checkpoint / vacuum analyze")
        store.settle(engine)
        settled = time.perf_counter()
        return {"fill_s": filled - begin, "settle_s": settled - filled}
    finally:
        engine.dispose()


def _counts(rows: Any) -> dict[str, int]:
    return {str(key): int(count) for key, count in rows}


def census(store: Store) -> dict[str, Any]:
    """Rows per table, and the shapes the views depend on."""
    engine = create_engine(store.url)
    try:
        with engine.connect() as conn:
            rows = {t: int(conn.exec_driver_sql(f"SELECT COUNT(*) FROM {t}").scalar_one()) for t in TABLES}
            phases = _counts(conn.exec_driver_sql("SELECT phase, COUNT(*) FROM ledger_holds GROUP BY 1").all())
            decisions = _counts(
                conn.exec_driver_sql("SELECT decision, COUNT(*) FROM ledger_call_events GROUP BY 1").all()
            )
            span = conn.exec_driver_sql("SELECT MIN(created_us), MAX(created_us) FROM ledger_holds").one()
            keys = int(conn.exec_driver_sql("SELECT COUNT(DISTINCT key) FROM ledger_observations").scalar_one())
            externals = int(conn.exec_driver_sql("SELECT COUNT(*) FROM ledger_holds WHERE external").scalar_one())
        describe = store.describe(engine)
    finally:
        engine.dispose()
    days = (span[1] - span[0]) / DAY_US if span[0] is not None else 0
    return {
        "rows": rows,
        "total": sum(rows.values()),
        "hold_phases": phases,
        "external_holds": externals,
        "decisions": decisions,
        "observation_keys": keys,
        "days": days,
        "describe": describe,
    }


# --- what is timed ----------------------------------------------------------------------------------------


def _summary(samples: list[float]) -> dict[str, Any]:
    return {"best_s": min(samples), "median_s": statistics.median(samples), "samples_s": samples}


def _timed(function: Callable[[], Any], runs: int) -> tuple[dict[str, Any], Any]:
    samples, result = [], None
    for _ in range(runs):
        begin = time.perf_counter()
        result = function()
        samples.append(time.perf_counter() - begin)
    return _summary(samples), result


def budget_show(url: str) -> dict[str, float | int]:
    """What `guard budget show --json` does between start-up and printing, each step timed."""
    stale_after = seconds(Balances().stale_after)  # no policy file: the default
    marks = [time.perf_counter()]
    ledger = Ledger.open(url, read_only=True)
    marks.append(time.perf_counter())
    try:
        states = ledger.budget_states()
        marks.append(time.perf_counter())
        observed = [(o, age) for o, age in ledger.observed() if not o.key.startswith("quote:")]
        marks.append(time.perf_counter())
        view: dict[str, Any] = {
            "ledger": url,
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "session": None,
            "stale_after_s": int(stale_after),
            "budgets": [budget_fields(state) for state in states],
            "balances": [balance_fields(o, age, stale_after) for o, age in sorted(observed, key=lambda b: b[0].key)],
        }
        json.dumps(view, indent=2)
        marks.append(time.perf_counter())
    finally:
        ledger.close()
    marks.append(time.perf_counter())
    steps = ("open", "budget_states", "observed", "view", "close")
    timings: dict[str, float | int] = {step: b - a for step, a, b in zip(steps, marks, marks[1:], strict=False)}
    return {**timings, "total": marks[-1] - marks[0], "budgets": len(view["budgets"]), "balances": len(observed)}


def _subprocess_env(home: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GUARD_")}
    env["XDG_CONFIG_HOME"] = home  # no policy file found: what stale_after defaults to
    return env


def _guard_command() -> list[str]:
    script = Path(sys.executable).with_name("guard")
    return [str(script)] if script.exists() else [sys.executable, "-m", "guard"]


# One view, first thing in a fresh process once `guard.cli.app` is imported: what the command pays beyond imports
# (cold caches: connecting, the driver's and SQLAlchemy's first statements, time zones...).
COLD = """
import sys, time
sys.path.insert(0, sys.argv[1])
import guard.cli.app
from operators_view import {function}
begin = time.perf_counter()
{function}(*sys.argv[2:])
print(time.perf_counter() - begin)
"""


def cold(function: str, args: list[str], env: dict[str, str], runs: int) -> dict[str, Any]:
    command = [sys.executable, "-c", COLD.format(function=function), str(ROOT / "bench"), *args]
    return _summary([float(run_command(command, env).split()[-1]) for _ in range(runs)])


def run_command(command: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=env["XDG_CONFIG_HOME"], check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} ... exited {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done.stdout


# report: what `guard report` runs (guard/_report_command.py), bound late so the rest works without it.


def report_parts() -> tuple[Callable[..., tuple[datetime, datetime]], Callable[[Any, str], str]]:
    from guard.cli.report import period
    from guard.operators.report import render

    return period, render


def report_once(url: str, since: str, fmt: str) -> dict[str, float]:
    """What `guard report --since SINCE --format FMT` does between start-up and printing, each step timed."""
    period, render = report_parts()
    begin = time.perf_counter()
    start, end = period(since, None, "UTC", datetime.now(UTC))
    with Ledger.open(url, read_only=True) as ledger:
        opened = time.perf_counter()
        report = ledger.report(start, end)
        built = time.perf_counter()
        render(report, fmt)
        done = time.perf_counter()
    return {"open": opened - begin, "query": built - opened, "render": done - built, "total": done - begin}


def measure(store: Store, runs: int, progress: Progress) -> dict[str, Any]:
    result: dict[str, Any] = {}
    home = tempfile.mkdtemp(prefix="guard-bench-home-")
    env = _subprocess_env(home)
    guard = _guard_command()
    try:
        progress(f"budget show in process, {runs} runs")
        budget_show(store.url)  # warm-up: first imports, the OS cache
        samples = [budget_show(store.url) for _ in range(runs)]
        result["show"] = {
            "total": _summary([float(s["total"]) for s in samples]),
            "steps_median_s": {
                step: statistics.median(float(s[step]) for s in samples)
                for step in ("open", "budget_states", "observed", "view", "close")
            },
            "budgets": samples[-1]["budgets"],
            "balances": samples[-1]["balances"],
        }
        progress("python start-up and imports")
        result["python_startup"], _ = _timed(lambda: run_command([sys.executable, "-c", "pass"], env), runs)
        result["import_guard_cli"], _ = _timed(
            lambda: run_command([sys.executable, "-c", "import guard.cli.app"], env), runs
        )
        progress(f"{' '.join(Path(guard[0]).name for _ in [0])} budget show --json, {runs} runs")
        show_cli = [*guard, "budget", "show", "--ledger", store.url, "--json"]
        result["show_cli"], out = _timed(lambda: run_command(show_cli, env), runs)
        result["show_cold"] = cold("budget_show", [store.url], env, runs)
        shown = json.loads(out)  # what it printed is the view (the count of budgets in use moves with the clock)
        if not isinstance(shown.get("budgets"), list) or not isinstance(shown.get("balances"), list):
            raise RuntimeError(f"guard budget show --json printed no view: {out[:200]!r}")
        try:
            report_parts()
        except ImportError as exc:
            result["report_missing"] = f"guard/_report.py or guard/_report_command.py is not there yet ({exc})"
            return result
        reports: dict[str, Any] = {}
        for since, formats in (("24h", FORMATS), ("7d", FORMATS), ("30d", ("json",))):
            for fmt in formats:
                progress(f"report --since {since} --format {fmt} in process, {runs} runs")
                report_once(store.url, since, fmt)  # warm-up
                samples = [report_once(store.url, since, fmt) for _ in range(runs)]
                reports[f"{since} {fmt}"] = {
                    "total": _summary([s["total"] for s in samples]),
                    "steps_median_s": {
                        k: statistics.median(s[k] for s in samples) for k in ("open", "query", "render")
                    },
                }
        result["report"] = reports
        progress(f"guard report --since 24h --format json, {runs} runs")
        report_cli = [*guard, "report", "--ledger", store.url, "--since", "24h", "--format", "json"]
        result["report_cli"], _ = _timed(lambda: run_command(report_cli, env), runs)
        result["report_cold"] = cold("report_once", [store.url, "24h", "json"], env, runs)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return result


# --- where the time goes -----------------------------------------------------------------------------------


class Tracer:
    """Every statement sent to the database while active (all engines), with the time its execute took: on
    SQLite that is the work up to the first row (all of it, for an aggregate), on psycopg the whole result."""

    def __init__(self) -> None:
        self.statements: dict[str, dict[str, Any]] = {}
        self._started: list[float] = []

    def __enter__(self) -> Tracer:
        event.listen(Engine, "before_cursor_execute", self._before)
        event.listen(Engine, "after_cursor_execute", self._after)
        return self

    def __exit__(self, *exc: object) -> None:
        event.remove(Engine, "before_cursor_execute", self._before)
        event.remove(Engine, "after_cursor_execute", self._after)

    def _before(self, *_: Any) -> None:
        self._started.append(time.perf_counter())

    def _after(self, _conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        elapsed = time.perf_counter() - self._started.pop()
        entry = self.statements.setdefault(statement, {"count": 0, "total_s": 0.0, "params": parameters})
        entry["count"] += 1
        entry["total_s"] += elapsed


def trace(store: Store, top: int = 6) -> dict[str, list[dict[str, Any]]]:
    """The statements `budget show` and the 24 h report run, slowest first (by total time), each with its
    plan for the parameters of its first run: EXPLAIN QUERY PLAN (SQLite), EXPLAIN (ANALYZE, BUFFERS)."""
    views: dict[str, Callable[[], Any]] = {"budget show": lambda: budget_show(store.url)}
    with contextlib.suppress(ImportError):
        report_parts()
        views["report --since 24h --format json"] = lambda: report_once(store.url, "24h", "json")
    prefix = "EXPLAIN QUERY PLAN " if store.dialect == "sqlite" else "EXPLAIN (ANALYZE, BUFFERS) "
    found: dict[str, list[dict[str, Any]]] = {}
    engine = create_engine(store.url)
    try:
        for view, run in views.items():
            with Tracer() as tracer:
                run()
            slowest = sorted(tracer.statements.items(), key=lambda kv: -kv[1]["total_s"])[:top]
            found[view] = []
            with engine.connect() as conn:
                for statement, entry in slowest:
                    rows = conn.exec_driver_sql(prefix + statement, entry["params"]).all()
                    found[view].append(
                        {
                            "statement": " ".join(statement.split()),
                            "count": entry["count"],
                            "total_s": entry["total_s"],
                            "plan": [str(row[-1]) for row in rows],
                        }
                    )
    finally:
        engine.dispose()
    return found


# --- output ---------------------------------------------------------------------------------------------------


def _machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    return {
        "nproc": os.cpu_count(),
        "cpu": model or platform.processor(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "sqlalchemy": version("sqlalchemy"),
    }


def _loadavg() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def _ms(seconds_: float) -> str:
    return f"{seconds_ * 1000:,.0f}"


def _table(r: dict[str, Any]) -> str:
    m, c = r["machine"], r["census"]
    out = [
        f"operators' view on {c['describe']}",
        f"machine: nproc {m['nproc']}, {m['cpu']}; python {m['python']}, SQLAlchemy {m['sqlalchemy']}; "
        f"load average {r['loadavg_before']} at start, {r['loadavg_measured']} when timing began, "
        f"{r['loadavg_after']} at the end",
    ]
    if "generated" in r:
        g = r["generated"]
        out.append(f"generated in {g['fill_s']:.1f} s (+ {g['settle_s']:.1f} s checkpoint / vacuum analyze)")
    rows = ", ".join(f"{t.removeprefix('ledger_')} {n:,}" for t, n in c["rows"].items())
    out += [
        f"rows: {c['total']:,} ({rows}) over {c['days']:.1f} days",
        "holds by phase: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(c["hold_phases"].items()))
        + f" ({c['external_holds']:,} external); call events: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(c["decisions"].items()))
        + f"; {c['observation_keys']} balance keys",
        "",
        f"{'':46}{'best ms':>10}{'median ms':>11}  goal",
    ]
    t = r["timings"]

    def line(label: str, s: dict[str, Any], goal: float | None) -> None:
        verdict = ""
        if goal is not None:
            verdict = f"<= {_ms(goal)} ms: " + ("meets" if s["median_s"] <= goal else "MISSES")
        out.append(f"{label:46}{_ms(s['best_s']):>10}{_ms(s['median_s']):>11}  {verdict}")

    show = t["show"]
    shown = f"({show['budgets']} budgets, {show['balances']} balances)"
    line(f"budget show, in process {shown}", show["total"], GOAL_SHOW_S)
    out.append("    median by step: " + ", ".join(f"{k} {_ms(v)}" for k, v in show["steps_median_s"].items()) + " ms")
    line("guard budget show --json (subprocess)", t["show_cli"], GOAL_SHOW_S)
    line("  of which python -c pass", t["python_startup"], None)
    line("  of which python -c 'import guard.cli.app'", t["import_guard_cli"], None)
    line("  budget show in process, first in a fresh one", t["show_cold"], None)
    if "report_missing" in t:
        out.append(f"report: not measured: {t['report_missing']}")
    else:
        for label, s in t["report"].items():
            line(f"report --since {label}, in process", s["total"], GOAL_REPORT_S)
            out.append(
                "    median by step: " + ", ".join(f"{k} {_ms(v)}" for k, v in s["steps_median_s"].items()) + " ms"
            )
        line("guard report --since 24h --format json (subprocess)", t["report_cli"], GOAL_REPORT_S)
        line("  report 24h json in process, first in a fresh one", t["report_cold"], None)
    out.append("goal verdicts on the median; the subprocess lines include Python start-up and imports")
    for view, statements in r.get("plans", {}).items():
        out += ["", f"{view}: its slowest statements (total time in execute, times run), with their plans"]
        for s in statements:
            out.append(f"  {_ms(s['total_s'])} ms in {s['count']}x: {s['statement']}")
            out += [f"      {p}" for p in s["plan"]]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--ledger",
        metavar="PATH|URL",
        help="SQLite file or URL, or a postgresql+psycopg:// URL (default: a temp SQLite file)",
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="about how many rows (default 1000000)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each measurement (default 5)")
    parser.add_argument("--seed", type=int, default=6, help="random seed of the generated ledger (default 6)")
    parser.add_argument("--pg-schema", default=DEFAULT_PG_SCHEMA, help="PostgreSQL schema of the ledger")
    parser.add_argument("--reuse", action="store_true", help="time the ledger as it is: generate nothing")
    parser.add_argument("--keep", action="store_true", help="keep the ledger afterwards (a temp file, a schema)")
    parser.add_argument("--force", action="store_true", help="generate even over an existing SQLite file")
    parser.add_argument("--explain", action="store_true", help="print the plans of the views' main queries")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.rows < 10_000:
        parser.error("--rows must be at least 10000")
    if args.reuse and args.ledger is None:
        parser.error("--reuse needs --ledger")

    def progress(message: str) -> None:
        print(f"... {message}", file=sys.stderr, flush=True)

    store = Store(args.ledger, args.pg_schema, keep=args.keep or args.reuse)
    if store.schema == "public":
        parser.error("--pg-schema public: the database's own schema (the tests' ledger lives there) is never used")
    if args.reuse and not store.exists():
        parser.error(f"--reuse: there are no ledger tables at {store.shown} to time (generate them first)")
    if not args.reuse and (danger := store.would_destroy()) and not args.force:
        parser.error(f"{danger}: generating starts afresh and would destroy it (--force to allow that)")
    result: dict[str, Any] = {"machine": _machine(), "ledger": store.shown, "loadavg_before": _loadavg()}
    try:
        if not args.reuse:
            result["generated"] = generate(store, Plan(args.rows), args.seed, progress)
        result["census"] = census(store)
        result["loadavg_measured"] = _loadavg()
        progress(f"{result['census']['total']:,} rows; load average {result['loadavg_measured']}")
        result["timings"] = measure(store, args.runs, progress)
        if args.explain:
            result["plans"] = trace(store)
        result["loadavg_after"] = _loadavg()
    finally:
        store.cleanup()
    print(json.dumps(result, indent=2) if args.json else _table(result))


if __name__ == "__main__":
    main()
