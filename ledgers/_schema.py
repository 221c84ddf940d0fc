"""The ledger's tables (SQLModel), and the versioned migrations that create and upgrade them.

Times are integer microseconds since the epoch (UTC); amounts are integers in the row's unit.
Invariants are in the database too: CHECK constraints on amounts and phases, and a unique
idempotency key among holds that are not voided.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from sqlalchemy import BigInteger, Boolean, CheckConstraint, Column, Connection, Index, Integer, false, text
from sqlmodel import Field, SQLModel

from ledgers._errors import SchemaError

PHASES = ("reserved", "forwarded", "settled", "voided", "in_doubt")
OPEN_PHASES = ("reserved", "forwarded", "in_doubt")
# The money of these left, or may have (in doubt: counted in full): what a balance shows drawn.
MAYBE_PAID = ("settled", "in_doubt")


def _big(**kwargs: object) -> Column:  # type: ignore[type-arg]
    return Column(BigInteger, **kwargs)  # type: ignore[arg-type]


def _id() -> Column:  # type: ignore[type-arg]
    # SQLite numbers rows itself only for a column declared exactly INTEGER PRIMARY KEY.
    return Column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)


class Meta(SQLModel, table=True):
    __tablename__ = "ledger_meta"
    key: str = Field(primary_key=True)
    value: str


class Owner(SQLModel, table=True):
    """A process using the ledger; recovery decides from it whether that process is gone."""

    __tablename__ = "ledger_owners"
    id: str = Field(primary_key=True)
    host: str
    pid: int
    pid_start: str
    seen_us: int = Field(sa_column=_big(nullable=False))


class Hold(SQLModel, table=True):
    """A two-phase spend: reserved (and counted) before the call, settled or voided after.

    As the first release made it: later steps add columns, and `_v5` rebuilds it so that `settled` (what
    was paid) may be more than `amount` (what was reserved): the ledger records what left, all of it."""

    __tablename__ = "ledger_holds"
    __table_args__ = (
        CheckConstraint("amount >= 0", name="hold_amount_not_negative"),
        CheckConstraint("settled IS NULL OR (settled >= 0 AND settled <= amount)", name="hold_settled_in_range"),
        CheckConstraint(f"phase IN {PHASES}", name="hold_phase_known"),
        Index(
            "ledger_holds_open_key",
            "idempotency_key",
            unique=True,
            sqlite_where=text("phase != 'voided' AND idempotency_key IS NOT NULL"),
            postgresql_where=text("phase != 'voided' AND idempotency_key IS NOT NULL"),
        ),
        Index("ledger_holds_phase_owner", "phase", "owner"),
        Index("ledger_holds_updated", "updated_us"),
    )
    id: int | None = Field(default=None, sa_column=_id())
    idempotency_key: str | None = None
    phase: str
    unit: str
    amount: int = Field(sa_column=_big(nullable=False))
    settled: int | None = Field(default=None, sa_column=_big(nullable=True))
    owner: str
    session: str | None = None
    identity: str | None = None
    tool: str | None = None
    # Whether a budget it is charged to counts in another unit (then settling converts per charge).
    mixed_units: bool = Field(default=False, sa_column=Column(Boolean, nullable=False, server_default=false()))
    created_us: int = Field(sa_column=_big(nullable=False))
    updated_us: int = Field(sa_column=_big(nullable=False))


class Charge(SQLModel, table=True):
    """What one hold counts against one budget, in the budget's unit: `held` while the hold is
    open, `spent` once settled. A budget's use is SUM(held + spent) over its window."""

    __tablename__ = "ledger_charges"
    __table_args__ = (
        CheckConstraint("held >= 0 AND spent >= 0", name="charge_not_negative"),
        # Covering index: a budget decision reads only index entries of its own window.
        Index("ledger_charges_budget_time", "budget", "created_us", "held", "spent"),
        Index("ledger_charges_hold", "hold_id"),
    )
    id: int | None = Field(default=None, sa_column=_id())
    hold_id: int = Field(sa_column=_big(nullable=False))
    budget: str
    unit: str
    held: int = Field(sa_column=_big(nullable=False))
    spent: int = Field(sa_column=_big(nullable=False))
    created_us: int = Field(sa_column=_big(nullable=False))


class RateEvent(SQLModel, table=True):
    """One counted call, for sliding-window rate limits that survive restarts."""

    __tablename__ = "ledger_rate_events"
    __table_args__ = (
        Index("ledger_rate_events_key_time", "key", "at_us"),
        Index("ledger_rate_events_time", "at_us"),
    )
    id: int | None = Field(default=None, sa_column=_id())
    key: str
    at_us: int = Field(sa_column=_big(nullable=False))
    # `weight BIGINT NOT NULL DEFAULT 1` (how much the call counts) is added by `_v2`.


class Lock(SQLModel, table=True):
    """One row per budget or rate-limit key; PostgreSQL serializes check-and-reserve on it."""

    __tablename__ = "ledger_locks"
    key: str = Field(primary_key=True)


class Observation(SQLModel, table=True):
    """What an upstream said about a balance, and when the guard saw it."""

    __tablename__ = "ledger_observations"
    __table_args__ = (
        CheckConstraint("amount IS NULL OR amount >= 0", name="observation_not_negative"),
        Index("ledger_observations_key_time", "key", "seen_us"),
        Index("ledger_observations_time", "seen_us"),
    )
    id: int | None = Field(default=None, sa_column=_id())
    source: str
    key: str
    amount: int | None = Field(default=None, sa_column=_big(nullable=True))
    unit: str | None = None
    status: str | None = None
    upstream_us: int | None = Field(default=None, sa_column=_big(nullable=True))
    upstream_stale: bool | None = None
    seen_us: int = Field(sa_column=_big(nullable=False))
    # `money BOOLEAN NOT NULL DEFAULT false` (a wallet's, a P402 session's balance) is added by `_v6`.


class CallEvent(SQLModel, table=True):
    """One evaluated call, for the audit trail and reports. Arguments only as a redacted digest."""

    __tablename__ = "ledger_call_events"
    __table_args__ = (
        Index("ledger_call_events_time", "at_us"),
        Index("ledger_call_events_session_time", "session", "at_us"),
    )
    id: int | None = Field(default=None, sa_column=_id())
    at_us: int = Field(sa_column=_big(nullable=False))
    session: str | None = None
    identity: str | None = None
    tool: str
    decision: str
    rule: str | None = None
    reason: str | None = None
    price: int | None = Field(default=None, sa_column=_big(nullable=True))
    price_unit: str | None = None
    hold_id: int | None = Field(default=None, sa_column=_big(nullable=True))
    spent: int | None = Field(default=None, sa_column=_big(nullable=True))
    spent_unit: str | None = None
    latency_us: int | None = Field(default=None, sa_column=_big(nullable=True))
    args_digest: str | None = None
    # `server` is added by `_v4`; `kind` and `balance_key` (structured facts reports read) by `_v6`;
    # `arguments` (the call's arguments with secrets removed, when the policy asks: `audit.arguments`) by `_v9`.


class ApprovalRow(SQLModel, table=True):
    """A human's decision on one exact action (a digest of it), single-use. Added by `_v2`."""

    __tablename__ = "ledger_approvals"
    __table_args__ = (
        CheckConstraint("state IN ('pending', 'approved', 'denied', 'used')", name="approval_state"),
        Index("ledger_approvals_subject", "subject", "digest", "created_us"),
        Index("ledger_approvals_state", "state", "created_us"),
    )
    id: str = Field(primary_key=True)
    subject: str  # whose action: a session key
    identity: str | None = None
    action: str  # what is approved, in words (a tool name)
    digest: str  # the exact action (its arguments)
    state: str
    created_us: int = Field(sa_column=_big(nullable=False))
    expires_us: int = Field(sa_column=_big(nullable=False))
    decided_us: int | None = Field(default=None, sa_column=_big(nullable=True))


class BudgetRow(SQLModel, table=True):
    """A budget as last defined (limit, window) for one scope key, so operators' views need no policy.
    Added by `_v4`; written when a guard first charges it, and again when its definition changes."""

    __tablename__ = "ledger_budgets"
    key: str = Field(primary_key=True)  # Budget.key: "budget:<name>@<scope>"
    name: str
    scope: str
    limit_value: int = Field(sa_column=_big(nullable=False))
    unit: str
    window_spec: str  # as `Window.parse` reads it: session, 24h, day, week, month
    timezone: str
    defined_us: int = Field(sa_column=_big(nullable=False))


class QuoteRow(SQLModel, table=True):
    """The last price named for a key (a resource) before anything was paid, usable until it expires.
    Added by `_v5`; one row per key, shared by guards on one ledger."""

    __tablename__ = "ledger_quotes"
    __table_args__ = (
        CheckConstraint("amount >= 0", name="quote_not_negative"),
        Index("ledger_quotes_expires", "expires_us"),
    )
    key: str = Field(primary_key=True)
    amount: int = Field(sa_column=_big(nullable=False))
    unit: str
    payment_id: str | None = None  # the invoice's payment hash, when there is one
    seen_us: int = Field(sa_column=_big(nullable=False))
    expires_us: int = Field(sa_column=_big(nullable=False))


class AuthorizationRow(SQLModel, table=True):
    """A signed transfer authorization an x402 payment carried (EIP-3009: the payer's signature lets anyone
    move `value` of the token `asset` once, by `nonce`, until `valid_before`), keyed by its nonce: the
    idempotency key of the payment's hold. Enough to ask the chain whether it was used. Added by `_v7`."""

    __tablename__ = "ledger_authorizations"
    __table_args__ = (CheckConstraint("value >= 0", name="authorization_value_not_negative"),)
    nonce: str = Field(primary_key=True)
    network: str
    asset: str
    payer: str
    value: int = Field(sa_column=_big(nullable=False))
    unit: str
    valid_before_us: int = Field(sa_column=_big(nullable=False))
    seen_us: int = Field(sa_column=_big(nullable=False))


class FreezeRow(SQLModel, table=True):
    """The kill switch: a scope an operator froze (`guard freeze`), one row per scope ("global",
    "identity:<name>", "session:<id>"), deleted by `guard unfreeze`. Added by `_v8`."""

    __tablename__ = "ledger_freezes"
    scope: str = Field(primary_key=True)
    all_tools: bool = Field(sa_column=Column(Boolean, nullable=False, server_default=false()))
    reason: str
    frozen_by: str
    created_us: int = Field(sa_column=_big(nullable=False))


class AlertRow(SQLModel, table=True):
    """An alert claimed for sending (once per key: a budget's threshold in one window period, a hold in
    doubt). Added by `_v4`. The primary key makes guards sharing a ledger send each alert once."""

    __tablename__ = "ledger_alerts"
    __table_args__ = (CheckConstraint("state IN ('sending', 'sent', 'failed')", name="alert_state"),)
    key: str = Field(primary_key=True)
    kind: str
    state: str
    created_us: int = Field(sa_column=_big(nullable=False))
    done_us: int | None = Field(default=None, sa_column=_big(nullable=True))
    attempts: int = 0


# Versioned migrations: MIGRATIONS[n] takes a schema at version n to n + 1. Never edit a released
# step; append a new one. Version 1 is the first release's schema.
def _v1(conn: Connection) -> None:
    SQLModel.metadata.create_all(
        conn,
        tables=[getattr(t, "__table__") for t in (Meta, Owner, Hold, Charge, RateEvent, Lock, Observation, CallEvent)],  # noqa: B009
    )


def _v2(conn: Connection) -> None:
    """Weighted counters (a quota adds a call's amount, not 1) and approvals."""
    conn.execute(text("ALTER TABLE ledger_rate_events ADD COLUMN weight BIGINT NOT NULL DEFAULT 1"))
    SQLModel.metadata.create_all(conn, tables=[getattr(ApprovalRow, "__table__")])  # noqa: B009


def _v3(conn: Connection) -> None:
    """Holds name the balance a payment drew on (a P402 session, a wallet), so that balance's drops can
    be explained by the payments guard made, and the rest recorded as spend seen only in the balance."""
    conn.execute(text("ALTER TABLE ledger_holds ADD COLUMN balance_key VARCHAR"))
    conn.execute(text("CREATE INDEX ledger_holds_balance_time ON ledger_holds (balance_key, updated_us)"))


def _v4(conn: Connection) -> None:
    """Operators' views: budgets' definitions, which server and resource a payment was for, the server
    of a call event, alerts sent; indexes for reports over a period and views of one session."""
    conn.execute(text("ALTER TABLE ledger_holds ADD COLUMN server VARCHAR"))
    conn.execute(text("ALTER TABLE ledger_holds ADD COLUMN resource VARCHAR"))
    # Spend seen only in a balance (recorded by `Ledger.charge`), not a payment the guard made.
    conn.execute(text("ALTER TABLE ledger_holds ADD COLUMN external BOOLEAN NOT NULL DEFAULT false"))
    conn.execute(text("ALTER TABLE ledger_call_events ADD COLUMN server VARCHAR"))
    conn.execute(text("CREATE INDEX ledger_holds_created ON ledger_holds (created_us)"))
    conn.execute(text("CREATE INDEX ledger_holds_session ON ledger_holds (session)"))
    SQLModel.metadata.create_all(conn, tables=[getattr(t, "__table__") for t in (BudgetRow, AlertRow)])  # noqa: B009


# ledger_holds as `_v5` leaves it: `settled` may exceed `amount` (a payment above its reservation is
# recorded whole); `priced_by` says what bounded the reservation. Frozen, as every released step is.
_HOLDS_V5 = """
CREATE TABLE ledger_holds_v5 (
    id INTEGER NOT NULL PRIMARY KEY,
    idempotency_key VARCHAR,
    phase VARCHAR NOT NULL,
    unit VARCHAR NOT NULL,
    amount BIGINT NOT NULL,
    settled BIGINT,
    owner VARCHAR NOT NULL,
    session VARCHAR,
    identity VARCHAR,
    tool VARCHAR,
    mixed_units BOOLEAN DEFAULT 0 NOT NULL,
    created_us BIGINT NOT NULL,
    updated_us BIGINT NOT NULL,
    balance_key VARCHAR,
    server VARCHAR,
    resource VARCHAR,
    external BOOLEAN DEFAULT 0 NOT NULL,
    priced_by VARCHAR,
    CONSTRAINT hold_amount_not_negative CHECK (amount >= 0),
    CONSTRAINT hold_settled_not_negative CHECK (settled IS NULL OR settled >= 0),
    CONSTRAINT hold_phase_known CHECK (phase IN ('reserved', 'forwarded', 'settled', 'voided', 'in_doubt'))
)
"""
_HOLDS_COLUMNS = (
    "id, idempotency_key, phase, unit, amount, settled, owner, session, identity, tool, mixed_units, created_us,"
    " updated_us, balance_key, server, resource, external"
)
_HOLDS_INDEXES = (
    "CREATE UNIQUE INDEX ledger_holds_open_key ON ledger_holds (idempotency_key)"
    " WHERE phase != 'voided' AND idempotency_key IS NOT NULL",
    "CREATE INDEX ledger_holds_phase_owner ON ledger_holds (phase, owner)",
    "CREATE INDEX ledger_holds_updated ON ledger_holds (updated_us)",
    "CREATE INDEX ledger_holds_balance_time ON ledger_holds (balance_key, updated_us)",
    "CREATE INDEX ledger_holds_created ON ledger_holds (created_us)",
    "CREATE INDEX ledger_holds_session ON ledger_holds (session)",
)


def _v5(conn: Connection) -> None:
    """The truth, always: a payment above its reservation is settled whole (the CHECK `settled <= amount`
    goes; SQLite cannot drop a CHECK, so its table is rebuilt and the rows moved); holds say what priced
    them; quotes move to a table of their own with an expiry (quote observations, keyed by whole URLs
    that may carry credentials and never expiring, are deleted)."""
    if conn.dialect.name == "postgresql":
        conn.execute(
            text(
                "ALTER TABLE ledger_holds DROP CONSTRAINT hold_settled_in_range, ADD CONSTRAINT"
                " hold_settled_not_negative CHECK (settled IS NULL OR settled >= 0), ADD COLUMN priced_by VARCHAR"
            )
        )
    else:
        conn.execute(text(_HOLDS_V5))
        conn.execute(text(f"INSERT INTO ledger_holds_v5 ({_HOLDS_COLUMNS}) SELECT {_HOLDS_COLUMNS} FROM ledger_holds"))
        conn.execute(text("DROP TABLE ledger_holds"))
        conn.execute(text("ALTER TABLE ledger_holds_v5 RENAME TO ledger_holds"))
        for index in _HOLDS_INDEXES:
            conn.execute(text(index))
    conn.execute(text("DELETE FROM ledger_observations WHERE key LIKE 'quote:%'"))
    SQLModel.metadata.create_all(conn, tables=[getattr(QuoteRow, "__table__")])  # noqa: B009


def _v6(conn: Connection) -> None:
    """Structured facts instead of sentences: a call event says which kind of rule decided it and which
    balance a balance rule looked at; an observation, whether its balance is money. Old rows are moved:
    their facts are read, once, from the rule names and sentences guard wrote before version 6."""
    conn.execute(text("ALTER TABLE ledger_call_events ADD COLUMN kind VARCHAR"))
    conn.execute(text("ALTER TABLE ledger_call_events ADD COLUMN balance_key VARCHAR"))
    conn.execute(text("ALTER TABLE ledger_observations ADD COLUMN money BOOLEAN NOT NULL DEFAULT false"))
    after = 0
    while True:  # in batches, by id: a long audit trail never sits in memory whole
        rows = conn.execute(
            text(
                "SELECT id, rule, reason FROM ledger_call_events WHERE rule IS NOT NULL AND id > :after"
                " ORDER BY id LIMIT 10000"
            ),
            {"after": after},
        ).all()
        if not rows:
            break
        facts = []
        for row in rows:
            kind, balance_key = _old_facts(row.rule, row.reason)
            facts.append({"id": row.id, "kind": kind, "balance_key": balance_key})
        conn.execute(
            text("UPDATE ledger_call_events SET kind = :kind, balance_key = :balance_key WHERE id = :id"), facts
        )
        after = rows[-1].id
    # Until version 6, guard took these key prefixes for money (a P402 session, a wallet).
    conn.execute(text("UPDATE ledger_observations SET money = true WHERE key LIKE 'p402:%' OR key LIKE 'wallet:%'"))


# How guard before version 6 named its rules and worded some of its denials: read by `_v6` only.
_OLD_RULES = (  # a rule's name, matched whole: its kind
    (re.compile(r"default"), "default"),
    (re.compile(r"wire"), "wire"),
    (re.compile(r"idempotency"), "idempotency"),
    (re.compile(r"approvals"), "approval"),
    (re.compile(r"balances\.stale_after"), "stale_balance"),
    (re.compile(r"balances"), "balance"),
    (re.compile(r"budgets(\..+)?"), "budget"),
    (re.compile(r"adapters\..+"), "adapter"),
    (re.compile(r"tools\..+\.max_price"), "price"),
    (re.compile(r"tools\..+\.rate_limit"), "rate_limit"),
    (re.compile(r"tools\..+\.quotas\[\d+\]"), "quota"),
    (re.compile(r"tools\..+\.when\[\d+\]"), "condition"),
)
# A tool's own rule (`tools.NAME`) denied a tool, priced nothing, or asked a human: its words tell which.
_OLD_NO_PRICE = re.compile(r"no price, no pay: ")
_OLD_APPROVAL = re.compile(r".* needs a human's approval: |the operator denied this call to ")
_OLD_STALE_BALANCE = re.compile(r"the balance (\S+) was seen ")


def _old_facts(rule: str, reason: str | None) -> tuple[str | None, str | None]:
    """The kind of rule that decided a call event written before version 6 (None for a name guard never
    wrote), and for a stale balance the balance it named."""
    for name, kind in _OLD_RULES:
        if name.fullmatch(rule):
            stale = _OLD_STALE_BALANCE.match(reason or "") if kind == "stale_balance" else None
            return kind, stale.group(1) if stale else None
    if not rule.startswith("tools."):
        return None, None
    if _OLD_NO_PRICE.match(reason or ""):
        return "price", None
    if _OLD_APPROVAL.match(reason or ""):
        return "approval", None
    return "tool", None


def _v7(conn: Connection) -> None:
    """x402 payments keep the transfer authorization they carried (payer, nonce, validBefore), so a hold
    in doubt can be settled or voided by what the chain says of it."""
    SQLModel.metadata.create_all(conn, tables=[getattr(AuthorizationRow, "__table__")])  # noqa: B009


def _v8(conn: Connection) -> None:
    """The kill switch: scopes an operator froze, read by every guard on the ledger."""
    SQLModel.metadata.create_all(conn, tables=[getattr(FreezeRow, "__table__")])  # noqa: B009


def _v9(conn: Connection) -> None:
    """A call event may keep the call's arguments, secrets removed (`audit: {arguments: redacted}`), so
    `guard policy simulate` can evaluate a candidate's argument conditions. Older events have none."""
    conn.execute(text("ALTER TABLE ledger_call_events ADD COLUMN arguments TEXT"))


MIGRATIONS: list[Callable[[Connection], None]] = [_v1, _v2, _v3, _v4, _v5, _v6, _v7, _v8, _v9]
MIGRATION_LOCK = 0x6775617264  # "guard": the advisory lock key that serializes migrations
SCHEMA_VERSION = len(MIGRATIONS)


def schema_version(conn: Connection) -> int:
    """The version stored in the database (0 for an empty one)."""
    tables = conn.dialect.get_table_names(conn)
    if "ledger_meta" not in tables:
        if any(name.startswith("ledger_") for name in tables):
            raise SchemaError("the database has ledger tables but no ledger_meta: not a ledger this release knows")
        return 0
    row = conn.execute(text("SELECT value FROM ledger_meta WHERE key = 'schema_version'")).first()
    if row is None or not str(row[0]).isdigit():
        raise SchemaError("ledger_meta has no readable schema_version")
    return int(row[0])


def migrate(conn: Connection) -> int:
    """Bring the schema to `SCHEMA_VERSION` inside the caller's transaction; return the old version."""
    if conn.dialect.name == "postgresql":
        # Guards opening one empty database at once would race to create the same tables.
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
    found = schema_version(conn)
    if found > SCHEMA_VERSION:
        raise SchemaError(
            f"the ledger's schema is version {found}, newer than this release's ({SCHEMA_VERSION}): upgrade guard"
        )
    for step in MIGRATIONS[found:]:
        step(conn)
    if found == 0:
        conn.execute(
            text("INSERT INTO ledger_meta (key, value) VALUES ('schema_version', :v)"),
            {"v": str(SCHEMA_VERSION)},
        )
    elif found < SCHEMA_VERSION:
        conn.execute(text("UPDATE ledger_meta SET value = :v WHERE key = 'schema_version'"), {"v": str(SCHEMA_VERSION)})
    return found
