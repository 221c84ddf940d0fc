"""The audit trail: one call event per evaluated call (and per balance movement or resolution guard
records), appended, never changed. Arguments only as a redacted digest.

A call event carries structured facts (`decision`, `kind`, `balance_key`) beside the rule's name and
its words: reports and alerts read the facts, people read the words.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ledgers._errors import AmountError
from ledgers._money import Amount
from ledgers._part import Part
from ledgers._records import CallRecord, RecordedCall
from ledgers._store import columns, run, sql_list
from ledgers._time import from_us, to_us

# A call event's columns (besides its id), as written and as read.
CALL_COLUMNS = (
    "at_us",
    "session",
    "identity",
    "tool",
    "decision",
    "rule",
    "reason",
    "price",
    "price_unit",
    "hold_id",
    "spent",
    "spent_unit",
    "latency_us",
    "args_digest",
    "server",
    "kind",
    "balance_key",
    "arguments",
)
INSERT_CALL = f"INSERT INTO ledger_call_events ({columns(CALL_COLUMNS)}) VALUES ({columns(CALL_COLUMNS, ':')})"


class Audit(Part):
    def record(self, call: CallRecord) -> int:
        """Append one evaluated call to the audit trail; returns its id."""
        with self._store.write() as conn:
            row: Any = run(conn, INSERT_CALL + " RETURNING id", call_row(call, self._store.now_us())).scalar_one()
        return int(row)

    def record_many(self, calls: Sequence[CallRecord]) -> None:
        """Append several call events in one transaction (one disk sync for the lot), in order."""
        if calls:
            rows = [call_row(call, self._store.now_us()) for call in calls]
            with self._store.write() as conn:
                run(conn, INSERT_CALL, rows)

    def calls(self, *, last: int = 20, after_id: int | None = None) -> list[RecordedCall]:
        """The audit trail: the `last` call events (or every one after `after_id`), oldest first."""
        select = f"SELECT id, {columns(CALL_COLUMNS)} FROM ledger_call_events"
        with self._store.read() as conn:
            if after_id is not None:
                rows = run(conn, f"{select} WHERE id > :a ORDER BY id LIMIT :n", {"a": after_id, "n": last}).all()
            else:
                rows = run(conn, f"{select} ORDER BY id DESC LIMIT :n", {"n": last}).all()[::-1]
        return [RecordedCall(id=row.id, at=from_us(row.at_us), call=_call(row)) for row in rows]

    def decided_calls(self, start: datetime, end: datetime) -> list[RecordedCall]:
        """The calls decided in [start, end) by every guard on this ledger, every session's, in the order
        they were recorded: allowed, denied, would-deny and failed calls (not balance moves, resolutions or
        freezes)."""
        select = f"SELECT id, {columns(CALL_COLUMNS)} FROM ledger_call_events"
        where = f"at_us >= :start AND at_us < :end AND decision IN {sql_list(DECIDED)}"
        with self._store.read() as conn:
            rows = run(
                conn, f"{select} WHERE {where} ORDER BY at_us, id", {"start": to_us(start), "end": to_us(end)}
            ).all()
        return [RecordedCall(id=row.id, at=from_us(row.at_us), call=_call(row)) for row in rows]


# The decisions of calls (the rest are balance moves, resolutions and the kill switch).
DECIDED = ("allow", "deny", "would_deny", "error")


# Inside a transaction


def call_row(call: CallRecord, now: int) -> dict[str, Any]:
    """A call event's values for `INSERT_CALL`, written at `now`.

    Raises:
        AmountError: its price or spend is not an Amount."""
    for money in (call.price, call.spent):
        if money is not None and not isinstance(money, Amount):
            raise AmountError(f"a call record's price and spend must be Amounts, not {money!r}")
    return {
        "at_us": now,
        "session": call.session,
        "identity": call.identity,
        "tool": call.tool,
        "decision": call.decision,
        "rule": call.rule,
        "reason": call.reason,
        "price": call.price.value if call.price else None,
        "price_unit": call.price.unit if call.price else None,
        "hold_id": call.hold_id,
        "spent": call.spent.value if call.spent else None,
        "spent_unit": call.spent.unit if call.spent else None,
        "latency_us": call.latency_us,
        "args_digest": call.args_digest,
        "server": call.server,
        "kind": call.kind,
        "balance_key": call.balance_key,
        "arguments": call.arguments,
    }


def _call(row: Any) -> CallRecord:
    return CallRecord(
        tool=row.tool,
        decision=row.decision,
        session=row.session,
        identity=row.identity,
        rule=row.rule,
        reason=row.reason,
        price=Amount(row.price, row.price_unit) if row.price is not None else None,
        hold_id=row.hold_id,
        spent=Amount(row.spent, row.spent_unit) if row.spent is not None else None,
        latency_us=row.latency_us,
        args_digest=row.args_digest,
        server=row.server,
        kind=row.kind,
        balance_key=row.balance_key,
        arguments=row.arguments,
    )
