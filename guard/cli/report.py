"""`guard report`: what was spent in a period (the last 24 hours by default, or one calendar day), as
Markdown, HTML, JSON or CSV, on stdout or in a file. Read-only: it never blocks a running guard."""

from __future__ import annotations

import re
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Optional
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import typer

from guard.cli.exits import Status, fail
from guard.cli.options import LedgerOption
from guard.errors import ConfigError
from guard.operators.report import FORMATS, day_period, render, write_atomically
from ledgers import Ledger, LedgerError, Window


def report(
    since: Annotated[
        Optional[str],  # noqa: UP045 - typer needs Optional here
        typer.Option("--since", metavar="DURATION", help="The last DURATION until now: 30m, 24h, 7d (default 24h)."),
    ] = None,
    day: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option("--day", metavar="YYYY-MM-DD|today|yesterday", help="One calendar day in --timezone."),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", metavar="md|html|json|csv", help="The output format.")] = "md",
    out: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option("--out", metavar="PATH", help="Write the report to PATH (default: stdout)."),
    ] = None,
    ledger_url: LedgerOption = None,
    timezone: Annotated[
        str, typer.Option("--timezone", metavar="TZ", help="The zone of --day and of the report's hours.")
    ] = "UTC",
) -> None:
    """Spend per unit by session, identity, server, tool and hour; top paid URLs; denials, rate-limit hits
    and stale balances; holds in doubt; balance drift."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}: expected one of {', '.join(FORMATS)}")
    start, end = period(since, day, timezone, datetime.now(UTC))
    with Ledger.open(ledger_url, read_only=True) as ledger:
        text = render(ledger.report(start, end), fmt)
    if out is None:
        sys.stdout.write(text)
        return
    try:
        write_atomically(out, text)
    except OSError as exc:
        fail(Status.FAILED, f"--out {out}: {exc.strerror or exc}")


def period(since: str | None, day: str | None, timezone: str, now: datetime) -> tuple[datetime, datetime]:
    """[start, end) in `timezone` for `--since DURATION` (until `now`) or `--day` (default: --since 24h).

    Raises:
        ConfigError: both given, or a value that cannot be read (naming the flag)."""
    if since is not None and day is not None:
        raise ConfigError(f"give either --since or --day, not both (--since {since}, --day {day})")
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"--timezone {timezone}: not a known IANA time zone such as UTC or Europe/Paris") from None
    if day is not None:
        return day_period(_day(day, now.astimezone(zone).date()), timezone)
    try:
        length = Window.sliding(since or "24h").length_us
    except LedgerError:
        raise ConfigError(f"--since {since}: expected a duration such as 30m, 24h or 7d") from None
    end = now.astimezone(zone)
    return end - timedelta(microseconds=length), end


_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _day(text: str, today: date) -> date:
    if text == "today":
        return today
    if text == "yesterday":
        return today - timedelta(days=1)
    expected = f"--day {text}: expected YYYY-MM-DD, today or yesterday"
    if not _DATE.match(text):
        raise ConfigError(expected)
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(f"{expected} ({exc})") from None


__all__ = ["period", "report"]
