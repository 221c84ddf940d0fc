"""Approvals: a human's decision on one exact action (a tool, a digest of its arguments, for one
subject), single-use: pending → approved | denied; approved → used, once; each until it expires.
"""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import Connection

from ledgers._errors import ApprovalError
from ledgers._part import Part
from ledgers._records import Approval
from ledgers._store import columns, run
from ledgers._time import US_PER_S, from_us

APPROVAL_COLUMNS = ("id", "subject", "identity", "action", "digest", "state", "created_us", "expires_us", "decided_us")
_SELECT = f"SELECT {columns(APPROVAL_COLUMNS)} FROM ledger_approvals"


class Approvals(Part):
    def request_approval(
        self, subject: str, action: str, digest: str, *, identity: str | None, expire_after_s: float
    ) -> Approval:
        """The live approval for exactly this action (`action` with arguments `digest`, for `subject`):
        pending, approved or denied; or a new pending one."""
        with self._store.write(lock_keys=[f"approval:{subject}"]) as conn:
            now = self._store.now_us()
            row = run(
                conn,
                f"{_SELECT} WHERE subject = :s AND action = :a AND digest = :d"
                " AND state != 'used' AND expires_us > :now ORDER BY created_us DESC LIMIT 1",
                {"s": subject, "a": action, "d": digest, "now": now},
            ).first()
            if row is not None:
                return _approval(row, now)
            values = {
                "id": "ap_" + secrets.token_hex(5),
                "subject": subject,
                "identity": identity,
                "action": action,
                "digest": digest,
                "state": "pending",
                "created_us": now,
                "expires_us": now + int(expire_after_s * US_PER_S),
                "decided_us": None,
            }
            run(
                conn,
                f"INSERT INTO ledger_approvals ({columns(APPROVAL_COLUMNS)}) VALUES ({columns(APPROVAL_COLUMNS, ':')})",
                values,
            )
            row = run(conn, f"{_SELECT} WHERE id = :id", values).one()
            return _approval(row, now)

    def decide_approval(self, approval_id: str, *, approve: bool, expire_after_s: float | None = None) -> Approval:
        """A human approves or denies a pending approval. An approval then lasts `expire_after_s`
        (default: as long as it was given to be decided).

        Raises:
            ApprovalError: no such approval, already decided, or expired."""
        with self._store.write() as conn:
            now = self._store.now_us()
            row = run(conn, f"{_SELECT} WHERE id = :id", {"id": approval_id}).first()
            if row is None:
                raise ApprovalError(f"no approval {approval_id}")
            current = _approval(row, now)
            if current.state != "pending":
                raise ApprovalError(f"approval {approval_id} is already {current.state}")
            if current.expired:
                raise ApprovalError(f"approval {approval_id} expired at {current.expires.isoformat()}")
            lasts = int(expire_after_s * US_PER_S) if expire_after_s is not None else row.expires_us - row.created_us
            run(
                conn,
                "UPDATE ledger_approvals SET state = :st, decided_us = :now, expires_us = :e WHERE id = :id",
                {"st": "approved" if approve else "denied", "now": now, "e": now + lasts, "id": approval_id},
            )
            row = run(conn, f"{_SELECT} WHERE id = :id", {"id": approval_id}).one()
            return _approval(row, now)

    def use_approval(self, approval_id: str) -> None:
        """Spend an approved approval (once).

        Raises:
            ApprovalError: it is not approved, was used already, or expired."""
        with self._store.write() as conn:
            spend_approval(conn, approval_id, self._store.now_us())

    def approvals(self, state: str | None = None, *, include_expired: bool = False) -> list[Approval]:
        """Approvals, newest first: all, or those in `state`."""
        now = self._store.now_us()
        where, params = [], {"now": now, "state": state}
        if state is not None:
            where.append("state = :state")
        if not include_expired:
            where.append("expires_us > :now")
        sql = _SELECT
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._store.read() as conn:
            rows = run(conn, sql + " ORDER BY created_us DESC, id", params).all()
        return [_approval(row, now) for row in rows]


def spend_approval(conn: Connection, approval_id: str, now: int) -> None:
    """Spend an approved approval inside a transaction (a reservation's: see `Holds.reserve(approval=)`).

    Raises:
        ApprovalError: it is not approved, was used already, or expired."""
    used = run(
        conn,
        "UPDATE ledger_approvals SET state = 'used' WHERE id = :id AND state = 'approved' AND expires_us > :now",
        {"id": approval_id, "now": now},
    ).rowcount
    if used != 1:
        raise ApprovalError(f"approval {approval_id} is not approved, was used already, or expired")


def _approval(row: Any, now: int) -> Approval:
    return Approval(
        id=row.id,
        subject=row.subject,
        identity=row.identity,
        action=row.action,
        digest=row.digest,
        state=row.state,
        created=from_us(row.created_us),
        expires=from_us(row.expires_us),
        decided=from_us(row.decided_us) if row.decided_us is not None else None,
        expired=row.expires_us <= now and row.state in ("pending", "approved"),
    )
