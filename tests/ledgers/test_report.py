"""The spend report of a period (`Ledger.report`), on ledgers built with the Ledger API under a fake clock,
SQLite and PostgreSQL: what counts as spend, the period's bounds, hours in a zone, top URLs, denials by
rule, rate-limit hits and stale balances by the kind of rule and the balance it named, drift of the
balances of money. The report reads structured facts, never a rule's name or its words. (Its formats and
the `guard report` command are tests/test_report.py's.)"""

from __future__ import annotations

from datetime import timedelta

from ledgers import Amount, BalanceObservation, CallRecord, Ledger, RuleKind, Spend
from tests.ledgers.conftest import FakeClock
from tests.ledgers.helpers import DAY, T0, day_report, paid

LATER = T0 + timedelta(hours=1)  # the start of periods that leave something out before them
WEATHER = "https://weather.example/forecast"
CHAT = "https://llm.example/v1/chat"
EMBED = "https://llm.example/v1/embed"
WALLET = "wallet:alby"


def test_spend_counts_settled_payments_in_doubt_ones_in_full_and_external_spend_apart(
    ledger: Ledger, clock: FakeClock
) -> None:
    paid(ledger, "30 sat", session="s1", identity="alice", tool="fetch", server="shop", resource=WEATHER)
    paid(ledger, "20000 msat", settled="15 sat", session="s1", identity="alice", tool="fetch", server="shop")
    paid(ledger, "40 sat", phase="in_doubt", session="s2", tool="fetch", server="shop", resource=EMBED)
    paid(ledger, "50 sat", phase="voided", session="s2", tool="fetch")  # released: not spend
    paid(ledger, "60 sat", phase="reserved", session="s2", tool="fetch")  # in flight: not spend
    paid(ledger, "10 sat", settled="0 sat", session="s2", tool="fetch", resource=CHAT)  # free after all
    paid(ledger, "2.50 usd", session="s2", tool="chat", server="llm")
    ledger.charge([], Amount(7, "sat"), balance_key=WALLET, tool="get_balance", server="alby")
    report = day_report(ledger)

    assert report.totals == (
        Spend(None, "msat", spent=45_000, in_doubt=40_000, external=7_000, payments=4),
        Spend(None, "usd_micro", spent=2_500_000, in_doubt=0, external=0, payments=1),
    )
    assert not report.nothing_spent
    assert report.by_session == (
        Spend("s1", "msat", 45_000, 0, 0, 2),
        Spend("s2", "msat", 0, 40_000, 0, 1),
        Spend("s2", "usd_micro", 2_500_000, 0, 0, 1),
        Spend(None, "msat", 0, 0, 7_000, 1),
    )
    assert [(s.key, s.unit, s.total) for s in report.by_identity] == [
        ("alice", "msat", 45_000),
        (None, "msat", 7_000),
        (None, "usd_micro", 2_500_000),
    ]
    assert [(s.key, s.total, s.in_doubt) for s in report.by_server if s.unit == "msat"] == [
        ("alby", 7_000, 0),
        ("shop", 45_000, 40_000),
    ]
    assert [(s.key, s.unit) for s in report.by_tool] == [
        ("chat", "usd_micro"),
        ("fetch", "msat"),
        ("get_balance", "msat"),
    ]
    assert [(s.key, s.spent, s.in_doubt) for s in report.top_urls] == [(WEATHER, 30_000, 0), (EMBED, 0, 40_000)]


def test_only_holds_created_within_the_period_count(ledger: Ledger, clock: FakeClock) -> None:
    clock.moment = LATER - timedelta(microseconds=1)
    paid(ledger, "1 sat", session="before")
    clock.moment = LATER
    paid(ledger, "2 sat", session="at-start")
    clock.moment = LATER + DAY - timedelta(microseconds=1)
    paid(ledger, "4 sat", session="last-moment")
    clock.moment = LATER + DAY
    paid(ledger, "8 sat", session="at-end")
    report = day_report(ledger, start=LATER)
    assert [s.key for s in report.by_session] == ["at-start", "last-moment"]
    assert report.totals[0].spent == 6_000


def test_hours_are_local_hours_of_the_report_time_zone_half_hour_offsets_included(
    ledger: Ledger, clock: FakeClock
) -> None:
    for minutes in (0, 29, 30, 95):  # 17:30, 17:59, 18:00 and 19:05 in India (UTC+05:30)
        clock.moment = T0 + timedelta(minutes=minutes)
        paid(ledger, "1 sat", tool="fetch")
    report = day_report(ledger, "Asia/Kolkata")
    assert report.timezone == "Asia/Kolkata"
    assert [(s.key, s.payments) for s in report.by_hour] == [
        ("2026-11-21T17:00+05:30", 2),
        ("2026-11-21T18:00+05:30", 1),
        ("2026-11-21T19:00+05:30", 1),
    ]
    assert report.hours()[:3] == ["2026-11-21T17:00+05:30", "2026-11-21T18:00+05:30", "2026-11-21T19:00+05:30"]
    assert len(report.hours()) == 25  # a day from 17:30 touches 25 local hours


def test_top_urls_are_the_ten_most_paid_of_each_unit_and_origins_group_them(ledger: Ledger) -> None:
    for n in range(12):
        paid(ledger, f"{n + 1} sat", resource=f"https://shop{n % 6}.example:8443/item/{n}")
    paid(ledger, "1 usd", resource="https://llm.example/v1/chat")
    report = day_report(ledger)
    msat = [s for s in report.top_urls if s.unit == "msat"]
    assert [s.key for s in msat] == [f"https://shop{n % 6}.example:8443/item/{n}" for n in range(11, 1, -1)]
    assert [(s.key, s.unit) for s in report.top_urls if s.unit != "msat"] == [
        ("https://llm.example/v1/chat", "usd_micro")
    ]
    origins = {s.key: (s.spent, s.payments) for s in report.top_origins if s.unit == "msat"}
    assert origins["https://shop5.example:8443"] == (1000 * (6 + 12), 2)
    assert len(origins) == 6


def test_denials_are_counted_by_rule_and_rate_limits_and_stale_balances_picked_out(
    ledger: Ledger, clock: FakeClock
) -> None:
    def deny(tool: str, rule: str, reason: str, kind: RuleKind, balance_key: str | None = None) -> CallRecord:
        return CallRecord(tool, "deny", rule=rule, reason=reason, kind=kind, balance_key=balance_key)

    # The words are guard's to choose: the report reads the kind of rule and the balance it named.
    stale = "the balance was seen {} ago and is stale; the guard will not pay on it"
    events = [
        deny("fetch", "tools.fetch.rate_limit", "rate limit reached: 2 per minute", "rate_limit"),
        deny("fetch", "tools.fetch.rate_limit", "rate limit reached: 2 per minute", "rate_limit"),
        deny("fetch", "tools.fetch.quotas[1]", "counter spend at most 5 per day", "quota"),
        deny("pay", "balances.stale_after", stale.format("2h"), "stale_balance", WALLET),
        deny("pay", "balances.stale_after", stale.format("3h"), "stale_balance", WALLET),
        deny("chat", "balances.stale_after", stale.format("2h"), "stale_balance", "p402:sess_1"),
        deny("fetch", "budgets.daily", "budget daily: 50 sat asked, 10 sat left", "budget"),
        CallRecord("fetch", "allow"),
        CallRecord("fetch", "error", reason="upstream error"),
    ]
    ledger.record(deny("fetch", "budgets.daily", "earlier", "budget"))  # before the period
    clock.moment = LATER
    ledger.record_many(events)
    report = day_report(ledger, start=LATER)

    assert report.calls == (("allow", 1), ("deny", 7), ("error", 1))
    assert [(d.rule, d.count) for d in report.denials] == [
        ("balances.stale_after", 3),
        ("tools.fetch.rate_limit", 2),
        ("budgets.daily", 1),
        ("tools.fetch.quotas[1]", 1),
    ]
    assert report.denials[2].example == "budget daily: 50 sat asked, 10 sat left"
    assert [(d.rule, d.count) for d in report.rate_limit_hits] == [
        ("tools.fetch.rate_limit", 2),
        ("tools.fetch.quotas[1]", 1),
    ]
    assert [(d.tool, d.balance, d.count) for d in report.stale_denials] == [
        ("pay", WALLET, 2),
        ("chat", "p402:sess_1", 1),
    ]


def test_every_hold_in_doubt_now_is_listed_with_its_age_whenever_it_was_made(ledger: Ledger, clock: FakeClock) -> None:
    old = paid(ledger, "40 sat", phase="in_doubt", session="s1", tool="fetch", resource=EMBED)
    clock.advance(3 * 86_400)
    settled = paid(ledger, "10 sat", phase="in_doubt", session="s2", tool="fetch")
    ledger.resolve(settled, Amount(10, "sat"))
    clock.advance(90)
    report = day_report(ledger, start=T0 + timedelta(days=3))
    [hold] = report.in_doubt
    assert (hold.id, hold.amount, hold.session, hold.resource) == (old, Amount(40_000, "msat"), "s1", EMBED)
    assert hold.age_s == 3 * 86_400 + 90
    assert report.totals[0].in_doubt == 0  # made before the period: listed, not counted as its spend


def test_balance_drift_sets_the_fall_of_a_balance_against_what_the_guard_counted_from_it(
    ledger: Ledger, clock: FakeClock
) -> None:
    def seen(key: str, amount: str, *, money: bool = True) -> None:
        ledger.observe(BalanceObservation("test", key, Amount.parse(amount), money=money))
        clock.advance(60)

    seen(WALLET, "5000 sat")  # before the period: not its first observation
    clock.moment = LATER
    seen(WALLET, "1000 sat")
    seen("credits:https://shop.example", "100 credits:https://shop.example", money=False)  # credits are not money
    paid(ledger, "30 sat", balance_key=WALLET)
    paid(ledger, "20 sat", phase="in_doubt", balance_key=WALLET)
    paid(ledger, "9 sat", phase="voided", balance_key=WALLET)  # never left
    paid(ledger, "5 sat")  # drew on no balance
    ledger.charge([], Amount(100, "sat"), balance_key=WALLET, tool="get_balance")
    seen(WALLET, "850 sat")
    seen(WALLET, "1350 sat")  # a top-up of 500
    seen(WALLET, "1340 sat")  # 10 sat nobody accounts for
    seen("p402:sess_1", "2 usd")
    clock.advance(60)
    paid(ledger, "7 sat", balance_key=WALLET)  # after the last observation
    report = day_report(ledger, start=LATER)

    assert [d.key for d in report.drift] == ["p402:sess_1", WALLET]
    p402, wallet = report.drift
    assert (p402.unit, p402.first, p402.last, p402.fell_by, p402.unexplained) == (
        "usd_micro",
        2_000_000,
        2_000_000,
        0,
        0,
    )
    assert (wallet.unit, wallet.first, wallet.last, wallet.observations) == ("msat", 1_000_000, 1_340_000, 4)
    assert wallet.first_seen == LATER
    assert (wallet.counted, wallet.external, wallet.topups) == (50_000, 100_000, 500_000)
    assert wallet.fell_by == -340_000
    assert wallet.unexplained == -340_000 + 500_000 - 50_000 - 100_000 == 10_000
    assert wallet.problem is None


def test_an_empty_period_reports_that_nothing_was_spent(ledger: Ledger) -> None:
    report = day_report(ledger)
    assert report.nothing_spent
    assert report.totals == report.by_session == report.by_hour == report.top_urls == ()
    assert (report.denials, report.in_doubt, report.drift, report.calls) == ((), (), (), ())


def test_drift_follows_the_balances_observations_say_are_money_whatever_their_keys(ledger: Ledger) -> None:
    ledger.observe(BalanceObservation("get_treasury", "treasury", Amount(10, "sat"), money=True))
    ledger.observe(BalanceObservation("l402-balance", "https://api.example", Amount(40, "credits:x")))
    assert [(d.key, d.first) for d in day_report(ledger).drift] == [("treasury", 10_000)]
