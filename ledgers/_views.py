"""Views: what operators and watchers read (budgets in use and their state, holds by phase, payments
above their holds, the spend report), and the alerts they claim so that each is sent once.

Budgets are read as the ledger stored their definitions (`ledger_budgets`): no policy is needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection

from ledgers._holds import SELECT_HOLDS, hold_info
from ledgers._money import Amount
from ledgers._part import Part
from ledgers._records import Budget, BudgetState, HoldInfo, Usage
from ledgers._report import SpendReport, build_report, in_msat, lightning_unit
from ledgers._schema import OPEN_PHASES, PHASES
from ledgers._store import columns, run, sql_list
from ledgers._time import US_PER_S, Window, from_us, to_us
from ledgers._windows import BUDGET_COLUMNS, budget_use


class Views(Part):
    def usage(self, budget: Budget) -> Usage:
        """What `budget` has spent and holds in its current window."""
        now = self._store.now_us()
        start = budget.window.start_us(now)
        with self._store.read() as conn:
            held, spent = budget_use(conn, budget.key, start)
        return Usage(budget, spent, held, from_us(start) if budget.window.kind != "session" else None)

    def over_reservations(self, since: datetime) -> list[HoldInfo]:
        """Holds settled since `since` at more than they reserved, oldest first."""
        with self._store.read() as conn:
            rows = run(
                conn,
                f"{SELECT_HOLDS} WHERE updated_us >= :s AND phase = 'settled' AND settled > amount ORDER BY id",
                {"s": to_us(since)},
            ).all()
        return [hold_info(row) for row in rows]

    def budget_states(self, *, session: str | None = None, idle_after_s: float = 86_400) -> list[BudgetState]:
        """Budgets in use, by name then scope, as last defined by a guard. A budget is listed while its
        current window has spend or holds, or (a session's budget, whose window never ends) while it was
        charged within `idle_after_s` or holds money. With `session`: every budget that session was
        charged to, in use or not."""
        now = self._store.now_us()
        with self._store.read() as conn:
            if session is None:
                rows = run(conn, f"SELECT {columns(BUDGET_COLUMNS)} FROM ledger_budgets ORDER BY name, scope").all()
            else:
                rows = run(
                    conn,
                    f"SELECT {columns(BUDGET_COLUMNS)} FROM ledger_budgets"
                    " WHERE scope = :scope OR key IN (SELECT c.budget FROM ledger_charges c"
                    " JOIN ledger_holds h ON h.id = c.hold_id WHERE h.session = :s)"
                    " ORDER BY name, scope",
                    {"scope": f"session:{session}", "s": session},
                ).all()
            budgets = [
                Budget(r.name, Amount(int(r.limit_value), r.unit), r.scope, Window.parse(r.window_spec, r.timezone))
                for r in rows
            ]
            idle_since = now - int(idle_after_s * US_PER_S)
            if session is None:
                budgets = _maybe_in_use(conn, budgets, now, idle_since)
            states = _states(conn, budgets, now)
        if session is not None:
            return states
        return [
            s
            for s in states
            if s.held
            or s.in_doubt
            or (s.spent if s.budget.window.kind != "session" else _us(s.last_used) >= idle_since)
        ]

    def states(self, budgets: Sequence[Budget]) -> list[BudgetState]:
        """These budgets (as the policy defines them now) in their current windows."""
        with self._store.read() as conn:
            return _states(conn, budgets, self._store.now_us())

    def report(self, start: datetime, end: datetime) -> SpendReport:
        """Spend, denials, holds in doubt and balance drift in [start, end) (see `ledgers._report`); the
        report's hours are those of `start`'s time zone."""
        with self._store.read() as conn:
            return build_report(conn, start, end, self._store.now_us())

    def hold_counts(self) -> dict[str, int]:
        """How many holds are in each phase (every phase named, zero included)."""
        with self._store.read() as conn:
            rows: Any = run(conn, "SELECT phase, COUNT(*) FROM ledger_holds GROUP BY phase").all()
        return {phase: 0 for phase in PHASES} | {str(phase): int(count) for phase, count in rows}

    def claim_alert(self, key: str, kind: str) -> bool:
        """Claim the right to send the alert `key` (once, among every process sharing the ledger)."""
        with self._store.write() as conn:
            claimed = run(
                conn,
                "INSERT INTO ledger_alerts (key, kind, state, created_us, attempts)"
                " VALUES (:k, :kind, 'sending', :t, 0) ON CONFLICT (key) DO NOTHING",
                {"k": key, "kind": kind, "t": self._store.now_us()},
            ).rowcount
        return bool(claimed)

    def alert_done(self, key: str, *, sent: bool, attempts: int) -> None:
        """Record how sending a claimed alert ended."""
        with self._store.write() as conn:
            run(
                conn,
                "UPDATE ledger_alerts SET state = :s, done_us = :t, attempts = :a WHERE key = :k",
                {"s": "sent" if sent else "failed", "t": self._store.now_us(), "a": attempts, "k": key},
            )


# Inside a transaction


# What a budget's charges in its window were paid in: the payments' own units (Lightning summed in msat),
# settled ones at what was paid, open ones at what they hold.
_PAID_IN_SQL = f"""
SELECT {lightning_unit("h.unit")} AS u,
       SUM({in_msat("CASE WHEN h.phase = 'settled' THEN h.settled ELSE h.amount END", "h.unit")}) AS total
FROM ledger_charges c JOIN ledger_holds h ON h.id = c.hold_id
WHERE c.budget = :b AND c.created_us >= :s AND h.phase != 'voided'
GROUP BY {lightning_unit("h.unit")} ORDER BY u
"""


def _states(conn: Connection, budgets: Sequence[Budget], now: int) -> list[BudgetState]:
    # Few holds are ever in doubt: read them all once, and split them by budget and window here.
    doubtful: Any = run(
        conn,
        "SELECT c.budget, c.created_us, c.held FROM ledger_holds h JOIN ledger_charges c ON c.hold_id = h.id"
        " WHERE h.phase = 'in_doubt'",
    ).all()
    states = []
    for budget in budgets:
        start = budget.window.start_us(now)
        held, spent = budget_use(conn, budget.key, start)
        in_doubt = sum(int(d.held) for d in doubtful if d.budget == budget.key and d.created_us >= start)
        last = run(conn, "SELECT MAX(created_us) FROM ledger_charges WHERE budget = :b", {"b": budget.key}).scalar()
        paid_in: Any = run(conn, _PAID_IN_SQL, {"b": budget.key, "s": start}).all()
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
                paid_in=tuple(Amount(int(total), unit) for unit, total in paid_in if total),
            )
        )
    return states


def _maybe_in_use(conn: Connection, budgets: list[Budget], now: int, idle_since: int) -> list[Budget]:
    """Leave out the budgets of sessions that made no hold since the budget's window began (or, for a
    session window, since `idle_since`) and hold nothing: every session ever seen has a row, and
    reading each one's sums would cost a query per session."""
    scoped = [b for b in budgets if b.scope.startswith("session:")]
    if not scoped:
        return budgets

    def since(budget: Budget) -> int:
        return idle_since if budget.window.kind == "session" else budget.window.start_us(now)

    rows: Any = run(
        conn,
        "SELECT session, MAX(created_us) FROM ledger_holds WHERE created_us >= :s AND session IS NOT NULL"
        " GROUP BY session",
        {"s": min(since(b) for b in scoped)},
    ).all()
    latest = {str(session): int(at) for session, at in rows}
    holding = {
        str(r[0])
        for r in run(
            conn,
            f"SELECT DISTINCT session FROM ledger_holds WHERE phase IN {sql_list(OPEN_PHASES)}",
        ).all()
    }

    def maybe(budget: Budget) -> bool:
        if not budget.scope.startswith("session:"):
            return True
        owner = budget.scope.removeprefix("session:")
        return owner in holding or latest.get(owner, -1) >= since(budget)

    return [b for b in budgets if maybe(b)]


def _us(moment: datetime | None) -> int:
    return to_us(moment) if moment is not None else 0
