"""Holds: a reservation checked and written in one transaction, settled at what was paid (all of it, above
the hold too), voided, or kept in doubt; each step allowed only from the phases the state diagram says,
so a hold resolves at most once; a payment id paid at most once; spend recorded after the fact. On a real
SQLite file and a real PostgreSQL server."""

from __future__ import annotations

from fractions import Fraction

import pytest

from ledgers import (
    AlreadyPaid,
    Amount,
    AmountError,
    Budget,
    BudgetExceeded,
    CallRecord,
    HoldStateError,
    Ledger,
    PaymentInFlight,
    Rates,
    UnitMismatch,
    Window,
)
from ledgers._holds import STEPS
from ledgers._schema import PHASES
from tests.ledgers.conftest import FakeClock
from tests.ledgers.helpers import query

SAT = "sat"
SESSION = Budget("per-session", Amount(5000, SAT), scope="session:s1")
HOURLY = Budget("hourly", Amount(3000, SAT), scope="identity:alice", window=Window.sliding("1h"))
TIGHT = Budget("per-session", Amount(100, SAT), scope="session:s1")
DAILY_MSAT = Budget("daily", Amount(1_000_000, "msat"), window=Window.calendar("day"))
P402 = "p402:sess_0123456789abcdef01234567"
USD_DAILY = Budget("daily", Amount(1_000_000, "usd_micro"))


def rows(ledger_url: str, table: str) -> int:
    return int(query(ledger_url, f"SELECT COUNT(*) FROM {table}")[0][0])


# --- reserving ------------------------------------------------------------------------------------------------


def test_a_reservation_counts_until_settled_at_the_actual_amount(ledger: Ledger) -> None:
    hold = ledger.reserve([SESSION], Amount(3000, SAT))
    assert (ledger.usage(SESSION).held, ledger.usage(SESSION).spent) == (3000, 0)
    ledger.mark_forwarded(hold)
    ledger.settle(hold, Amount(2500, SAT))
    usage = ledger.usage(SESSION)
    assert (usage.held, usage.spent, usage.remaining) == (0, 2500, 2500)
    assert ledger.hold(hold).phase == "settled"
    assert ledger.hold(hold).settled == Amount(2500, SAT)


def test_a_reservation_over_the_limit_is_refused_with_what_remains(ledger: Ledger) -> None:
    ledger.reserve([SESSION], Amount(4000, SAT))
    with pytest.raises(BudgetExceeded) as refused:
        ledger.reserve([SESSION], Amount(1001, SAT))
    assert (refused.value.rule, refused.value.remaining, refused.value.unit) == ("per-session", 1000, SAT)
    assert "1001 sat asked, 1000 sat left of 5000" in str(refused.value)
    ledger.reserve([SESSION], Amount(1000, SAT))  # exactly the limit is fine


def test_every_budget_must_pass_and_a_refusal_writes_nothing(ledger: Ledger, ledger_url: str) -> None:
    ledger.reserve([HOURLY], Amount(2500, SAT))
    with pytest.raises(BudgetExceeded, match="hourly"):
        ledger.reserve([SESSION, HOURLY], Amount(1000, SAT))
    assert ledger.usage(SESSION).held == 0
    assert rows(ledger_url, "ledger_holds") == 1


def test_budgets_in_other_units_are_charged_in_their_own_unit_rounded_up(ledger: Ledger) -> None:
    in_msat = Budget("msat-budget", Amount(10_500, "msat"))
    hold = ledger.reserve([SESSION, in_msat], Amount(10, SAT))
    assert ledger.usage(in_msat).held == 10_000
    ledger.settle(hold, Amount(9500, "msat"))
    assert ledger.usage(in_msat).spent == 10_000  # 9.5 sat settles as 10 sat on a sat hold
    assert ledger.usage(SESSION).spent == 10


@pytest.mark.parametrize(
    ("amount", "error"),
    [
        (Amount.parse("1 usd"), UnitMismatch),
        (-5, AmountError),
        ("5000 sat", AmountError),
    ],
)
def test_bad_amounts_write_nothing(ledger: Ledger, ledger_url: str, amount: object, error: type[Exception]) -> None:
    with pytest.raises(error):
        ledger.reserve([SESSION], amount)  # type: ignore[arg-type]
    assert rows(ledger_url, "ledger_holds") == 0
    assert rows(ledger_url, "ledger_charges") == 0


# --- the state diagram ----------------------------------------------------------------------------------------


# The state diagram as these tests read it: the phases each step may start from, and where it leads.
DIAGRAM = {
    "mark_forwarded": ({"reserved"}, "forwarded"),
    "settle": ({"reserved", "forwarded"}, "settled"),
    "void": ({"reserved", "forwarded"}, "voided"),
    "mark_in_doubt": ({"forwarded"}, "in_doubt"),
    "resolve": ({"in_doubt"}, "settled"),  # something was paid
    "resolve_unpaid": ({"in_doubt"}, "voided"),  # nothing was
}
# How a fresh reservation is brought to each phase.
REACH = {
    "reserved": (),
    "forwarded": ("mark_forwarded",),
    "settled": ("settle",),
    "voided": ("void",),
    "in_doubt": ("mark_forwarded", "mark_in_doubt"),
}


def take(ledger: Ledger, step: str, hold: int) -> None:
    steps = {
        "mark_forwarded": lambda: ledger.mark_forwarded(hold),
        "settle": lambda: ledger.settle(hold, Amount(40, SAT)),
        "void": lambda: ledger.void(hold),
        "mark_in_doubt": lambda: ledger.mark_in_doubt(hold),
        "resolve": lambda: ledger.resolve(hold, Amount(40, SAT)),
        "resolve_unpaid": lambda: ledger.resolve(hold, Amount(0, SAT)),
    }
    steps[step]()


def test_the_transition_table_is_the_state_diagram_recovery_included() -> None:
    assert {name: (set(step.start), step.end) for name, step in STEPS.items()} == DIAGRAM | {
        "recover_unsent": ({"reserved"}, "voided"),
        "recover_sent": ({"forwarded"}, "in_doubt"),
    }
    assert set(REACH) == set(PHASES)


def test_every_step_is_taken_from_the_phases_the_diagram_allows_and_refused_from_every_other(ledger: Ledger) -> None:
    outcomes, expected = {}, {}  # (step, phase) -> the phase it led to, or "refused"
    for step, (allowed, end) in DIAGRAM.items():
        for phase in PHASES:
            hold = ledger.reserve([SESSION], Amount(100, SAT))
            for before in REACH[phase]:
                take(ledger, before, hold)
            usage = ledger.usage(SESSION)
            try:
                take(ledger, step, hold)
                outcomes[step, phase] = ledger.hold(hold).phase
            except HoldStateError as refused:
                assert str(refused) == f"hold {hold} is {phase}: it cannot become {end}"
                assert (ledger.hold(hold).phase, ledger.usage(SESSION)) == (phase, usage), "a refused step moved"
                outcomes[step, phase] = "refused"
            expected[step, phase] = end if phase in allowed else "refused"
    assert outcomes == expected


def test_no_step_is_taken_on_a_hold_that_does_not_exist(ledger: Ledger) -> None:
    for step in DIAGRAM:
        with pytest.raises(HoldStateError, match="hold 42 does not exist"):
            take(ledger, step, 42)


@pytest.mark.parametrize(
    ("steps", "message"),
    [
        (["settle", "settle"], "is settled: it cannot become settled"),
        (["void", "settle"], "is voided: it cannot become settled"),
        (["settle", "void"], "is settled: it cannot become voided"),
        (["mark_in_doubt"], "is reserved: it cannot become in_doubt"),
        (["resolve"], "is reserved: it cannot become settled"),
        (["forward", "forward"], "is forwarded: it cannot become forwarded"),
    ],
)
def test_a_hold_resolves_at_most_once(ledger: Ledger, steps: list[str], message: str) -> None:
    hold = ledger.reserve([SESSION], Amount(100, SAT))
    do = {
        "settle": lambda: ledger.settle(hold, Amount(50, SAT)),
        "void": lambda: ledger.void(hold),
        "mark_in_doubt": lambda: ledger.mark_in_doubt(hold),
        "resolve": lambda: ledger.resolve(hold, Amount(50, SAT)),
        "forward": lambda: ledger.mark_forwarded(hold),
    }
    for step in steps[:-1]:
        do[step]()
    before = ledger.usage(SESSION)
    with pytest.raises(HoldStateError, match=message):
        do[steps[-1]]()
    assert ledger.usage(SESSION) == before


def test_an_in_doubt_hold_stays_counted_in_full_until_resolved(ledger: Ledger) -> None:
    hold = ledger.reserve([SESSION], Amount(4000, SAT))
    ledger.mark_forwarded(hold)
    ledger.mark_in_doubt(hold)
    assert ledger.usage(SESSION).held == 4000
    with pytest.raises(BudgetExceeded):
        ledger.reserve([SESSION], Amount(1001, SAT))
    ledger.resolve(hold, Amount(0, SAT))
    assert ledger.hold(hold).phase == "voided"
    assert ledger.usage(SESSION).remaining == 5000


# --- a payment id is paid at most once ------------------------------------------------------------------------


def test_an_idempotency_key_cannot_be_paid_twice(ledger: Ledger) -> None:
    hold = ledger.reserve([SESSION], Amount(10, SAT), idempotency_key="hash-1")
    with pytest.raises(PaymentInFlight, match="already in progress"):
        ledger.reserve([SESSION], Amount(10, SAT), idempotency_key="hash-1")
    ledger.mark_forwarded(hold)
    ledger.mark_in_doubt(hold)
    with pytest.raises(PaymentInFlight, match="already in doubt"):
        ledger.reserve([SESSION], Amount(10, SAT), idempotency_key="hash-1")
    ledger.resolve(hold, Amount(10, SAT))
    with pytest.raises(AlreadyPaid, match="payment hash-1 was already made"):
        ledger.reserve([SESSION], Amount(10, SAT), idempotency_key="hash-1")


def test_a_voided_key_may_be_tried_again(ledger: Ledger) -> None:
    ledger.void(ledger.reserve([SESSION], Amount(10, SAT), idempotency_key="hash-2"))
    ledger.reserve([SESSION], Amount(10, SAT), idempotency_key="hash-2")


def test_a_hold_is_named_by_the_payment_its_answer_revealed_unless_another_hold_has_that_payment(
    ledger: Ledger,
) -> None:
    first, second = (ledger.reserve([SESSION], Amount(10, SAT)) for _ in range(2))
    assert ledger.name_payment(first, "hash-1") is True
    assert ledger.hold(first).idempotency_key == "hash-1"
    assert ledger.name_payment(first, "hash-2") is False  # named already: it keeps its name
    assert ledger.name_payment(second, "hash-1") is False  # another open hold has it (a unique index says so)
    assert ledger.hold(second).idempotency_key is None
    with pytest.raises(PaymentInFlight):
        ledger.reserve([SESSION], Amount(10, SAT), idempotency_key="hash-1")
    ledger.void(first)
    assert ledger.name_payment(second, "hash-1") is True  # a voided hold's payment may be made again


# --- settled at all that was paid, above the hold too ---------------------------------------------------------


def test_settling_above_the_hold_records_all_that_was_paid_against_every_budget(ledger: Ledger) -> None:
    hold = ledger.reserve([TIGHT, DAILY_MSAT], Amount(10, SAT), priced_by="max_price")
    ledger.mark_forwarded(hold)
    ledger.settle(hold, Amount(50, SAT))

    info = ledger.hold(hold)
    assert (info.phase, info.amount, info.settled) == ("settled", Amount(10, SAT), Amount(50, SAT))
    assert info.over_reservation == Amount(40, SAT)
    assert info.priced_by == "max_price"
    assert (ledger.usage(TIGHT).spent, ledger.usage(TIGHT).held) == (50, 0)
    assert ledger.usage(DAILY_MSAT).spent == 50_000  # the budget in msat counts it in its unit
    assert [h.id for h in ledger.over_reservations(info.created)] == [hold]


def test_a_settlement_in_another_unit_above_the_hold_rounds_up_into_each_budgets_unit(ledger: Ledger) -> None:
    hold = ledger.reserve([TIGHT, DAILY_MSAT], Amount(10_500, "msat"))  # TIGHT holds 11 sat
    ledger.settle(hold, Amount(30_001, "msat"))
    assert ledger.hold(hold).settled == Amount(30_001, "msat")
    assert ledger.usage(TIGHT).spent == 31  # rounded up: never less than what left
    assert ledger.usage(DAILY_MSAT).spent == 30_001


def test_resolving_an_in_doubt_hold_above_it_records_the_whole_amount(ledger: Ledger) -> None:
    hold = ledger.reserve([TIGHT], Amount(20, SAT))
    ledger.mark_forwarded(hold)
    ledger.mark_in_doubt(hold)
    ledger.resolve(hold, Amount(35, SAT))
    info = ledger.hold(hold)
    assert (info.phase, info.settled, info.over_reservation) == ("settled", Amount(35, SAT), Amount(15, SAT))
    assert (ledger.usage(TIGHT).spent, ledger.usage(TIGHT).held) == (35, 0)


def test_a_budget_over_its_limit_shows_it_and_refuses_every_further_reservation(ledger: Ledger) -> None:
    hold = ledger.reserve([TIGHT], Amount(90, SAT))
    ledger.settle(hold, Amount(130, SAT))
    usage = ledger.usage(TIGHT)
    assert (usage.spent, usage.remaining) == (130, 0)
    [state] = ledger.states([TIGHT])
    assert (state.spent, state.used, state.remaining) == (130, 130, 0)
    for amount in (Amount(1, SAT), Amount(0, SAT)):
        with pytest.raises(BudgetExceeded) as refused:
            ledger.reserve([TIGHT], amount)
        assert refused.value.remaining == 0
    assert ledger.open_holds() == []  # nothing was written


def test_a_settlement_at_or_below_the_hold_is_no_over_reservation(ledger: Ledger, clock: FakeClock) -> None:
    since = clock.now()
    exact = ledger.reserve([TIGHT], Amount(30, SAT))
    ledger.settle(exact, Amount(30_000, "msat"))
    lower = ledger.reserve([TIGHT], Amount(30, SAT))
    ledger.settle(lower, Amount(5, SAT))
    assert ledger.hold(exact).over_reservation is None and ledger.hold(lower).over_reservation is None
    assert ledger.over_reservations(since) == []
    assert ledger.usage(TIGHT).spent == 35


def test_over_reservations_lists_only_holds_settled_since_the_moment_asked(ledger: Ledger, clock: FakeClock) -> None:
    early = ledger.reserve([TIGHT], Amount(1, SAT))
    ledger.settle(early, Amount(2, SAT))
    clock.advance(60)
    since = clock.now()
    late = ledger.reserve([TIGHT], Amount(1, SAT))
    ledger.settle(late, Amount(3, SAT))
    assert [h.id for h in ledger.over_reservations(since)] == [late]


def test_a_settlement_in_a_unit_the_hold_converts_only_with_rates_records_the_whole_amount(
    ledger_url: str, clock: FakeClock
) -> None:
    usd = Budget("usd", Amount(1_000_000, "usd_micro"), scope="session:s1")
    with Ledger.open(ledger_url, clock=clock, rates=Rates({("usdc", "usd_micro"): Fraction(1)})) as ledger:
        hold = ledger.reserve([usd], Amount(100_000, "usdc"))
        ledger.settle(hold, Amount(250_000, "usdc"))
        assert ledger.usage(usd).spent == 250_000


def test_a_reservation_converts_with_the_rates_it_is_given_rounded_up(ledger: Ledger) -> None:
    sats_in_usd = Rates({("sat", "usd_micro"): Fraction(950)})  # 1 sat = $0.00095
    hold = ledger.reserve([USD_DAILY], Amount(21, SAT), rates=sats_in_usd)
    assert ledger.usage(USD_DAILY).held == 19_950
    ledger.settle(hold, Amount(21_000, "msat"))
    assert (ledger.usage(USD_DAILY).spent, ledger.hold(hold).settled) == (19_950, Amount(21, SAT))


def test_a_settlement_keeps_the_rate_its_reservation_used_whatever_rates_say_since(ledger: Ledger) -> None:
    """The charge stored at reserve is the history: settling at another amount scales it (rounded up),
    and neither a new rate nor none at all (the ledger here has no rates) changes what it counts."""
    at_reserve = Rates({("sat", "usd_micro"): Fraction(950)})
    exact = ledger.reserve([USD_DAILY], Amount(100, SAT), rates=at_reserve)
    lower = ledger.reserve([USD_DAILY], Amount(100, SAT), rates=at_reserve)
    higher = ledger.reserve([USD_DAILY], Amount(3, SAT), rates=Rates({("sat", "usd_micro"): Fraction(1, 3)}))
    ledger.settle(exact, Amount(100, SAT))
    ledger.settle(lower, Amount(21, SAT))
    ledger.settle(higher, Amount(4, SAT))  # 3 sat held 1 usd_micro: 4 sat count ceil(4/3) = 2
    assert ledger.usage(USD_DAILY).spent == 95_000 + 19_950 + 2


def test_an_in_doubt_hold_resolved_later_counts_at_its_reservation_s_rate(ledger: Ledger) -> None:
    hold = ledger.reserve([USD_DAILY], Amount(10_000, "usdc"), rates=Rates({("usdc", "usd_micro"): Fraction(1)}))
    ledger.mark_forwarded(hold)
    ledger.mark_in_doubt(hold)
    ledger.resolve(hold, Amount(10_000, "usdc"))
    assert ledger.usage(USD_DAILY).spent == 10_000


def test_spend_seen_only_in_a_balance_converts_with_the_rates_given(ledger: Ledger) -> None:
    ledger.charge([USD_DAILY], Amount(10, SAT), rates=Rates({("sat", "usd_micro"): Fraction(950)}))
    assert ledger.usage(USD_DAILY).spent == 9_500


def test_a_resolution_and_its_call_event_are_written_in_one_transaction(ledger: Ledger, clock: FakeClock) -> None:
    paid = ledger.reserve([TIGHT], Amount(20, SAT), session="s1", tool="fetch")
    unpaid = ledger.reserve([TIGHT], Amount(30, SAT), session="s1", tool="fetch")
    for hold in (paid, unpaid):
        ledger.mark_forwarded(hold)
        ledger.mark_in_doubt(hold)
    settled = CallRecord("fetch", "resolve", session="s1", hold_id=paid, spent=Amount(20, SAT), reason="it left")
    ledger.resolve(paid, Amount(20, SAT), settled)
    voided = CallRecord("fetch", "resolve", session="s1", hold_id=unpaid, reason="it did not leave")
    ledger.resolve(unpaid, Amount(0, SAT), voided)
    assert [(c.call, c.at) for c in ledger.calls()] == [(settled, clock.now()), (voided, clock.now())]
    assert (ledger.hold(paid).phase, ledger.hold(unpaid).phase) == ("settled", "voided")
    assert (ledger.usage(TIGHT).spent, ledger.usage(TIGHT).held) == (20, 0)
    # A second resolution is refused, and its event is not written either.
    with pytest.raises(HoldStateError):
        ledger.resolve(paid, Amount(20, SAT), settled)
    assert len(ledger.calls()) == 2


def test_an_event_that_cannot_be_written_leaves_the_hold_unresolved(ledger: Ledger) -> None:
    hold = ledger.reserve([TIGHT], Amount(20, SAT))
    ledger.mark_forwarded(hold)
    ledger.mark_in_doubt(hold)
    unwritable = CallRecord("fetch", "resolve", hold_id=hold, spent=20)  # type: ignore[arg-type]
    with pytest.raises(AmountError):
        ledger.resolve(hold, Amount(20, SAT), unwritable)
    assert ledger.hold(hold).phase == "in_doubt"
    assert (ledger.usage(TIGHT).spent, ledger.usage(TIGHT).held) == (0, 20)
    assert ledger.calls() == []


# --- payments and balances ------------------------------------------------------------------------------------


def pay(
    ledger: Ledger, value: int, *, key: str | None = P402, outcome: str = "settled", payment: str | None = None
) -> int:
    hold = ledger.reserve([USD_DAILY], Amount(value, "usd_micro"), idempotency_key=payment, balance_key=key)
    ledger.mark_forwarded(hold)
    if outcome == "settled":
        ledger.settle(hold, Amount(value // 2, "usd_micro"))
    elif outcome == "in_doubt":
        ledger.mark_in_doubt(hold)
    else:
        ledger.void(hold)
    return hold


def test_spent_from_a_balance_counts_settled_and_in_doubt_payments_since_a_moment(
    ledger: Ledger, clock: FakeClock
) -> None:
    pay(ledger, 100)  # before the moment: not counted
    clock.advance(10)
    since = clock.now()
    clock.advance(1)
    pay(ledger, 200)  # settled at 100
    pay(ledger, 300, outcome="in_doubt")  # counted in full: it may have left
    pay(ledger, 400, outcome="void")  # nothing left
    pay(ledger, 500, key="wallet:alby")  # another balance
    pay(ledger, 600, key=None)

    assert ledger.spent_from(P402, since) == [Amount(400, "usd_micro")]
    assert ledger.spent_from("wallet:none", since) == []


def test_a_charge_records_spend_that_already_happened_even_past_the_limit(ledger: Ledger) -> None:
    pay(ledger, 1_000_000)  # settled at 500 000 of 1 000 000
    hold = ledger.charge([USD_DAILY], Amount(650_000, "usd_micro"), balance_key=P402, tool="p402_get_session")

    assert ledger.hold(hold).phase == "settled" and ledger.hold(hold).settled == Amount(650_000, "usd_micro")
    assert ledger.usage(USD_DAILY).spent == 1_150_000
    assert ledger.usage(USD_DAILY).remaining == 0
    with pytest.raises(BudgetExceeded):
        ledger.reserve([USD_DAILY], Amount(1, "usd_micro"))


def test_the_hold_of_a_payment_is_found_unless_it_was_voided(ledger: Ledger) -> None:
    doubtful = pay(ledger, 10, outcome="in_doubt", payment="a" * 64)
    pay(ledger, 10, outcome="void", payment="b" * 64)

    found = ledger.hold_for_payment("a" * 64)
    assert found is not None and (found.id, found.phase) == (doubtful, "in_doubt")
    assert ledger.hold_for_payment("b" * 64) is None
    assert ledger.hold_for_payment("c" * 64) is None
