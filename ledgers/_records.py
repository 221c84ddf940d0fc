"""The ledger's records: what callers hand the ledger and what it hands back, as frozen dataclasses.

Amounts are `Amount`s (an integer and its unit); times are timezone-aware datetimes. Nothing here
touches the database.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from ledgers._errors import LedgerError
from ledgers._money import Amount, check_value
from ledgers._time import Window


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
class Authorization:
    """A signed transfer authorization an x402 payment carried (EIP-3009 `transferWithAuthorization`):
    anyone holding it may move `value` of the token `asset` on `network` from `payer`, once (by `nonce`,
    the payment's idempotency key), until `valid_before`. After that it can never be used."""

    network: str  # CAIP-2, e.g. eip155:8453
    asset: str  # the token contract's address
    payer: str
    nonce: str  # 32 bytes, 0x-hex
    value: Amount
    valid_before: datetime


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
    # The payments it counts (spent, held, in doubt) in their own units, one Amount per unit (Lightning in
    # msat): what `used` converted from, through the rates each reservation used.
    paid_in: tuple[Amount, ...] = ()

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


Decision = Literal["allow", "deny", "would_deny", "error", "external", "topup", "resolve", "freeze", "unfreeze"]
"""What a call event records: a call allowed, denied or failed upstream; a call a shadowed rule would have
denied, forwarded (`would_deny`, with that rule, its kind and reason); spend seen only in a balance
(`external`), a balance that rose (`topup`), a hold in doubt resolved (`resolve`); an operator's freeze
or unfreeze (`freeze`, `unfreeze`: the kill switch)."""

RuleKind = Literal[
    "default",  # not allowed by the policy (default: deny)
    "tool",  # a tool rule: deny, hidden, a variant of a named tool
    "condition",  # an argument condition (`when`)
    "approval",  # a human's approval: pending, denied, or no longer usable
    "adapter",  # the upstream family's adapter refuses the call (an unreadable invoice, a name variant)
    "price",  # no price, no pay; over max_price; a price in a unit no cap or budget compares with
    "budget",  # a budget would go over its limit, or none covers the payment's unit
    "rate_limit",  # a call rate limit is used up
    "repeat_limit",  # the same paid resource bought too often in a session (the loop breaker)
    "quota",  # a quota counter is used up
    "balance",  # a balance that cannot pay (exhausted, expired, below the price)
    "stale_balance",  # a balance seen too long ago to pay on
    "idempotency",  # the payment is already in flight, in doubt, or made
    "freeze",  # an operator froze the guard (the kill switch: `guard freeze`)
    "wire",  # refused before any decision: no usable id, an id in flight, unreadable params
]
"""Which kind of rule decided a call: reports and alerts read this, never the rule's name or its words."""


@dataclass(frozen=True)
class Freeze:
    """The kill switch, thrown: while it stands, every guard on the ledger refuses the paying calls of
    `scope` ("global", "identity:<name>", "session:<id>"), or every call when `all_tools`."""

    scope: str
    reason: str
    by: str  # who froze: the OS user, or what `--by` said
    since: datetime
    all_tools: bool = False

    @property
    def what(self) -> str:
        """The calls it refuses, in words."""
        return "every call" if self.all_tools else "paying calls"

    @property
    def flag(self) -> str:
        """The `guard unfreeze` flag that lifts it."""
        kind, _, name = self.scope.partition(":")
        return f"--{kind} {name}" if name else ""

    @property
    def refusal(self) -> str:
        """Its denial in words: what is frozen, by whom, why, and how to lift it."""
        lift = f"guard unfreeze {self.flag}".rstrip()
        where = "" if self.scope == "global" else f" for {self.scope.replace(':', ' ', 1)}"
        return f"{self.what} frozen{where} by {self.by}: {self.reason} (until `{lift}`)"


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
    arguments: str | None = None  # the call's arguments as JSON, secrets removed (only under `audit.arguments`)

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
