"""`guard report`: the spend report of a period, in Markdown, HTML, JSON and CSV.

- golden files of every format (tests/golden/report.*) on the ledger a scripted run of real guards
  left (tests/scripted_run.py), its volatile values (times, ages, hours) fixed by `normalised`; the
  sums cross-checked against what the fake upstreams say they were paid. GUARD_UPDATE_GOLDEN=1
  rewrites the golden files.
- a report period in a zone whose clocks go back, and people's formats escaped, on ledgers built with the
  Ledger API under a fake clock (the queries themselves are tests/ledgers/test_report.py's).
- the command: empty and missing ledgers in every format, `--out`, and its errors.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import asdict, replace
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from pathlib import Path

import pytest

from guard.operators.report import FORMATS, day_period, render, to_json, write_reports
from ledgers import Amount, Authorization, Budget, Ledger, Rates, Spend, SpendReport
from tests.conftest import GUARD, ROOT, WAIT_S, FakeClock
from tests.ledgers.helpers import day_report, paid
from tests.scripted_run import (
    CHAT,
    CHAT_RAISED,
    EMBED,
    EXTERNAL_SPEND,
    PRICES,
    TOPUP,
    WALLET,
    WALLET_SEEN,
    WEATHER,
    ScriptedRun,
)
from tests.scripted_run import scripted_run as run_script

GOLDEN = ROOT / "tests/golden"
UPDATE = os.environ.get("GUARD_UPDATE_GOLDEN") == "1"
T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)  # the fake clock's start (stored times never go back)
DAY = timedelta(hours=24)


def guard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*GUARD, "report", *args], capture_output=True, text=True, timeout=WAIT_S, stdin=subprocess.DEVNULL
    )


# --- golden files on a scripted run ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> ScriptedRun:
    return run_script(tmp_path_factory.mktemp("scripted"))


@pytest.fixture(scope="module")
def scripted(run: ScriptedRun) -> SpendReport:
    """The last 24 hours of the scripted run's ledger (read-only, as `guard report` reads it)."""
    with Ledger.open(run.ledger, read_only=True) as ledger:
        now = datetime.now(UTC)
        return ledger.report(now - DAY, now)


FIXED_END = datetime(2026, 1, 2, tzinfo=UTC)


def normalised(report: SpendReport) -> SpendReport:
    """The report with the run's volatile values fixed: the period is the day before FIXED_END, the run
    happened in its last hour (spend by hour summed into it: a run may straddle an hour), the wallet
    was first seen two hours before that, and every age is a minute."""
    hour = FIXED_END - timedelta(hours=1)
    per_unit: dict[str, list[int]] = {}
    for s in report.by_hour:
        sums = per_unit.setdefault(s.unit, [0, 0, 0, 0])
        for i, value in enumerate((s.spent, s.in_doubt, s.external, s.payments)):
            sums[i] += value
    return replace(
        report,
        start=FIXED_END - DAY,
        end=FIXED_END,
        generated=FIXED_END,
        by_hour=tuple(Spend(hour.isoformat(timespec="minutes"), unit, *v) for unit, v in sorted(per_unit.items())),
        in_doubt=tuple(replace(h, created=hour, age_s=60.0) for h in report.in_doubt),
        over_reservations=tuple(replace(o, created=hour) for o in report.over_reservations),
        drift=tuple(replace(d, first_seen=hour - timedelta(hours=2), last_seen=hour) for d in report.drift),
    )


CHART = re.compile(r'<figure class="chart">.*?</figure>', re.DOTALL)


def test_every_format_matches_its_golden_file_on_the_scripted_run(scripted: SpendReport) -> None:
    report = normalised(scripted)
    mismatched = []
    for fmt in FORMATS:
        text = render(report, fmt)
        if fmt == "html":  # pygal names each chart with a fresh uuid; the chart is tested on its own
            text = CHART.sub('<figure class="chart">(chart)</figure>', text)
        golden = GOLDEN / f"report.{fmt}"
        if UPDATE:
            golden.parent.mkdir(exist_ok=True)
            golden.write_text(text)
        elif text != golden.read_text():
            mismatched.append(fmt)
    assert not mismatched, f"differ from tests/golden (GUARD_UPDATE_GOLDEN=1 rewrites them): {mismatched}"


def test_the_reported_sums_are_what_the_fake_upstreams_say_was_paid(run: ScriptedRun, scripted: SpendReport) -> None:
    [total] = scripted.totals
    # Lightning is counted in msat; the fakes count sat. Payments the fake reported `unknown` are in doubt.
    assert total.unit == "msat"
    assert total.spent == 1000 * run.paid("paid") == 1000 * (25 + 30 + CHAT_RAISED + 30 + 20)
    assert total.in_doubt == 1000 * run.paid("unknown") == 1000 * 40
    assert total.external == 1000 * EXTERNAL_SPEND
    assert total.total == total.spent + total.external
    paid_by_url: dict[str, int] = {}
    for p in run.payments:
        if p["url"] and p["reported"] == "paid":
            paid_by_url[p["url"]] = paid_by_url.get(p["url"], 0) + 1000 * p["amount"]
    assert {s.key: s.spent for s in scripted.top_urls if s.spent} == paid_by_url == {WEATHER: 60_000, CHAT: 45_000}
    assert [(h.resource, h.amount) for h in scripted.in_doubt] == [(EMBED, Amount(40_000, "msat"))]
    # Every breakdown adds up to the totals.
    for section in (scripted.by_session, scripted.by_identity, scripted.by_server, scripted.by_tool):
        assert sum(s.spent for s in section) == total.spent
        assert sum(s.in_doubt + s.external for s in section) == total.in_doubt + total.external
    assert sum(s.spent for s in scripted.by_hour) == total.spent
    assert {s.key for s in scripted.by_session} == set(run.sessions)  # external spend names its session too


def test_the_payment_above_its_reservation_is_listed_and_counted_whole(run: ScriptedRun, scripted: SpendReport) -> None:
    # alice's CHAT: previewed at 20 sat, paid 25 when fetched (the price changed in between).
    [over] = scripted.over_reservations
    assert (over.resource, over.tool, over.session, over.priced_by) == (CHAT, "l402-fetch", "alice-1", "quote")
    assert (over.reserved, over.paid, over.excess) == (
        Amount(PRICES[CHAT], "sat"),
        Amount(CHAT_RAISED, "sat"),
        Amount(CHAT_RAISED - PRICES[CHAT], "sat"),
    )
    [alice] = [s for s in scripted.by_session if s.key == "alice-1"]
    alices = [p["amount"] for p in run.payments if p["tool"] == "l402-fetch"][:2]  # hers came first
    assert alice.spent == 1000 * sum(alices) == 1000 * (PRICES[WEATHER] + CHAT_RAISED)


def test_the_wallet_drift_is_explained_by_the_payment_the_external_spend_and_the_top_up(
    scripted: SpendReport,
) -> None:
    [drift] = scripted.drift
    assert (drift.key, drift.unit, drift.observations) == (WALLET, "msat", 4)
    last = WALLET_SEEN - EXTERNAL_SPEND - 25 + TOPUP
    assert (drift.first, drift.last) == (1000 * WALLET_SEEN, 1000 * last)
    assert (drift.counted, drift.external, drift.topups) == (25_000, 1000 * EXTERNAL_SPEND, 1000 * TOPUP)
    assert drift.fell_by == 1000 * (WALLET_SEEN - last)
    assert drift.unexplained == 0


def test_denials_rate_limit_hits_and_the_stale_balance_are_reported_by_rule(scripted: SpendReport) -> None:
    assert {d.rule: d.count for d in scripted.denials} == {
        "balances.stale_after": 1,
        "budgets.per-session": 1,
        "tools.l402-fetch-preview.rate_limit": 1,
    }
    [hit] = scripted.rate_limit_hits
    assert hit.rule == "tools.l402-fetch-preview.rate_limit"
    assert hit.example == "rate limit reached: 3 calls per minute for l402-fetch-preview (per session)"
    [stale] = scripted.stale_denials
    assert (stale.tool, stale.balance, stale.count) == ("pay_invoice", WALLET, 1)


def test_the_html_report_draws_its_chart_inline_and_loads_nothing(scripted: SpendReport) -> None:
    page = render(scripted, "html")
    [chart] = CHART.findall(page)
    assert "<svg" in chart and "<rect" in chart
    assert "<script" not in page and "<link" not in page and "@import" not in page
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page)
    assert not re.search(r"url\(\s*['\"]?(?:https?:)?//", page)


def test_the_command_writes_the_same_report_atomically_into_a_new_directory(run: ScriptedRun, tmp_path: Path) -> None:
    out = tmp_path / "reports" / "today.json"
    done = guard("--format", "json", "--ledger", str(run.ledger), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert sorted(p.name for p in out.parent.iterdir()) == ["today.json"]  # no temporary file left behind
    written = json.loads(out.read_text())
    with Ledger.open(run.ledger, read_only=True) as ledger:
        now = datetime.now(UTC)
        expected = to_json(ledger.report(now - DAY, now))
    steady = ("calls", "totals", "by_session", "by_identity", "by_server", "by_tool", "top_urls", "top_origins")
    steady += ("denials", "rate_limit_hits", "stale_balance_denials", "nothing_spent", "report", "version")
    assert {k: written[k] for k in steady} == {k: expected[k] for k in steady}
    assert [h["hold"] for h in written["in_doubt"]] == [h["hold"] for h in expected["in_doubt"]]


def test_write_reports_writes_each_format_once_and_returns_the_files(run: ScriptedRun, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    with Ledger.open(run.ledger, read_only=True) as ledger:
        written = write_reports(ledger, now - DAY, now, ["md", "csv", "md"], tmp_path / "out", "2026-11-21", "UTC")
        with pytest.raises(ValueError, match="unknown report format 'pdf'"):
            write_reports(ledger, now - DAY, now, ["md", "pdf"], tmp_path / "none", "x", "UTC")
    assert written == [tmp_path / "out" / "2026-11-21.md", tmp_path / "out" / "2026-11-21.csv"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["2026-11-21.csv", "2026-11-21.md"]
    assert "| pay\\_invoice |" in written[0].read_text()
    assert not (tmp_path / "none").exists()


# --- on ledgers built under a fake clock, on SQLite and PostgreSQL -------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def ledger(ledger_url: str, clock: FakeClock) -> Iterator[Ledger]:
    with Ledger.open(ledger_url, clock=clock) as opened:
        yield opened


def test_the_hour_repeated_when_summer_time_ends_is_two_hours_in_time_order(ledger_url: str) -> None:
    start, end = day_period(date(2026, 10, 25), "Europe/Paris")  # clocks go back at 03:00 CEST
    assert end.astimezone(UTC) - start.astimezone(UTC) == timedelta(hours=25)
    clock = FakeClock(start)
    with Ledger.open(ledger_url, clock=clock) as ledger:
        for utc in ("00:30", "01:30"):  # 02:30 CEST, then 02:30 CET
            clock.moment = datetime.fromisoformat(f"2026-10-25T{utc}+00:00")
            paid(ledger, "1 sat", tool="fetch")
        report = ledger.report(start, end)
    assert [s.key for s in report.by_hour] == ["2026-10-25T02:00+02:00", "2026-10-25T02:00+01:00"]
    assert len(report.hours()) == 25


# --- people's formats: escaped --------------------------------------------------------------------------------


def test_names_and_urls_from_agents_are_escaped_in_html_and_markdown(ledger: Ledger) -> None:
    evil = '<script>alert("x")</script>'
    paid(ledger, "5 sat", session=evil, identity="a|b", tool="*bold*", resource='https://e.example/"><img src=x>')
    report = day_report(ledger)
    page = render(report, "html")
    assert evil not in page and "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "<img" not in page and "&lt;img src=x&gt;" in page
    markdown = render(report, "md")
    assert '| \\<script\\>alert("x")\\</script\\> |' in markdown
    assert "| a\\|b |" in markdown and "| \\*bold\\* |" in markdown


def test_json_and_csv_carry_amounts_as_integers_with_their_unit(ledger: Ledger) -> None:
    paid(ledger, "30 sat", session="s1", tool="fetch")
    paid(ledger, "2.50 usd", session="s1", tool="chat")
    report = day_report(ledger)
    document = json.loads(render(report, "json"))
    assert document["totals"] == [
        {"key": None, "unit": "msat", "spent": 30_000, "in_doubt": 0, "external": 0, "spent_with_external": 30_000,
         "payments": 1},
        {"key": None, "unit": "usd_micro", "spent": 2_500_000, "in_doubt": 0, "external": 0,
         "spent_with_external": 2_500_000, "payments": 1},
    ]  # fmt: skip
    rows = list(csv.DictReader(io.StringIO(render(report, "csv"))))
    assert {"section": "by_tool", "key": "chat", "detail": "", "unit": "usd_micro", "measure": "spent",
            "value": "2500000"} in rows  # fmt: skip
    assert {"section": "report", "key": "", "detail": "", "unit": "", "measure": "nothing_spent",
            "value": "false"} in rows  # fmt: skip


def x402_in_doubt(ledger: Ledger, nonce: str, valid_before: datetime, **where: str) -> int:
    """An x402 payment of 0.01 usdc in doubt, its signed authorization kept (as `Payments.bound` keeps it)."""
    value = Amount(10_000, "usdc")
    ledger.remember_authorization(Authorization("eip155:8453", "0xusdc", "0xpayer", nonce, value, valid_before))
    hold = ledger.reserve([Budget("b", Amount(10**9, "usdc"), "global")], value, idempotency_key=nonce, **where)
    ledger.mark_forwarded(hold)
    ledger.mark_in_doubt(hold)
    return hold


def test_an_x402_payment_in_doubt_past_valid_before_with_no_settlement_is_named_in_every_format(
    ledger: Ledger, clock: FakeClock
) -> None:
    lapsed = x402_in_doubt(ledger, "0x" + "aa" * 32, T0 + timedelta(minutes=5), tool="get_weather")
    usable = x402_in_doubt(ledger, "0x" + "bb" * 32, T0 + timedelta(hours=2), tool="summarize")
    lightning = paid(ledger, "40 sat", phase="in_doubt", tool="l402-fetch")
    clock.moment = T0 + timedelta(hours=1)
    report = day_report(ledger)

    document = json.loads(render(report, "json"))
    assert [(h["hold"], h["valid_before"], h["lapsed"]) for h in document["in_doubt"]] == [
        (lapsed, "2026-11-21T12:05:00+00:00", True),
        (usable, "2026-11-21T14:00:00+00:00", False),
        (lightning, None, False),
    ]
    rows = list(csv.DictReader(io.StringIO(render(report, "csv"))))
    assert {"section": "in_doubt", "key": str(lapsed), "detail": "", "unit": "usdc", "measure": "lapsed",
            "value": "true"} in rows  # fmt: skip
    for fmt in ("md", "html"):
        text = render(report, fmt)
        assert text.count("past validBefore (2026-11-21 12:05") == 1, fmt
        assert "usable until 2026-11-21 14:00" in text, fmt


def test_a_budget_counting_payments_in_other_units_shows_each_in_its_own_and_in_the_budgets(
    ledger: Ledger,
) -> None:
    """One usd budget over sats (at a written rate) and usdc: a row per payment unit, counted in usd."""
    dollars = Budget("dollars", Amount(10_000_000, "usd_micro"), "identity:alice")
    rates = Rates({("sat", "usd_micro"): Fraction(950), ("usdc", "usd_micro"): Fraction(1)})
    ledger.settle(ledger.reserve([dollars], Amount(21, "sat"), rates=rates), Amount(21, "sat"))
    ledger.settle(ledger.reserve([dollars], Amount(1_250_000, "usdc"), rates=rates), Amount(1_250_000, "usdc"))
    doubtful = ledger.reserve([dollars], Amount(100, "sat"), rates=rates)
    ledger.mark_forwarded(doubtful)
    ledger.mark_in_doubt(doubtful)
    report = day_report(ledger)
    assert [asdict(b) for b in report.budgets] == [
        {"budget": "dollars", "scope": "identity:alice", "unit": "usd_micro", "spent": 19_950, "in_doubt": 95_000,
         "paid_unit": "msat", "paid": 21_000, "paid_in_doubt": 100_000, "payments": 2},
        {"budget": "dollars", "scope": "identity:alice", "unit": "usd_micro", "spent": 1_250_000, "in_doubt": 0,
         "paid_unit": "usdc", "paid": 1_250_000, "paid_in_doubt": 0, "payments": 1},
    ]  # fmt: skip
    assert "| dollars | identity:alice | 0.01995 usd | 0.095 usd | 21 sat | 100 sat | 2 |" in render(report, "md")
    assert "| dollars | identity:alice | 1.25 usd | 0 usd | 1.25 usdc | 0 usdc | 1 |" in render(report, "md")
    rows = list(csv.DictReader(io.StringIO(render(report, "csv"))))
    budget_rows = {(r["detail"], r["unit"], r["measure"]): r["value"] for r in rows if r["section"] == "budgets"}
    assert budget_rows[("usdc", "usd_micro", "spent")] == "1250000"
    assert budget_rows[("usdc", "usdc", "paid")] == "1250000"
    assert budget_rows[("msat", "msat", "paid_in_doubt")] == "100000"


# --- the command ------------------------------------------------------------------------------------------------


def says_nothing_was_spent(fmt: str, text: str) -> None:
    """`text` is a whole, valid report in `fmt` of a period in which nothing was spent."""
    if fmt == "json":
        document = json.loads(text)
        assert document["nothing_spent"] is True
        assert all(document[section] == [] for section in ("totals", "by_session", "in_doubt", "balance_drift"))
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(text)))
        assert ("report", "nothing_spent", "true") in {(r["section"], r["measure"], r["value"]) for r in rows}
    else:
        assert "Nothing was spent in this period" in text
    if fmt == "html":
        assert "<svg" in text and text.rstrip().endswith("</html>")


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_ledger_file_that_does_not_exist_gives_a_report_that_nothing_was_spent(fmt: str, tmp_path: Path) -> None:
    done = guard("--format", fmt, "--ledger", str(tmp_path / "nowhere" / "ledger.db"), "--day", "yesterday")
    assert done.returncode == 0, done.stderr
    says_nothing_was_spent(fmt, done.stdout)
    assert not (tmp_path / "nowhere").exists()  # reading never creates a ledger


def test_an_empty_ledger_gives_a_report_that_nothing_was_spent(ledger_url: str) -> None:
    Ledger.open(ledger_url).close()
    with Ledger.open(ledger_url, read_only=True) as ledger:
        report = day_report(ledger)
    for fmt in FORMATS:
        says_nothing_was_spent(fmt, render(report, fmt))
    done = guard("--format", "json", "--ledger", ledger_url, "--timezone", "Europe/Paris")
    assert done.returncode == 0, done.stderr
    says_nothing_was_spent("json", done.stdout)
    assert json.loads(done.stdout)["period"]["timezone"] == "Europe/Paris"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--since", "1h", "--day", "today"], "give either --since or --day, not both"),
        (["--day", "2026-13-01"], "--day 2026-13-01: expected YYYY-MM-DD, today or yesterday"),
        (["--since", "3x"], "--since 3x: expected a duration such as 30m, 24h or 7d"),
        (["--format", "pdf"], "--format pdf: expected one of md, html, json, csv"),
        (["--timezone", "Mars/Olympus"], "--timezone Mars/Olympus: not a known IANA time zone"),
    ],
)
def test_a_bad_flag_exits_2_naming_it(args: list[str], named: str, tmp_path: Path) -> None:
    done = guard(*args, "--ledger", str(tmp_path / "ledger.db"))
    assert done.returncode == 2
    assert done.stderr.startswith(f"guard: error: {named}"), done.stderr
    assert done.stdout == ""


def test_a_ledger_that_cannot_be_opened_exits_4() -> None:
    done = guard("--ledger", "postgresql+psycopg://guard:pw@127.0.0.1:1/none")
    assert done.returncode == 4
    assert "guard: error: ledger: cannot open the ledger at postgresql+psycopg://guard:***@127.0.0.1:1/none" in (
        done.stderr
    )
