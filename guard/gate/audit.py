"""The audit trail on its way to the ledger: every decided call becomes a call event, told to the watchers
(metrics, alerts) at once and written by a background task in batches, off the call's path (a call costs
no disk sync of its own; a paying call's event goes with its settlement, in that one transaction).
Arguments are only ever recorded as a digest."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Protocol

import anyio

from guard.core import off_loop
from ledgers import CallRecord, Ledger, LedgerError

logger = logging.getLogger("guard.gate")

# How long the writer gathers more events after the first before it writes them in one transaction.
GATHER_S = 0.05


class CallWatcher(Protocol):
    """Told of every decided call as it is recorded (metrics, alerts). Must not block or raise."""

    def call_done(self, call: CallRecord, upstream_s: float | None) -> None:
        """`upstream_s`: how long the upstream took to answer (None when the call was not forwarded)."""
        ...


class AuditTrail:
    """Call events queued by the gate (never blocking it) and written by `write`, which must run as a
    background task of the front."""

    def __init__(self, ledger: Ledger, watchers: Sequence[CallWatcher] = ()) -> None:
        self._ledger = ledger
        self._watchers = list(watchers)
        self._queue: asyncio.Queue[CallRecord] = asyncio.Queue()

    def note(self, call: CallRecord, upstream_s: float | None = None, *, written: bool = False) -> None:
        """Queue a call event for the ledger (unless it is `written` there already: a paying call's is, with
        its settlement), and tell the watchers."""
        if not written:
            self._queue.put_nowait(call)
        for watcher in self._watchers:
            try:
                watcher.call_done(call, upstream_s)
            except Exception:  # a watcher's bug must not fail the call it watches
                logger.exception("a call watcher failed")

    async def write(self) -> None:
        """Write call events as they come, a batch per transaction, until cancelled; then the rest."""
        taken: list[CallRecord] = []  # out of the queue, not yet written
        try:
            while True:
                taken = [await self._queue.get()]
                # Gather what else comes in a moment: one write (one disk sync, one turn of the SQLite
                # write lock that paying calls also need) for many events.
                await anyio.sleep(GATHER_S)
                while not self._queue.empty():
                    taken.append(self._queue.get_nowait())
                batch, taken = taken, []
                await self._write(batch)  # a worker thread: once started it finishes, cancelled or not
        finally:
            with anyio.CancelScope(shield=True):
                while not self._queue.empty():
                    taken.append(self._queue.get_nowait())
                await self._write(taken)

    async def _write(self, batch: list[CallRecord]) -> None:
        try:
            await off_loop(self._ledger.record_many, batch)
        except LedgerError:
            logger.exception("could not write %d call events to the audit trail", len(batch))
