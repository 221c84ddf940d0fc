"""Helpers for ledger tests: worker subprocesses read line by line (every wait bounded) for tests that need
more than one process, plain SQL reads of a ledger's tables behind the ledger's back, and holds left in a
phase for reports."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import IO, Any
from zoneinfo import ZoneInfo

from sqlalchemy import Row, create_engine, text

from ledgers import Amount, Budget, Ledger, SpendReport
from tests.conftest import ROOT, WAIT_S

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)  # where the fake clock starts
DAY = timedelta(hours=24)


class Child:
    """`python -m MODULE ARGS` run from the project root. The test reads what it prints on stdout line
    by line (each read fails after WAIT_S rather than hang) and keeps its stderr for failure messages.

    `stdin` is a pipe of the child's own (`send`), or a file descriptor several children share."""

    def __init__(self, module: str, *args: str, stdin: int = subprocess.PIPE) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=stdin,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        assert self.process.stdout is not None and self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._read, args=(self.process.stdout, self._lines.put), daemon=True),
            threading.Thread(target=self._read, args=(self.process.stderr, self._keep_stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream: IO[str], sink: Callable[[str | None], None]) -> None:
        for line in stream:
            sink(line.rstrip("\n"))
        sink(None)  # end of file: the child exited (or closed the stream)

    def _keep_stderr(self, line: str | None) -> None:
        if line is not None:
            self._stderr.append(line)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def stderr(self) -> str:
        return "\n".join(self._stderr)

    def line(self) -> str:
        """The next line the child printed. Fails, showing its stderr, if it exits or stays silent."""
        try:
            line = self._lines.get(timeout=WAIT_S)
        except queue.Empty:
            raise AssertionError(f"worker {self.pid} printed nothing for {WAIT_S}s:\n{self.stderr}") from None
        if line is None:
            self.process.wait(WAIT_S)
            self._readers[1].join(WAIT_S)
            raise AssertionError(f"worker {self.pid} exited with status {self.process.returncode}:\n{self.stderr}")
        return line

    def ask(self, command: str) -> str:
        """Send one command line and return the line the child answers with."""
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.line()

    def kill(self) -> None:
        """SIGKILL: no handler, no cleanup, no `Ledger.close()` runs in the child."""
        self.process.kill()
        assert self.process.wait(WAIT_S) == -signal.SIGKILL

    def wait(self) -> int:
        """Wait (bounded) for the child to exit by itself; its exit status."""
        return self.process.wait(WAIT_S)

    def close(self) -> None:
        """Kill the child if it still runs, then reap it and close its pipes (no ResourceWarning)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(WAIT_S)
        for reader in self._readers:
            reader.join(WAIT_S)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def query(url: str, sql: str) -> Sequence[Row[Any]]:
    """Rows of `sql` read straight from the ledger's database, not through `Ledger`."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql)).all()
    finally:
        engine.dispose()


def paid(
    ledger: Ledger, amount: str, *, settled: str | None = None, phase: str = "settled", **where: str | None
) -> int:
    """A hold of `amount` left in `phase` (settled at `settled`, default the whole amount)."""
    money = Amount.parse(amount)
    budget = Budget("b", Amount(10**12, "msat" if money.unit == "sat" else money.unit), "global")
    hold = ledger.reserve([budget], money, **where)  # type: ignore[arg-type]
    if phase == "reserved":
        return hold
    ledger.mark_forwarded(hold)
    if phase == "settled":
        ledger.settle(hold, Amount.parse(settled or amount))
    elif phase == "voided":
        ledger.void(hold)
    elif phase == "in_doubt":
        ledger.mark_in_doubt(hold)
    return hold


def day_report(ledger: Ledger, zone: str = "UTC", start: datetime = T0) -> SpendReport:
    local = start.astimezone(ZoneInfo(zone))
    return ledger.report(local, local + DAY)
