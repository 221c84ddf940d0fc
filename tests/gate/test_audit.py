"""The audit trail's writer (`AuditTrail`): events reach the watchers at once and the ledger in batches,
in order; what is still queued when it stops is written; a watcher's or the ledger's failure is logged,
never raised into a call."""

from __future__ import annotations

import logging

import anyio
import anyio.from_thread
import pytest

from guard.gate.audit import AuditTrail
from ledgers import CallRecord, LedgerError
from tests.conftest import WAIT_S
from tests.payments.doubles import RecordingLedger

pytestmark = pytest.mark.anyio


def event(tool: str) -> CallRecord:
    return CallRecord(tool=tool, decision="allow", session="s1")


class Watcher:
    def __init__(self) -> None:
        self.seen: list[tuple[str, float | None]] = []

    def call_done(self, call: CallRecord, upstream_s: float | None) -> None:
        self.seen.append((call.tool, upstream_s))


async def test_events_are_written_in_batches_in_order_and_what_is_queued_at_the_stop_too(
    ledger: RecordingLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    batches: list[int] = []
    record_many = ledger.record_many
    written = anyio.Event()

    def counted(calls: list[CallRecord]) -> None:
        batches.append(len(calls))
        record_many(calls)
        anyio.from_thread.run_sync(written.set)  # a worker thread: the audit writes off the event loop

    monkeypatch.setattr(ledger, "record_many", counted)
    audit = AuditTrail(ledger)
    with anyio.fail_after(WAIT_S):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(audit.write)
            for tool in ("a", "b", "c"):
                audit.note(event(tool))
            await written.wait()
            audit.note(event("d"))  # queued when the writer stops
            tasks.cancel_scope.cancel()
    assert [e.call.tool for e in ledger.calls(last=10)] == ["a", "b", "c", "d"]
    assert batches[0] == 3


async def test_watchers_hear_of_each_event_at_once_and_one_that_fails_stops_none(
    ledger: RecordingLedger, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        def call_done(self, call: CallRecord, upstream_s: float | None) -> None:
            raise RuntimeError("watcher bug")

    watcher = Watcher()
    audit = AuditTrail(ledger, [Broken(), watcher])
    audit.note(event("a"), 0.25)
    audit.note(event("b"))
    assert watcher.seen == [("a", 0.25), ("b", None)]
    assert "a call watcher failed" in caplog.text


async def test_a_ledger_that_cannot_write_a_batch_is_logged_and_the_writer_goes_on(
    ledger: RecordingLedger, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    failed = anyio.Event()
    record_many = ledger.record_many

    def flaky(calls: list[CallRecord]) -> None:
        if not failed.is_set():
            anyio.from_thread.run_sync(failed.set)
            raise LedgerError("disk full")
        record_many(calls)

    monkeypatch.setattr(ledger, "record_many", flaky)
    audit = AuditTrail(ledger)
    with caplog.at_level(logging.ERROR), anyio.fail_after(WAIT_S):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(audit.write)
            audit.note(event("lost"))
            await failed.wait()
            audit.note(event("kept"))
            tasks.cancel_scope.cancel()
    assert "could not write 1 call events to the audit trail" in caplog.text
    assert [e.call.tool for e in ledger.calls(last=10)] == ["kept"]
