"""Freezes: the kill switch. An operator freezes a scope ("global", "identity:<name>", "session:<id>")
and every guard on the ledger refuses its paying calls (or, `all_tools`, every call) until it is unfrozen.

Freezing and unfreezing write the freeze and its call event in one transaction (audited, never one without
the other). A reservation reads the freezes in its own transaction (`check_frozen`): a freeze committed
before it is never missed. Guards read them all (`freezes`, a tiny table) for calls that pay nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from sqlalchemy import Connection

from ledgers._audit import INSERT_CALL, call_row
from ledgers._errors import Frozen, LedgerError
from ledgers._part import Part
from ledgers._records import CallRecord, Freeze
from ledgers._store import run
from ledgers._time import from_us

SCOPE_KINDS = ("identity", "session")
_SELECT = "SELECT scope, all_tools, reason, frozen_by, created_us FROM ledger_freezes"


class Freezes(Part):
    def freeze(self, scope: str, *, reason: str, by: str, all_tools: bool = False) -> Freeze:
        """Freeze `scope` (a second freeze of one scope replaces the first), audited in the same transaction.

        Raises:
            LedgerError: a scope that is not "global", "identity:<name>" or "session:<id>", or no reason."""
        check_scope(scope)
        if not reason.strip():
            raise LedgerError("a freeze needs a reason (--reason TEXT): the denials show it")
        with self._store.write() as conn:
            now = self._store.now_us()
            run(conn, "DELETE FROM ledger_freezes WHERE scope = :s", {"s": scope})
            run(
                conn,
                "INSERT INTO ledger_freezes (scope, all_tools, reason, frozen_by, created_us)"
                " VALUES (:s, :a, :r, :b, :t)",
                {"s": scope, "a": all_tools, "r": reason, "b": by, "t": now},
            )
            freeze = Freeze(scope, reason, by, from_us(now), all_tools)
            run(conn, INSERT_CALL, call_row(_event(freeze, "freeze", f"frozen by {by}: {reason}"), now))
        return freeze

    def unfreeze(self, scope: str, *, by: str) -> Freeze | None:
        """Lift the freeze of `scope`, audited in the same transaction; the freeze lifted (None: there was none)."""
        check_scope(scope)
        with self._store.write() as conn:
            now = self._store.now_us()
            row = run(conn, f"{_SELECT} WHERE scope = :s", {"s": scope}).first()
            if row is None:
                return None
            freeze = _freeze(row)
            run(conn, "DELETE FROM ledger_freezes WHERE scope = :s", {"s": scope})
            run(conn, INSERT_CALL, call_row(_event(freeze, "unfreeze", f"unfrozen by {by}"), now))
        return freeze

    def freezes(self) -> list[Freeze]:
        """Every freeze standing, by scope."""
        with self._store.read() as conn:
            return [_freeze(row) for row in run(conn, f"{_SELECT} ORDER BY scope").all()]


def check_scope(scope: str) -> None:
    kind, _, name = scope.partition(":")
    if scope != "global" and (kind not in SCOPE_KINDS or not name):
        raise LedgerError(f"cannot freeze {scope!r}: expected global, identity:<name> or session:<id>")


# Inside a transaction


def check_frozen(conn: Connection, scopes: Sequence[str]) -> None:
    """Raise `Frozen` if one of `scopes` is frozen (a paying call: any freeze refuses it)."""
    if not scopes:
        return
    marks = ", ".join(f":s{i}" for i in range(len(scopes)))
    rows = run(conn, f"{_SELECT} WHERE scope IN ({marks})", {f"s{i}": s for i, s in enumerate(scopes)}).all()
    freeze = first_freeze([_freeze(row) for row in rows], scopes)
    if freeze is not None:
        raise Frozen(freeze.refusal, rule=freeze.scope)


def first_freeze(freezes: Sequence[Freeze], scopes: Sequence[str]) -> Freeze | None:
    """The freeze of the first of `scopes` that has one."""
    by_scope = {f.scope: f for f in freezes}
    return next((by_scope[s] for s in scopes if s in by_scope), None)


def _freeze(row: Any) -> Freeze:
    return Freeze(row.scope, row.reason, row.frozen_by, from_us(row.created_us), bool(row.all_tools))


def _event(freeze: Freeze, decision: Literal["freeze", "unfreeze"], reason: str) -> CallRecord:
    kind, _, name = freeze.scope.partition(":")
    return CallRecord(
        tool="*" if freeze.all_tools else "paying tools",
        decision=decision,
        session=name if kind == "session" else None,
        identity=name if kind == "identity" else None,
        rule=f"freeze.{freeze.scope}",
        reason=reason,
        kind="freeze",
    )
