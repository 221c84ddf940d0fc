"""The gate's tests run in process, on a real SQLite ledger file in tmp_path and the test's clock, with a fake
forward in place of the relay."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import FakeClock
from tests.payments.doubles import RecordingLedger


@pytest.fixture
def ledger(tmp_path: Path, clock: FakeClock) -> Iterator[RecordingLedger]:
    with RecordingLedger.open(tmp_path / "ledger.db", clock=clock) as opened:
        yield opened
