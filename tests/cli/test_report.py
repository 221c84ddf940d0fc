"""`guard report`: its flags, its period, where it writes; the report itself is tests/test_report.py's."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from guard.cli.report import period
from guard.errors import ConfigError
from tests.cli.conftest import guard

NOW = datetime(2026, 11, 21, 12, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--since", "1h", "--day", "today"], "give either --since or --day, not both"),
        (["--day", "2026-13-01"], "--day 2026-13-01: expected YYYY-MM-DD, today or yesterday"),
        (["--day", "monday"], "--day monday: expected YYYY-MM-DD, today or yesterday"),
        (["--since", "3x"], "--since 3x: expected a duration such as 30m, 24h or 7d"),
        (["--format", "pdf"], "--format pdf: expected one of md, html, json, csv"),
        (["--timezone", "Mars/Olympus"], "--timezone Mars/Olympus: not a known IANA time zone"),
    ],
)
def test_a_bad_flag_exits_2_naming_it(args: list[str], named: str, tmp_path: Path) -> None:
    done = guard("report", *args, "--ledger", str(tmp_path / "ledger.db"))
    assert done.status == 2
    assert done.stderr.startswith(f"guard: error: {named}"), done.stderr
    assert done.stdout == ""


def test_a_ledger_that_cannot_be_opened_exits_4() -> None:
    done = guard("report", "--ledger", "postgresql+psycopg://guard:pw@127.0.0.1:1/none")
    assert done.status == 4
    assert done.stderr.startswith(
        "guard: error: ledger: cannot open the ledger at postgresql+psycopg://guard:***@127.0.0.1:1/none"
    )


def test_the_report_goes_to_stdout_or_to_a_file_only_its_owner_reads(tmp_path: Path) -> None:
    ledger = str(tmp_path / "ledger.db")
    printed = guard("report", "--format", "json", "--ledger", ledger)
    assert printed.status == 0 and json.loads(printed.stdout)["period"]["timezone"] == "UTC"
    out = tmp_path / "reports" / "today.json"
    written = guard("report", "--format", "json", "--ledger", ledger, "--out", str(out))
    assert (written.status, written.stdout) == (0, "")
    assert json.loads(out.read_text())["totals"] == json.loads(printed.stdout)["totals"]
    assert out.stat().st_mode & 0o777 == 0o600


def test_an_out_file_that_cannot_be_written_exits_1_naming_it(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = guard("report", "--ledger", str(tmp_path / "ledger.db"), "--out", str(blocker / "report.md"))
    assert done.status == 1
    assert done.stderr.startswith(f"guard: error: --out {blocker / 'report.md'}: ")


# --- the period -------------------------------------------------------------------------------------------


def test_the_default_period_is_the_last_24_hours() -> None:
    assert period(None, None, "UTC", NOW) == (NOW - timedelta(hours=24), NOW)


def test_since_is_the_last_duration_until_now_in_the_time_zone() -> None:
    start, end = period("30m", None, "Europe/Paris", NOW)
    assert (start, end) == (NOW - timedelta(minutes=30), NOW)
    assert end.tzinfo == ZoneInfo("Europe/Paris")


def test_a_day_is_a_calendar_day_in_the_time_zone() -> None:
    auckland = ZoneInfo("Pacific/Auckland")  # at NOW it is 01:30 on the 22nd there
    assert period(None, "today", "Pacific/Auckland", NOW) == (
        datetime(2026, 11, 22, tzinfo=auckland),
        datetime(2026, 11, 23, tzinfo=auckland),
    )
    assert period(None, "yesterday", "Pacific/Auckland", NOW)[0] == datetime(2026, 11, 21, tzinfo=auckland)
    assert period(None, "2026-03-29", "UTC", NOW) == (
        datetime(2026, 3, 29, tzinfo=ZoneInfo("UTC")),
        datetime(2026, 3, 30, tzinfo=ZoneInfo("UTC")),
    )


def test_a_date_that_does_not_exist_is_named() -> None:
    with pytest.raises(ConfigError, match="--day 2026-02-30: expected YYYY-MM-DD, today or yesterday"):
        period(None, "2026-02-30", "UTC", NOW)
