"""Windows: what a budget or a rate limit counts now, from durable rows (never reset by a job).

A budget's use is `SUM(held + spent)` of its charges created within its window (read from a covering
index); a rate limit's is `SUM(weight)` of its rate events within its sliding window. A reservation
checks both, and counts its call, in its own transaction (see `ledgers._holds`); `hit` does the same
for calls that pay nothing.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import Connection

from ledgers._errors import BudgetExceeded, RateLimited
from ledgers._part import BudgetDefinition, Part
from ledgers._records import Budget, RateLimit
from ledgers._store import columns, run
from ledgers._time import US_PER_S, Window

# A budget's definition as stored (with its key, and when it was stored), so that views need no policy.
BUDGET_COLUMNS = ("name", "scope", "limit_value", "unit", "window_spec", "timezone")


class Windows(Part):
    def hit(self, rate_limits: Sequence[RateLimit], shadow: Collection[str] = ()) -> RateLimited | None:
        """Count one call against rate limits, if all have room (no money involved). A limit whose key is
        in `shadow` (shadow mode) does not refuse: the call is counted, and its refusal returned.

        Raises:
            RateLimited: a limit not in `shadow` has no calls left. Nothing written."""
        would: RateLimited | None = None
        with self._store.write(lock_keys=sorted(r.lock_key for r in rate_limits)) as conn:
            now = self._store.now_us()
            for rate in rate_limits:
                try:
                    check_rate(conn, rate, now)
                except RateLimited as exc:
                    if rate.key not in shadow:
                        raise
                    would = would or exc
            count_calls(conn, rate_limits, now)
        return would

    def check_rates(self, rate_limits: Sequence[RateLimit]) -> None:
        """Whether one more call fits every rate limit now, counting nothing (the count that binds is the
        one `reserve` or `hit` makes in its own transaction).

        Raises:
            RateLimited: a limit has no calls left."""
        with self._store.read() as conn:
            now = self._store.now_us()
            for rate in rate_limits:
                check_rate(conn, rate, now)

    def count(self, key: str, window: Window) -> int:
        """Calls counted for a rate-limit key within `window` (sliding)."""
        now = self._store.now_us()
        with self._store.read() as conn:
            return rate_use(conn, key, window.start_us(now))[0]


# Inside a transaction


def budget_use(conn: Connection, key: str, start: int) -> tuple[int, int]:
    """(held, spent) of budget `key` by charges created since `start`."""
    row: Any = run(
        conn,
        "SELECT COALESCE(SUM(held), 0), COALESCE(SUM(spent), 0) FROM ledger_charges"
        " WHERE budget = :b AND created_us >= :s",
        {"b": key, "s": start},
    ).one()
    held, spent = row
    return int(held), int(spent)


def check_budget(conn: Connection, budget: Budget, value: int, now: int) -> None:
    """Raise `BudgetExceeded` unless `value` (in the budget's unit) fits: a budget at or over its limit
    refuses everything, zero included."""
    start = budget.window.start_us(now)
    held, spent = budget_use(conn, budget.key, start)
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


def define_budgets(
    conn: Connection, budgets: Sequence[Budget], now: int, known: set[BudgetDefinition]
) -> set[BudgetDefinition]:
    """Store the definitions of `budgets` not `known` to be stored already (operators' views read them:
    they need no policy); returns them, to be known once the transaction commits."""
    new = {(b.key, b.limit.value, b.limit.unit, b.window.text, b.window.timezone) for b in budgets} - known
    by_key = {b.key: b for b in budgets}
    for key, limit, unit, window, timezone in sorted(new):
        budget = by_key[key]
        definition = dict(zip(BUDGET_COLUMNS, (budget.name, budget.scope, limit, unit, window, timezone), strict=True))
        run(
            conn,
            f"INSERT INTO ledger_budgets (key, {columns(BUDGET_COLUMNS)}, defined_us)"
            f" VALUES (:key, {columns(BUDGET_COLUMNS, ':')}, :defined_us) ON CONFLICT (key) DO UPDATE SET"
            " limit_value = :limit_value, unit = :unit, window_spec = :window_spec, timezone = :timezone,"
            " defined_us = :defined_us",
            {"key": key, **definition, "defined_us": now},
        )
    return new


def rate_use(conn: Connection, key: str, start: int) -> tuple[int, int | None]:
    """What rate-limit `key` counted since `start`, and when its oldest counted call was."""
    row: Any = run(
        conn,
        "SELECT COALESCE(SUM(weight), 0), MIN(at_us) FROM ledger_rate_events WHERE key = :k AND at_us >= :s",
        {"k": key, "s": start},
    ).one()
    return int(row[0]), row[1]


def check_rate(conn: Connection, rate: RateLimit, now: int) -> None:
    """Raise `RateLimited` unless one more call (of `rate.cost`) fits, saying when one would."""
    start = rate.window.start_us(now)
    used, oldest = rate_use(conn, rate.key, start)
    if used + rate.cost > rate.limit:
        retry = (oldest - start + 1) / US_PER_S if oldest is not None else None
        raise RateLimited(
            f"rate limit {rate.key}: {used} of {rate.limit} per {rate.window} used",
            rule=rate.key,
            remaining=max(0, rate.limit - used),
            unit="calls",
            retry_after_s=retry,
        )


def count_calls(conn: Connection, rate_limits: Sequence[RateLimit], now: int) -> None:
    for rate in rate_limits:
        run(
            conn,
            "INSERT INTO ledger_rate_events (key, at_us, weight) VALUES (:k, :t, :w)",
            {"k": rate.key, "t": now, "w": rate.cost},
        )
