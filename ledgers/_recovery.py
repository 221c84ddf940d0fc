"""Recovery: what processes that stopped without resolving their holds left open.

Every process using the ledger has a row in `ledger_owners` (host, pid and the pid's start time, last
seen). A process is gone when its row is gone, when its pid on this host is now another process's (or
none), or, on another host, when it was silent past the lease (`heartbeat` keeps it alive). Its holds
then take recovery's steps (`STEPS` in `ledgers._holds`): `reserved` ones were never forwarded
(voided); `forwarded` ones may have paid (in doubt, still counted in full).
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

from sqlalchemy import Connection

from ledgers._holds import STEPS
from ledgers._part import Part
from ledgers._store import run, sql_list

logger = logging.getLogger("ledgers")

# Silence after which another host's guard is taken to be gone, and its open holds recovered.
DEFAULT_LEASE_S = 600

_UNSENT, _SENT = STEPS["recover_unsent"], STEPS["recover_sent"]
_RECOVERABLE = sql_list(_UNSENT.start + _SENT.start)


class Recovery(Part):
    def recover(self) -> int:
        """Resolve what gone processes left open: `reserved` holds were never forwarded (voided);
        `forwarded` ones may have paid (kept counted, in doubt). Returns how many holds moved."""
        with self._store.write() as conn:
            # Holds before owners: an owner's row is committed before any of its holds, so a process
            # that starts meanwhile (PostgreSQL reads each statement afresh) is never taken for gone.
            holds = run(conn, f"SELECT DISTINCT owner FROM ledger_holds WHERE phase IN {_RECOVERABLE}").all()
            owners = run(conn, "SELECT id, host, pid, pid_start, seen_us FROM ledger_owners").all()
            now = self._store.now_us()
            gone = [o.id for o in owners if o.id != self.owner and not self._alive(o, now)]
            known = {o.id for o in owners}
            gone += [h.owner for h in holds if h.owner not in known and h.owner != self.owner]
            moved = 0
            for owner in set(gone):
                moved += _recover_owner(conn, owner, now)
                unregister(conn, owner)
        if moved:
            logger.warning("recovered %d open holds left by stopped processes", moved)
        return moved

    def heartbeat(self) -> None:
        """Tell other processes sharing the ledger that this one is alive (see `lease_s`)."""
        with self._store.write() as conn:
            run(
                conn,
                "UPDATE ledger_owners SET seen_us = :t WHERE id = :id",
                {"t": self._store.now_us(), "id": self.owner},
            )

    def _alive(self, owner: Any, now: int) -> bool:
        if owner.host == socket.gethostname():
            return bool(_process_start(owner.pid) == owner.pid_start)
        return bool(now - owner.seen_us < self._lease_us)


# Inside a transaction


def register(conn: Connection, owner: str, now: int) -> None:
    """This process starts using the ledger as `owner`."""
    pid = os.getpid()
    run(
        conn,
        "INSERT INTO ledger_owners (id, host, pid, pid_start, seen_us) VALUES (:id, :h, :p, :s, :t)",
        {"id": owner, "h": socket.gethostname(), "p": pid, "s": _process_start(pid), "t": now},
    )


def unregister(conn: Connection, owner: str) -> None:
    run(conn, "DELETE FROM ledger_owners WHERE id = :id", {"id": owner})


def _recover_owner(conn: Connection, owner: str, now: int) -> int:
    # A reserved hold's charges are released with it (it never reached the upstream).
    run(
        conn,
        "UPDATE ledger_charges SET held = 0 WHERE hold_id IN"
        f" (SELECT id FROM ledger_holds WHERE owner = :o AND phase IN {sql_list(_UNSENT.start)})",
        {"o": owner},
    )
    moved = [
        run(
            conn,
            f"UPDATE ledger_holds SET phase = :p, updated_us = :t WHERE owner = :o AND phase IN {sql_list(step.start)}",
            {"p": step.end, "t": now, "o": owner},
        ).rowcount
        for step in (_UNSENT, _SENT)
    ]
    return sum(moved)


def _process_start(pid: int) -> str:
    """When process `pid` started (ticks since boot), to tell it from a later process with its pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return fields[19].decode()
    except (OSError, IndexError):
        return ""
