"""Helpers for ledger tests that need more than one process: worker subprocesses read line by line
(every wait bounded), and plain SQL reads of a ledger's tables behind the ledger's back."""

from __future__ import annotations

import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import IO, Any

from sqlalchemy import Row, create_engine, text

from tests.conftest import ROOT, WAIT_S


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
