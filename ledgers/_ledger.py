"""The ledger: budgets, two-phase holds, durable rate windows, balance observations, call events.

Every check-and-reserve happens in one transaction: SQLite takes the write lock first
(`BEGIN IMMEDIATE`), PostgreSQL locks the rows of the budgets and rate limits involved
(`SELECT ... FOR UPDATE`). So concurrent reservations against one budget cannot all pass the
check and overspend together.

A hold moves through phases, each written durably before the step it allows:

    reserved ──mark_forwarded──► forwarded ──settle──► settled
        │                            │  └────void────► voided
        ├──settle / void             └──mark_in_doubt──► in_doubt ──resolve──► settled | voided

A crash leaves `reserved` holds (never forwarded: voided at recovery) and `forwarded` holds (the
money may have left: kept counted as `in_doubt` until resolved). A hold resolves at most once.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache, lru_cache, partial
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Connection, CursorResult, Engine, ExceptionContext, create_engine, event, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from ledgers._errors import (
    AlreadyPaid,
    AmountError,
    ApprovalError,
    BudgetExceeded,
    HoldStateError,
    LedgerError,
    PaymentInFlight,
    RateLimited,
    SchemaError,
    StorageError,
)
from ledgers._money import Amount, Rates, check_value
from ledgers._report import SpendReport, build_report
from ledgers._schema import PHASES, SCHEMA_VERSION, migrate, schema_version
from ledgers._time import US_PER_S, Clock, SystemClock, Window, from_us, to_us

logger = logging.getLogger("ledgers")

# Silence after which another host's guard is taken to be gone, and its open holds recovered.
DEFAULT_LEASE_S = 600
# Retries of a write that SQLite reports busy despite its busy timeout (rare, but never an error).
BUSY_RETRIES = 50
# PostgreSQL connections one open ledger keeps at most (no overflow): many guards share one server,
# whose max_connections is 100 by default.
DEFAULT_POOL = 4
# How long an operation waits for one of them before it fails (the call it serves is refused).
POOL_TIMEOUT_S = 30.0
# The longest a remembered price is used (a BOLT11 invoice's default expiry): prices change.
QUOTE_LIFETIME_S = 3600


def default_path() -> Path:
    """The per-user SQLite ledger: $XDG_DATA_HOME/guard/ledger.db (~/.local/share/guard/ledger.db)."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "guard" / "ledger.db"


@dataclass(frozen=True)
class Budget:
    """A limit on what a scope may spend (or hold) within a window.

    `scope` is the key the budget counts for: "session:<id>", "identity:<name>",
    "server:<name>" or "global". Budgets with the same name and scope share one count."""

    name: str
    limit: Amount
    scope: str = "global"
    window: Window = field(default_factory=Window.session)

    @property
    def key(self) -> str:
        return f"budget:{self.name}@{self.scope}"


@dataclass(frozen=True)
class RateLimit:
    """At most `limit` per `window` (sliding) for `key` (e.g. "calls:l402-fetch/1m@session:s1").

    Each call counts `cost` (1 for a call rate; a quota may count an amount)."""

    key: str
    limit: int
    window: Window
    cost: int = 1

    def __post_init__(self) -> None:
        check_value(self.limit, "rate limit")
        check_value(self.cost, "rate limit cost")
        if self.window.kind != "sliding":
            raise LedgerError(f"rate limit {self.key}: the window must be a duration such as 1m, not {self.window}")

    @property
    def lock_key(self) -> str:
        return f"rate:{self.key}"


@dataclass(frozen=True)
class HoldInfo:
    """A hold: `amount` was reserved; `settled` (in the same unit) is what was paid, which may be more."""

    id: int
    phase: str
    amount: Amount
    settled: Amount | None
    idempotency_key: str | None
    created: datetime
    session: str | None = None
    identity: str | None = None
    tool: str | None = None
    balance_key: str | None = None
    server: str | None = None
    resource: str | None = None
    priced_by: str | None = None  # what bounded the reservation (the caller's word: a quote, a cap...)

    @property
    def over_reservation(self) -> Amount | None:
        """What was paid above the reservation, if anything was."""
        return self.settled.above(self.amount) if self.settled is not None else None


@dataclass(frozen=True)
class Usage:
    """A budget at one moment: spent (settled) and held (open holds), what remains, since when."""

    budget: Budget
    spent: int
    held: int
    window_start: datetime | None

    @property
    def remaining(self) -> int:
        return max(0, self.budget.limit.value - self.spent - self.held)


@dataclass(frozen=True)
class BudgetState:
    """A budget as operators see it: its use in the current window, split by how sure it is.

    `held` counts open holds not in doubt; `in_doubt` those whose payment may or may not have left."""

    budget: Budget
    spent: int
    held: int
    in_doubt: int
    window_start: datetime | None  # None: the session's whole life
    resets_at: datetime | None  # when a calendar window starts again (None: session or sliding)
    last_used: datetime | None

    @property
    def used(self) -> int:
        return self.spent + self.held + self.in_doubt

    @property
    def remaining(self) -> int:
        return max(0, self.budget.limit.value - self.used)


@dataclass(frozen=True)
class Quote:
    """A price named for `key` (a resource) before anything was paid, usable until `expires`."""

    key: str
    amount: Amount
    expires: datetime
    payment_id: str | None = None
    seen: datetime | None = None  # set by the ledger when stored


@dataclass(frozen=True)
class BalanceObservation:
    """What an upstream said about a balance: `key` is an origin, a P402 session id, a wallet."""

    source: str
    key: str
    amount: Amount | None = None
    status: str | None = None
    upstream_time: datetime | None = None
    upstream_stale: bool | None = None
    seen: datetime | None = None  # set by the ledger when stored
    # Money (a wallet, a P402 session), not a server's own credits: a drop the guard's payments do not
    # explain is spend seen only in the balance (external), and reports show the drift.
    money: bool = False


@dataclass(frozen=True)
class Approval:
    """A request for a human's decision on one exact action, single-use.

    `state`: pending → approved | denied; approved → used (once). `expired` once past `expires`."""

    id: str
    subject: str
    identity: str | None
    action: str
    digest: str
    state: str
    created: datetime
    expires: datetime
    decided: datetime | None
    expired: bool


Decision = Literal["allow", "deny", "error", "external", "topup", "resolve"]
"""What a call event records: a call allowed, denied or failed upstream; spend seen only in a balance
(`external`), a balance that rose (`topup`), a hold in doubt resolved (`resolve`)."""

RuleKind = Literal[
    "default",  # not allowed by the policy (default: deny)
    "tool",  # a tool rule: deny, hidden, a variant of a named tool
    "condition",  # an argument condition (`when`)
    "approval",  # a human's approval: pending, denied, or no longer usable
    "adapter",  # the upstream family's adapter refuses the call (an unreadable invoice, a name variant)
    "price",  # no price, no pay; over max_price; a price in a unit no cap or budget compares with
    "budget",  # a budget would go over its limit, or none covers the payment's unit
    "rate_limit",  # a call rate limit is used up
    "quota",  # a quota counter is used up
    "balance",  # a balance that cannot pay (exhausted, expired, below the price)
    "stale_balance",  # a balance seen too long ago to pay on
    "idempotency",  # the payment is already in flight, in doubt, or made
    "wire",  # refused before any decision: no usable id, an id in flight, unreadable params
]
"""Which kind of rule decided a call: reports and alerts read this, never the rule's name or its words."""


@dataclass(frozen=True)
class CallRecord:
    """One evaluated call for the audit trail (arguments only as a redacted digest). `rule` names the rule
    as the policy does (`tools.l402-fetch.max_price`); `kind` says what kind of rule it is; `balance_key` the
    balance a balance rule looked at."""

    tool: str
    decision: Decision
    session: str | None = None
    identity: str | None = None
    rule: str | None = None
    reason: str | None = None
    price: Amount | None = None
    hold_id: int | None = None
    spent: Amount | None = None
    latency_us: int | None = None
    args_digest: str | None = None
    server: str | None = None
    kind: RuleKind | None = None
    balance_key: str | None = None

    @property
    def over_reservation(self) -> Amount | None:
        """What the call paid above what it reserved (`price`), if anything."""
        return self.spent.above(self.price) if self.spent is not None and self.price is not None else None


@dataclass(frozen=True)
class RecordedCall:
    """A call event as stored: its id (increasing) and when it was written."""

    id: int
    at: datetime
    call: CallRecord


class Ledger:
    """Open with `Ledger.open(url)`; SQLite (default) or PostgreSQL, the same code.

    Thread-safe: one engine, one connection per operation. Every method is synchronous; call it
    from a worker thread in async code."""

    def __init__(
        self, engine: Engine, clock: Clock, *, owner: str, rates: Rates | None, lease_s: float, read_only: bool = False
    ) -> None:
        self._engine = engine
        self._read_only = read_only
        # Budget definitions this process has stored (see `_define_budgets`): one write per definition.
        self._defined: set[tuple[str, int, str, str, str]] = set()
        self._clock = clock
        self._rates = rates
        self._lease_us = int(lease_s * US_PER_S)
        self._postgres = engine.dialect.name == "postgresql"
        self.owner = owner
        self._last_us = 0
        self._time_lock = threading.Lock()

    @classmethod
    def open(
        cls,
        url: str | os.PathLike[str] | None = None,
        *,
        clock: Clock | None = None,
        rates: Rates | None = None,
        lease_s: float = DEFAULT_LEASE_S,
        recover: bool = True,
        read_only: bool = False,
        pool: int = DEFAULT_POOL,
    ) -> Ledger:
        """Open (creating or upgrading) the ledger at `url`: a SQLAlchemy URL, a file path, or None for
        `default_path()`. Then recover what crashed processes left open (see the module doc).

        `read_only`: for operators' views next to a running guard: nothing is created, upgraded,
        registered or recovered, and no write lock is ever taken (SQLite's WAL readers never block
        the writer). A ledger that does not exist yet reads as empty.

        `pool`: the most PostgreSQL connections this ledger keeps open (SQLite ignores it).

        Raises:
            SchemaError: the ledger was written by a newer release (or, read-only, by an older one).
            StorageError: the database cannot be reached or created.
        """
        if read_only:
            return cls._open_read_only(url, clock or SystemClock(), rates)
        engine = _engine(url, pool)
        ledger = cls(engine, clock or SystemClock(), owner=uuid.uuid4().hex, rates=rates, lease_s=lease_s)
        try:
            with ledger._write() as conn:
                migrate(conn)
            with ledger._write() as conn:
                ledger._last_us = _latest_stored_us(conn)
                ledger._register(conn)
            if recover:
                ledger.recover()
        except Exception:
            engine.dispose()
            raise
        return ledger

    @classmethod
    def _open_read_only(cls, url: str | os.PathLike[str] | None, clock: Clock, rates: Rates | None) -> Ledger:
        if _sqlite_file_missing(url):
            engine = _engine("sqlite://")  # nothing there yet: an empty ledger in memory
            with engine.begin() as conn:
                migrate(conn)
        else:
            engine = _engine(url)
        ledger = cls(engine, clock, owner="reader", rates=rates, lease_s=DEFAULT_LEASE_S, read_only=True)
        try:
            with ledger._read() as conn:
                found = schema_version(conn)
                if found == 0:
                    engine.dispose()
                    engine = _engine("sqlite://")
                    with engine.begin() as empty:
                        migrate(empty)
                    ledger._engine = engine
                elif found != SCHEMA_VERSION:
                    raise SchemaError(
                        f"the ledger's schema is version {found}, this release reads version {SCHEMA_VERSION}:"
                        + (" upgrade guard" if found > SCHEMA_VERSION else " start `guard run` once to upgrade it")
                    )
                ledger._last_us = _latest_stored_us(conn) if found else 0
        except Exception:
            engine.dispose()
            raise
        return ledger

    def close(self) -> None:
        if not self._read_only:
            with self._write() as conn:
                _run(conn, "DELETE FROM ledger_owners WHERE id = :id", {"id": self.owner})
        self._engine.dispose()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # time

    def _now_us(self) -> int:
        """The clock, never earlier than a time this ledger stored before."""
        with self._time_lock:
            self._last_us = max(to_us(self._clock.now()), self._last_us)
            return self._last_us

    # holds

    def reserve(
        self,
        budgets: Sequence[Budget],
        amount: Amount,
        *,
        idempotency_key: str | None = None,
        rate_limits: Sequence[RateLimit] = (),
        session: str | None = None,
        identity: str | None = None,
        tool: str | None = None,
        balance_key: str | None = None,
        server: str | None = None,
        resource: str | None = None,
        priced_by: str | None = None,
    ) -> int:
        """Check every budget and rate limit and, in the same transaction, write the hold (and the
        calls the rate limits count). `balance_key` names the balance the payment draws on (see
        `spent_from`); `server` and `resource` (a URL without its query) are for reports, `priced_by`
        what bounded `amount` (a quote, a cap). Returns the hold id.

        Raises:
            BudgetExceeded / RateLimited: which rule, what remains, when to retry. Nothing written.
            PaymentInFlight / AlreadyPaid: the idempotency key is open, or was paid. Nothing written.
            AmountError / UnitMismatch: an amount or unit is wrong. Nothing written.
        """
        if not isinstance(amount, Amount):
            raise AmountError(f"reserve() needs an Amount, not {type(amount).__name__} {amount!r}")
        charges = [(b, amount.to(b.limit.unit, rates=self._rates, rounding="up").value) for b in budgets]
        keys = sorted({b.key for b in budgets} | {r.lock_key for r in rate_limits})
        with self._write(lock_keys=keys) as conn:
            now = self._now_us()
            if idempotency_key is not None:
                self._check_key(conn, idempotency_key)
            for rate in rate_limits:
                self._check_rate(conn, rate, now)
            for budget, value in charges:
                self._check_budget(conn, budget, value, now)
            mixed = any(b.limit.unit != amount.unit for b in budgets)
            where = _Where(session, identity, tool, balance_key, server, resource, priced_by)
            hold_id = self._insert_hold(conn, amount, idempotency_key, now, where, mixed)
            defined = self._define_budgets(conn, budgets, now)
            for budget, value in charges:
                _run(
                    conn,
                    "INSERT INTO ledger_charges (hold_id, budget, unit, held, spent, created_us)"
                    " VALUES (:h, :b, :u, :v, 0, :t)",
                    {"h": hold_id, "b": budget.key, "u": budget.limit.unit, "v": value, "t": now},
                )
            self._count_calls(conn, rate_limits, now)
        self._defined |= defined
        return hold_id

    def hit(self, rate_limits: Sequence[RateLimit]) -> None:
        """Count one call against rate limits, if all have room (no money involved).

        Raises:
            RateLimited: a limit has no calls left. Nothing written."""
        with self._write(lock_keys=sorted(r.lock_key for r in rate_limits)) as conn:
            now = self._now_us()
            for rate in rate_limits:
                self._check_rate(conn, rate, now)
            self._count_calls(conn, rate_limits, now)

    def check_rates(self, rate_limits: Sequence[RateLimit]) -> None:
        """Whether one more call fits every rate limit now, counting nothing (the count that binds is the
        one `reserve` or `hit` makes in its own transaction).

        Raises:
            RateLimited: a limit has no calls left."""
        with self._read() as conn:
            now = self._now_us()
            for rate in rate_limits:
                self._check_rate(conn, rate, now)

    def mark_forwarded(self, hold_id: int) -> None:
        """Record that the paying call is about to be sent upstream (before it is sent)."""
        self._move(hold_id, ("reserved",), "forwarded")

    def settle(self, hold_id: int, actual: Amount) -> None:
        """The call finished; `actual` was paid. All of it is recorded, above the hold too: then each
        budget's charge is `actual` in its unit (rounded up), the budget may go over its limit, and every
        further reservation against it is refused (see `HoldInfo.over_reservation`)."""
        self._finish(hold_id, ("reserved", "forwarded"), actual)

    def void(self, hold_id: int) -> None:
        """Provably nothing was paid: release the hold."""
        self._finish(hold_id, ("reserved", "forwarded"), None)

    def mark_in_doubt(self, hold_id: int) -> None:
        """The outcome is unknown (timeout, crash, `paymentState: unknown`): keep it counted in full."""
        self._move(hold_id, ("forwarded",), "in_doubt")

    def resolve(self, hold_id: int, actual: Amount, event: CallRecord | None = None) -> None:
        """An in-doubt hold's outcome became known: `actual` was paid (zero: nothing was), recorded whole
        as `settle` records it; `event`, its call event, is recorded with it."""
        self._finish(hold_id, ("in_doubt",), actual if actual.value else None)
        if event is not None:  # TEMP shim: two transactions, until the ledger's own resolve writes both in one
            self.record(event)

    def hold(self, hold_id: int) -> HoldInfo:
        with self._read() as conn:
            row = _run(
                conn,
                "SELECT id, phase, unit, amount, settled, idempotency_key, created_us, session, identity, tool,"
                " balance_key, server, resource, priced_by FROM ledger_holds WHERE id = :id",
                {"id": hold_id},
            ).first()
        if row is None:
            raise HoldStateError(f"hold {hold_id} does not exist")
        settled = Amount(row.settled, row.unit) if row.settled is not None else None
        return HoldInfo(
            row.id,
            row.phase,
            Amount(row.amount, row.unit),
            settled,
            row.idempotency_key,
            from_us(row.created_us),
            row.session,
            row.identity,
            row.tool,
            row.balance_key,
            row.server,
            row.resource,
            row.priced_by,
        )

    def name_payment(self, hold_id: int, idempotency_key: str) -> bool:
        """Give a hold the payment id its answer revealed (a 402's payment hash), so that payment cannot
        be made again while the hold is open and a later proof can find it. False when another open
        or settled hold has that id already (the hold keeps none)."""
        try:
            with self._write() as conn, conn.begin_nested() if self._postgres else nullcontext():
                named = _run(
                    conn,
                    "UPDATE ledger_holds SET idempotency_key = :k WHERE id = :h AND idempotency_key IS NULL",
                    {"k": idempotency_key, "h": hold_id},
                ).rowcount
        except IntegrityError:
            return False
        return bool(named)

    def hold_for_payment(self, idempotency_key: str) -> HoldInfo | None:
        """The hold that is not voided for this payment (a payment hash, an x402 nonce), if any."""
        with self._read() as conn:
            hold_id = _run(
                conn,
                "SELECT id FROM ledger_holds WHERE idempotency_key = :k AND phase != 'voided'",
                {"k": idempotency_key},
            ).scalar()
        return self.hold(int(hold_id)) if hold_id is not None else None

    def open_holds(self, phase: str | None = None) -> list[HoldInfo]:
        """Holds not yet resolved (reserved, forwarded, in doubt), oldest first."""
        phases = (phase,) if phase else ("reserved", "forwarded", "in_doubt")
        with self._read() as conn:
            ids = [
                r[0]
                for r in conn.execute(
                    _q("SELECT id FROM ledger_holds WHERE phase IN :p ORDER BY id").bindparams(_in("p")),
                    {"p": phases},
                )
            ]
        return [self.hold(i) for i in ids]

    def usage(self, budget: Budget) -> Usage:
        """What `budget` has spent and holds in its current window."""
        now = self._now_us()
        start = budget.window.start_us(now)
        with self._read() as conn:
            held, spent = self._sums(conn, budget.key, start)
        return Usage(budget, spent, held, from_us(start) if budget.window.kind != "session" else None)

    def count(self, key: str, window: Window) -> int:
        """Calls counted for a rate-limit key within `window` (sliding)."""
        now = self._now_us()
        with self._read() as conn:
            return int(
                _run(
                    conn,
                    "SELECT COALESCE(SUM(weight), 0) FROM ledger_rate_events WHERE key = :k AND at_us >= :s",
                    {"k": key, "s": window.start_us(now)},
                ).scalar_one()
            )

    # observations and call events

    def observe(self, observation: BalanceObservation) -> None:
        """Store what an upstream said about a balance."""
        amount = observation.amount
        if amount is not None and not isinstance(amount, Amount):
            raise AmountError(f"an observation's amount must be an Amount, not {amount!r}")
        upstream_us = to_us(observation.upstream_time) if observation.upstream_time else None
        with self._write() as conn:
            _run(
                conn,
                "INSERT INTO ledger_observations"
                " (source, key, amount, unit, status, upstream_us, upstream_stale, seen_us)"
                " VALUES (:source, :key, :amount, :unit, :status, :up, :stale, :seen)",
                {
                    "source": observation.source,
                    "key": observation.key,
                    "amount": amount.value if amount else None,
                    "unit": amount.unit if amount else None,
                    "status": observation.status,
                    "up": upstream_us,
                    "stale": observation.upstream_stale,
                    "seen": self._now_us(),
                },
            )

    def latest(self, key: str) -> tuple[BalanceObservation, float] | None:
        """The newest observation for `key`, and its age in seconds by the guard's clock."""
        with self._read() as conn:
            row = _run(
                conn,
                "SELECT source, key, amount, unit, status, upstream_us, upstream_stale, seen_us"
                " FROM ledger_observations WHERE key = :k ORDER BY seen_us DESC, id DESC LIMIT 1",
                {"k": key},
            ).first()
        if row is None:
            return None
        return _observation(row), (self._now_us() - row.seen_us) / US_PER_S

    def spent_from(self, balance_key: str, since: datetime) -> list[Amount]:
        """What this ledger's payments took from a balance since a moment, one Amount per unit: settled
        amounts, and in-doubt ones in full (they may have left)."""
        with self._read() as conn:
            rows: Any = _run(
                conn,
                "SELECT unit, SUM(CASE WHEN phase = 'settled' THEN settled ELSE amount END) FROM ledger_holds"
                " WHERE balance_key = :k AND updated_us > :s AND phase IN ('settled', 'in_doubt') GROUP BY unit",
                {"k": balance_key, "s": to_us(since)},
            ).all()
        return [Amount(int(row[1]), row[0]) for row in rows if row[1]]

    def charge(
        self,
        budgets: Sequence[Budget],
        amount: Amount,
        *,
        balance_key: str | None = None,
        session: str | None = None,
        tool: str | None = None,
        server: str | None = None,
    ) -> int:
        """Record spend that already happened (seen only in a balance): a settled hold counted against
        `budgets`, never refused (the money is gone). Returns the hold id."""
        charges = [(b, amount.to(b.limit.unit, rates=self._rates, rounding="up").value) for b in budgets]
        with self._write(lock_keys=sorted({b.key for b in budgets})) as conn:
            now = self._now_us()
            mixed = any(b.limit.unit != amount.unit for b in budgets)
            where = _Where(session, None, tool, balance_key, server, None, None)
            hold_id = self._insert_hold(conn, amount, None, now, where, mixed)
            defined = self._define_budgets(conn, budgets, now)
            _run(
                conn,
                "UPDATE ledger_holds SET phase = 'settled', settled = :p, updated_us = :t, external = :x WHERE id = :h",
                {"p": amount.value, "t": now, "h": hold_id, "x": True},
            )
            for budget, value in charges:
                _run(
                    conn,
                    "INSERT INTO ledger_charges (hold_id, budget, unit, held, spent, created_us)"
                    " VALUES (:h, :b, :u, 0, :v, :t)",
                    {"h": hold_id, "b": budget.key, "u": budget.limit.unit, "v": value, "t": now},
                )
        self._defined |= defined
        return hold_id

    def observed(self) -> list[tuple[BalanceObservation, float]]:
        """The newest observation of every key, with its age in seconds, oldest first."""
        with self._read() as conn:
            rows = _run(
                conn,
                "SELECT o.source, o.key, o.amount, o.unit, o.status, o.upstream_us, o.upstream_stale, o.seen_us"
                " FROM ledger_observations o JOIN (SELECT key, MAX(id) AS id FROM ledger_observations GROUP BY key) n"
                " ON o.id = n.id ORDER BY o.seen_us",
            ).all()
        now = self._now_us()
        return [(_observation(row), (now - row.seen_us) / US_PER_S) for row in rows]

    # quotes

    def remember_quote(
        self, key: str, amount: Amount, *, expires: datetime | None = None, payment_id: str | None = None
    ) -> Quote | None:
        """Remember the price named for `key` (replacing the one before), usable until `expires` and for
        at most `QUOTE_LIFETIME_S`. Returns it as stored; None when it had expired already."""
        if not isinstance(amount, Amount):
            raise AmountError(f"a quote's amount must be an Amount, not {amount!r}")
        now = self._now_us()
        until = now + QUOTE_LIFETIME_S * US_PER_S
        if expires is not None:
            until = min(until, to_us(expires))
        if until <= now:
            return None
        values = {"k": key, "a": amount.value, "u": amount.unit, "p": payment_id, "s": now, "e": until}
        with self._write() as conn:
            _run(conn, "DELETE FROM ledger_quotes WHERE expires_us <= :now", {"now": now})
            _run(
                conn,
                "INSERT INTO ledger_quotes (key, amount, unit, payment_id, seen_us, expires_us)"
                " VALUES (:k, :a, :u, :p, :s, :e) ON CONFLICT (key) DO UPDATE SET amount = :a, unit = :u,"
                " payment_id = :p, seen_us = :s, expires_us = :e",
                values,
            )
        return Quote(key, amount, from_us(until), payment_id, from_us(now))

    def quote(self, key: str) -> Quote | None:
        """The price last named for `key`, unless it expired (an expired quote is never used)."""
        now = self._now_us()
        with self._read() as conn:
            row = _run(
                conn,
                "SELECT key, amount, unit, payment_id, seen_us, expires_us FROM ledger_quotes"
                " WHERE key = :k AND expires_us > :now",
                {"k": key, "now": now},
            ).first()
        if row is None:
            return None
        return Quote(
            row.key, Amount(row.amount, row.unit), from_us(row.expires_us), row.payment_id, from_us(row.seen_us)
        )

    # operators' views

    def over_reservations(self, since: datetime) -> list[HoldInfo]:
        """Holds settled since `since` at more than they reserved, oldest first."""
        with self._read() as conn:
            ids = _run(
                conn,
                "SELECT id FROM ledger_holds WHERE updated_us >= :s AND phase = 'settled' AND settled > amount"
                " ORDER BY id",
                {"s": to_us(since)},
            ).all()
        return [self.hold(int(row[0])) for row in ids]

    def budget_states(self, *, session: str | None = None, idle_after_s: float = 86_400) -> list[BudgetState]:
        """Budgets in use, by name then scope, as last defined by a guard. A budget is listed while its
        current window has spend or holds, or (a session's budget, whose window never ends) while it was
        charged within `idle_after_s` or holds money. With `session`: every budget that session was
        charged to, in use or not."""
        now = self._now_us()
        columns = "name, scope, limit_value, unit, window_spec, timezone"
        with self._read() as conn:
            if session is None:
                rows = _run(conn, f"SELECT {columns} FROM ledger_budgets ORDER BY name, scope").all()
            else:
                rows = _run(
                    conn,
                    f"SELECT {columns} FROM ledger_budgets WHERE scope = :scope OR key IN (SELECT c.budget"
                    " FROM ledger_charges c JOIN ledger_holds h ON h.id = c.hold_id WHERE h.session = :s)"
                    " ORDER BY name, scope",
                    {"scope": f"session:{session}", "s": session},
                ).all()
            budgets = [
                Budget(r.name, Amount(int(r.limit_value), r.unit), r.scope, Window.parse(r.window_spec, r.timezone))
                for r in rows
            ]
            idle_since = now - int(idle_after_s * US_PER_S)
            if session is None:
                budgets = self._maybe_in_use(conn, budgets, now, idle_since)
            states = self._states(conn, budgets, now)
        if session is not None:
            return states
        return [
            s
            for s in states
            if s.held
            or s.in_doubt
            or (s.spent if s.budget.window.kind != "session" else _us(s.last_used) >= idle_since)
        ]

    def _maybe_in_use(self, conn: Connection, budgets: list[Budget], now: int, idle_since: int) -> list[Budget]:
        """Leave out the budgets of sessions that made no hold since the budget's window began (or, for a
        session window, since `idle_since`) and hold nothing: every session ever seen has a row, and
        reading each one's sums would cost a query per session."""
        scoped = [b for b in budgets if b.scope.startswith("session:")]
        if not scoped:
            return budgets

        def since(budget: Budget) -> int:
            return idle_since if budget.window.kind == "session" else budget.window.start_us(now)

        rows: Any = _run(
            conn,
            "SELECT session, MAX(created_us) FROM ledger_holds WHERE created_us >= :s AND session IS NOT NULL"
            " GROUP BY session",
            {"s": min(since(b) for b in scoped)},
        ).all()
        latest = {str(session): int(at) for session, at in rows}
        holding = {
            str(r[0])
            for r in _run(
                conn,
                "SELECT DISTINCT session FROM ledger_holds WHERE phase IN ('reserved', 'forwarded', 'in_doubt')",
            ).all()
        }

        def maybe(budget: Budget) -> bool:
            if not budget.scope.startswith("session:"):
                return True
            owner = budget.scope.removeprefix("session:")
            return owner in holding or latest.get(owner, -1) >= since(budget)

        return [b for b in budgets if maybe(b)]

    def states(self, budgets: Sequence[Budget]) -> list[BudgetState]:
        """These budgets (as the policy defines them now) in their current windows."""
        with self._read() as conn:
            return self._states(conn, budgets, self._now_us())

    def _states(self, conn: Connection, budgets: Sequence[Budget], now: int) -> list[BudgetState]:
        # Few holds are ever in doubt: read them all once, and split them by budget and window here.
        doubtful: Any = _run(
            conn,
            "SELECT c.budget, c.created_us, c.held FROM ledger_holds h JOIN ledger_charges c ON c.hold_id = h.id"
            " WHERE h.phase = 'in_doubt'",
        ).all()
        states = []
        for budget in budgets:
            start = budget.window.start_us(now)
            held, spent = self._sums(conn, budget.key, start)
            in_doubt = sum(int(d.held) for d in doubtful if d.budget == budget.key and d.created_us >= start)
            last = _run(
                conn, "SELECT MAX(created_us) FROM ledger_charges WHERE budget = :b", {"b": budget.key}
            ).scalar()
            end = budget.window.end_us(now)
            states.append(
                BudgetState(
                    budget=budget,
                    spent=spent,
                    held=held - in_doubt,
                    in_doubt=in_doubt,
                    window_start=from_us(start) if budget.window.kind != "session" else None,
                    resets_at=from_us(end) if end is not None else None,
                    last_used=from_us(last) if last is not None else None,
                )
            )
        return states

    def report(self, start: datetime, end: datetime) -> SpendReport:
        """Spend, denials, holds in doubt and balance drift in [start, end) (see `ledgers._report`); the
        report's hours are those of `start`'s time zone."""
        with self._read() as conn:
            return build_report(conn, start, end, self._now_us())

    def hold_counts(self) -> dict[str, int]:
        """How many holds are in each phase (every phase named, zero included)."""
        with self._read() as conn:
            rows: Any = _run(conn, "SELECT phase, COUNT(*) FROM ledger_holds GROUP BY phase").all()
        return {phase: 0 for phase in PHASES} | {str(phase): int(count) for phase, count in rows}

    def claim_alert(self, key: str, kind: str) -> bool:
        """Claim the right to send the alert `key` (once, among every process sharing the ledger)."""
        with self._write() as conn:
            claimed = _run(
                conn,
                "INSERT INTO ledger_alerts (key, kind, state, created_us, attempts)"
                " VALUES (:k, :kind, 'sending', :t, 0) ON CONFLICT (key) DO NOTHING",
                {"k": key, "kind": kind, "t": self._now_us()},
            ).rowcount
        return bool(claimed)

    def alert_done(self, key: str, *, sent: bool, attempts: int) -> None:
        """Record how sending a claimed alert ended."""
        with self._write() as conn:
            _run(
                conn,
                "UPDATE ledger_alerts SET state = :s, done_us = :t, attempts = :a WHERE key = :k",
                {"s": "sent" if sent else "failed", "t": self._now_us(), "a": attempts, "k": key},
            )

    def record(self, call: CallRecord) -> int:
        """Append one evaluated call to the audit trail; returns its id."""
        values = self._call_values(call)
        with self._write() as conn:
            row: Any = _run(conn, _INSERT_CALL + " RETURNING id", values).scalar_one()
        return int(row)

    def record_many(self, calls: Sequence[CallRecord]) -> None:
        """Append several call events in one transaction (one disk sync for the lot), in order."""
        rows = [self._call_values(call) for call in calls]
        if rows:
            with self._write() as conn:
                _run(conn, _INSERT_CALL, rows)

    def _call_values(self, call: CallRecord) -> dict[str, Any]:
        for money in (call.price, call.spent):
            if money is not None and not isinstance(money, Amount):
                raise AmountError(f"a call record's price and spend must be Amounts, not {money!r}")
        return {
            "at": self._now_us(),
            "session": call.session,
            "identity": call.identity,
            "tool": call.tool,
            "decision": call.decision,
            "rule": call.rule,
            "reason": call.reason,
            "price": call.price.value if call.price else None,
            "price_unit": call.price.unit if call.price else None,
            "hold": call.hold_id,
            "spent": call.spent.value if call.spent else None,
            "spent_unit": call.spent.unit if call.spent else None,
            "latency": call.latency_us,
            "digest": call.args_digest,
            "server": call.server,
        }

    def calls(self, *, last: int = 20, after_id: int | None = None) -> list[RecordedCall]:
        """The audit trail: the `last` call events (or every one after `after_id`), oldest first."""
        columns = (
            "id, at_us, session, identity, tool, decision, rule, reason, price, price_unit, hold_id,"
            " spent, spent_unit, latency_us, args_digest, server"
        )
        with self._read() as conn:
            if after_id is not None:
                rows = _run(
                    conn,
                    f"SELECT {columns} FROM ledger_call_events WHERE id > :a ORDER BY id LIMIT :n",
                    {"a": after_id, "n": last},
                ).all()
            else:
                rows = _run(
                    conn, f"SELECT {columns} FROM ledger_call_events ORDER BY id DESC LIMIT :n", {"n": last}
                ).all()[::-1]
        return [
            RecordedCall(
                id=row.id,
                at=from_us(row.at_us),
                call=CallRecord(
                    tool=row.tool,
                    decision=row.decision,
                    session=row.session,
                    identity=row.identity,
                    rule=row.rule,
                    reason=row.reason,
                    price=Amount(row.price, row.price_unit) if row.price is not None else None,
                    hold_id=row.hold_id,
                    spent=Amount(row.spent, row.spent_unit) if row.spent is not None else None,
                    latency_us=row.latency_us,
                    args_digest=row.args_digest,
                    server=row.server,
                ),
            )
            for row in rows
        ]

    # approvals

    def request_approval(
        self, subject: str, action: str, digest: str, *, identity: str | None, expire_after_s: float
    ) -> Approval:
        """The live approval for exactly this action (`action` with arguments `digest`, for `subject`):
        pending, approved or denied; or a new pending one."""
        with self._write(lock_keys=[f"approval:{subject}"]) as conn:
            now = self._now_us()
            row = _run(
                conn,
                f"SELECT {_APPROVAL_COLUMNS} FROM ledger_approvals WHERE subject = :s AND action = :a AND digest = :d"
                " AND state != 'used' AND expires_us > :now ORDER BY created_us DESC LIMIT 1",
                {"s": subject, "a": action, "d": digest, "now": now},
            ).first()
            if row is not None:
                return _approval(row, now)
            values = {
                "id": "ap_" + secrets.token_hex(5),
                "s": subject,
                "i": identity,
                "a": action,
                "d": digest,
                "c": now,
                "e": now + int(expire_after_s * US_PER_S),
            }
            _run(
                conn,
                "INSERT INTO ledger_approvals (id, subject, identity, action, digest, state, created_us, expires_us)"
                " VALUES (:id, :s, :i, :a, :d, 'pending', :c, :e)",
                values,
            )
            row = _run(conn, f"SELECT {_APPROVAL_COLUMNS} FROM ledger_approvals WHERE id = :id", values).one()
            return _approval(row, now)

    def decide_approval(self, approval_id: str, *, approve: bool, expire_after_s: float | None = None) -> Approval:
        """A human approves or denies a pending approval. An approval then lasts `expire_after_s`
        (default: as long as it was given to be decided).

        Raises:
            ApprovalError: no such approval, already decided, or expired."""
        with self._write() as conn:
            now = self._now_us()
            row = _run(
                conn, f"SELECT {_APPROVAL_COLUMNS} FROM ledger_approvals WHERE id = :id", {"id": approval_id}
            ).first()
            if row is None:
                raise ApprovalError(f"no approval {approval_id}")
            current = _approval(row, now)
            if current.state != "pending":
                raise ApprovalError(f"approval {approval_id} is already {current.state}")
            if current.expired:
                raise ApprovalError(f"approval {approval_id} expired at {current.expires.isoformat()}")
            lasts = int(expire_after_s * US_PER_S) if expire_after_s is not None else row.expires_us - row.created_us
            _run(
                conn,
                "UPDATE ledger_approvals SET state = :st, decided_us = :now, expires_us = :e WHERE id = :id",
                {"st": "approved" if approve else "denied", "now": now, "e": now + lasts, "id": approval_id},
            )
            row = _run(
                conn, f"SELECT {_APPROVAL_COLUMNS} FROM ledger_approvals WHERE id = :id", {"id": approval_id}
            ).one()
            return _approval(row, now)

    def use_approval(self, approval_id: str) -> None:
        """Spend an approved approval (once).

        Raises:
            ApprovalError: it is not approved, was used already, or expired."""
        with self._write() as conn:
            now = self._now_us()
            used = _run(
                conn,
                "UPDATE ledger_approvals SET state = 'used'"
                " WHERE id = :id AND state = 'approved' AND expires_us > :now",
                {"id": approval_id, "now": now},
            ).rowcount
        if used != 1:
            raise ApprovalError(f"approval {approval_id} is not approved, was used already, or expired")

    def approvals(self, state: str | None = None, *, include_expired: bool = False) -> list[Approval]:
        """Approvals, newest first: all, or those in `state`."""
        now = self._now_us()
        where, params = [], {"now": now}
        if state is not None:
            where.append("state = :state")
            params["state"] = state  # type: ignore[assignment]
        if not include_expired:
            where.append("expires_us > :now")
        sql = f"SELECT {_APPROVAL_COLUMNS} FROM ledger_approvals"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._read() as conn:
            rows = _run(conn, sql + " ORDER BY created_us DESC, id", params).all()
        return [_approval(row, now) for row in rows]

    # recovery

    def recover(self) -> int:
        """Resolve what gone processes left open: `reserved` holds were never forwarded (voided);
        `forwarded` ones may have paid (kept counted, in doubt). Returns how many holds moved."""
        with self._write() as conn:
            # Holds before owners: an owner's row is committed before any of its holds, so a process
            # that starts meanwhile (PostgreSQL reads each statement afresh) is never taken for gone.
            holds = _run(conn, "SELECT DISTINCT owner FROM ledger_holds WHERE phase IN ('reserved', 'forwarded')").all()
            owners = _run(conn, "SELECT id, host, pid, pid_start, seen_us FROM ledger_owners").all()
            now = self._now_us()
            gone = [o.id for o in owners if o.id != self.owner and not self._alive(o, now)]
            known = {o.id for o in owners}
            gone += [h.owner for h in holds if h.owner not in known and h.owner != self.owner]
            moved = 0
            for owner in set(gone):
                moved += self._recover_owner(conn, owner, now)
                _run(conn, "DELETE FROM ledger_owners WHERE id = :id", {"id": owner})
        if moved:
            logger.warning("recovered %d open holds left by stopped processes", moved)
        return moved

    def heartbeat(self) -> None:
        """Tell other processes sharing the ledger that this one is alive (see `lease_s`)."""
        with self._write() as conn:
            _run(
                conn,
                "UPDATE ledger_owners SET seen_us = :t WHERE id = :id",
                {"t": self._now_us(), "id": self.owner},
            )

    def _alive(self, owner: Any, now: int) -> bool:
        if owner.host == socket.gethostname():
            return bool(_process_start(owner.pid) == owner.pid_start)
        return bool(now - owner.seen_us < self._lease_us)

    def _recover_owner(self, conn: Connection, owner: str, now: int) -> int:
        voided: Any = (
            _run(conn, "SELECT id FROM ledger_holds WHERE owner = :o AND phase = 'reserved'", {"o": owner})
            .scalars()
            .all()
        )
        if voided:
            conn.execute(
                _q("UPDATE ledger_charges SET held = 0 WHERE hold_id IN :ids").bindparams(_in("ids")),
                {"ids": voided},
            )
        result = _run(
            conn,
            "UPDATE ledger_holds SET phase = 'voided', updated_us = :t WHERE owner = :o AND phase = 'reserved'",
            {"t": now, "o": owner},
        )
        doubted = _run(
            conn,
            "UPDATE ledger_holds SET phase = 'in_doubt', updated_us = :t WHERE owner = :o AND phase = 'forwarded'",
            {"t": now, "o": owner},
        )
        return int(result.rowcount or 0) + int(doubted.rowcount or 0)

    def _register(self, conn: Connection) -> None:
        _run(
            conn,
            "INSERT INTO ledger_owners (id, host, pid, pid_start, seen_us) VALUES (:id, :h, :p, :s, :t)",
            {
                "id": self.owner,
                "h": socket.gethostname(),
                "p": os.getpid(),
                "s": _process_start(os.getpid()),
                "t": self._now_us(),
            },
        )

    # the pieces of a reservation (inside its transaction)

    def _check_key(self, conn: Connection, key: str) -> None:
        phase = _run(
            conn,
            "SELECT phase FROM ledger_holds WHERE idempotency_key = :k AND phase != 'voided'",
            {"k": key},
        ).scalar()
        if phase == "settled":
            raise AlreadyPaid(f"payment {key} was already made", rule="idempotency")
        if phase is not None:
            raise PaymentInFlight(
                f"payment {key} is already {'in doubt' if phase == 'in_doubt' else 'in progress'}:"
                " paying again could pay twice",
                rule="idempotency",
            )

    def _check_rate(self, conn: Connection, rate: RateLimit, now: int) -> None:
        start = rate.window.start_us(now)
        row: Any = _run(
            conn,
            "SELECT COALESCE(SUM(weight), 0), MIN(at_us) FROM ledger_rate_events WHERE key = :k AND at_us >= :s",
            {"k": rate.key, "s": start},
        ).one()
        used, oldest = int(row[0]), row[1]
        if used + rate.cost > rate.limit:
            retry = (oldest - start + 1) / US_PER_S if oldest is not None else None
            raise RateLimited(
                f"rate limit {rate.key}: {used} of {rate.limit} per {rate.window} used",
                rule=rate.key,
                remaining=max(0, rate.limit - used),
                unit="calls",
                retry_after_s=retry,
            )

    def _check_budget(self, conn: Connection, budget: Budget, value: int, now: int) -> None:
        start = budget.window.start_us(now)
        held, spent = self._sums(conn, budget.key, start)
        if spent + held + value > budget.limit.value:
            remaining = max(0, budget.limit.value - spent - held)
            end = budget.window.end_us(now)
            raise BudgetExceeded(
                f"budget {budget.name} ({budget.scope}, per {budget.window}): {value} {budget.limit.unit} asked, "
                f"{remaining} {budget.limit.unit} left of {budget.limit.value}",
                rule=budget.name,
                remaining=remaining,
                unit=budget.limit.unit,
                retry_after_s=(end - now) / US_PER_S if end is not None else None,
            )

    def _sums(self, conn: Connection, key: str, start: int) -> tuple[int, int]:
        row: Any = _run(
            conn,
            "SELECT COALESCE(SUM(held), 0), COALESCE(SUM(spent), 0) FROM ledger_charges"
            " WHERE budget = :b AND created_us >= :s",
            {"b": key, "s": start},
        ).one()
        held, spent = row
        return int(held), int(spent)

    def _insert_hold(
        self, conn: Connection, amount: Amount, key: str | None, now: int, where: _Where, mixed: bool
    ) -> int:
        try:
            # Only PostgreSQL can race past _check_key (SQLite holds its write lock): only it needs a savepoint.
            with conn.begin_nested() if self._postgres else nullcontext():
                hold_id: Any = _run(
                    conn,
                    "INSERT INTO ledger_holds (idempotency_key, phase, unit, amount, owner, session, identity,"
                    " tool, mixed_units, created_us, updated_us, balance_key, server, resource, priced_by)"
                    " VALUES (:k, 'reserved', :u, :a, :o, :s, :i, :t, :m, :now, :now, :bk, :sv, :r, :pb) RETURNING id",
                    {
                        "k": key,
                        "u": amount.unit,
                        "a": amount.value,
                        "o": self.owner,
                        "s": where.session,
                        "i": where.identity,
                        "t": where.tool,
                        "m": mixed,
                        "now": now,
                        "bk": where.balance_key,
                        "sv": where.server,
                        "r": where.resource,
                        "pb": where.priced_by,
                    },
                ).scalar_one()
        except IntegrityError:
            # Another process reserved the same key between our check and our insert (PostgreSQL).
            raise PaymentInFlight(
                f"payment {key} is already in progress: paying again could pay twice", rule="idempotency"
            ) from None
        return int(hold_id)

    def _define_budgets(
        self, conn: Connection, budgets: Sequence[Budget], now: int
    ) -> set[tuple[str, int, str, str, str]]:
        """Store the definitions of `budgets` this process has not stored yet (operators' views read
        them); returns them, to be remembered once the transaction commits."""
        new = {(b.key, b.limit.value, b.limit.unit, b.window.text, b.window.timezone) for b in budgets} - self._defined
        by_key = {b.key: b for b in budgets}
        for key, limit, unit, window, timezone in sorted(new):
            budget = by_key[key]
            values = {
                "k": key,
                "n": budget.name,
                "s": budget.scope,
                "l": limit,
                "u": unit,
                "w": window,
                "z": timezone,
                "t": now,
            }
            _run(
                conn,
                "INSERT INTO ledger_budgets (key, name, scope, limit_value, unit, window_spec, timezone, defined_us)"
                " VALUES (:k, :n, :s, :l, :u, :w, :z, :t) ON CONFLICT (key) DO UPDATE SET limit_value = :l,"
                " unit = :u, window_spec = :w, timezone = :z, defined_us = :t",
                values,
            )
        return new

    def _count_calls(self, conn: Connection, rate_limits: Sequence[RateLimit], now: int) -> None:
        for rate in rate_limits:
            _run(
                conn,
                "INSERT INTO ledger_rate_events (key, at_us, weight) VALUES (:k, :t, :w)",
                {"k": rate.key, "t": now, "w": rate.cost},
            )

    def _move(self, hold_id: int, allowed: tuple[str, ...], phase: str) -> None:
        with self._write() as conn:
            moved = _run(
                conn,
                f"UPDATE ledger_holds SET phase = :p, updated_us = :t WHERE id = :h AND phase IN {_sql_list(allowed)}",
                {"p": phase, "t": self._now_us(), "h": hold_id},
            ).rowcount
            if not moved:
                self._refuse_step(conn, hold_id, phase)

    def _finish(self, hold_id: int, allowed: tuple[str, ...], actual: Amount | None) -> None:
        """Settle at `actual` (or void, for None) in as few statements as the hot path allows."""
        now = self._now_us()
        with self._write() as conn:
            if actual is None:
                voided = _run(
                    conn,
                    "UPDATE ledger_holds SET phase = 'voided', updated_us = :t"
                    f" WHERE id = :h AND phase IN {_sql_list(allowed)}",
                    {"t": now, "h": hold_id},
                ).rowcount
                if not voided:
                    self._refuse_step(conn, hold_id, "voided")
                _run(conn, "UPDATE ledger_charges SET held = 0 WHERE hold_id = :h", {"h": hold_id})
                return
            settled = _run(
                conn,
                "UPDATE ledger_holds SET phase = 'settled', settled = :p, updated_us = :t"
                f" WHERE id = :h AND phase IN {_sql_list(allowed)} AND unit = :u RETURNING mixed_units",
                {"p": actual.value, "t": now, "h": hold_id, "u": actual.unit},
            ).first()
            if settled is not None:
                unit, paid, mixed = actual.unit, actual.value, bool(settled.mixed_units)
            else:  # another unit than the hold's, or a step the phase does not allow
                unit = self._refuse_step(conn, hold_id, "settled", allowed)
                paid = actual.to(unit, rounding="up").value
                _run(
                    conn,
                    "UPDATE ledger_holds SET phase = 'settled', settled = :p, updated_us = :t WHERE id = :h",
                    {"p": paid, "t": now, "h": hold_id},
                )
                mixed = True
            # What was paid is what is spent, all of it: above the hold too (the ledger never says less
            # than what left; the budget may go over its limit, and then refuses every reservation).
            _run(
                conn,
                "UPDATE ledger_charges SET spent = :p, held = 0 WHERE hold_id = :h AND unit = :u",
                {"p": paid, "h": hold_id, "u": unit},
            )
            if not mixed:
                return
            others = _run(
                conn,
                "SELECT id, unit FROM ledger_charges WHERE hold_id = :h AND unit != :u",
                {"h": hold_id, "u": unit},
            ).all()
            for charge in others:
                spent = Amount(paid, unit).to(charge.unit, rates=self._rates, rounding="up").value
                _run(conn, "UPDATE ledger_charges SET held = 0, spent = :s WHERE id = :c", {"s": spent, "c": charge.id})

    def _refuse_step(self, conn: Connection, hold_id: int, phase: str, allowed: tuple[str, ...] = ()) -> str:
        """Raise why a hold cannot take this step, unless it is only a unit to convert (then say the
        hold's unit)."""
        row = _run(conn, "SELECT phase, unit FROM ledger_holds WHERE id = :h", {"h": hold_id}).first()
        if row is None:
            raise HoldStateError(f"hold {hold_id} does not exist")
        if row.phase not in allowed:
            raise HoldStateError(f"hold {hold_id} is {row.phase}: it cannot become {phase}")
        return str(row.unit)

    # transactions

    @contextmanager
    def _write(self, lock_keys: Sequence[str] = ()) -> Iterator[Connection]:
        """One write transaction: SQLite's write lock taken up front (`BEGIN IMMEDIATE`), PostgreSQL's
        rows locked in key order. A busy SQLite database is waited for, never reported as an error."""
        conn = self._begin_write()
        try:
            if self._postgres and lock_keys:
                _lock_rows(conn, lock_keys)
            yield conn
            conn.commit()
        except DBAPIError as exc:
            conn.rollback()
            raise StorageError(f"the ledger could not be written: {exc.orig}") from exc
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.close()

    def _begin_write(self) -> Connection:
        if self._read_only:
            raise StorageError("this ledger was opened read-only")
        for attempt in range(BUSY_RETRIES):
            try:
                conn = self._engine.connect()
            except PoolTimeout as exc:
                raise StorageError(f"the ledger could not be written: {_pool_busy(self._engine)}") from exc
            try:
                conn.begin()
                return conn
            except OperationalError as exc:
                conn.close()
                if not _busy(exc) or attempt == BUSY_RETRIES - 1:
                    raise StorageError(f"the ledger could not be written: {exc.orig}") from exc
                time.sleep(0.01 * (attempt + 1))
            except DBAPIError as exc:
                conn.close()
                raise StorageError(f"the ledger could not be written: {exc.orig}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        try:
            with self._engine.connect() as conn:
                conn = conn.execution_options(ledger_read=True)
                with conn.begin():
                    yield conn
        except DBAPIError as exc:
            raise StorageError(f"the ledger could not be read: {exc.orig}") from exc
        except PoolTimeout as exc:
            raise StorageError(f"the ledger could not be read: {_pool_busy(self._engine)}") from exc


@dataclass(frozen=True)
class _Where:
    """Who made a payment, where it went: a hold's descriptive columns."""

    session: str | None
    identity: str | None
    tool: str | None
    balance_key: str | None
    server: str | None
    resource: str | None
    priced_by: str | None


def _us(moment: datetime | None) -> int:
    return to_us(moment) if moment is not None else 0


def _observation(row: Any) -> BalanceObservation:
    return BalanceObservation(
        source=row.source,
        key=row.key,
        amount=Amount(row.amount, row.unit) if row.amount is not None else None,
        status=row.status,
        upstream_time=from_us(row.upstream_us) if row.upstream_us is not None else None,
        upstream_stale=bool(row.upstream_stale) if row.upstream_stale is not None else None,
        seen=from_us(row.seen_us),
    )


_INSERT_CALL = (
    "INSERT INTO ledger_call_events (at_us, session, identity, tool, decision, rule, reason,"
    " price, price_unit, hold_id, spent, spent_unit, latency_us, args_digest, server)"
    " VALUES (:at, :session, :identity, :tool, :decision, :rule, :reason, :price, :price_unit,"
    " :hold, :spent, :spent_unit, :latency, :digest, :server)"
)

_APPROVAL_COLUMNS = "id, subject, identity, action, digest, state, created_us, expires_us, decided_us"


def _approval(row: Any, now: int) -> Approval:
    return Approval(
        id=row.id,
        subject=row.subject,
        identity=row.identity,
        action=row.action,
        digest=row.digest,
        state=row.state,
        created=from_us(row.created_us),
        expires=from_us(row.expires_us),
        decided=from_us(row.decided_us) if row.decided_us is not None else None,
        expired=row.expires_us <= now and row.state in ("pending", "approved"),
    )


def _sql_list(phases: tuple[str, ...]) -> str:
    """Our own phase names as an SQL list (a Python tuple of one would print a trailing comma)."""
    return "(" + ", ".join(f"'{phase}'" for phase in phases) + ")"


def _run(conn: Connection, sql: str, params: Any = None) -> CursorResult[Any]:
    """Execute our own SQL (`:name` parameters) straight on the driver: SQLAlchemy's statement
    compilation costs more than SQLite takes to run these statements."""
    return conn.exec_driver_sql(_driver_sql(sql, conn.dialect.paramstyle), params if params is not None else {})


@cache
def _driver_sql(sql: str, paramstyle: str) -> str:
    if paramstyle == "pyformat":  # psycopg
        return re.sub(r"(?<![:\w]):(\w+)", r"%(\1)s", sql.replace("%", "%%"))
    return sql  # sqlite3 takes :name as it is


# Statements are built once: constructing a SQL text object costs more than SQLite running it.
_q = lru_cache(maxsize=None)(text)


def _lock_rows(conn: Connection, keys: Sequence[str]) -> None:
    _run(conn, "INSERT INTO ledger_locks (key) VALUES (:k) ON CONFLICT DO NOTHING", [{"k": k} for k in keys])
    conn.execute(
        _q("SELECT key FROM ledger_locks WHERE key IN :keys ORDER BY key FOR UPDATE").bindparams(_in("keys")),
        {"keys": list(keys)},
    )


def _in(name: str):  # type: ignore[no-untyped-def]
    from sqlalchemy import bindparam

    return bindparam(name, expanding=True)


def _busy(exc: OperationalError) -> bool:
    message = str(exc.orig).lower()
    return "database is locked" in message or "database is busy" in message


def _latest_stored_us(conn: Connection) -> int:
    latest = 0
    for table, column in (
        ("ledger_holds", "updated_us"),
        ("ledger_rate_events", "at_us"),
        ("ledger_observations", "seen_us"),
        ("ledger_call_events", "at_us"),
        ("ledger_quotes", "seen_us"),
    ):
        value = _run(conn, f"SELECT MAX({column}) FROM {table}").scalar()
        latest = max(latest, int(value or 0))
    return latest


def _process_start(pid: int) -> str:
    """When process `pid` started (ticks since boot), to tell it from a later process with its pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()
    except (OSError, IndexError):
        return ""


def _sqlite_file_missing(url: str | os.PathLike[str] | None) -> bool:
    if url is None:
        return not default_path().exists()
    text = str(url)
    if "://" not in text:
        return not Path(text).exists()
    if text.startswith("sqlite:///") and len(text) > len("sqlite:///"):
        return not Path(text[len("sqlite:///") :].split("?")[0]).exists()
    return False


def _engine(url: str | os.PathLike[str] | None, pool: int = DEFAULT_POOL) -> Engine:
    if url is None:
        path = default_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{path}"
    elif isinstance(url, os.PathLike) or "://" not in str(url):
        url = f"sqlite:///{Path(url)}"
    url = str(url)
    try:
        if url.startswith("sqlite"):
            engine = create_engine(
                url,
                connect_args={"timeout": 30, "isolation_level": None, "check_same_thread": False},
                # Every transaction ends in an explicit commit or rollback: no reset needed on return.
                pool_reset_on_return=None,
            )
            event.listen(engine, "connect", _sqlite_pragmas)
            event.listen(engine, "begin", _sqlite_begin)
        else:
            if pool < 1:
                raise StorageError(f"a ledger needs a pool of at least 1 connection, not {pool}")
            engine = create_engine(url, pool_pre_ping=True, pool_size=pool, max_overflow=0, pool_timeout=POOL_TIMEOUT_S)
            event.listen(engine, "handle_error", partial(_no_free_slots, url, pool))
        with engine.connect():
            pass
    except (DBAPIError, ImportError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise StorageError(f"cannot open the ledger at {_safe_url(url)}: {reason}") from exc
    return engine


# PostgreSQL's SQLSTATE 53300 (too_many_connections), as its message says it when connecting.
_NO_SLOTS = ("too many clients already", "remaining connection slots are reserved", "too many connections for")


def _no_free_slots(url: str, pool: int, context: ExceptionContext) -> None:
    """A server that refuses connections because all its slots are taken: say so, and what to change."""
    if any(words in str(context.original_exception) for words in _NO_SLOTS):
        raise StorageError(
            f"the PostgreSQL server of the ledger at {_safe_url(url)} has no free connection slots (its"
            f" max_connections is reached): each guard keeps up to {pool} (guard run --ledger-pool N);"
            " run fewer guards or give each fewer, or raise max_connections in postgresql.conf"
        ) from context.original_exception


def _pool_busy(engine: Engine) -> str:
    return (
        f"all {engine.pool.size()} of its connections stayed busy for {POOL_TIMEOUT_S:g} s"  # type: ignore[attr-defined]
        " (guard run --ledger-pool N allows more)"
    )


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    cursor = dbapi_connection.cursor()
    # FULL: NORMAL may lose a committed hold on power loss. WAL: readers never block the writer.
    for pragma in ("busy_timeout=30000", "journal_mode=WAL", "synchronous=FULL", "foreign_keys=ON"):
        for attempt in range(BUSY_RETRIES):
            try:
                cursor.execute(f"PRAGMA {pragma}")
                break
            except sqlite3.OperationalError as exc:
                # Switching a new file to WAL while another process does may report busy at once,
                # without waiting on the busy timeout.
                if "locked" not in str(exc) or attempt == BUSY_RETRIES - 1:
                    raise
                time.sleep(0.01 * (attempt + 1))
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    # pysqlite's own transaction handling is off (isolation_level=None); writers take the lock up front.
    conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("ledger_read") else "BEGIN IMMEDIATE")


def location(url: str | os.PathLike[str] | None) -> str:
    """Where a ledger is, fit to print: its file path, or its URL with any password hidden."""
    if url is None:
        return str(default_path())
    text = str(url)
    return _safe_url(text) if "://" in text else text


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable URL>"


__all__ = [
    "QUOTE_LIFETIME_S",
    "BalanceObservation",
    "Budget",
    "BudgetState",
    "CallRecord",
    "HoldInfo",
    "Ledger",
    "Quote",
    "RateLimit",
    "Usage",
    "default_path",
    "location",
]
