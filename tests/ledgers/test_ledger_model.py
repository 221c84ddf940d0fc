"""The ledger against a reference model, on a real SQLite file and a real PostgreSQL server.

A Hypothesis state machine drives the real `Ledger` and a plain-Python model side by side: reserve
(against one to three budgets, with an idempotency key from a small pool, sometimes a rate limit),
mark forwarded, settle, void, mark in doubt, resolve, steps a hold's phase does not allow, crashes and
restarts, clock jumps forwards and backwards, rate-limit hits, payments above their hold. After every
step the two must agree on every budget's use, on every open hold and every hold the step moved (every
hold, when an example ends), and on the rate window; no budget may be over its limit unless a payment
above its hold was recorded in its window; and no budget may count less than the payments settled
against it.

The model is deliberately naive: a dict of holds with phase, amount, settled amount and what each
charges its budgets; a budget's use is a sum over the holds its window counts. Its time rule is the
ledger's documented one: a time the ledger stores is never earlier than one it stored before, and a
process reads the clock as max(clock, the latest time it read or, when it opened, found stored). So a
clock that jumps back can neither store rows in the past nor let a window forget spend early.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import cast
from zoneinfo import ZoneInfo

import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from ledgers import (
    AlreadyPaid,
    Amount,
    Budget,
    BudgetExceeded,
    HoldInfo,
    HoldStateError,
    Ledger,
    PaymentInFlight,
    RateLimit,
    RateLimited,
    Refused,
    Window,
)
from tests.ledgers.conftest import FakeClock, reset_postgres

US_PER_S = 1_000_000
HOUR_US = 3600 * US_PER_S
MINUTE_US = 60 * US_PER_S
LEASE_S = 600
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
PARIS = ZoneInfo("Europe/Paris")
MSAT_PER = {"sat": 1000, "msat": 1}
# 23:00 in Paris, the night it moves its clocks forward (02:00 -> 03:00 on 28 March 2027): small clock
# jumps cross midnight, and a 23-hour day, soon.
START = datetime(2027, 3, 27, 22, 0, tzinfo=UTC)

# Limits a few reservations reach, so refusals are common; the session budget counts in msat, so
# reservations in sat and msat are both converted (and rounded up) into some budget's unit.
SESSION = Budget("session", Amount(600_000, "msat"), scope="session:s1")
HOURLY = Budget("hourly", Amount(400, "sat"), scope="identity:alice", window=Window.sliding("1h"))
DAILY = Budget("daily", Amount(550, "sat"), window=Window.calendar("day", "Europe/Paris"))
BUDGETS = {budget.name: budget for budget in (SESSION, HOURLY, DAILY)}
RATE = RateLimit("tool:pay@session:s1", 4, Window.sliding("1m"))

OPEN = ("reserved", "forwarded", "in_doubt")
# Which phases each step accepts (the ledger's state diagram).
STEPS = {
    "mark_forwarded": ("reserved",),
    "settle": ("reserved", "forwarded"),
    "void": ("reserved", "forwarded"),
    "mark_in_doubt": ("forwarded",),
    "resolve": ("in_doubt",),
}
# How a process stops so that recovery takes it for gone: killed (its owner row then deleted, or its
# pid reused by another process), a guard on another host silent for longer than the lease, a clean
# close() that left holds open; or a guard on another host within its lease, which must be left alone
# until the lease runs out.
STOPS = ("row_deleted", "pid_reused", "lease_expired", "closed", "other_host_alive")

AMOUNTS = st.one_of(
    st.integers(0, 300).map(lambda value: Amount(value, "sat")),
    st.integers(0, 300_000).map(lambda value: Amount(value, "msat")),
)
BUDGET_NAMES = st.lists(st.sampled_from(sorted(BUDGETS)), min_size=1, max_size=3, unique=True)
IDEMPOTENCY_KEYS = st.none() | st.sampled_from(["k0", "k1", "k2"])
OUTCOMES = ("paid", "failed", "timed_out", "in_flight")
PICKS = st.integers(0, 1000)
PARTS = st.one_of(st.sampled_from([0, 100]), st.integers(0, 100))
UNITS = st.sampled_from(["sat", "msat"])
JUMPS_US = st.one_of(
    st.integers(-120 * US_PER_S, 120 * US_PER_S),
    st.integers(-20 * MINUTE_US, 20 * MINUTE_US),
    st.integers(-2 * 86_400 * US_PER_S, 2 * 86_400 * US_PER_S),
    # Right at the edges of the 1h and 1m windows, both ways.
    st.sampled_from([HOUR_US, HOUR_US - 1, HOUR_US + 1, -HOUR_US, MINUTE_US, MINUTE_US - 1, -1, 1]),
)


def micros(when: datetime) -> int:
    return (when - EPOCH) // timedelta(microseconds=1)


def moment(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def paris_day(us: int) -> date:
    return moment(us).astimezone(PARIS).date()


def in_window(budget: Budget, created_us: int, now_us: int) -> bool:
    """Whether a charge made at `created_us` counts towards `budget` at `now_us` (the model's own rule)."""
    if budget is SESSION:
        return True
    if budget is HOURLY:
        return created_us > now_us - HOUR_US
    return paris_day(created_us) >= paris_day(now_us)


def window_start(budget: Budget, now_us: int) -> datetime | None:
    if budget is SESSION:
        return None
    if budget is HOURLY:
        return moment(now_us - HOUR_US + 1)
    day = paris_day(now_us)
    return datetime(day.year, day.month, day.day, tzinfo=PARIS)


def convert_up(value: int, unit: str, to: str) -> int:
    """`value` `unit`s in `to`, rounded up."""
    return -(-value * MSAT_PER[unit] // MSAT_PER[to])


@dataclass
class ModelHold:
    owner: str
    amount: int
    unit: str
    key: str | None
    created_us: int
    charges: dict[str, int]  # budget name -> held while open, in the budget's unit
    phase: str = "reserved"
    settled: int | None = None  # in the hold's unit
    spent: dict[str, int] = field(default_factory=dict)  # budget name -> spent once settled

    def use(self, budget: Budget) -> tuple[int, int]:
        """(held, spent) this hold counts towards `budget`."""
        if budget.name not in self.charges:
            return 0, 0
        if self.phase in OPEN:
            return self.charges[budget.name], 0
        return 0, self.spent.get(budget.name, 0)


@dataclass
class OwnerRow:
    """A process in the owners table: one of this host (alive while its pid is its own) or of another
    host (alive while seen within the lease)."""

    local_alive: bool = False
    remote_seen_us: int | None = None

    def alive(self, now_us: int) -> bool:
        if self.remote_seen_us is None:
            return self.local_alive
        return now_us - self.remote_seen_us < LEASE_S * US_PER_S


class Model:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.holds: dict[int, ModelHold] = {}
        self.moved: set[int] = set()  # holds written since the invariant last compared them
        self.rate_events: list[int] = []
        self.owners: dict[str, OwnerRow] = {}
        self.owner = ""
        self.stored_us = 0  # the latest time stored
        self.read_us = 0  # the latest time the running process read

    # time

    def now(self) -> int:
        self.read_us = max(micros(self.clock.now()), self.read_us)
        return self.read_us

    def store(self, now_us: int) -> None:
        assert now_us >= self.stored_us, "the model stored a time earlier than one it stored before"
        self.stored_us = now_us

    def started(self, owner: str) -> None:
        """A process opened the ledger: it knows only what was stored."""
        self.read_us = self.stored_us
        self.now()
        self.owner = owner
        self.owners[owner] = OwnerRow(local_alive=True)

    # reading

    def usage(self, budget: Budget, now_us: int) -> tuple[int, int]:
        held = spent = 0
        for hold in self.holds.values():
            if in_window(budget, hold.created_us, now_us):
                h, s = hold.use(budget)
                held, spent = held + h, spent + s
        return held, spent

    def rate_count(self, now_us: int) -> int:
        return sum(1 for at in self.rate_events if at > now_us - MINUTE_US)

    def ids(self, *phases: str) -> list[int]:
        return sorted(i for i, hold in self.holds.items() if hold.phase in phases)

    def missing_id(self) -> int:
        return max(self.holds, default=0) + 1

    def info(self, hold_id: int) -> HoldInfo:
        hold = self.holds[hold_id]
        settled = Amount(hold.settled, hold.unit) if hold.settled is not None else None
        return HoldInfo(hold_id, hold.phase, Amount(hold.amount, hold.unit), settled, hold.key, moment(hold.created_us))

    # reserving

    def refusal(
        self, budgets: list[Budget], amount: Amount, key: str | None, rated: bool, now_us: int
    ) -> tuple[type[Refused], str, int | None] | None:
        """Why a reservation must be refused (the error, its rule, what remains), checked in the ledger's
        documented order; None when it must pass."""
        if key is not None:
            live = [hold for hold in self.holds.values() if hold.key == key and hold.phase != "voided"]
            assert len(live) <= 1, f"the model holds key {key} twice"
            if live:
                return (AlreadyPaid if live[0].phase == "settled" else PaymentInFlight), "idempotency", None
        if rated and self.rate_count(now_us) >= RATE.limit:
            return RateLimited, RATE.key, 0
        for budget in budgets:
            held, spent = self.usage(budget, now_us)
            value = convert_up(amount.value, amount.unit, budget.limit.unit)
            if spent + held + value > budget.limit.value:
                return BudgetExceeded, budget.name, max(0, budget.limit.value - spent - held)
        return None

    def reserve(
        self, hold_id: int, budgets: list[Budget], amount: Amount, key: str | None, rated: bool, now_us: int
    ) -> None:
        charges = {budget.name: convert_up(amount.value, amount.unit, budget.limit.unit) for budget in budgets}
        self.holds[hold_id] = ModelHold(self.owner, amount.value, amount.unit, key, now_us, charges)
        self.moved.add(hold_id)
        if rated:
            self.rate_events.append(now_us)
        self.store(now_us)

    # steps

    def step(self, hold_id: int, allowed: tuple[str, ...], phase: str, now_us: int) -> ModelHold:
        hold = self.holds[hold_id]
        assert hold.phase in allowed, f"the model moved hold {hold_id} from {hold.phase}"
        hold.phase = phase
        self.moved.add(hold_id)
        self.store(now_us)
        return hold

    def pay(self, hold_id: int, allowed: tuple[str, ...], actual: Amount, now_us: int) -> None:
        """Settle at `actual`, all of it (above the hold too): each budget counts it in its unit, rounded up."""
        hold = self.step(hold_id, allowed, "settled", now_us)
        hold.settled = convert_up(actual.value, actual.unit, hold.unit)
        for name in hold.charges:
            hold.spent[name] = convert_up(hold.settled, hold.unit, BUDGETS[name].limit.unit)

    def over_reserved(self, budget: Budget, now_us: int) -> bool:
        """Whether a payment above its hold was recorded against `budget` in its current window."""
        return any(
            budget.name in hold.charges and hold.settled is not None and hold.settled > hold.amount
            for hold in self.holds.values()
            if in_window(budget, hold.created_us, now_us)
        )

    def settled_msat(self, budget: Budget, now_us: int) -> int:
        """What the payments settled against `budget` in its window came to, in msat (exactly)."""
        return sum(
            (hold.settled or 0) * MSAT_PER[hold.unit]
            for hold in self.holds.values()
            if budget.name in hold.charges and hold.phase == "settled" and in_window(budget, hold.created_us, now_us)
        )

    # recovery

    def recover(self, now_us: int) -> list[str]:
        """What recover() must do: void the reserved holds of gone processes and put their forwarded
        ones in doubt (they stay counted). Returns the phases of the holds it moved."""
        gone = {owner for owner, row in self.owners.items() if owner != self.owner and not row.alive(now_us)}
        gone |= {
            hold.owner
            for hold in self.holds.values()
            if hold.phase in ("reserved", "forwarded") and hold.owner not in self.owners and hold.owner != self.owner
        }
        moved = []
        for hold_id, hold in self.holds.items():
            if hold.owner in gone and hold.phase in ("reserved", "forwarded"):
                moved.append(hold.phase)
                hold.phase = "voided" if hold.phase == "reserved" else "in_doubt"
                self.moved.add(hold_id)
        for owner in gone:
            self.owners.pop(owner, None)
        if moved:
            self.store(now_us)
        return moved


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url
        self.clock = FakeClock(START)
        self.model = Model(self.clock)
        self.ledger = self.start(recover=True)

    def start(self, *, recover: bool) -> Ledger:
        ledger = Ledger.open(self.url, clock=self.clock, lease_s=LEASE_S, recover=recover)
        self.model.started(ledger.owner)
        if recover:
            self.expect_recovery()
        return ledger

    def expect_recovery(self) -> int:
        """Recover in the model; how many holds the ledger's recovery must have moved."""
        moved = self.model.recover(self.model.now())
        for phase in moved:
            event(f"recovered a {phase} hold")
        return len(moved)

    def teardown(self) -> None:
        try:
            for hold_id in self.model.holds:  # settled and voided ones too: no step may have changed them
                assert self.ledger.hold(hold_id) == self.model.info(hold_id)
        finally:
            self.ledger.close()

    def pick(self, pick: int, *phases: str) -> int:
        ids = self.model.ids(*phases)
        return ids[pick % len(ids)]

    def actual(self, hold_id: int, part: int, unit: str) -> Amount:
        """`part`% of what the hold holds, in `unit`, rounded down: never more than the hold."""
        hold = self.model.holds[hold_id]
        return Amount(hold.amount * MSAT_PER[hold.unit] * part // (100 * MSAT_PER[unit]), unit)

    # rules

    def reserve_hold(self, amount: Amount, names: list[str], key: str | None, rated: bool) -> int | None:
        """Reserve as the model says: the new hold's id, or None when the model says the ledger must
        refuse (and it did, with the model's reason)."""
        budgets = [BUDGETS[name] for name in names]
        now = self.model.now()
        refusal = self.model.refusal(budgets, amount, key, rated, now)
        rate_limits = [RATE] if rated else []
        if refusal is not None:
            error, rule_name, remaining = refusal
            event(f"reserve refused: {error.__name__} ({rule_name})")
            with pytest.raises(Refused) as refused:
                self.ledger.reserve(budgets, amount, idempotency_key=key, rate_limits=rate_limits)
            assert type(refused.value) is error
            assert refused.value.rule == rule_name
            if remaining is not None:
                assert refused.value.remaining == remaining
            return None
        if key is not None and any(hold.key == key for hold in self.model.holds.values()):
            event("reserve: a voided key reserved again")
        hold_id = self.ledger.reserve(budgets, amount, idempotency_key=key, rate_limits=rate_limits)
        assert hold_id not in self.model.holds
        self.model.reserve(hold_id, budgets, amount, key, rated, now)
        return hold_id

    @rule(amount=AMOUNTS, names=BUDGET_NAMES, key=IDEMPOTENCY_KEYS, rated=st.booleans())
    def reserve(self, amount: Amount, names: list[str], key: str | None, rated: bool) -> None:
        self.reserve_hold(amount, names, key, rated)

    @rule(
        amount=AMOUNTS,
        names=BUDGET_NAMES,
        key=IDEMPOTENCY_KEYS,
        rated=st.booleans(),
        outcome=st.sampled_from(OUTCOMES),
        part=PARTS,
        unit=UNITS,
    )
    def call(
        self, amount: Amount, names: list[str], key: str | None, rated: bool, outcome: str, part: int, unit: str
    ) -> None:
        """A paying call: reserved, forwarded, then paid (settled), failed (voided), timed out (in doubt),
        or still upstream (forwarded) when the next step comes."""
        self.make_call(amount, names, key, rated, outcome, part, unit)

    @initialize(
        calls=st.lists(st.tuples(AMOUNTS, BUDGET_NAMES, IDEMPOTENCY_KEYS, st.sampled_from(OUTCOMES)), max_size=8)
    )
    def calls_first(self, calls: list[tuple[Amount, list[str], str | None, str]]) -> None:
        """Start with some calls made (rules may be switched off for a whole example; this one is not)."""
        for amount, names, key, outcome in calls:
            self.make_call(amount, names, key, False, outcome, 50, amount.unit)

    def make_call(
        self, amount: Amount, names: list[str], key: str | None, rated: bool, outcome: str, part: int, unit: str
    ) -> None:
        hold_id = self.reserve_hold(amount, names, key, rated)
        if hold_id is None:
            return
        self.ledger.mark_forwarded(hold_id)
        self.model.step(hold_id, STEPS["mark_forwarded"], "forwarded", self.model.now())
        if outcome == "paid":
            actual = self.actual(hold_id, part, unit)
            self.ledger.settle(hold_id, actual)
            self.model.pay(hold_id, STEPS["settle"], actual, self.model.now())
        elif outcome == "failed":
            self.ledger.void(hold_id)
            self.model.step(hold_id, STEPS["void"], "voided", self.model.now())
        elif outcome == "timed_out":
            self.ledger.mark_in_doubt(hold_id)
            self.model.step(hold_id, STEPS["mark_in_doubt"], "in_doubt", self.model.now())

    @precondition(lambda self: bool(self.model.ids("reserved")))
    @rule(pick=PICKS)
    def mark_forwarded(self, pick: int) -> None:
        hold_id = self.pick(pick, "reserved")
        self.ledger.mark_forwarded(hold_id)
        self.model.step(hold_id, STEPS["mark_forwarded"], "forwarded", self.model.now())

    @precondition(lambda self: bool(self.model.ids("reserved", "forwarded")))
    @rule(pick=PICKS, part=PARTS, unit=UNITS)
    def settle(self, pick: int, part: int, unit: str) -> None:
        hold_id = self.pick(pick, "reserved", "forwarded")
        actual = self.actual(hold_id, part, unit)
        self.ledger.settle(hold_id, actual)
        self.model.pay(hold_id, STEPS["settle"], actual, self.model.now())

    @precondition(lambda self: bool(self.model.ids("reserved", "forwarded")))
    @rule(pick=PICKS)
    def void(self, pick: int) -> None:
        hold_id = self.pick(pick, "reserved", "forwarded")
        self.ledger.void(hold_id)
        self.model.step(hold_id, STEPS["void"], "voided", self.model.now())

    @precondition(lambda self: bool(self.model.ids("forwarded")))
    @rule(pick=PICKS)
    def mark_in_doubt(self, pick: int) -> None:
        hold_id = self.pick(pick, "forwarded")
        self.ledger.mark_in_doubt(hold_id)
        self.model.step(hold_id, STEPS["mark_in_doubt"], "in_doubt", self.model.now())

    @precondition(lambda self: bool(self.model.ids("in_doubt")))
    @rule(pick=PICKS, part=PARTS, unit=UNITS)
    def resolve(self, pick: int, part: int, unit: str) -> None:
        hold_id = self.pick(pick, "in_doubt")
        actual = self.actual(hold_id, part, unit)
        self.ledger.resolve(hold_id, actual)
        if actual.value == 0:  # nothing was paid after all
            self.model.step(hold_id, STEPS["resolve"], "voided", self.model.now())
        else:
            self.model.pay(hold_id, STEPS["resolve"], actual, self.model.now())

    @precondition(lambda self: bool(self.model.ids(*OPEN)))
    @rule(pick=PICKS, extra=st.integers(1, 50), unit=UNITS)
    def pay_more_than_held(self, pick: int, extra: int, unit: str) -> None:
        """The upstream paid more than the hold: settling (or resolving) records all of it, and the
        budgets it counts against may go over their limits (then they refuse every reservation)."""
        hold_id = self.pick(pick, *OPEN)
        hold = self.model.holds[hold_id]
        too_much = Amount(hold.amount * MSAT_PER[hold.unit] // MSAT_PER[unit] + extra, unit)
        event("paid more than held")
        if hold.phase == "in_doubt":
            self.ledger.resolve(hold_id, too_much)
            self.model.pay(hold_id, STEPS["resolve"], too_much, self.model.now())
        else:
            self.ledger.settle(hold_id, too_much)
            self.model.pay(hold_id, STEPS["settle"], too_much, self.model.now())
        assert self.ledger.hold(hold_id).over_reservation is not None

    @rule(step=st.sampled_from(sorted(STEPS)), pick=PICKS)
    def step_in_the_wrong_phase(self, step: str, pick: int) -> None:
        """A step the hold's phase does not allow (a second resolution, say; or a hold that does not
        exist) raises HoldStateError and changes nothing."""
        ids = [i for i, hold in self.model.holds.items() if hold.phase not in STEPS[step]]
        # One time in eight (or when every hold allows the step), a hold that does not exist.
        hold_id = sorted(ids)[pick % len(ids)] if ids and pick % 8 else self.model.missing_id()
        event(f"wrong step: {step}")
        calls: dict[str, Callable[[], None]] = {
            "mark_forwarded": lambda: self.ledger.mark_forwarded(hold_id),
            "settle": lambda: self.ledger.settle(hold_id, Amount(0, "sat")),
            "void": lambda: self.ledger.void(hold_id),
            "mark_in_doubt": lambda: self.ledger.mark_in_doubt(hold_id),
            "resolve": lambda: self.ledger.resolve(hold_id, Amount(1, "msat")),
        }
        with pytest.raises(HoldStateError):
            calls[step]()

    @rule()
    def hit(self) -> None:
        """A call the rate limit counts, no money involved: refused once the window is full."""
        now = self.model.now()
        if self.model.rate_count(now) >= RATE.limit:
            event("rate limit hit")
            with pytest.raises(RateLimited):
                self.ledger.hit([RATE])
            return
        self.ledger.hit([RATE])
        self.model.rate_events.append(now)
        self.model.store(now)

    @rule(us=JUMPS_US)
    def jump(self, us: int) -> None:
        """The clock jumps, forwards or backwards (NTP, a suspended laptop, a wrong RTC)."""
        self.clock.advance(us / US_PER_S)

    @rule()
    def recover(self) -> None:
        """Recovery in a running process: moves the holds of gone processes only, never its own."""
        assert self.ledger.recover() == self.expect_recovery()

    @rule(
        in_flight=st.lists(st.tuples(AMOUNTS, BUDGET_NAMES, st.booleans()), max_size=3),
        how=st.sampled_from(STOPS),
        recover_at_open=st.booleans(),
    )
    def restart(self, in_flight: list[tuple[Amount, list[str], bool]], how: str, recover_at_open: bool) -> None:
        """The process stops in the middle of calls (reserved; forwarded when True: the payment may
        have left) without resolving its holds, and a new one opens the ledger."""
        for amount, names, forwarded in in_flight:
            hold_id = self.reserve_hold(amount, names, None, False)
            if hold_id is not None and forwarded:
                self.ledger.mark_forwarded(hold_id)
                self.model.step(hold_id, STEPS["mark_forwarded"], "forwarded", self.model.now())
        gone = self.ledger.owner
        if how == "closed":
            self.ledger.close()
            del self.model.owners[gone]
        else:
            # A crash: no close(), the owner row stays as the process left it; then it is gone.
            self.ledger._store.close()
            params: dict[str, object] = {"id": gone}
            if how == "row_deleted":
                statement = "DELETE FROM ledger_owners WHERE id = :id"
                del self.model.owners[gone]
            elif how == "pid_reused":
                statement = "UPDATE ledger_owners SET pid_start = 'another-process' WHERE id = :id"
                self.model.owners[gone] = OwnerRow(local_alive=False)
            else:
                seen = self.model.read_us if how == "other_host_alive" else 0
                statement = "UPDATE ledger_owners SET host = 'another-host', seen_us = :seen WHERE id = :id"
                params["seen"] = seen
                self.model.owners[gone] = OwnerRow(remote_seen_us=seen)
            engine = create_engine(self.url)
            try:
                with engine.begin() as conn:
                    conn.execute(text(statement), params)
            finally:
                engine.dispose()
        event(f"restart: {how}")
        self.ledger = self.start(recover=recover_at_open)

    # after every step

    @invariant()
    def agrees_with_the_model(self) -> None:
        now = self.model.now()
        for budget in BUDGETS.values():
            usage = self.ledger.usage(budget)
            assert (usage.held, usage.spent) == self.model.usage(budget, now), budget.name
            if not self.model.over_reserved(budget, now):
                assert usage.spent + usage.held <= budget.limit.value, f"{budget.name} is over its limit"
            unit = MSAT_PER[budget.limit.unit]
            assert usage.spent * unit >= self.model.settled_msat(budget, now), f"{budget.name} counts less than paid"
            assert usage.window_start == window_start(budget, now)
        # Every open hold in one read; each hold this step moved (into a final phase too) on its own.
        assert self.ledger.open_holds() == [self.model.info(i) for i in self.model.ids(*OPEN)]
        for hold_id in sorted(self.model.moved):
            assert self.ledger.hold(hold_id) == self.model.info(hold_id)
        self.model.moved.clear()
        # A refused reservation wrote no hold, and no rate event.
        with pytest.raises(HoldStateError):
            self.ledger.hold(self.model.missing_id())
        assert self.ledger.count(RATE.key, RATE.window) == self.model.rate_count(now)


# Thousands of steps per run: about 6,000 on SQLite (examples of up to 80 steps) and 1,400 on PostgreSQL
# (up to 60). A step costs the same however long its example (it compares the open holds in one read, and
# the holds it moved), so examples can be long; there are still many, as Hypothesis leaves a different set
# of rules out of each.
SETTINGS = {
    "sqlite": settings(max_examples=100, stateful_step_count=80, deadline=None),
    "postgres": settings(max_examples=30, stateful_step_count=60, deadline=None),
}


def sqlite_machines(directory: Path) -> Callable[[], LedgerMachine]:
    """Each example on a new SQLite file: a copy of an empty ledger's (migrating one costs more)."""
    empty = directory / "empty.db"
    Ledger.open(empty).close()  # closed, its write-ahead log is checkpointed: the file is the whole ledger
    assert not Path(f"{empty}-wal").exists()

    def machine() -> LedgerMachine:
        path = directory / f"{uuid.uuid4().hex}.db"
        shutil.copyfile(empty, path)
        return LedgerMachine(f"sqlite:///{path}")

    return machine


def postgres_machines(url: str) -> Callable[[], LedgerMachine]:
    """Each example on the test server, emptied: its ledger's few rows deleted (the schema stays; dropping
    and creating it, or TRUNCATE, costs far more)."""
    reset_postgres(url)
    Ledger.open(url).close()

    def machine() -> LedgerMachine:
        empty_ledger(url)
        return LedgerMachine(url)

    return machine


def empty_ledger(url: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for table in inspect(conn).get_table_names():
                if table.startswith("ledger_") and table != "ledger_meta":
                    conn.execute(text(f"DELETE FROM {table}"))
    finally:
        engine.dispose()


@pytest.fixture
def unsynced_directory(tmp_path: Path) -> Iterator[Path]:
    """A directory in memory where there is one (tmpfs: a disk sync costs nothing), else `tmp_path`."""
    if not Path("/dev/shm").is_dir():
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir="/dev/shm", prefix="ledger-model-") as directory:
        yield Path(directory)


def unsynced(url: str) -> str:
    """The server's URL, its sessions committing without waiting for the disk (what commits make visible,
    and when, is unchanged: only a crash of the server itself could lose the last ones)."""
    parsed = make_url(url)
    options = " ".join(filter(None, [parsed.query.get("options"), "-csynchronous_commit=off"]))
    return parsed.update_query_dict({"options": options}).render_as_string(hide_password=False)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_the_ledger_agrees_with_a_reference_model(backend: str, request: pytest.FixtureRequest) -> None:
    # The model checks what the ledger says, not what a power cut leaves (tests/ledgers/test_recovery.py
    # kills processes): disk syncs, most of each step's time on a busy machine, are taken out of its way.
    if backend == "sqlite":
        machines = sqlite_machines(request.getfixturevalue("unsynced_directory"))
    else:
        machines = postgres_machines(unsynced(str(request.getfixturevalue("postgres_url"))))
    # Any callable returning a machine will do (as documented); the signature says a class.
    run_state_machine_as_test(cast("type[LedgerMachine]", machines), settings=SETTINGS[backend])
